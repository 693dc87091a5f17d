"""Stack-NMN and LNMN against modtrain's NMN, on one all-family procedural dataset.

Every system trains on the same data (nmn-clevr's: every CLEVR family, depth-balanced, 2000
training images by default; compare-clevr.json's are 1000), each with its own recipe's [train] table
(the NMN's lr 0.002; Stack-NMN's and LNMN's papers' optimizers), the same epoch budget
(``--epochs``, patience 4) and no tuning; the assembler evaluates them all on the test split
(overall, per type, per depth). Each system's mean over its seeds has a 95% Student-t interval,
and each target is judged on the per-seed differences (seeds paired): met, missed, or undecided
when the interval straddles the threshold (one seed is never a verdict).

Systems: modtrain's NMN trained end to end (nmn-clevr-original's modules, ground-truth layouts
from the programs), modtrain's NMN trained module by module with data types (nmn-clevr, the whole
modular pipeline), Stack-NMN with ground-truth layout supervision (snmn-gt), Stack-NMN from
scratch (snmn-scratch) and LNMN (9 modules). The modular pipeline's first job trains the
question-only encoder alone: its test accuracy is "the encoder alone", the prior every system must
beat by 15 points (paired by seed); an end-to-end NMN's encoder trains inside the network, so it
is no such baseline. A system whose mean is not 10 points above the encoder alone's is labelled
"did not train" (``trained``: false), as in the depth report. Each system runs the seeds given for
it (``--runs SYSTEM=0,1,2``); from-scratch runs vary, so the JSON gives every seed, the mean and
the best (Stack-NMN's authors keep the best of several: "report honestly" means saying which one
a number is).

LNMN trains several times slower than Stack-NMN per epoch (an α step on a search batch after
every weight step, and cells that mix six operations at every node; each epoch's seconds are in
the JSON), so ``--lnmn-epochs N``
gives it a smaller epoch budget, with its λ_w schedule scaled to it (+1 → 0 at 2N/3 → −1 at N,
LNMN §3.2's 20/30 of 30 epochs). Its comparison with Stack-NMN is then made at the same budget:
the best validation accuracy within N epochs of each (every run's validation accuracy per epoch
is in the JSON), beside the test accuracies at their own budgets.

The JSON is rewritten after every run and a rerun skips the (system, seed) runs it already holds
for the same images and epochs, so an interrupted benchmark resumes; a run cut off mid-training
resumes from its job's checkpoint.

``--parallel N`` trains N runs at once, each in a process of its own on cores / N of torch's
threads (one each on this 2-core machine). Stack-NMN's and LNMN's steps are hundreds of small
operations over 64-channel 8 × 8 maps: a second thread hardly shortens them, so two one-thread
runs side by side do about 1.6 times the work of one run on two threads (``bench_speed.py
--parallel``, speed-parallel.json). Each run's seconds are then its own wall time beside the other: compare epoch
seconds only between runs made the same way (the JSON records ``threads`` and ``parallel``).

    python bench/bench_snmn.py --images 2000 --parallel 2 --workdir runs/bench-snmn-2000 \
        --out bench/results/snmn-2000.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import clevr_dataset, paired_verdict, write_result  # noqa: E402

from modtrain.card import load_card  # noqa: E402
from modtrain.device import use_threads  # noqa: E402
from modtrain.pipeline import run_end_to_end, run_pipeline  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.reports.depth import TRAINED_MARGIN, interval  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402

SYSTEMS = {"nmn-clevr-original": "NMN end to end (modtrain)",
           "nmn-clevr": "NMN module by module, data types (modtrain)", "snmn-gt": "Stack-NMN, ground-truth layouts",
           "snmn-scratch": "Stack-NMN, from scratch", "lnmn": "LNMN (9 modules)"}
# three seeds of every system, the targets' systems first; the JSON keeps the runs it holds, so
# --runs can add seeds later, e.g. "snmn-scratch=3"
DEFAULT_SEEDS = "lnmn=0 nmn-clevr-original=0,1,2 nmn-clevr=0,1,2 snmn-gt=0,1,2 lnmn=1,2 snmn-scratch=0,1,2"
PROTOCOL = ("each system with its own recipe's [train] table (nmn-clevr-original and nmn-clevr: lr 0.002, batch 64, "
            "the recipes' per-module settings; Stack-NMN: "
            "Adam 1e-4, weight decay 1e-5, batch 64; LNMN: Adam 1e-4, batch 32, α 3e-4), the same data and epoch "
            "budget, patience 4, no tuning; test split; 95% Student-t intervals over the seeds; targets on paired "
            "per-seed differences; the encoder alone: nmn-clevr's question-only encoder, trained alone as the "
            "modular pipeline's first job")


def summary(runs: list[dict]) -> dict:
    accuracies = [r["accuracy"] for r in runs]
    best = max(runs, key=lambda r: r["accuracy"])
    stats = interval(accuracies)
    return {"seeds": [r["seed"] for r in runs], "accuracy_mean": statistics.mean(accuracies),
            "accuracy_interval": stats["interval"],
            "accuracy_std": statistics.stdev(accuracies) if len(runs) > 1 else None,
            "accuracy_best": best["accuracy"], "best_seed": best["seed"],
            "by_type_mean": {t: statistics.fmean(r["by_type"][t] for r in runs) for t in runs[0]["by_type"]
                             if all(t in r["by_type"] for r in runs)}}


def best_val_within(run: dict, epochs: int) -> float:
    return max(v for e, v in enumerate(run["val_by_epoch"], 1) if e <= epochs)


def targets(systems: dict) -> dict:
    """The issue's targets on the mean over each system's seeds (the best scratch seed aside)."""
    mean = {name: s["summary"]["accuracy_mean"] for name, s in systems.items()}
    out = {}
    budgets = {r["max_epochs"] for r in systems.get("lnmn", {}).get("runs", [])}
    if "snmn-gt" in systems and budgets:
        n = min(budgets)
        lnmn = statistics.mean(best_val_within(r, n) for r in systems["lnmn"]["runs"])
        gt = statistics.mean(best_val_within(r, n) for r in systems["snmn-gt"]["runs"])
        out[f"LNMN within 3 points of Stack-NMN, both at {n} epochs (best validation accuracy)"] = {
            "value_points": round(100 * (lnmn - gt), 2), "lnmn": lnmn, "stack_nmn": gt, "met": lnmn >= gt - 0.03}
    if "nmn-clevr-original" in mean and "snmn-gt" in mean:
        out["Stack-NMN (ground truth) within 3 points of the NMN end to end"] = paired_verdict(
            systems["nmn-clevr-original"]["runs"], systems["snmn-gt"]["runs"], -0.03)
    # "each ≥ the encoder alone + 15 points": the encoder trained alone is the modular pipeline's
    # first job (nmn-clevr); an end-to-end NMN's encoder trains inside the NMN and is no baseline
    alone = [{"seed": r["seed"], "accuracy": r["encoder_accuracy"]}
             for r in systems.get("nmn-clevr", {}).get("runs", [])]
    if alone:
        for name, system in systems.items():
            out[f"{name} at least 15 points above the encoder alone"] = paired_verdict(alone, system["runs"], 0.15)
    else:
        out["each at least 15 points above the encoder alone"] = {
            "verdict": "not judged", "why": "no nmn-clevr run: no question-only encoder trained alone"}
    if "snmn-gt" in mean and "lnmn" in mean:
        same = {r["max_epochs"] for s in ("lnmn", "snmn-gt") for r in systems[s]["runs"]}
        out["LNMN within 3 points of Stack-NMN (test" + ("" if len(same) == 1 else ", each at its own epoch budget")
            + ")"] = paired_verdict(systems["snmn-gt"]["runs"], systems["lnmn"]["runs"], -0.03)
    return out


def train_one(recipe_name: str, seed: int, epochs: int, budget: int, data_overrides: list[str], data_root: str,
              root: str) -> dict:
    """One (system, seed) run on the shared data: trained (end to end, or module by module for
    nmn-clevr), scored on the test split.
    ``epochs`` is this run's budget, ``budget`` every other system's (LNMN's λ_w schedule is scaled
    when they differ). A top-level function, so that ``--parallel`` can run it in a process."""
    def say(message: str) -> None:
        print(f"[{recipe_name} {seed}] {message}", file=sys.stderr, flush=True)
    schedule = ([f"modules.lnmn.entropy_zero_epoch={2 * epochs / 3}", f"modules.lnmn.entropy_end_epoch={float(epochs)}"]
                if recipe_name == "lnmn" and epochs != budget else [])
    recipe = Recipe.load(recipe_name, [*data_overrides, f"data.source='{data_root}'", f"seed={seed}",
                                       f"train.max_epochs={epochs}", "train.patience=4", *schedule])
    workdir = Workdir(Path(root) / f"{recipe_name}-seed{seed}", Path(data_root))
    say(f"== {SYSTEMS[recipe_name]}, seed {seed}, {torch.get_num_threads()} thread(s)")
    began = time.perf_counter()
    if recipe_name == "nmn-clevr":  # module by module; a module its surrogate does not trust is kept and named
        report = run_pipeline(recipe, workdir, torch.device("cpu"), say, allow_untrusted=True)
        trained = {"untrusted": sorted(m for m, v in report["modules"].items() if v.get("trustworthy") is False),
                   "val_accuracy": report["splits"]["val"]["accuracy"]}
    else:
        report = run_end_to_end(recipe, workdir, torch.device("cpu"), say)
        card = load_card(workdir.modules, next(iter(report["modules"])))
        trained = {"epochs": card["metrics"]["epochs"], "best_epoch": card["metrics"]["best_epoch"],
                   "val_accuracy": card["metrics"]["val_accuracy"]}
    split = report["splits"]["test"]
    return {"recipe": recipe_name, "seed": seed, "max_epochs": epochs, "overrides": schedule,
            "seconds": round(time.perf_counter() - began, 1), **trained, "accuracy": split["accuracy"],
            "encoder_accuracy": split["encoder_accuracy"],
            "by_type": {t: v["accuracy"] for t, v in split["by_type"].items()},
            "by_depth": {d: v["accuracy"] for d, v in split["by_depth"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/snmn-2000.json")
    parser.add_argument("--workdir", default="runs/bench-snmn-2000")
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--lnmn-epochs", type=int, default=None,
                        help="LNMN's own epoch budget (default: --epochs), its λ_w schedule scaled to it")
    parser.add_argument("--runs", default=DEFAULT_SEEDS,
                        help=f"space-separated RECIPE=SEED[,SEED] in the order to run; recipes: {', '.join(SYSTEMS)}")
    parser.add_argument("--parallel", type=int, default=1,
                        help="runs trained at once, each in its own process on cores / N threads (default 1)")
    args = parser.parse_args()
    root, out = Path(args.workdir).resolve(), Path(args.out)
    plan = [(recipe, int(seed)) for item in args.runs.split() for recipe, seeds in [item.split("=")]
            for seed in seeds.split(",")]
    unknown = sorted({r for r, _ in plan} - set(SYSTEMS))
    if unknown:
        raise SystemExit(f"--runs: unknown recipe(s) {', '.join(unknown)}; valid: {', '.join(SYSTEMS)}")
    if args.parallel < 1:
        raise SystemExit(f"--parallel {args.parallel}: valid: 1 or more runs at once")
    earlier = json.loads(out.read_text()) if out.exists() else {}
    same = earlier.get("images") == args.images and earlier.get("epochs") == args.epochs
    runs: list[dict] = [r for s in earlier.get("systems", {}).values() for r in s.get("runs", [])] if same else []
    data_overrides, say, data = clevr_dataset(args.images, root)
    start = time.perf_counter()

    def write() -> None:
        for r in runs:  # validation accuracy per epoch, from the job's log (the budget comparison)
            log = root / f"{r['recipe']}-seed{r['seed']}" / "logs" / "e2e.jsonl"
            if "val_by_epoch" not in r and log.exists():
                epochs = [json.loads(line) for line in log.read_text().splitlines()]
                r["val_by_epoch"] = [e["val_accuracy"] for e in epochs]
                r["epoch_seconds"] = [e["seconds"] for e in epochs]
            r.setdefault("max_epochs", args.epochs)
        systems = {}
        for recipe in SYSTEMS:
            mine = [r for r in runs if r["recipe"] == recipe]
            if mine:
                systems[recipe] = {"label": SYSTEMS[recipe], "summary": summary(mine), "runs": mine}
        encoder_alone = [r["encoder_accuracy"] for r in runs if r["recipe"] == "nmn-clevr"]
        prior = interval(encoder_alone) if encoder_alone else None
        if prior:  # the depth protocol's label: within 10 points of the prior, "did not train"
            for system in systems.values():
                above = system["summary"]["accuracy_mean"] - prior["mean"]
                system.update(above_encoder_alone_points=round(100 * above, 2), trained=above >= TRAINED_MARGIN)
        write_result(out, {
            "benchmark": "snmn", "images": args.images, "epochs": args.epochs, "patience": 4, "split": "test",
            "protocol": PROTOCOL,
            "encoder_alone": {"seeds": len(encoder_alone), "accuracy_mean": prior["mean"],
                              "accuracy_interval": prior["interval"]} if prior else None,
            "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
            "targets": targets(systems), "systems": systems})

    todo = []
    for recipe_name, seed in plan:
        if any(r["recipe"] == recipe_name and r["seed"] == seed for r in runs):
            say(f"== {recipe_name} seed {seed}: in {out} already")
        else:
            epochs = args.lnmn_epochs if recipe_name == "lnmn" and args.lnmn_epochs else args.epochs
            todo.append((recipe_name, seed, epochs, args.epochs, data_overrides, str(data.root), str(root)))
    threads = max(1, (os.cpu_count() or 1) // args.parallel)
    if args.parallel == 1:
        for task in todo:
            runs.append(train_one(*task))
            write()
    else:
        say(f"{len(todo)} runs, {args.parallel} at once, {threads} thread(s) each")
        with ProcessPoolExecutor(args.parallel, mp_context=get_context("spawn"), initializer=use_threads,
                                 initargs=(threads,)) as pool:
            futures = {pool.submit(train_one, *task): task[:2] for task in todo}
            failed = []
            for done in as_completed(futures):
                if done.exception() is not None:  # the others go on; what finished is written
                    failed.append(f"{futures[done][0]} seed {futures[done][1]}: {done.exception()!r}")
                    say(f"== failed: {failed[-1]}")
                    continue
                runs.append(done.result())
                runs[-1].update(parallel=args.parallel, threads=threads)
                write()
        if failed:
            write()
            raise SystemExit("runs that failed (rerun to retry them; the JSON keeps the others):\n" + "\n".join(failed))
    write()


if __name__ == "__main__":
    main()
