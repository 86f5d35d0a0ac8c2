"""Errors raised by maskformer_core; each message names the culprit (file, key or value)."""


class ConfigError(ValueError):
    """An impossible or unknown model/loss/inference option."""


class DataError(ValueError):
    """A dataset file or layout that does not match its official format."""


class CheckpointError(ValueError):
    """A file that is not a checkpoint, or one built for another architecture/config."""
