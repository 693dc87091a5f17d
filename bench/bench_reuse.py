"""Reuse benchmark: modules trained in one experiment, imported into another (docs/reuse.md).

Three scenarios, each over ``--seeds`` (default 0 1 2; one seed is a smoke test), test split,
every system with its own recipe's settings (no search), so each comparison has the same data,
budget and tuning protocol on both sides:

- **growing**: nmn-typed (the no-relate modules) trained on nmn-clevr's data, then grown into
  nmn-clevr with ``run --from``: encoder and find imported frozen (their jobs read the same
  producers in both recipes); relate and compare trained, and describe and measure too (in
  nmn-clevr they read relate's outputs), against nmn-clevr from scratch on the same data.
  Targets: accuracy ≥ scratch − 2 points; training seconds ≤ 35% of scratch's. Also with
  describe and measure imported too (``--from-modules encoder,find,describe,measure``) and with
  the encoder retrained here (``--from-modules find``): the encoder decision.
- **formats**: the same generated scenes as a CLEVR folder and as a VQA v1 folder (same seed).
  find, describe and measure trained on the CLEVR form, imported into nmn-vqa on the VQA form
  (its layouts' instances the CLEVR modules lack — find[object], describe[how_many], measure[is]
  — trained alone, ``new_instances = "train"``; the encoder trained there), against nmn-vqa
  trained in place. Target: VQA accuracy within 2 points. Also with the CLEVR form's encoder
  imported too (its words mapped to the VQA form's): the encoder decision on other questions;
  and with find fine-tuned on the VQA form (``finetune = true``) instead of frozen.
- **swapping** differences, and the variants above, are in ``comparisons``: measured, not targets.
- **swapping**: the hand-designed find of an assembled nmn-typed replaced by a cell find
  (``find.impl = "cell"``) trained in another workdir on the same data, assembled without
  retraining the rest.

    python bench/bench_reuse.py --images 1000 --out bench/results/reuse.json

Runs already in the JSON (same images) are kept; the JSON is written after every seed.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import paired_verdict, points, verdict, write_result  # noqa: E402

from modtrain.assemble import assemble  # noqa: E402
from modtrain.card import load_card  # noqa: E402
from modtrain.data import PreparedData  # noqa: E402
from modtrain.pipeline import ensure_data, run_pipeline  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.reports.depth import interval  # noqa: E402
from modtrain.reuse import ImportOptions, export_module, import_module  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402

CPU = torch.device("cpu")
PROTOCOL = ("each system with its own recipe's settings (no search), same data and seeds on both sides; test "
            "split; 95% Student-t intervals over the seeds of the paired differences; training seconds: the sum of "
            "the train jobs' wall times in reports/jobs.json (caches and assembly excluded on both sides)")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def train_seconds(workdir: Workdir) -> float:
    path = workdir.reports / "jobs.json"
    times = json.loads(path.read_text()) if path.exists() else {}
    return round(sum(v for k, v in times.items() if k.startswith("train ") and isinstance(v, (int, float))), 2)


def result(report: dict, workdir: Workdir, metric: str = "accuracy") -> dict:
    split = report["splits"]["test"]
    return {"accuracy": split[metric], "encoder_accuracy": split[f"encoder_{metric}"],
            "train_seconds": train_seconds(workdir), "by_type": {t: v[metric] for t, v in split["by_type"].items()}}


def pipeline(name: str, root: Path, data: Path, seed: int, images: int, extra=(), **kwargs) -> tuple[dict, Workdir]:
    recipe = Recipe.load(name, [f"data.images={images}", f"data.source='{data}'", f"seed={seed}",
                                "train.device='cpu'", *extra])
    workdir = Workdir(root, data)
    report = run_pipeline(recipe, workdir, CPU, say=say, allow_untrusted=True, **kwargs)
    return report, workdir


def generated(name: str, root: Path, images: int) -> Path:
    recipe = Recipe.load(name, [f"data.images={images}", "train.device='cpu'"])
    return ensure_data(recipe, Workdir.for_recipe(recipe, root), CPU, say).root


def growing(root: Path, seed: int, images: int) -> dict:
    data = generated("nmn-clevr", root / "data-clevr", images)
    scratch, w_scratch = pipeline("nmn-clevr", root / f"clevr-scratch-{seed}", data, seed, images)
    base, w_base = pipeline("nmn-typed", root / f"typed-{seed}", data, seed, images)
    # run --from W: encoder and find imported (their jobs read the same producers in both recipes);
    # relate and compare, and describe and measure (which read relate in nmn-clevr), trained here
    grown, w_grown = pipeline("nmn-clevr", root / f"clevr-grown-{seed}", data, seed, images, grow_from=w_base.root)
    every, w_every = pipeline("nmn-clevr", root / f"clevr-grown-all-{seed}", data, seed, images,
                              grow_from=w_base.root, grow_only=["encoder", "find", "describe", "measure"])
    fresh, w_fresh = pipeline("nmn-clevr", root / f"clevr-grown-new-encoder-{seed}", data, seed, images,
                              grow_from=w_base.root, grow_only=["find"])
    same = load_card(w_fresh.modules, "encoder")["weights_sha256"] == load_card(w_base.modules, "encoder")[
        "weights_sha256"]
    return {"seed": seed, "scratch": result(scratch, w_scratch), "no_relate_base": result(base, w_base),
            "grown": result(grown, w_grown), "grown_all_imported": result(every, w_every),
            "grown_encoder_retrained": result(fresh, w_fresh),
            "imported": sorted(p.stem for p in (w_grown.root / "imports").glob("*.json")),
            # same data, seed and settings: the encoder retrained here is the imported one, bit for bit
            "retrained_encoder_is_the_imported": same}


def formats(root: Path, seed: int, images: int) -> dict:
    clevr_data = generated("nmn-typed", root / "data-clevr-form", images)
    vqa_data = generated("nmn-vqa", root / "data-vqa-form", images)
    clevr, w_clevr = pipeline("nmn-typed", root / f"typed-clevr-form-{seed}", clevr_data, seed, images)
    in_place, w_place = pipeline("nmn-vqa", root / f"vqa-in-place-{seed}", vqa_data, seed, images)
    packages = root / f"packages-{seed}"
    imports = []
    for name in ("find", "describe", "measure"):
        export_module(w_clevr, name, packages / name, "nmn-typed")
        imports += [f"modules.{name}.from='{packages / name}'", f"modules.{name}.new_instances='train'"]
    same = (json.loads((packages / "find" / "package.json").read_text())["features"]["backbone_sha256"]
            == _backbone(vqa_data))
    if not same:
        imports += [f"modules.{n}.features_compatible=true" for n in ("find", "describe", "measure")]
    imported, w_imported = pipeline("nmn-vqa", root / f"vqa-imported-{seed}", vqa_data, seed, images, imports)
    records = {n: json.loads((w_imported.root / "imports" / f"{n}.json").read_text()) for n in ("find", "describe",
                                                                                                  "measure")}
    # the encoder decision where it matters (other questions): the CLEVR form's encoder imported too,
    # its words mapped to the VQA form's (a word it never saw reads as <UNK>)
    export_module(w_clevr, "encoder", packages / "encoder", "nmn-typed")
    with_encoder, w_encoder = pipeline("nmn-vqa", root / f"vqa-imported-encoder-{seed}", vqa_data, seed, images,
                                       [*imports, f"modules.encoder.from='{packages / 'encoder'}'"])
    encoder = json.loads((w_encoder.root / "imports" / "encoder.json").read_text())
    # find fine-tuned on the VQA form's questions (from the imported weights), the rest as above
    tuned = [i.replace("modules.find.new_instances='train'", "modules.find.finetune=true") for i in imports]
    finetuned, w_finetuned = pipeline("nmn-vqa", root / f"vqa-imported-find-finetuned-{seed}", vqa_data, seed,
                                      images, tuned)
    return {"seed": seed, "clevr_form": result(clevr, w_clevr), "vqa_in_place": result(in_place, w_place,
                                                                                      "vqa_accuracy"),
            "vqa_imported": result(imported, w_imported, "vqa_accuracy"),
            "vqa_imported_with_encoder": result(with_encoder, w_encoder, "vqa_accuracy"),
            "vqa_imported_find_finetuned": result(finetuned, w_finetuned, "vqa_accuracy"),
            "encoder_unknown_tokens": len(encoder["unknown_tokens"]),
            "same_backbone": same, "trained_alone": {n: r["new_instances"] for n, r in records.items()},
            "unknown_answers": {n: len(r["unknown_answers"]) for n, r in records.items()}}


def _backbone(data: Path) -> str | None:
    from modtrain.reuse import features_identity

    prepared = PreparedData(data)
    return features_identity(prepared, prepared.splits()[0])["backbone_sha256"]


def swapping(root: Path, seed: int, images: int) -> dict:
    data = generated("nmn-typed", root / "data-clevr-form", images)
    linear, w_linear = pipeline("nmn-typed", root / f"typed-clevr-form-{seed}", data, seed, images)
    cell, w_cell = pipeline("nmn-typed", root / f"typed-cell-find-{seed}", data, seed, images,
                            ["modules.find.impl='cell'"])
    swapped_root = root / f"typed-swapped-{seed}"
    shutil.rmtree(swapped_root, ignore_errors=True)
    shutil.copytree(w_linear.root, swapped_root, ignore=shutil.ignore_patterns("caches", "tensorboard"))
    w_swap = Workdir(swapped_root, data)
    recipe = Recipe.load(w_swap.root / "recipe.toml")
    export_module(w_cell, "find", root / f"packages-{seed}" / "cell-find", "nmn-typed")
    import_module(root / f"packages-{seed}" / "cell-find", w_swap, recipe, PreparedData(data),
                  ImportOptions(replace=True), say)
    started = time.perf_counter()
    from modtrain.pipeline import run_job
    from modtrain.plan import make_plan

    plan = make_plan(recipe)
    for job in plan.jobs:  # the caches the assembly reads, as run writes them
        if job.kind == "cache":
            run_job(job, recipe, plan, w_swap, PreparedData(data), CPU, say, allow_untrusted=True)
    swapped = assemble(w_swap, recipe, CPU)
    return {"seed": seed, "linear_find": result(linear, w_linear), "cell_find_own_pipeline": result(cell, w_cell),
            "swapped": {**result(swapped, w_swap), "train_seconds": 0.0,
                        "assemble_seconds": round(time.perf_counter() - started, 2)},
            "cell_find_val_accuracy": load_card(w_cell.modules, "find")["metrics"]["val_accuracy"]}


def stat(values: list[float]) -> dict:
    s = interval(values)
    return {"mean": round(s["mean"], 4), "interval": None if s["interval"] is None else
            [round(v, 4) for v in s["interval"]], "values": values}


def pairs(runs: dict, scenario: str, a: str, b: str) -> tuple[list[dict], list[dict]]:
    """The test accuracies of systems ``a`` and ``b`` of a scenario, per seed (for paired_verdict)."""
    rows = [r for r in runs.get(scenario, []) if a in r and b in r]
    return ([{"seed": r["seed"], "accuracy": r[a]["accuracy"]} for r in rows],
            [{"seed": r["seed"], "accuracy": r[b]["accuracy"]} for r in rows])


def targets(runs: dict) -> dict:
    """The issue's targets, each met, missed or undecided from a 95% interval over the seeds."""
    out = {}
    if runs.get("growing"):
        out["grown ≥ scratch − 2 points"] = paired_verdict(*pairs(runs, "growing", "scratch", "grown"), -0.02)
        ratios = [r["grown"]["train_seconds"] / r["scratch"]["train_seconds"] for r in runs["growing"]]
        out["grown training seconds ≤ 35% of scratch's"] = {
            "ratio": stat(ratios), "verdict": verdict(interval(ratios), 0.35, at_least=False)}
    if runs.get("formats"):
        out["VQA form: imported within 2 points of trained in place (VQA accuracy)"] = paired_verdict(
            *pairs(runs, "formats", "vqa_in_place", "vqa_imported"), -0.02)
    return out


