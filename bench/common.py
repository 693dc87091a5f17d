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
        "cpu_model": cpu_model(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def cpu_model() -> str | None:
    """The CPU's model name (Linux), so results from different machines are not compared as one."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


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


def verdict(stat: dict, threshold: float, at_least: bool = True) -> str:
    """'met', 'missed' or 'undecided' for "the value is at least (``at_least``) or at most
    ``threshold``", from a stat's 95% interval (``modtrain.reports.depth.interval``): met when the
    whole interval is on the right side, missed when it is all on the wrong one. One seed (no
    interval) is a smoke test, never a verdict."""
    if stat["interval"] is None:
        return "undecided"
    low, high = stat["interval"]
    if at_least:
        return "met" if low >= threshold else "missed" if high < threshold else "undecided"
    return "met" if high <= threshold else "missed" if low > threshold else "undecided"


def points(bounds: list[float] | None) -> list[float] | None:
    """An interval of fractions as percentage points, 2 decimals (None stays None)."""
    return None if bounds is None else [round(100 * b, 2) for b in bounds]


def paired_verdict(a: list[dict], b: list[dict], threshold: float) -> dict:
    """b − a per seed both ran (test accuracy), its mean and interval, and whether b ≥ a + threshold:
    met (the interval's low end at or above), missed (its high end below), else undecided."""
    from modtrain.reports.depth import interval

    of_a = {r["seed"]: r["accuracy"] for r in a}
    gaps = [r["accuracy"] - of_a[r["seed"]] for r in b if r["seed"] in of_a]
    if not gaps:
        return {"seeds": 0, "verdict": "undecided"}
    stats = interval(gaps)
    return {"seeds": len(gaps), "value_points": round(100 * stats["mean"], 2),
            "interval_points": points(stats["interval"]), "threshold_points": round(100 * threshold, 2),
            "verdict": verdict(stats, threshold)}


def clevr_dataset(images: int, root: Path):
    """nmn-clevr's generated dataset (every CLEVR family, depth-balanced) with ``images`` training
    images, made once under ``root``: (the overrides a recipe trained on it takes, a progress
    printer, the data)."""
    import sys

    from modtrain.pipeline import ensure_data
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    overrides = [f"data.images={images}", "train.device='cpu'"]

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)
    base = Recipe.load("nmn-clevr", overrides)
    return overrides, say, ensure_data(base, Workdir.for_recipe(base, root), torch.device("cpu"), say)
