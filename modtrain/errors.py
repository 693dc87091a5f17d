"""The one exception type for errors a user can act on."""


class ModtrainError(Exception):
    """A user error: bad input, a missing file, a stale cache.

    The CLI prints it as one line without a traceback, so the message must say what was
    wrong, where (file, row, question index, recipe key) and what would be valid.
    """