# Differences measured beside the targets (b − a; "verdict" says whether b ≥ a, from the interval)
COMPARISONS = {
    "grown with describe and measure imported too vs scratch": ("growing", "scratch", "grown_all_imported"),
    "grown with the encoder retrained here vs imported": ("growing", "grown", "grown_encoder_retrained"),
    "VQA form: find fine-tuned there vs trained in place": ("formats", "vqa_in_place", "vqa_imported_find_finetuned"),
    "VQA form: the encoder imported too vs trained there": ("formats", "vqa_imported", "vqa_imported_with_encoder"),
    "swap: the cell find assembled into the linear-find NMN vs that NMN": ("swapping", "linear_find", "swapped"),
    "swap: vs the cell find's own pipeline": ("swapping", "cell_find_own_pipeline", "swapped"),
}


def comparisons(runs: dict) -> dict:
    out = {}
    for label, (scenario, a, b) in COMPARISONS.items():
        found = pairs(runs, scenario, a, b)
        if found[0]:
            out[label] = paired_verdict(*found, 0.0)
    return out


def summaries(runs: dict) -> dict:
    out = {}
    for scenario, rows in runs.items():
        systems = [k for k in (rows[0] if rows else {}) if isinstance(rows[0][k], dict) and "accuracy" in rows[0][k]
                   and all(k in r for r in rows)]
        out[scenario] = {k: {"accuracy": stat([r[k]["accuracy"] for r in rows]),
                             "accuracy_points": points(interval([r[k]["accuracy"] for r in rows])["interval"]),
                             "train_seconds": stat([r[k]["train_seconds"] for r in rows])} for k in systems}
    return out


