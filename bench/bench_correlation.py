"""Surrogate-vs-final correlation benchmark (paper §5.3): N = 40 find modules, K = 20 selected
among those the trust criterion keeps, on the default procedural dataset, 2 CPU cores (target:
≤ 30 minutes, Pearson r ≥ 0.9 between surrogate loss and final loss). Which criterion tells good
modules from bad is bench_trust.py's question.

    python bench/bench_correlation.py --address local --out bench/results/correlation.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import keep_reports, write_result  # noqa: E402

from modtrain.reports.correlation import run_correlation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/correlation.json")
    parser.add_argument("--workdir", default="runs/bench-correlation")
    parser.add_argument("--modules", type=int, default=40)
    parser.add_argument("--select", type=int, default=20)
    parser.add_argument("--address", default=None, help="run the N + K trainings as Ray jobs (e.g. local)")
    args = parser.parse_args()
    start = time.perf_counter()
    report = run_correlation(args.workdir, "nmn-typed", args.modules, args.select, torch.device("cpu"),
                             say=lambda m: print(m, file=sys.stderr), address=args.address)
    seconds = time.perf_counter() - start
    write_result(args.out, {
        "benchmark": "correlation", "modules": args.modules, "select": args.select, "address": args.address,
        "wall_seconds": round(seconds, 1), "trust": report["trust"], "plateau": report["plateau"],
        "criteria": report["criteria"], "loss": report["loss"], "accuracy": report["accuracy"],
        "loss_transplanted": report["loss_transplanted"],
        "targets": {"wall time <= 30 minutes": seconds <= 1800,
                    "Pearson r >= 0.9 (surrogate vs final loss, selected)": report["loss"]["pearson_r"] >= 0.9},
    })
    keep_reports(args.workdir, args.out, ("correlation_loss.png", "correlation_variance.png", "correlation.csv",
                                          "correlation.md"))


if __name__ == "__main__":
    main()
