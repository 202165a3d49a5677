"""The one exception type for user mistakes: bad config values, missing files, bad data.

Entry points print its message as one line and exit with status 2; anything else is a bug and
keeps its traceback.
"""


class PeftlabError(Exception):
    """A user-facing error: its message is complete on one line."""


class ConfigError(PeftlabError):
    """A config value is missing, unknown, of the wrong type or out of range."""


class DataError(PeftlabError):
    """A data file or data set cannot be used: missing, malformed, a field or split absent."""
