"""The one error type every entry point reports the same way: a configuration mistake, found before any work
starts, whose message is one line naming the key (the entry points print it and exit with status 2)."""


class ConfigError(ValueError):
    """A configuration mistake; the message is one line naming the key and what is allowed."""
