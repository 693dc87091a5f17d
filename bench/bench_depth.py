"""Generalization by program depth (paper §5.6, Fig. 13/14) on 2 CPU cores: every system trained
on depths ≤ D of one all-family procedural dataset, evaluated at every depth, with the targets
checked.

    python bench/bench_depth.py --out bench/results/depth.json
    python bench/bench_depth.py --reference --out bench/results/depth.json   # + every system on all depths
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import keep_reports, write_result  # noqa: E402

from modtrain.reports.depth import LIMITED, run_depth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/depth.json")
    parser.add_argument("--workdir", default="runs/bench-depth")
    parser.add_argument("--max-train-depth", type=int, default=5)
    parser.add_argument("--images", type=int, default=None, help="training images [default: the recipe's]")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--reference", action="store_true", help="also train every system on every depth")
    parser.add_argument("--min-questions", type=int, default=20)
    parser.add_argument("--reuse", action="store_true", help="keep up-to-date trained runs (default: train afresh)")
    args = parser.parse_args()
    overrides = [*([f"data.images={args.images}"] if args.images else []),
                 *([f"data.val_images={args.val_images}"] if args.val_images else [])]
    start = time.perf_counter()
    summary = run_depth(args.workdir, args.max_train_depth, torch.device("cpu"), overrides=overrides,
                        reference=args.reference, say=lambda m: print(m, file=sys.stderr), fresh=not args.reuse,
                        min_questions=args.min_questions)
    seconds = time.perf_counter() - start
    d = args.max_train_depth
    systems = {label: r[LIMITED] for label, r in summary["systems"].items()}
    typed, gradient, film = (systems.get(k) for k in ("modular typed", "modular gradient", "FiLM"))
    targets = {}
    # The targets, on every question (as the paper), and the same numbers on the composable
    # questions (every module instance taught at depth ≤ D), for the diagnosis; decided before running.
    for subset in ("", "_composable"):
        if typed and gradient:
            unseen = [k for k, e in typed[f"val{subset}"].items() if int(k) > d and e["questions"] >= args.min_questions
                      and k in gradient[f"val{subset}"]]
            gaps = [gradient[f"val{subset}"][k]["error"] - typed[f"val{subset}"][k]["error"] for k in unseen]
            targets[f"typed below gradient at every unseen depth{subset}"] = {
                "gaps_points": {k: round(100 * g, 1) for k, g in zip(unseen, gaps)},
                "met": bool(gaps) and min(gaps) > 0}
            mean_gap = sum(gaps) / len(gaps) if gaps else math.nan
            targets[f"typed below gradient by >= 5 points on average (unseen){subset}"] = {
                "value_points": round(100 * mean_gap, 1), "met": mean_gap >= 0.05}
        if typed:
            ratio = typed[f"unseen_over_seen{subset}"]
            targets[f"typed unseen error <= 1.5x seen{subset}"] = {"value": round(ratio, 2), "met": ratio <= 1.5}
        if typed and film:
            targets[f"typed modular below FiLM (unseen){subset}"] = {
                "value_points": round(100 * (film[f"unseen_error{subset}"] - typed[f"unseen_error{subset}"]), 1),
                "met": typed[f"unseen_error{subset}"] < film[f"unseen_error{subset}"]}
    write_result(args.out, {"benchmark": "depth", "max_train_depth": d, "overrides": overrides,
                            "wall_seconds": round(seconds, 1), "targets": targets, "summary": summary})
    stem = Path(args.out).stem
    keep_reports(args.workdir, args.out, {"depth.md": f"{stem}.md", "depth.png": f"{stem}.png"})


if __name__ == "__main__":
    main()
