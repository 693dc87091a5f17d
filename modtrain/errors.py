"""The one exception type for errors a user can act on."""


class ModtrainError(Exception):
    """A user error: bad input, a missing file, a stale cache.

    The CLI prints it as one line without a traceback, so the message must say what was
    wrong, where (file, row, question index, recipe key) and what would be valid.
    """


def io_error_line(error: BaseException) -> str | None:
    """One line for an I/O failure — an ``OSError``, or the ``RuntimeError`` torch and h5py raise
    around one — naming the file where the error knows it; None for any other error."""
    import errno

    if isinstance(error, OSError):
        what = error.strerror or str(error)
        where = error.filename if error.filename is not None else None
        advice = {errno.ENOSPC: "free some space and run the command again",
                  errno.EDQUOT: "free some space and run the command again",
                  errno.EACCES: "it must be writable by you (or choose another folder)",
                  errno.EPERM: "it must be writable by you (or choose another folder)",
                  errno.EROFS: "it is on a read-only file system: choose another folder"}.get(error.errno)
        return (f"{where}: " if where else "") + what + (f"; {advice}" if advice else "")
    if isinstance(error, RuntimeError):
        text = str(error)
        if "No space left on device" in text:
            return "no space left on the device; free some space and run the command again"
        if any(s in text for s in ("file write failed", "PytorchStreamWriter failed", "Unable to synchronously",
                                   "Can't write data", "Unable to open file", "unable to open file")):
            first = next((line.strip() for line in text.splitlines() if line.strip()), text)
            return f"an I/O error: {first[:200]}"
    return None
