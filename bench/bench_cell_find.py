"""find as a learnable LNMN cell against the hand-designed find, both trained modularly.

The nmn-typed pipeline (encoder, find through the factorized surrogate, describe, measure) on the
same generated data, once with the hand-designed find (a per-instance 1×1 convolution) and once
with ``modules.find.impl = "cell"`` (``modtrain train find --impl cell``: an LNMN 3-input attention
cell whose text input is the instance's embedding), for each seed; every other setting is the
recipe's. Reported: test accuracy of the assembled NMN, find's surrogate validation accuracy and
predictive variance, find's parameters and training time, and for the cell its nodes' σ(α) and
the expression of their argmax operations (LNMN Table 6).

    python bench/bench_cell_find.py --out bench/results/cell-find.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from modtrain.modules.lnmn import OPERATIONS  # noqa: E402

from modtrain.card import load_card, load_module  # noqa: E402
from modtrain.pipeline import ensure_data, run_pipeline  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.reports.cells import expression  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/cell-find.json")
    parser.add_argument("--workdir", default="runs/bench-cell-find")
    parser.add_argument("--images", type=int, default=800)
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    seeds = [int(s) for s in args.seeds.split(",")]
    data_overrides = [f"data.images={args.images}", "train.device='cpu'"]
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    base = Recipe.load("nmn-typed", data_overrides)
    data = ensure_data(base, Workdir.for_recipe(base, root), torch.device("cpu"), say)
    start = time.perf_counter()
    results: dict[str, dict] = {}
    for impl in ("linear", "cell"):
        runs = []
        for seed in seeds:
            recipe = Recipe.load("nmn-typed", [*data_overrides, f"data.source='{data.root}'", f"seed={seed}",
                                               f"modules.find.impl='{impl}'"])
            workdir = Workdir(root / f"{impl}-seed{seed}", data.root)
            say(f"== find {impl}, seed {seed}")
            report = run_pipeline(recipe, workdir, torch.device("cpu"), say=say, allow_untrusted=True)
            card = load_card(workdir.modules, "find")
            find, _ = load_module(workdir.modules, "find", torch.device("cpu"))
            run = {"seed": seed, "accuracy": report["splits"]["test"]["accuracy"],
                   "encoder_accuracy": report["splits"]["test"]["encoder_accuracy"],
                   "find_val_accuracy": card["surrogate"]["val_accuracy"],
                   "find_predictive_variance": card["surrogate"]["predictive_variance"],
                   "find_trustworthy": card["surrogate"]["trustworthy"],
                   "find_parameters": sum(p.numel() for p in find.parameters()),
                   "find_train_seconds": card["timings"]["train_seconds"],
                   "find_epochs": card["metrics"]["epochs"]}
            if impl == "cell":
                run["expression"] = expression(find.cell)
                run["softmax_alpha"] = [dict(zip(OPERATIONS, [round(float(w), 4) for w in node.weights()]))
                                        for node in find.cell.nodes]
            runs.append(run)
        accuracies = [r["accuracy"] for r in runs]
        results[impl] = {"accuracy_mean": statistics.mean(accuracies),
                         "accuracy_std": statistics.stdev(accuracies) if len(runs) > 1 else None, "runs": runs}
    write_result(args.out, {
        "benchmark": "cell-find", "recipe": "nmn-typed", "images": args.images, "seeds": seeds, "split": "test",
        "wall_seconds": round(time.perf_counter() - start, 1),
        "cell_minus_linear_points": round(
            100 * (results["cell"]["accuracy_mean"] - results["linear"]["accuracy_mean"]), 2),
        "find": results})


if __name__ == "__main__":
    main()
