"""Where the batched assembler's time goes, on trained workdirs (issue: scale, part two, item 3).

For each workdir, on its whole val split (questions with a layout), one process:
- the target: the per-sample reference (``Executor.run_reference``) against the batched executor
  as ``assemble`` runs it (questions sorted by layout shape, batch 512), the two taken in turn,
  each the best of 10 (``interleaved``: this machine's speed drifts over tens of seconds, and
  back-to-back repeats would set one phase against another); five rounds of that
  (``--rounds``): the speedup is their mean, with a 95% interval, and a target is met only when
  the interval's low end clears it;
- every configuration in turn, one round: val order (the order the other benchmarks feed it)
  and shape order, at batch sizes 512, 2048 and the whole split, and bf16 autocast on the CPU
  (shape order, 512): its rate, how many answers differ from float32's and the val accuracy of
  both (root answer combined with the encoder's prior, as ``assemble`` does);
- a cProfile of the batched run (shape order, 512): the share of its time in ``index_select``
  (``feature_gathers``: features, but also relate's weights and the calls' outputs), in module
  code and in the executor's own Python.

``--quick``: the target's measurement only (an A/B of two versions of the code, run in turn).

    python bench/bench_assembler.py runs/bench-clevr runs/bench-modular    # after make bench
    modtrain run --recipe nmn-clevr --workdir runs/asm-clevr               # or any trained workdir
    python bench/bench_assembler.py runs/asm-clevr
"""
from __future__ import annotations

import argparse
import cProfile
import functools
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import verdict, write_result  # noqa: E402

from modtrain.assemble import load_assembly  # noqa: E402
from modtrain.data import PreparedData  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.registry import reads_features, run_prior  # noqa: E402
from modtrain.reports.depth import interval  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402

CPU = torch.device("cpu")
REPEATS = 10  # every rate the best of this many warm runs (this machine's timings vary run to run)


def batched(executor, layouts, features, batch_size: int) -> torch.Tensor:
    """As ``assemble`` runs the executor: batch after batch."""
    return torch.cat([executor.run(layouts[b:b + batch_size], features[b:b + batch_size])
                      for b in range(0, len(layouts), batch_size)])


def bf16(executor, layouts, features) -> torch.Tensor:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return batched(executor, layouts, features, 512)


def interleaved(runs: dict, repeats: int) -> dict[str, float]:
    """Each run's best time in seconds, the runs taken in turn ``repeats`` times: this machine's
    speed drifts over tens of seconds, and back-to-back repeats would set one phase against another."""
    best = dict.fromkeys(runs, float("inf"))
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def profile_shares(executor, layouts, features) -> dict:
    profiler = cProfile.Profile()
    profiler.enable()
    batched(executor, layouts, features, 512)
    profiler.disable()
    stats = pstats.Stats(profiler).stats
    total = sum(tt for (_, _, _), (_, _, tt, _, _) in stats.items())
    gathers = sum(tt for (_, _, name), (_, _, tt, _, _) in stats.items() if "index_select" in name)
    modules = sum(tt for (file, _, _), (_, _, tt, _, _) in stats.items() if "/modules/" in file)
    executor_own = sum(tt for (file, _, _), (_, _, tt, _, _) in stats.items() if file.endswith("execute.py"))
    torch_ops = sum(tt for (file, _, name), (_, _, tt, _, _) in stats.items()
                    if file == "~" and ("torch" in name or "Tensor" in name) and "index_select" not in name)
    return {"seconds": round(total, 4), "feature_gathers": round(gathers / total, 3),
            "module_code": round(modules / total, 3), "executor_python": round(executor_own / total, 3),
            "other_torch_ops": round(torch_ops / total, 3)}


def orders(data: PreparedData, rows: np.ndarray) -> dict:
    """The val ``rows``' layouts and float32 features in val order and as ``assemble`` runs them
    (sorted by layout shape, stable), the sorted rows, and how many shapes."""
    split = data.split("val")
    shapes = np.array([data.layouts[i].shape() for i in split.layout[rows]])
    by_shape = rows[np.argsort(shapes, kind="stable")]

    def inputs(chosen):
        return ([data.layouts[i] for i in split.layout[chosen]],
                torch.from_numpy(split.features().take(split.image_index[chosen])).float())

    return {"val order": inputs(rows), "shape order": inputs(by_shape), "by_shape": by_shape,
            "distinct_shapes": len(set(shapes.tolist()))}


