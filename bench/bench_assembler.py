"""Where the batched assembler's time goes, on trained workdirs (issue: scale, part two, item 3).

For each workdir, on its whole val split (questions with a layout), one process, every rate the
best of 3 warm runs:
- the per-sample reference (``Executor.run_reference``) and the batched executor in val order
  and in shape order (what ``assemble`` feeds it: questions sorted by layout shape), at batch
  sizes 512 (``assemble``'s), 2048 and the whole split; and in shape order at 512 with find's
  rows gathered as before ``Find.rows_forward`` (the A/B of that change);
- bf16 autocast on the CPU (shape order, 512): its rate, how many answers differ from float32's
  and the val accuracy of both (root answer combined with the encoder's prior, as ``assemble`` does);
- a cProfile of the batched run (shape order, 512): the share of its time in feature gathers
  (``index_select``), in module code and in the executor's own Python.

    python bench/bench_assembler.py runs/bench-clevr runs/bench-modular    # after make bench
    modtrain run --recipe nmn-clevr --workdir runs/asm-clevr               # or any trained workdir
    python bench/bench_assembler.py runs/asm-clevr
"""
from __future__ import annotations

import argparse
import contextlib
import cProfile
import pstats
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_modular import best_of  # noqa: E402
from common import write_result  # noqa: E402

from modtrain.assemble import load_assembly  # noqa: E402
from modtrain.data import PreparedData  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.registry import reads_features, run_prior  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402

CPU = torch.device("cpu")


def batched(executor, layouts, features, batch_size: int) -> torch.Tensor:
    return torch.cat([executor.run(layouts[b:b + batch_size], features[b:b + batch_size])
                      for b in range(0, len(layouts), batch_size)])


@contextlib.contextmanager
def gathered_find():
    """find without ``rows_forward``: the executor gathers its rows' features and calls it."""
    from modtrain.modules.find import Find

    saved = Find.rows_forward
    Find.rows_forward = lambda self, features, rows, instance: None
    try:
        yield
    finally:
        Find.rows_forward = saved


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


def measure(root: Path) -> dict:
    recipe = Recipe.load(root / "recipe.toml")
    workdir = Workdir.for_recipe(recipe, root)
    data = PreparedData(workdir.data)
    encoder, executor, _ = load_assembly(workdir, recipe, CPU)
    split = data.split("val")
    rows = np.flatnonzero(split.layout >= 0)
    shapes = np.array([data.layouts[i].shape() for i in split.layout[rows]])
    by_shape = rows[np.argsort(shapes, kind="stable")]
    out = {"recipe": recipe.name, "questions": len(rows), "distinct_shapes": len(set(shapes.tolist()))}

    def inputs(chosen):
        return ([data.layouts[i] for i in split.layout[chosen]],
                torch.from_numpy(split.features().take(split.image_index[chosen])).float())

    with torch.no_grad():
        layouts, features = inputs(rows)
        sorted_layouts, sorted_features = inputs(by_shape)
        batched(executor, layouts, features, len(layouts))  # every shape compiled
        reference = len(rows) / best_of(3, lambda: executor.run_reference(layouts, features))
        out["per_sample_questions_per_second"] = round(reference, 1)
        rates = {}
        for batch_size in (512, 2048, len(rows)):
            for order, (lay, feats) in (("val order", (layouts, features)),
                                        ("shape order", (sorted_layouts, sorted_features))):
                rate = len(rows) / best_of(3, lambda: batched(executor, lay, feats, batch_size))
                rates[f"{order}, batch {batch_size}"] = {"questions_per_second": round(rate, 1),
                                                         "speedup": round(rate / reference, 1)}
        with gathered_find():  # the executor before find read its rows in place: the A/B, same process
            rate = len(rows) / best_of(3, lambda: batched(executor, sorted_layouts, sorted_features, 512))
        rates["shape order, batch 512, find's rows gathered"] = {"questions_per_second": round(rate, 1),
                                                                  "speedup": round(rate / reference, 1)}
        out["batched"] = rates
        out["shape_order_over_val_order (512)"] = round(rates["shape order, batch 512"]["questions_per_second"]
                                                        / rates["val order, batch 512"]["questions_per_second"], 2)
        # bf16 autocast, at equal accuracy?
        tokens = torch.from_numpy(split.tokens[by_shape]).long()
        lengths = torch.from_numpy(split.lengths[by_shape]).long()
        prior = run_prior(encoder, tokens, lengths, sorted_features if reads_features(encoder) else None)
        answers = split.answer[by_shape]
        full = executor.interface.combine(batched(executor, sorted_layouts, sorted_features, 512), prior).argmax(1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rate = len(rows) / best_of(3, lambda: batched(executor, sorted_layouts, sorted_features, 512))
            low = executor.interface.combine(batched(executor, sorted_layouts, sorted_features, 512).float(),
                                             prior).argmax(1)
        out["bf16_autocast"] = {
            "questions_per_second": round(rate, 1),
            "vs_float32": round(rate / rates["shape order, batch 512"]["questions_per_second"], 3),
            "answers_differing": int((full != low).sum()),
            "val_accuracy_float32": round(float((full.numpy() == answers).mean()), 4),
            "val_accuracy_bf16": round(float((low.numpy() == answers).mean()), 4)}
        out["profile (shape order, batch 512)"] = profile_shares(executor, sorted_layouts, sorted_features)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdirs", nargs="+", help="trained workdirs (their recipe.toml and modules)")
    parser.add_argument("--out", default="bench/results/assembler.json")
    args = parser.parse_args()
    start = time.perf_counter()
    runs = {str(w): measure(Path(w)) for w in args.workdirs}
    goals = {"nmn-clevr": 20, "nmn-typed": 50}  # every program; the four-module NMN
    targets = {f"{run['recipe']} batched >= {goals[run['recipe']]}x per-sample (as assemble runs it: shape "
               f"order, batch 512)": {"value": run["batched"]["shape order, batch 512"]["speedup"],
                                      "met": run["batched"]["shape order, batch 512"]["speedup"]
                                      >= goals[run["recipe"]]}
               for run in runs.values() if run["recipe"] in goals}
    write_result(Path(args.out), {"benchmark": "assembler", "targets": targets, "runs": runs,
                                  "wall_seconds": round(time.perf_counter() - start, 1)})


if __name__ == "__main__":
    main()
