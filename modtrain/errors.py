"""The one exception type for errors a user can act on."""


class ModtrainError(Exception):
    """A user error: bad input, a missing file, a stale cache.

    The CLI prints it as one line without a traceback, so the message must say what was
    wrong, where (file, row, question index, recipe key) and what would be valid.
    """


def causes(error: BaseException | None, depth: int = 5):
    """``error`` and what it wraps (``__cause__``, ``__context__``, or Ray's ``cause``), outermost first."""
    while error is not None and depth > 0:
        yield error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
        depth -= 1


def disk_full(error: BaseException) -> bool:
    """Whether an error (or one it wraps: torch and h5py wrap the OS error) is a full disk."""
    import errno

    return any((isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT))
               or "No space left on device" in str(e) for e in causes(error))


def first_line(text: str) -> str:
    """The first line of ``text`` that is not blank, stripped (``text`` itself if none is)."""
    return next((line.strip() for line in text.splitlines() if line.strip()), text)


def io_error_line(error: BaseException) -> str | None:
    """One line for an I/O failure — an ``OSError``, or the ``RuntimeError`` torch and h5py raise
    around one — naming the file where the error knows it; None for any other error."""
    import errno

    if isinstance(error, OSError):
        writable = "it must be writable by you (or choose another folder)"
        advice = {errno.ENOSPC: "free some space and run the command again", errno.EACCES: writable,
                  errno.EPERM: writable, errno.EROFS: "it is on a read-only file system: choose another folder"}
        said = advice.get(errno.ENOSPC if error.errno == errno.EDQUOT else error.errno)
        return (f"{error.filename}: " if error.filename is not None else "") + (error.strerror or str(error)) \
            + (f"; {said}" if said else "")
    if isinstance(error, RuntimeError):
        if disk_full(error):
            return "no space left on the device; free some space and run the command again"
        text = str(error)
        if any(s in text for s in ("file write failed", "PytorchStreamWriter failed", "Unable to synchronously",
                                   "Can't write data", "Unable to open file", "unable to open file")):
            return f"an I/O error: {first_line(text)[:200]}"
    return None
