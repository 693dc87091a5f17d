"""Does ``train.compile`` keep a system's accuracy? The same recipe, data and seeds trained eagerly
and through ``torch.compile``, paired by seed.

A recipe may turn ``train.compile`` on only at equal accuracy: the compiled and eager runs of a
seed start from the same weights and data order but round differently, so their trajectories part;
the test accuracies' per-seed differences (compiled − eager) get a 95% Student-t interval, and the
verdict is "equal" when it lies within ±``--tolerance`` points, "not equal" when it lies outside
that band, else "undecided". The JSON also holds each run's median seconds per epoch after the
first (the speed a long run sees) and its first epoch's (which includes compiling), from the jobs'
logs.

Data: nmn-clevr's generated dataset (every CLEVR family, depth-balanced), ``--images`` training
images, as ``bench_snmn.py`` makes it; each run trains end to end with its recipe's own ``[train]``
table, ``--epochs`` at most, patience 4, and is scored by the assembler on the test split. The JSON
is rewritten after every run and a rerun skips the runs it holds, so an interrupted benchmark
resumes.

    python bench/bench_compile.py --recipe snmn-gt --out bench/results/compile.json
    python bench/bench_compile.py --seeds 2 --cold-cache --out bench/results/compile-cold.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import clevr_dataset, points, write_result  # noqa: E402

from modtrain.card import load_card  # noqa: E402
from modtrain.pipeline import run_end_to_end  # noqa: E402
from modtrain.recipe import COMPILE_BACKENDS, Recipe  # noqa: E402
from modtrain.reports.depth import interval  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402


def equal_verdict(gaps: list[float], tolerance: float) -> dict:
    """Whether compiled − eager (per seed) is within ±tolerance: its interval inside the band
    (equal), outside it (not equal), or across an edge (undecided)."""
    if len(gaps) < 2:
        return {"seeds": len(gaps), "verdict": "undecided", "why": "fewer than two paired seeds"}
    stats = interval(gaps)
    low, high = stats["interval"]
    verdict = ("equal" if -tolerance <= low and high <= tolerance
               else "not equal" if high < -tolerance or low > tolerance else "undecided")
    return {"seeds": len(gaps), "value_points": round(100 * stats["mean"], 2),
            "interval_points": points(stats["interval"]), "tolerance_points": round(100 * tolerance, 2),
            "verdict": verdict}


def epoch_seconds(log: Path) -> list[float]:
    return [json.loads(line)["seconds"] for line in log.read_text().splitlines()] if log.exists() else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", default="snmn-gt")
    parser.add_argument("--backend", default="inductor", choices=[b for b in COMPILE_BACKENDS if b != "off"])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--tolerance", type=float, default=1.0, help="points")
    parser.add_argument("--workdir", default="runs/bench-compile")
    parser.add_argument("--out", default="bench/results/compile.json")
    parser.add_argument("--note", default="", help="what else the JSON should say (e.g. what shared the machine)")
    parser.add_argument("--cold-cache", action="store_true",
                        help="compile into an empty inductor cache (a fresh machine's first job), not this "
                             "machine's: what a compiled run costs in all, compiling included")
    args = parser.parse_args()
    root, out = Path(args.workdir).resolve(), Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]
    settings = {"recipe": args.recipe, "backend": args.backend, "images": args.images, "epochs": args.epochs,
                **({"inductor_cache": "cold"} if args.cold_cache else {})}
    if args.cold_cache:  # read by inductor when it first looks for a graph, after this
        cold = root / f"inductor-cache-{time.strftime('%Y%m%d-%H%M%S')}"
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cold)
    earlier = json.loads(out.read_text()) if out.exists() else {}
    runs: list[dict] = earlier.get("runs", []) if earlier.get("settings") == settings else []
    data_overrides, say, data = clevr_dataset(args.images, root)
    start = time.perf_counter()

    def write() -> None:
        by = {(r["seed"], r["compile"]): r for r in runs}
        gaps = [by[s, args.backend]["accuracy"] - by[s, "off"]["accuracy"] for s in seeds
                if (s, "off") in by and (s, args.backend) in by]
        modes = {}
        for mode in ("off", args.backend):
            mine = [r for r in runs if r["compile"] == mode]
            for r in mine:  # the median: an epoch slowed by other work on the machine moves it little
                later = r["epoch_seconds"][1:]
                r["median_epoch_seconds_after_the_first"] = round(statistics.median(later), 1) if later else None
            modes[mode] = {"accuracy_mean": statistics.mean(r["accuracy"] for r in mine) if mine else None,
                           "median_epoch_seconds_after_the_first": {
                               r["seed"]: r["median_epoch_seconds_after_the_first"] for r in mine},
                           "first_epoch_seconds": {r["seed"]: r["epoch_seconds"][0]
                                                   for r in mine if r["epoch_seconds"]}}
        write_result(out, {"benchmark": "compile", "settings": settings, "split": "test", "note": args.note,
                           "protocol": "the recipe's own [train] table, the same data and seeds, patience 4, no "
                                       "tuning; compiled − eager test accuracy paired by seed, 95% Student-t "
                                       f"interval, equal within ±{args.tolerance:g} points",
                           "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
                           "equal_accuracy": equal_verdict(gaps, args.tolerance / 100), "modes": modes,
                           "runs": runs})

    for seed in seeds:
        for mode in ("off", args.backend):
            if any(r["seed"] == seed and r["compile"] == mode for r in runs):
                say(f"== {args.recipe} seed {seed} compile={mode}: in {out} already")
                continue
            recipe = Recipe.load(args.recipe, [*data_overrides, f"data.source='{data.root}'", f"seed={seed}",
                                               f"train.max_epochs={args.epochs}", "train.patience=4",
                                               f"train.compile='{mode}'"])
            workdir = Workdir(root / f"{args.recipe}-{mode}-seed{seed}", data.root)
            # a run the JSON lacks trains afresh: a workdir left up to date by another invocation
            # (the warm-cache runs, for --cold-cache) would be "trained" in seconds
            shutil.rmtree(workdir.root, ignore_errors=True)
            say(f"== {args.recipe} seed {seed}, compile={mode}")
            began = time.perf_counter()
            report = run_end_to_end(recipe, workdir, torch.device("cpu"), say)
            card = load_card(workdir.modules, next(iter(report["modules"])))
            runs.append({"seed": seed, "compile": mode, "seconds": round(time.perf_counter() - began, 1),
                         "epochs": card["metrics"]["epochs"], "best_epoch": card["metrics"]["best_epoch"],
                         "val_accuracy": card["metrics"]["val_accuracy"],
                         "accuracy": report["splits"]["test"]["accuracy"],
                         "epoch_seconds": epoch_seconds(workdir.logs / "e2e.jsonl")})
            write()
    write()


if __name__ == "__main__":
    main()
