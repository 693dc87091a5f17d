"""Per-module search benchmark: a 16-trial find search on 2 CPUs (local Ray, two trials at a
time) with FIFO and with ASHA — wall time and the best surrogate accuracy each reached.

    python bench/bench_tune.py --out bench/results/tune.json
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

from modtrain.cache import write_caches
from modtrain.job import is_up_to_date, train_module
from modtrain.pipeline import ensure_data
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.tune import tune_module
from modtrain.workdir import Workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/tune.json")
    parser.add_argument("--workdir", default="runs/bench-tune")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--max-epochs", type=int, default=10)
    args = parser.parse_args()
    recipe = Recipe.load("nmn-typed", [f"train.max_epochs={args.max_epochs}",
                                       f"modules.find.max_epochs={args.max_epochs}"])
    workdir = Workdir.for_recipe(recipe, Path(args.workdir).resolve())
    workdir.root.mkdir(parents=True, exist_ok=True)
    recipe.write(workdir.root)
    cpu = torch.device("cpu")
    data = ensure_data(recipe, workdir, cpu, lambda m: print(m, file=sys.stderr))
    if not is_up_to_date(recipe, "encoder", data, workdir):  # find's surrogate reads the prior (§5.5)
        train_module(workdir, recipe, "encoder", cpu, data)
    write_caches(workdir, make_plan(recipe), "encoder", data, cpu)
    runs = {}
    for scheduler in ("fifo", "asha"):
        start = time.perf_counter()
        summary = tune_module(recipe, workdir, "find", args.samples, scheduler=scheduler, fresh=True,
                              say=lambda m: print(m, file=sys.stderr))
        runs[scheduler] = {"wall_seconds": round(time.perf_counter() - start, 1),
                           "trial_seconds": summary["trial_seconds"],
                           "epochs_trained": sum(t["epochs"] for t in summary["trials"]),
                           "best_kept_accuracy": summary["best"]["kept_accuracy"],
                           "best_config": summary["best"]["config"],
                           "untrustworthy": sum(t["trustworthy"] is False for t in summary["trials"]),
                           "stopped_early": sum(t["kept_accuracy"] is None for t in summary["trials"]),
                           "trials": [{"batch_size": t["config"]["batch_size"],
                                       "surrogate_dropout": round(t["config"].get("surrogate_dropout", 0), 3),
                                       "epochs": t["epochs"], "seconds": round(t["seconds"], 1),
                                       "best_score": t["best_score"], "kept_accuracy": t["kept_accuracy"],
                                       "trustworthy": t["trustworthy"]}
                                      for t in sorted(summary["trials"], key=lambda t: t["config"]["batch_size"])]}
    write_result(args.out, {"benchmark": "tune", "module": "find", "samples": args.samples, "cpus": 2,
                            "max_epochs": args.max_epochs, "runs": runs})


if __name__ == "__main__":
    main()
