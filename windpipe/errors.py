"""One error type for everything a user can fix: it names the problem and the fix."""

from __future__ import annotations

import re

# the password of a URI's user-info part (scheme://user:password@host), wherever it appears in a text
_URI_PASSWORD = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s/:@]+):(?P<secret>[^\s/@]*)@")


def redact(text: str) -> str:
    """`text` with the password of every URI in it masked: http://user:***@host (the user name stays)."""
    return _URI_PASSWORD.sub(r"\g<head>:***@", text)


class WindpipeError(Exception):
    """A problem the user can act on. The CLI prints it without a stack trace and exits 1.

    The message never shows a password written into a URI (MLFLOW_TRACKING_URI=http://user:pw@host).
    """

    def __init__(self, problem: str, fix: str | None = None) -> None:
        problem, fix = redact(problem), redact(fix) if fix else fix
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"


class UsageError(WindpipeError):
    """A command called the wrong way (a bad option value, a missing argument): exit code 2."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters, passwords masked: what a
    message quotes of a library's error (the rest is a traceback's business)."""
    text = redact(str(exc).strip())
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
