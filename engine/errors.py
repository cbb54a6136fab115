"""The root of every error nurture raises on purpose, and the one error for input files with
problems (rulesets, campaigns, ruleset tests): each problem names its file and line. The CLI
and the API catch :class:`NurtureError`; anything else is a bug."""

from __future__ import annotations

from dataclasses import dataclass


class NurtureError(Exception):
    """Something the user or operator can act on; ``str()`` says what."""


@dataclass(frozen=True)
class Problem:
    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class ProblemsError(NurtureError):
    """One or more problems in input files; ``str()`` lists them one per line."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


def one_line(error: BaseException) -> str:
    """An error's message as one log line (a ProblemsError lists a problem per line)."""
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip())


class InvalidRecord(NurtureError, ValueError):
    """A record (an event, a profile, a form post) that cannot be stored; ``str()`` names the
    field and the problem."""
