"""One error type for everything a user can fix: it names the problem and the fix."""

from __future__ import annotations


class WindpipeError(Exception):
    """A problem the user can act on. The CLI prints it without a stack trace and exits 1."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.fix = fix

    def __str__(self) -> str:
        return self.problem if not self.fix else f"{self.problem}\n  fix: {self.fix}"


class UsageError(WindpipeError):
    """A command called the wrong way (a bad option value, a missing argument): exit code 2."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message, at most `limit` characters: what a message quotes
    of a library's error (the rest is a traceback's business)."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
