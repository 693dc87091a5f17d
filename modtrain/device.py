"""Device selection: CUDA when present, CPU otherwise, or what the user asks for."""
from __future__ import annotations

import os

import torch

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
