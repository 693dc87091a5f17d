"""Training speed of Stack-NMN and LNMN on this machine, per way of computing a step.

One training step as their jobs take it — the recipe's sizes and batch, forward, the answer's
cross-entropy, backward, Adam; for LNMN also the α step on a search batch (LNMN Algorithm 2) —
on random inputs of the shape the generated data has (64-channel 8 × 8 clevr-cnn features,
questions of 8 to 30 tokens). Each way is timed over ``--steps`` steps after ``--warmup``:

- ``fp32``: as the modules run now;
- ``bf16``: the network under ``torch.autocast(device, dtype=torch.bfloat16)`` (the modules keep
  their LSTM and stack in float32 unless told; here the whole network is autocast);
- ``compile``: ``torch.compile`` of the network (its compile time reported apart).

The seconds per epoch are the step time × the steps of an epoch at 1000 training images and 10
questions each (the recipes' data; LNMN holds out its search fraction): compute only, no data
loading or validation. A faster way is worth adopting only at equal accuracy (±1 point over 3
seeds), which this script does not measure: it says so in the JSON.

``--parallel`` measures instead how much work the machine does when several runs share it (the
3 seeds of ``bench_snmn.py --parallel``): fp32 steps on all of torch's threads in one process,
on one thread in one process, and in as many one-thread processes as there are cores at once
(timed together, from a barrier), the three in turn, ``--rounds`` times. Each run's epoch is no
shorter that way; the machine's work is its throughput: seconds of wall time per epoch of one
run, the processes' epochs counted together. The same arithmetic, so its accuracy needs no check.

    python bench/bench_speed.py --out bench/results/speed.json
    python bench/bench_speed.py --parallel --out bench/results/speed-parallel.json
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

from modtrain.recipe import Recipe
from modtrain.registry import build_module
from modtrain.train import backward_inputs

SYSTEMS = {"snmn": ("snmn-gt", 10.0), "lnmn": ("lnmn", 45.0)}  # module: (recipe, target s/epoch)
DIMS = {"tokens": 90, "answers": 28, "features": 64, "height": 8, "width": 8}
QUESTIONS = 1000 * 10  # the recipes' training images × questions per image


def batch(size: int, generator: torch.Generator) -> dict:
    lengths = torch.randint(8, 31, (size,), generator=generator)
    tokens = torch.randint(1, DIMS["tokens"], (size, 30), generator=generator)
    tokens[torch.arange(30)[None] >= lengths[:, None]] = 0
    return {"tokens": tokens, "lengths": lengths, "features": torch.randn(size, 64, 8, 8, generator=generator),
            "answer": torch.randint(0, DIMS["answers"], (size,), generator=generator)}


def step_fn(module, net, mode: str, device: torch.device):
    """One weight step (and LNMN's α step) computed the way ``mode`` says."""
    optimizer = module.configure_optimizers(1e-4, 0.0)
    run = torch.compile(net) if mode == "compile" else net

    def forward(b):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=mode == "bf16"):
            logits, module.explained = run(b["tokens"], b["lengths"], b["features"])
        return logits.float()

    reached = backward_inputs(optimizer, module)

    def step(b, search):  # each backward reaches what its optimizer steps, as the job's does
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(forward(b), b["answer"]).backward(inputs=reached)
        optimizer.step()
        if search is not None:  # LNMN: the α step on a search batch (LNMNModule.after_step)
            module.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(search), search["answer"]) + module.structure_loss()
            loss.backward(inputs=module.structure_parameters())
            module.structure_optimizer.step()
    return step


def epoch_steps(name: str) -> int:
    """The weight steps of an epoch at 1000 training images (LNMN holds out its search fraction)."""
    recipe = Recipe.load(SYSTEMS[name][0])
    fraction = recipe.module_hparams(name).get("search_fraction", 0.0)
    return math.ceil(QUESTIONS * (1 - fraction) / recipe.train_config(name).batch_size)


