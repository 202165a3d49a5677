"""The one exception type for user mistakes: bad config values, missing files, bad data.

Entry points print its message as one line and exit with status 2; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

from typing import Any, Optional


class PeftlabError(Exception):
    """A user-facing error: its message is complete on one line."""


class ConfigError(PeftlabError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(PeftlabError):
    """A data file or data set cannot be used: missing, malformed, a field or split absent."""


class Diverged(PeftlabError):
    """Training met a non-finite loss or gradient. The job adds what metrics.json then says
    (``record``) and what the user is told beyond the cause (``note``)."""

    def __init__(self, step: int, what: str):
        super().__init__(f"training diverged at step {step}: {what}")
        self.step, self.what = step, what
        self.record: Optional[dict[str, Any]] = None
        self.note = ""


class SweepRefused(BaseException):
    """A sweep refused before its first job, from a Hydra callback. Hydra's callback runner turns any
    ``Exception`` into a warning and goes on, so this one is a ``BaseException``; the entry points
    print ``error`` (a ``ConfigError``) as one line and exit with status 2."""

    def __init__(self, error: ConfigError):
        super().__init__(str(error))
        self.error = error
