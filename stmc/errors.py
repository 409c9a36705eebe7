"""The project's own error types. Every entry point turns these, and only these, into one line on stderr and a
non-zero exit status (2 for a mistake in what the user asked for; stream_infer.py and train.py use 1 for an input
file or a run that failed on its way); any other exception is a bug and shows its traceback.

They subclass the built-in types callers already expect (``ValueError``, ``FileNotFoundError``), so library users
can catch either."""


class StmcError(Exception):
    """A mistake the user can fix; the message is one line naming the key, file or value and what to do."""


class ConfigError(StmcError, ValueError):
    """A configuration mistake, found before any work starts: names the key and what is allowed."""


class InputError(StmcError, ValueError):
    """Bad input: a file, a tensor or an argument the caller gave that cannot be used as it is."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or folder the settings name does not exist or holds nothing usable."""
