"""The one error type of the data layer."""


class DataError(ValueError):
    """Bad data input: the one-line message names the file or argument and what was expected.

    A ValueError so that library callers can catch it generically; the CLI prints the
    message and exits with status 2.
    """
