"""Modular vs end-to-end benchmark (paper Table 2 and Fig. 10) on 2 CPU cores: three versions ×
3 seeds of one recipe's NMN on one procedural dataset, with the targets checked.

    python bench/bench_compare.py --out bench/results/compare.json        # nmn-typed, shared defaults
    python bench/bench_compare.py --tune 4 --out bench/results/compare-tuned.json     # 4 trials per module
    python bench/bench_compare.py --recipe nmn-clevr --images 1000 --out bench/results/compare-clevr.json
    python bench/bench_compare.py --recipe nmn-vqa --workdir runs/bench-compare-vqa --out bench/results/compare-vqa.json

On VQA data (nmn-vqa: generated in the VQA v1 format) the targets are on the official VQA accuracy.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import keep_reports, write_result  # noqa: E402

from modtrain.reports.compare import run_compare


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/compare.json")
    parser.add_argument("--workdir", default="runs/bench-compare")
    parser.add_argument("--recipe", default="nmn-typed", help="whose NMN (its data families included)")
    parser.add_argument("--images", type=int, default=800, help="training images (val and test: a fifth each)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reuse", action="store_true", help="keep up-to-date trained runs (default: train afresh)")
    parser.add_argument("--tune", type=int, default=0,
                        help="trials per module (and for the whole network) before the seeds; 0: shared defaults")
    args = parser.parse_args()
    overrides = [f"data.images={args.images}", f"data.val_images={args.images // 5}",
                 f"data.test_images={args.images // 5}"]
    start = time.perf_counter()
    summary = run_compare(args.workdir, args.seeds, torch.device("cpu"), overrides,
                          say=lambda m: print(m, file=sys.stderr), fresh=not args.reuse, recipe_name=args.recipe,
                          tune=args.tune)
    seconds = time.perf_counter() - start
    versions = summary["versions"]
    metric = "vqa_accuracy" if "vqa_accuracy" in versions["end-to-end"] else "accuracy"
    e2e = versions["end-to-end"][metric]["mean"]
    typed = versions["modular + data types"][metric]["mean"]
    gradient = versions["modular"][metric]["mean"]
    typed_costs = summary["retraining_vs_end_to_end"]["modular + data types"]
    targets = {
        "modular + data types >= end-to-end": {"value_points": round(100 * (typed - e2e), 2), "met": typed >= e2e},
        "modular (gradient) within 1 point of end-to-end": {"value_points": round(100 * (gradient - e2e), 2),
                                                            "met": abs(gradient - e2e) <= 0.01},
    }
    limits = {"describe": 0.02, "measure": 0.02, "find": 0.25, "relate": 0.25}  # retraining one module
    for module, limit in limits.items():
        if f"{module} alone" in typed_costs:
            value = typed_costs[f"{module} alone"]
            targets[f"{module} alone <= {limit:.0%} of end-to-end"] = {"value": round(value, 4), "met": value <= limit}
    write_result(args.out, {"benchmark": "compare", "recipe": args.recipe, "images": args.images, "seeds": args.seeds,
                            "metric": metric,
                            "protocol": summary["protocol"],
                            "wall_seconds": round(seconds, 1), "targets": targets, "summary": summary})
    stem = Path(args.out).stem
    keep_reports(args.workdir, args.out, {"compare.md": f"{stem}.md", "compare_time.png": f"{stem}_time.png"})


if __name__ == "__main__":
    main()
