"""Errors that name the stage, the object and what to do.

Every failure llmship reports is one of these. The CLI maps them to exit codes:
bad input exits 2, a failed stage or a rollback exits 1. Never a traceback.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


class LlmshipError(Exception):
    """A failure in one stage, about one object, with the next step for the user."""

    exit_code = EXIT_FAILED

    def __init__(self, stage: str, obj: str, message: str, hint: str = "", detail: str = ""):
        self.stage = stage
        self.obj = obj
        self.message = message
        self.hint = hint
        self.detail = detail  # a log tail, conditions, events: printed below the message
        super().__init__(self.render())

    def render(self) -> str:
        text = f"[{self.stage}] {self.obj}: {self.message}"
        if self.hint:
            text += f"\n  what to do: {self.hint}"
        if self.detail:
            text += "\n" + "\n".join("  | " + line for line in self.detail.rstrip().splitlines())
        return text

    # Prefect pickles task exceptions into persisted states; keep every field.
    def __reduce__(self):
        return (self.__class__, (self.stage, self.obj, self.message, self.hint, self.detail))


class BadInput(LlmshipError):
    """The user gave something llmship cannot use: a spec, a path, a port. Exit 2."""

    exit_code = EXIT_BAD_INPUT


class StageFailed(LlmshipError):
    """A stage ran and failed: a server that would not start, a check that did not pass."""


class RolledBack(LlmshipError):
    """The candidate failed a gate; it was removed and the stable model still serves 100%."""
