"""The one error type of data sources and staging."""


class DataError(RuntimeError):
    """A source or a staged dataset that cannot be used; the message is one line naming
    it and, where there is one, the fix."""
