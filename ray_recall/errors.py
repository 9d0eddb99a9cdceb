"""Exceptions raised for bad input. Each message names the offending file, column, key or value."""


class RayRecallError(Exception):
    """Base class of every error this package raises on purpose."""


class ConfigError(RayRecallError, ValueError):
    """A configuration key, type or value is not allowed."""


class DataError(RayRecallError, ValueError):
    """Input data is missing, empty or malformed."""
