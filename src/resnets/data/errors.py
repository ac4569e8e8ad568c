"""The one exception type of the data package: a problem with the user's data or paths."""


class DataError(Exception):
    """Bad or missing data (wrong path, corrupt archive, unknown class folder); the message says how to fix it."""
