"""Errors modalrec raises for bad input: each message names the file, row, item or config key."""


class ModalrecError(Exception):
    """Base class: the CLI prints these as one clear line instead of a traceback."""


class ConfigError(ModalrecError):
    """A config file or override is wrong (unknown key, wrong type, missing value)."""


class DataError(ModalrecError):
    """Input data is unusable (missing file or column, duplicate id, unknown item, empty split...)."""
