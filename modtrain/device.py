"""Device selection: CUDA when present, CPU otherwise, or what the user asks for."""
from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from functools import partial

import numpy as np
import torch

from modtrain.data import KeptBuffers
from modtrain.errors import ModtrainError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` → cuda if available else cpu; ``cpu``, ``cuda``, ``cuda:N`` as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModtrainError(f"unknown device {name!r}; valid: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModtrainError(f"device {name!r} asked for, but CUDA is not available here; use --device cpu")
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch tensor on ``device``: on CUDA copied from pinned memory without blocking, so the next
    batch is read while the GPU computes; on the CPU, the tensor itself."""
    if device.type != "cuda":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def _storage_users(tensor: torch.Tensor) -> int | None:
    """How many tensors (views, detached copies, numpy arrays) share ``tensor``'s memory; None where
    this torch cannot say."""
    count = getattr(torch._C, "_storage_Use_Count", None)
    return None if count is None else count(tensor.untyped_storage()._cdata)


_ALONE = _storage_users(torch.empty(1))  # the count of a tensor nothing else shares
_foreach_copy = getattr(torch, "_foreach_copy_", None)  # copies a list of tensors in one call


def _unshared(tensors: list, i: int) -> bool:
    """Whether nothing shares the i-th tensor's memory (never, where this torch cannot say)."""
    return _ALONE is not None and _storage_users(tensors[i]) == _ALONE


class FloatBatches:
    """float32 batches of stored rows (``H5Rows``), for the CPU, written into buffers kept from one
    batch to the next: a buffer is reused only once nothing holds the batch it last held (no view,
    no detached tensor, no numpy array of it). Rows stored in another dtype (ResNet features in
    float16) are converted as they are gathered, in one call for the batch; float32 rows (clevr-cnn)
    are gathered by numpy, on one thread.

    ``torch.from_numpy(rows.take(index)).float()`` made two new arrays a batch and wrote every byte
    twice, and for large batches the kernel faulted the new pages in every time. A batch of 256
    ResNet-shaped float16 rows (1024 × 14 × 14) on this machine (2 threads, huge pages on): 34.8 ms
    that way, 11.1 ms here; with another thread busy in Python beside it (as ``ReadAhead``'s is,
    reading through h5py), 35.5 ms here against 49.2 for a gather then a conversion into kept
    buffers, and 38.7 for a copy call per row (each call waits for the GIL). On CUDA the stored
    dtype crosses and the device converts (``to_device``): this is for the CPU."""

    KEEP = 2  # batch buffers kept: the batch in use and the one being read (a third is made and let go)

    def __init__(self):
        self._buffers = KeptBuffers(self.KEEP, partial(torch.empty, dtype=torch.float32), _unshared)

    def clear(self) -> None:
        """Let go of the kept buffers (at the end of an epoch's batches)."""
        self._buffers.clear()

    def take(self, source, rows) -> torch.Tensor:
        """``source.take(rows)`` as float32."""
        rows = np.asarray(rows, dtype=np.int64)
        shape = (len(rows), *source.shape[1:])
        out = self._buffers.get(shape)
        if out is None:  # both in use: a new one, not kept
            out = torch.empty(shape, dtype=torch.float32)
        with one_thread() if source.streams() else nullcontext():
            return self._take(source, rows, out)

    @staticmethod
    def _take(source, rows: np.ndarray, out: torch.Tensor) -> torch.Tensor:
        found = source.resident(rows)
        if found is not None and found[1] is None and found[0][0].dtype == np.float32:
            array, at = found[0][0], found[2]
            # numpy's gather, on one thread: torch's two waited on each other while the read-ahead
            # thread had a core (find's streamed data path on clevr-cnn features 1.5× slower).
            # mode "raise" would write a copy first; "clip" does not check, so the check is here
            if len(at) and not 0 <= at.min() <= at.max() < len(array):
                raise IndexError(f"rows {at.min()}..{at.max()} asked of {len(array)}")
            np.take(array, at, axis=0, out=out.numpy(), mode="clip")
        elif found is not None and _foreach_copy is not None:  # gathered and converted in one call
            arrays, which, at = found
            values = [torch.from_numpy(array) for array in arrays]
            rows_of = [values[0][i] for i in at.tolist()] if which is None else \
                [values[k][i] for k, i in zip(which.tolist(), at.tolist())]
            _foreach_copy(list(out.unbind(0)), rows_of)
        else:  # rows from disk (or a torch without _foreach_copy_): gathered, then converted
            out.copy_(torch.from_numpy(source.take(rows)))
        return out


@contextmanager
def one_thread():
    """torch's intra-op threads set to one for the block, then back. A streamed source's windows are
    read by ``ReadAhead``'s thread beside the training loop (h5py lets go of the GIL while it reads):
    a gather on torch's two threads then waits for whichever of them that thread has pushed off its
    core. find's data path on ResNet-shaped features (``bench_scale.py --gather-threads``, 2 cores):
    streamed under 1 GiB, 1.15× as fast gathered on one thread; held in memory, two threads stay
    faster (1.36×), so only a streamed source's gather runs on one."""
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def use_threads(threads: int) -> int:
    """Set torch's intra-op threads for a job granted ``threads`` CPUs (a Ray job or trial), at most
    ``OMP_NUM_THREADS`` where the environment sets it: on a machine shared with other work, more
    OpenMP threads than the cores a process gets make each parallel step wait for the slowest one
    (a Ray worker runs niced; measured here: 60–115 s an epoch for a job of ~1 s, two threads beside
    another busy process on 2 cores). Returns the number set."""
    cap = os.environ.get("OMP_NUM_THREADS", "")
    if cap.isdigit() and int(cap) > 0:
        threads = min(threads, int(cap))
    threads = max(1, threads)
    torch.set_num_threads(threads)
    return threads