def target_pair(executor, ordered: dict, rounds: int) -> dict:
    """The targets' measurement on ``orders``' questions: the per-sample reference against the
    batched executor as ``assemble`` runs it (shape order, batch 512), the two in turn, each the
    best of ``REPEATS``, ``rounds`` times; the speedup is their mean with a 95% interval (None for
    one round)."""
    (layouts, features), (sorted_layouts, sorted_features) = ordered["val order"], ordered["shape order"]
    with torch.no_grad():
        batched(executor, layouts, features, len(layouts))  # every shape compiled
        reference = functools.partial(executor.run_reference, layouts, features)
        as_assembled = functools.partial(batched, executor, sorted_layouts, sorted_features, 512)
        pair = [interleaved({"per-sample": reference, "batched": as_assembled}, REPEATS) for _ in range(rounds)]
    n = len(layouts)
    speedups = interval([r["per-sample"] / r["batched"] for r in pair])
    return {"per_sample_questions_per_second": [round(n / r["per-sample"], 1) for r in pair],
            "batched_questions_per_second": [round(n / r["batched"], 1) for r in pair],
            "speedup": round(speedups["mean"], 1), "speedup_by_round": [round(v, 1) for v in speedups["values"]],
            "interval": None if speedups["interval"] is None else [round(v, 1) for v in speedups["interval"]]}


def measure(root: Path, rounds: int, quick: bool = False) -> dict:
    recipe = Recipe.load(root / "recipe.toml")
    workdir = Workdir.for_recipe(recipe, root)
    data = PreparedData(workdir.data)
    encoder, executor, _ = load_assembly(workdir, recipe, CPU)
    split = data.split("val")
    rows = np.flatnonzero(split.layout >= 0)
    ordered = orders(data, rows)
    by_shape = ordered["by_shape"]
    out = {"recipe": recipe.name, "questions": len(rows), "distinct_shapes": ordered["distinct_shapes"],
           # the target: the reference and the assembler's configuration alone, in turn, per round
           "target_pair": target_pair(executor, ordered, rounds)}
    if quick:
        return out
    with torch.no_grad():
        (layouts, features), (sorted_layouts, sorted_features) = ordered["val order"], ordered["shape order"]
        # every configuration, one round in turn: what order, batch size and bf16 change
        runs = {"per-sample": functools.partial(executor.run_reference, layouts, features)}
        for batch_size in (512, 2048, len(rows)):
            for order, (lay, feats) in (("val order", (layouts, features)),
                                        ("shape order", (sorted_layouts, sorted_features))):
                runs[f"{order}, batch {batch_size}"] = functools.partial(batched, executor, lay, feats, batch_size)
        runs["bf16"] = functools.partial(bf16, executor, sorted_layouts, sorted_features)
        rates = {name: len(rows) / s for name, s in interleaved(runs, REPEATS).items()}
        out["per_sample_questions_per_second"] = round(rates["per-sample"], 1)
        out["batched"] = {name: {"questions_per_second": round(rate, 1),
                                 "speedup": round(rate / rates["per-sample"], 1)}
                          for name, rate in rates.items() if name not in ("per-sample", "bf16")}
        out["shape_order_over_val_order (512)"] = round(
            rates["shape order, batch 512"] / rates["val order, batch 512"], 2)
        # bf16 autocast, at equal accuracy?
        tokens = torch.from_numpy(split.tokens[by_shape]).long()
        lengths = torch.from_numpy(split.lengths[by_shape]).long()
        prior = run_prior(encoder, tokens, lengths, sorted_features if reads_features(encoder) else None)
        answers = split.answer[by_shape]
        full = executor.interface.combine(batched(executor, sorted_layouts, sorted_features, 512), prior).argmax(1)
        low = executor.interface.combine(bf16(executor, sorted_layouts, sorted_features).float(), prior).argmax(1)
        out["bf16_autocast"] = {
            "questions_per_second": round(rates["bf16"], 1),
            "vs_float32": round(rates["bf16"] / rates["shape order, batch 512"], 3),
            "answers_differing": int((full != low).sum()),
            "val_accuracy_float32": round(float((full.numpy() == answers).mean()), 4),
            "val_accuracy_bf16": round(float((low.numpy() == answers).mean()), 4)}
        out["profile (shape order, batch 512)"] = profile_shares(executor, sorted_layouts, sorted_features)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="trained workdirs (their recipe.toml and modules)")
    parser.add_argument("--out", default="bench/results/assembler.json")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of the target's measurement: its interval is over them")
    parser.add_argument("--quick", action="store_true", help="the targets' measurement only")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = {str(w): measure(Path(w), args.rounds, args.quick) for w in args.workdirs}
    goals = {"nmn-clevr": 20, "nmn-typed": 50}  # every program; the four-module NMN
    targets = {}
    for run in runs.values():
        if run["recipe"] not in goals:
            continue
        pair = run["target_pair"]
        targets[f"{run['recipe']} batched >= {goals[run['recipe']]}x per-sample (as assemble runs it: shape "
                f"order, batch 512)"] = {"value": pair["speedup"], "interval": pair["interval"],
                                         "verdict": verdict(pair, goals[run["recipe"]])}
    write_result(Path(args.out), {"benchmark": "assembler", "targets": targets, "runs": runs,
                                  "wall_seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
