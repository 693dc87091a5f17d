"""Shared bits of the benchmarks: machine description and JSON output."""
from __future__ import annotations

import json
import os
import platform
import shutil
from pathlib import Path

import torch


def machine() -> dict:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def write_result(path: str | Path, result: dict) -> None:
    """Write a benchmark's JSON (with the machine) and echo it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def keep_reports(workdir: str | Path, out: str | Path, names: tuple[str, ...] | dict[str, str]) -> None:
    """Copy a report's figures and tables from ``workdir/reports`` next to the JSON ``out``
    (benchmark workdirs are scratch; bench/results is what is kept), under new names if a dict."""
    for name, kept in (names.items() if isinstance(names, dict) else ((n, n) for n in names)):
        shutil.copy(Path(workdir) / "reports" / name, Path(out).parent / kept)
