"""Modular training benchmark on the default dataset (the nmn-typed demo):

- training samples/s of each module (find through its surrogate; describe and measure from caches),
- cache-writing time of each producer,
- assembled evaluation questions/s,
- the batched assembler against the per-sample reference on the same questions, measured as
  ``bench_assembler.py`` measures it (target ≥ 50×, the four-module NMN's).

    python bench/bench_modular.py --workdir runs/bench-modular --out bench/results/modular.json

Trains every module afresh (the workdir's data is reused when up to date); ``--reuse`` keeps
trained modules that are up to date instead.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_assembler import orders, target_pair  # noqa: E402
from common import verdict, write_result  # noqa: E402

from modtrain.assemble import assemble, load_assembly
from modtrain.cache import write_caches
from modtrain.data import PreparedData
from modtrain.pipeline import run_pipeline
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.workdir import Workdir


def first_val_rows(data: PreparedData, questions: int) -> np.ndarray:
    return np.arange(min(questions, len(data.split("val"))))


def batched_vs_reference(workdir: Workdir, recipe: Recipe, data: PreparedData, rows: np.ndarray,
                         rounds: int = 3) -> dict:
    """The batched assembler against the per-sample reference on the same val questions (``rows``),
    measured as ``bench_assembler.py`` measures its targets: the batched executor as ``assemble``
    runs it (shape order, batch 512), the two in turn, best of 10, ``rounds`` rounds, one process."""
    _, executor, _ = load_assembly(workdir, recipe, torch.device("cpu"))
    ordered = orders(data, rows)
    return {"questions": len(rows), "distinct_shapes": ordered["distinct_shapes"],
            **target_pair(executor, ordered, rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="runs/bench-modular")
    parser.add_argument("--reuse", action="store_true", help="keep up-to-date trained modules")
    parser.add_argument("--out", default="bench/results/modular.json")
    parser.add_argument("--reference-questions", type=int, default=1000)
    parser.add_argument("--reference-only", action="store_true",
                        help="only the batched-vs-reference comparison on the trained workdir, JSON on stdout")
    args = parser.parse_args()
    device = torch.device("cpu")
    recipe = Recipe.load("nmn-typed")
    workdir = Workdir.for_recipe(recipe, args.workdir)
    if args.reference_only:
        data = PreparedData(workdir.data)
        print(json.dumps(batched_vs_reference(workdir, recipe, data, first_val_rows(data, args.reference_questions))))
        return
    if not args.reuse:
        for folder in (workdir.modules, workdir.caches):
            shutil.rmtree(folder, ignore_errors=True)
    start = time.perf_counter()
    run_pipeline(recipe, workdir, device, say=lambda m: print(m, file=sys.stderr))
    pipeline_seconds = time.perf_counter() - start  # data included only when it had to be made
    data = PreparedData(workdir.data)

    training = {}
    for name in recipe.modules:
        card = json.loads((workdir.modules / f"{name}.json").read_text())
        training[name] = {"samples_per_second": card["timings"]["samples_per_second"],
                          "train_seconds": card["timings"]["train_seconds"], "epochs": card["metrics"]["epochs"],
                          "val_accuracy": round(card["metrics"]["val_accuracy"], 4)}
        if "surrogate" in card:
            training[name]["surrogate"] = {k: card["surrogate"][k] for k in
                                           ("parameters", "root_parameters", "predictive_variance", "trustworthy")}

    caches = {}
    plan = make_plan(recipe)
    for producer in sorted({p for m in plan.modules for p in m.reads}):
        t = time.perf_counter()
        write_caches(workdir, plan, producer, data, device)
        caches[producer] = {"seconds": round(time.perf_counter() - t, 2),
                            "questions": sum(len(data.split(s)) for s in data.splits())}

    t = time.perf_counter()
    report = assemble(workdir, recipe, device, data=data)
    seconds = time.perf_counter() - t
    evaluated = sum(s["questions"] for s in report["splits"].values())
    assembled = {"questions": evaluated, "seconds": round(seconds, 2),
                 "questions_per_second": round(evaluated / seconds, 1),
                 "val_accuracy": round(report["splits"]["val"]["accuracy"], 4),
                 "val_encoder_accuracy": round(report["splits"]["val"]["encoder_accuracy"], 4),
                 # the table `make demo` prints, per split and question type
                 "splits": {name: {"questions": s["labelled"], "assembled": round(s["accuracy"], 4),
                                   "encoder": round(s["encoder_accuracy"], 4),
                                   "by_type": {t: {"questions": v["questions"], "assembled": round(v["accuracy"], 4),
                                                   "encoder": round(v["encoder_accuracy"], 4)}
                                               for t, v in s["by_type"].items()},
                                   "by_depth": {d: {"questions": v["questions"], "assembled": round(v["accuracy"], 4),
                                                    "encoder": round(v["encoder_accuracy"], 4)}
                                                for d, v in s["by_depth"].items()}}
                            for name, s in report["splits"].items()}}

    comparison = batched_vs_reference(workdir, recipe, data, first_val_rows(data, args.reference_questions))
    # The same comparison in a new process: a ratio that depended on what ran before it in the
    # process (the old reference's did, 17.8x after training vs 29.7x fresh) is not understood.
    fresh = subprocess.run([sys.executable, __file__, "--workdir", str(args.workdir), "--reference-only",
                            "--reference-questions", str(args.reference_questions)],
                           check=True, capture_output=True, text=True)
    comparison["fresh_process"] = json.loads(fresh.stdout)
    write_result(args.out, {"benchmark": "modular", "recipe": recipe.name,
                            "pipeline_seconds": round(pipeline_seconds, 1),
                            "training": training, "cache_writing": caches, "assembled_evaluation": assembled,
                            "batched_vs_per_sample": comparison,
                            "targets": {"batched assembler >= 50x per-sample (four-module NMN; as assemble runs it)": {
                                "value": comparison["speedup"], "interval": comparison["interval"],
                                "verdict": verdict(comparison, 50)}}})


if __name__ == "__main__":
    main()
