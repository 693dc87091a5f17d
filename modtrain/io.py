"""Atomic writes, JSON with clear errors, and file fingerprints.

Every file a later step trusts is written to a temp file in the same folder and moved
into place with ``os.replace`` once complete, so an interrupted step leaves nothing
that looks finished.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from modtrain.errors import ModtrainError, disk_full, io_error_line


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (also one of another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(path: Path) -> None:
    """Delete the temp files of ``path`` left by writers that are no longer running (killed)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = tmp.name[len(path.name) + 2:].split(".")[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success move it onto ``path``, else delete it (and
    ``path`` is left as it was). A full disk is one error naming the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    # os.open with 0o666 lets the umask set the mode (mkstemp would force 0600)
    tmp_path = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        os.close(os.open(tmp_path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException as e:
        # torch reports a failed write without its cause: a device with no room left says it
        full = disk_full(e) or (isinstance(e, (RuntimeError, OSError)) and _no_room(path.parent))
        tmp_path.unlink(missing_ok=True)
        kept = "the previous file is unchanged" if path.exists() else "nothing was written"
        if full:
            raise ModtrainError(f"no space left on the device while writing {path}; {kept}") from None
        if isinstance(e, OSError) and not isinstance(e, FileNotFoundError):
            raise ModtrainError(f"cannot write {path}: {e.strerror or e}; {kept}") from None
        line = io_error_line(e) if isinstance(e, RuntimeError) else None
        if line is not None:
            raise ModtrainError(f"cannot write {path}: {line}; {kept}") from None
        raise


def _no_room(folder: Path) -> bool:
    """Whether the device holding ``folder`` has (almost) no free space."""
    try:
        return shutil.disk_usage(folder).free < (1 << 16)
    except OSError:
        return False


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
    """Write ``obj`` as JSON to ``path`` atomically."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def read_json(path: str | os.PathLike, what: str = "JSON file") -> Any:
    """Load JSON, turning a missing file or a syntax error into one clear ModtrainError."""
    path = Path(path)
    if not path.is_file():
        raise ModtrainError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ModtrainError(
            f"{path}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}"
        ) from None
    except UnicodeDecodeError as e:
        raise ModtrainError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk_size), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    """Hex sha256 of an object's canonical JSON (sorted keys, no whitespace)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_rows(dataset, rows, out: np.ndarray | None = None) -> np.ndarray:
    """Rows of an HDF5 dataset (sorted, unique indices) read chunk by chunk, into ``out`` if given.

    h5py's fancy indexing selects row by row; reading each touched chunk as one slice and
    picking rows in memory is ~8× faster for wide rows such as features and caches
    (bench/bench_data.py). Small per-question arrays are better loaded whole. Chunks read whole
    and next to each other in the file (a window's, a file read in order) are one read, straight
    into ``out``: every h5py call holds the GIL for its Python part, which a training loop beside
    the reading thread wants too (a window of 334 ResNet-shaped chunks: 0.21 s alone, 2.5 s beside
    a busy thread). HDF5's read itself lets go of it (h5py 3.16: a thread counting in Python kept
    ~87% of its pace while another read 120 MB five times over).
    """
    rows = np.asarray(rows)
    if rows.size == 0:
        return np.empty((0, *dataset.shape[1:]), dataset.dtype)
    block = dataset.chunks[0] if dataset.chunks else len(rows)
    if out is None:
        out = np.empty((len(rows), *dataset.shape[1:]), dataset.dtype)
    chunk_of = rows // block
    starts = np.flatnonzero(np.r_[True, chunk_of[1:] != chunk_of[:-1]])
    ends = np.r_[starts[1:], len(rows)]
    whole = rows[ends - 1] - rows[starts] + 1 == ends - starts  # the chunk's rows follow each other
    # a chunk read whole joins the one before when that was read whole and they touch: each run of
    # joined chunks (first chunk to last) is one read; a chunk not read whole is a run of its own
    joins = np.r_[False, whole[1:] & whole[:-1] & (rows[starts[1:]] == rows[ends[:-1] - 1] + 1)]
    firsts = np.flatnonzero(~joins)
    lasts = np.r_[firsts[1:], len(starts)] - 1
    for first, last in zip(firsts, lasts):
        s, e = starts[first], ends[last]
        lo, hi = int(rows[s]), int(rows[e - 1]) + 1
        if whole[first]:
            _read_run(dataset, lo, hi, out[s:e])
        else:
            out[s:e] = dataset[lo:hi][rows[s:e] - lo]
    return out


def _read_run(dataset, lo: int, hi: int, out: np.ndarray) -> None:
    """Rows lo..hi−1 of ``dataset`` into ``out`` (C-contiguous), in one HDF5 read."""
    from h5py import h5s

    space = dataset.id.get_space()
    space.select_hyperslab((lo, *(0,) * (len(dataset.shape) - 1)), (hi - lo, *dataset.shape[1:]))
    dataset.id.read(h5s.create_simple(out.shape), space, out)


def default_workers() -> int:
    """Processes that decode or render images beside the main one: one per other core."""
    return max(0, (os.cpu_count() or 1) - 1)
