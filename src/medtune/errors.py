"""User-facing errors.

Anything a user can fix (a bad config key, a malformed data file, a missing model) raises
`MedtuneError`. The CLI prints its message as one paragraph and exits non-zero, without a
traceback; everything else is a bug in medtune and keeps its traceback.
"""


class MedtuneError(Exception):
    """An error the user can fix; the message says what is wrong and how to fix it."""


class ConfigError(MedtuneError):
    """A config file or override is invalid."""


class DataError(MedtuneError):
    """A data file is unreadable or malformed; the message names file, line and field."""
