"""Generalization by program depth (paper §5.6, Fig. 13/14) on 2 CPU cores: every system trained
on depths ≤ D of one all-family procedural dataset, over 3 seeds, evaluated at every depth of the
test split, with the targets judged under the protocol of ``modtrain.reports.depth`` (PROTOCOL).

    python bench/bench_depth.py --out bench/results/depth.json
    python bench/bench_depth.py --reference --out bench/results/depth.json   # + every system on all depths
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import keep_reports, points, verdict, write_result  # noqa: E402

from modtrain.reports.depth import LIMITED, interval, run_depth

PROTOCOL = ("each system with its own recipe's [train] table and no search (nmn-clevr's for the four NMN "
            "versions, FiLM's paper optimizer for FiLM); depth-limited training and "
            "early stopping (validation questions ≤ D); reported on the test split; seen/unseen means over the "
            "balanced depths with ≥ min_questions questions; means and 95% Student-t intervals over the seeds; "
            "targets judged only on systems that trained (≥ 10 points below the prior at seen depths); a target "
            "whose interval straddles its threshold is 'undecided'")


def paired(a: dict, b: dict) -> dict:
    """The per-seed difference b − a of two systems' stats (seeds paired by index), with its interval."""
    return interval([y - x for x, y in zip(a["values"], b["values"])])


def targets(summary: dict) -> dict:
    """Issue 26's depth targets, decided before running, on every question and on the composable ones."""
    systems = {label: r[LIMITED] for label, r in summary["systems"].items()}
    trained = {label: s for label, s in systems.items() if s.get("trained")}
    out = {}
    for subset in ("", "_composable"):
        typed, gradient, film = (trained.get(k) for k in ("modular typed", "modular gradient", "FiLM"))
        if typed:
            ratio = typed[f"unseen_over_seen{subset}"]
            out[f"typed unseen/seen error ratio <= 1.5{subset}"] = {
                "mean": round(ratio["mean"], 3), "interval": ratio["interval"],
                "verdict": verdict(ratio, 1.5, at_least=False)}
        if typed and gradient:
            gap = paired(typed[f"unseen_error{subset}"], gradient[f"unseen_error{subset}"])
            above_zero = verdict(gap, 0.0) == "met" and gap["interval"][0] > 0
            out[f"typed >= 5 points below gradient at unseen depths{subset}"] = {
                "mean_points": round(100 * gap["mean"], 2), "interval_points": points(gap["interval"]),
                # the wording: ≥ 5 points on average, with the interval excluding 0
                "verdict": ("met" if above_zero and gap["mean"] >= 0.05
                            else "missed" if verdict(gap, 0.05) == "missed" or above_zero else "undecided")}
        if typed and film:
            gap = paired(typed[f"unseen_error{subset}"], film[f"unseen_error{subset}"])
            out[f"typed below FiLM at unseen depths{subset}"] = {
                "mean_points": round(100 * gap["mean"], 2), "interval_points": points(gap["interval"]),
                "verdict": verdict(gap, 0.0)}
    out["not judged (did not train)"] = sorted(label for label, s in systems.items() if s.get("trained") is False)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/depth.json")
    parser.add_argument("--workdir", default="runs/bench-depth")
    parser.add_argument("--max-train-depth", type=int, default=5)
    parser.add_argument("--images", type=int, default=None, help="training images [default: the recipe's]")
    parser.add_argument("--val-images", type=int, default=None)
    parser.add_argument("--reference", action="store_true", help="also train every system on every depth")
    parser.add_argument("--min-questions", type=int, default=100)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep up-to-date trained runs (default: train afresh)")
    args = parser.parse_args()
    overrides = [*([f"data.images={args.images}"] if args.images else []),
                 *([f"data.val_images={args.val_images}"] if args.val_images else [])]
    start = time.perf_counter()
    summary = run_depth(args.workdir, args.max_train_depth, torch.device("cpu"), overrides=overrides,
                        reference=args.reference, say=lambda m: print(m, file=sys.stderr), fresh=not args.reuse,
                        min_questions=args.min_questions, seeds=args.seeds)
    seconds = time.perf_counter() - start
    write_result(args.out, {"benchmark": "depth", "max_train_depth": args.max_train_depth, "overrides": overrides,
                            "protocol": PROTOCOL, "seeds": summary["seeds"], "wall_seconds": round(seconds, 1),
                            "targets": targets(summary), "summary": summary})
    stem = Path(args.out).stem
    keep_reports(args.workdir, args.out, {"depth.md": f"{stem}.md", "depth.png": f"{stem}.png"})


if __name__ == "__main__":
    main()