SCENARIOS = {"growing": growing, "formats": formats, "swapping": swapping}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/reuse.json")
    parser.add_argument("--workdir", default="runs/bench-reuse")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=list(SCENARIOS))
    args = parser.parse_args()
    root, out = Path(args.workdir).resolve(), Path(args.out)
    earlier = json.loads(out.read_text()) if out.exists() else {}
    runs = earlier.get("runs", {}) if earlier.get("images") == args.images else {}
    start = time.perf_counter()

    def write() -> None:
        write_result(out, {"benchmark": "reuse", "images": args.images, "split": "test", "protocol": PROTOCOL,
                           "wall_seconds_this_invocation": round(time.perf_counter() - start, 1),
                           "targets": targets(runs), "comparisons": comparisons(runs), "summary": summaries(runs),
                           "runs": runs})

    for seed in args.seeds:
        for scenario in args.scenarios:
            done = runs.setdefault(scenario, [])
            if any(r["seed"] == seed for r in done):
                say(f"== {scenario} seed {seed}: in {out} already")
                continue
            say(f"== {scenario}, seed {seed}")
            began = time.perf_counter()
            row = SCENARIOS[scenario](root, seed, args.images)
            row["wall_seconds"] = round(time.perf_counter() - began, 1)
            done.append(row)
            write()
    write()


if __name__ == "__main__":
    main()