def measure(name: str, mode: str, device: torch.device, warmup: int, steps: int, barrier=None) -> dict:
    """``barrier``: waited on after the warm-up (processes timed together)."""
    recipe_name, target = SYSTEMS[name]
    recipe = Recipe.load(recipe_name)
    size = recipe.train_config(name).batch_size
    torch.manual_seed(0)
    module = build_module(name, recipe.interface, DIMS, **recipe.module_hparams(name)).to(device).train()
    g = torch.Generator().manual_seed(0)
    batches = [{k: v.to(device) for k, v in batch(size, g).items()} for _ in range(2)]
    search = batches[1] if name == "lnmn" else None
    step = step_fn(module, module.net, mode, device)
    start = time.perf_counter()
    try:
        step(batches[0], search)  # the first step: compiles, when compiling
    except Exception as e:  # noqa: BLE001  (a way this build cannot take: recorded, not fatal)
        return {"mode": mode, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
    first = time.perf_counter() - start
    for _ in range(warmup):
        step(batches[0], search)
    if barrier is not None:
        barrier.wait()
    start = time.perf_counter()
    for _ in range(steps):
        step(batches[0], search)
    end = time.perf_counter()
    per_step = (end - start) / steps
    epoch = per_step * epoch_steps(name)
    return {"mode": mode, "batch_size": size, "ms_per_step": round(1000 * per_step, 1),
            "first_step_seconds": round(first, 1), "seconds_per_epoch": round(epoch, 1), "target": target,
            "meets_target": epoch <= target, "threads": torch.get_num_threads(), "timed": [start, end]}


def _one_thread_measure(name, device, warmup, steps, barrier, results) -> None:
    """A process of ``throughput``: one thread, timed from ``barrier``, its result put on ``results``."""
    torch.set_num_threads(1)
    results.put(measure(name, "fp32", torch.device(device), warmup, steps, barrier))


def _ways(name: str, device: torch.device, warmup: int, steps: int) -> list[dict]:
    """One round of ``throughput``: the three ways in turn."""
    cores = os.cpu_count() or 1
    ctx = get_context("spawn")
    out = []
    for processes, threads in ((1, torch.get_num_threads()), (1, 1), (cores, 1)):
        if processes == 1 and threads != 1:  # in this process, as the modes are measured
            each = [measure(name, "fp32", device, warmup, steps)]
        else:
            results = ctx.Queue()
            args = (name, str(device), warmup, steps, ctx.Barrier(processes), results)
            workers = [ctx.Process(target=_one_thread_measure, args=args) for _ in range(processes)]
            for w in workers:
                w.start()
            each = [results.get() for _ in workers]
            for w in workers:
                w.join()
        wall = max(r["timed"][1] for r in each) - min(r["timed"][0] for r in each)
        out.append({"processes": processes, "threads_each": threads,
                    "ms_per_step_each": [r["ms_per_step"] for r in each],
                    "seconds_per_run_epoch": wall / (steps * processes) * epoch_steps(name)})
    return out


def throughput(name: str, device: torch.device, warmup: int, steps: int, rounds: int) -> list[dict]:
    """fp32 on every thread, on one, and in one one-thread process per core at once, ``rounds``
    times in turn: for each way, the wall seconds per run-epoch (the processes' epochs counted
    together) by round, and the work it does against the first way's (epochs an hour, as a
    ratio) by round, with the mean ratio's 95% interval."""
    from modtrain.reports.depth import interval

    measured = [_ways(name, device, warmup, steps) for _ in range(rounds)]
    out = []
    for i, way in enumerate(measured[0]):
        epochs = [r[i]["seconds_per_run_epoch"] for r in measured]
        ratios = [r[0]["seconds_per_run_epoch"] / r[i]["seconds_per_run_epoch"] for r in measured]
        stats = interval(ratios)
        out.append({"processes": way["processes"], "threads_each": way["threads_each"],
                    "ms_per_step_each": [r[i]["ms_per_step_each"] for r in measured],
                    "seconds_per_run_epoch": [round(e, 1) for e in epochs],
                    "work_against_the_first": [round(x, 2) for x in ratios],
                    "work_mean": round(stats["mean"], 2),
                    "work_interval": None if stats["interval"] is None else [round(b, 2) for b in stats["interval"]]})
        print(name, out[-1], file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="bench/results/speed.json")
    parser.add_argument("--modes", nargs="+", default=["fp32", "bf16", "compile"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--parallel", action="store_true",
                        help="the machine's work: fp32 on every thread, on one, and one one-thread process per core")
    parser.add_argument("--rounds", type=int, default=3, help="with --parallel: rounds of the three ways, in turn")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.parallel:
        write_result(args.out, {"benchmark": "speed-parallel", "device": str(device), "questions_per_epoch": QUESTIONS,
                                "steps": args.steps, "warmup": args.warmup, "rounds": args.rounds,
                                "systems": {name: throughput(name, device, args.warmup, args.steps, args.rounds)
                                            for name in SYSTEMS}})
        return
    results = {}
    for name in SYSTEMS:
        results[name] = []
        for mode in args.modes:
            results[name].append(measure(name, mode, device, args.warmup, args.steps))
            results[name][-1].pop("timed", None)  # clock readings: only throughput's processes compare them
            print(name, results[name][-1], file=sys.stderr, flush=True)
    write_result(args.out, {"benchmark": "speed", "device": str(device), "questions_per_epoch": QUESTIONS,
                            "accuracy_checked": False,
                            "note": "compute per training step only; no way is adopted as a recipe setting "
                                    "until its accuracy is shown equal (±1 point over 3 seeds)",
                            "systems": results})


if __name__ == "__main__":
    main()
