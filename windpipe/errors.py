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
