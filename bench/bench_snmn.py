"""Stack-NMN and LNMN against modtrain's end-to-end NMN, on one all-family procedural dataset.

Every system trains end to end on the same data (nmn-clevr's: every CLEVR family, depth-balanced),
with the same [train] table (lr 0.002, batch 64) and the same epoch budget (``--epochs``, patience
4), one seed each; the assembler evaluates them all (test split: overall, per type). Systems:
modtrain's NMN trained end to end (nmn-clevr-original's modules, ground-truth layouts from the
programs), Stack-NMN with ground-truth layout supervision (snmn-gt), Stack-NMN from scratch
(snmn-scratch) and LNMN (9 modules).

    python bench/bench_snmn.py --out bench/results/snmn.json
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

from modtrain.pipeline import ensure_data, run_end_to_end  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402

SYSTEMS = {"NMN end to end (modtrain)": "nmn-clevr-original", "Stack-NMN, ground-truth layouts": "snmn-gt",
           "Stack-NMN, from scratch": "snmn-scratch", "LNMN (9 modules)": "lnmn"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/snmn.json")
    parser.add_argument("--workdir", default="runs/bench-snmn")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--systems", default=",".join(SYSTEMS.values()), help="comma-separated recipes of SYSTEMS")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    shutil.rmtree(root, ignore_errors=True)
    data_overrides = [f"data.images={args.images}", f"data.val_images={max(60, args.images // 4)}",
                      f"data.test_images={max(60, args.images // 4)}", "train.device='cpu'"]
    say = lambda m: print(m, file=sys.stderr)  # noqa: E731
    base = Recipe.load("nmn-clevr", data_overrides)
    data = ensure_data(base, Workdir.for_recipe(base, root), torch.device("cpu"), say)
    results, start = {}, time.perf_counter()
    labels = {recipe: label for label, recipe in SYSTEMS.items()}
    for label in [labels[name] for name in args.systems.split(",")]:
        recipe = Recipe.load(SYSTEMS[label], [*data_overrides, f"data.source='{data.root}'",
                                              f"train.max_epochs={args.epochs}", "train.patience=4"])
        workdir = Workdir(root / SYSTEMS[label], data.root)
        say(f"== {label}")
        began = time.perf_counter()
        report = run_end_to_end(recipe, workdir, torch.device("cpu"), say)
        split = report["splits"]["test"]
        results[label] = {"recipe": SYSTEMS[label], "seconds": round(time.perf_counter() - began, 1),
                          "accuracy": split["accuracy"],
                          "by_type": {t: v["accuracy"] for t, v in split["by_type"].items()}}
    nmn = results.get("NMN end to end (modtrain)", {}).get("accuracy")
    gt = results.get("Stack-NMN, ground-truth layouts", {}).get("accuracy")
    lnmn = results.get("LNMN (9 modules)", {}).get("accuracy")
    targets = {}
    if nmn is not None and gt is not None:
        targets["Stack-NMN (ground truth) within 3 points of the NMN end to end"] = {
            "value_points": round(100 * (gt - nmn), 2), "met": abs(gt - nmn) <= 0.03}
    if gt is not None and lnmn is not None:
        targets["LNMN within 3 points of Stack-NMN"] = {"value_points": round(100 * (lnmn - gt), 2),
                                                         "met": lnmn >= gt - 0.03}
    write_result(args.out, {"benchmark": "snmn", "images": args.images, "epochs": args.epochs, "seed": 0,
                            "wall_seconds": round(time.perf_counter() - start, 1), "targets": targets,
                            "systems": results})


if __name__ == "__main__":
    main()
