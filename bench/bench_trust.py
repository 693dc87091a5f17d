"""Which trust criterion tells modules that help the NMN from modules that do not? (modtrain.trust)

For each module/data pair, ``modtrain report correlation`` trains candidates through the surrogate
with hyperparameters drawn from the recipe's search ranges, transplants every one (frozen) into
the whole NMN, and transplants three *null* modules too (the module as initialized: learning rate
1e-7 for one epoch). The plateau is the mean final validation loss around the nulls; a candidate
is **good** when its final loss is more than 5% below the plateau, **bad** otherwise (both fixed
before any run). Every criterion is then scored against good/bad: its AUROC (threshold-free), and
the good and bad modules it keeps.

``trust.min_gain`` is chosen on one pair only (``--choose-on``, find@nmn-typed): the grid value
that best separates good from bad modules by their bootstrap intervals (``choose_min_gain``). The
other pairs are held out: they are judged with that value and never used to choose anything.

    python bench/bench_trust.py --address local --out bench/results/trust.json
"""
from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

from modtrain.io import read_json, write_json  # noqa: E402
from modtrain.reports.correlation import criteria_check, keeps, run_correlation  # noqa: E402
from modtrain.trust import TrustSection  # noqa: E402

GRID = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3)
MARGIN = 0.05  # good: final loss more than 5% below the plateau (fixed before any run)
NULLS = 3

# pair → (recipe, module studied, candidates, recipe overrides, the pair whose data it reuses)
PAIRS = {
    "find@nmn-typed": ("nmn-typed", "find", 40, [], None),
    "relate@nmn-clevr": ("nmn-clevr", "relate", 12, [], None),
    "find@nmn-vqa": ("nmn-vqa", "find", 12, [], None),
    "find-cell@nmn-typed": ("nmn-typed", "find", 12, ["modules.find.impl='cell'"], "find@nmn-typed"),
}


def choose_min_gain(candidates: list[dict]) -> tuple[float, list[dict]]:
    """The grid value that best separates the good from the bad *as intervals*: a good module counts
    as kept only when its whole bootstrap interval is at or above the value, a bad one as refused only
    when its whole interval is below it; the score is good kept − bad kept, as fractions, and ties go
    to the median of the best values. Judged on points alone, the best value would be one that sits
    inside the cloud of modules at the plateau, where the last digits of a gain decide."""
    judged = [c for c in candidates if "good" in c]
    good = [c for c in judged if c["good"]]
    bad = [c for c in judged if not c["good"]]
    rows = []
    for value in GRID:
        good_kept = sum(c["gain_low"] >= value for c in good)
        bad_kept = sum(c["gain_high"] >= value for c in bad)
        point = TrustSection(min_gain=value)
        rows.append({"min_gain": value, "good_kept": good_kept, "bad_kept": bad_kept,
                     "score": good_kept / max(len(good), 1) - bad_kept / max(len(bad), 1),
                     "good_kept_by_point": sum(keeps(c, point)["gain"] for c in good),
                     "bad_kept_by_point": sum(keeps(c, point)["gain"] for c in bad)})
    best = max(r["score"] for r in rows)
    return statistics.median_low([r["min_gain"] for r in rows if r["score"] == best]), rows


def judge_pair(report: dict, settings: TrustSection) -> dict:
    """Every criterion's AUROC, good and bad kept, with ``settings`` (the chosen min_gain)."""
    entries = [dict(e) for e in report["candidates"]]
    for e in entries:
        if not e["null"]:
            e.update({f"kept_{c}": k for c, k in keeps(e, settings).items()})
    check = criteria_check(entries, report["good_below"])
    out = {name: {k: c.get(k) for k in ("auroc", "good_kept", "bad_kept", "good", "bad", "kept") if k in c}
           for name, c in check.items()}
    out.update(candidates=report["modules"], plateau=report["plateau"], null_final_losses=report["null_final_losses"],
               good_below=report["good_below"], failed=sum("failed" in e for e in entries if not e["null"]),
               loss_transplanted=report["loss_transplanted"],
               loss_over_kept={name: check[name]["loss_over_kept"] for name in ("gain", "variance")})
    return out


def accuracy_where_used(root: Path, name: str, recipe_name: str, overrides: list[str], report: dict) -> dict:
    """Post hoc, for a module that only some questions use (relate): each transplanted candidate's
    final NMN assembled, and its validation accuracy on the questions whose layouts use the module —
    where the module can matter — against the others; with Spearman ρ of each statistic against it.
    Not a verdict: the good/bad definition stays the one fixed before the runs."""
    from scipy import stats

    from modtrain.assemble import assemble
    from modtrain.data import PreparedData
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    module = report["module"]
    data_dir = root / name / "base" / "data"
    recipe = Recipe.load(recipe_name, [*overrides, f"data.source='{data_dir}'", "train.device='cpu'"])
    data = PreparedData(data_dir)
    val = data.split(recipe.data.val_split)
    uses = np.array([module in {n.module for n in layout.nodes()} for layout in data.layouts] + [False])
    used = uses[val.layout] & (val.answer >= 0)
    rows = []
    for e in report["candidates"]:
        if not np.isfinite(e.get("final_loss", np.nan)):
            continue
        folder = Path(e["workdir"]).name
        assembled = Workdir(root / name / "assembled" / folder, data_dir)
        assembled.modules.mkdir(parents=True, exist_ok=True)
        final = root / name / "final" / folder / "modules"
        for source in (final, Path(e["workdir"]) / "modules"):
            for path in source.glob("*.pt"):
                link = assembled.modules / path.name
                if not link.exists():
                    link.symlink_to(path.resolve())
                    card = read_json(path.with_suffix(".json"))
                    if source != final:  # frozen while the final NMN retrained the encoder around them: the
                        card["inputs"] = {}  # assembler would refuse the pair as a mixed assembly
                    write_json(link.with_suffix(".json"), card)
        if not (assembled.reports / "predictions" / f"{recipe.data.val_split}.json").exists():
            assemble(assembled, recipe, torch.device("cpu"), splits=[recipe.data.val_split], data=data)
        predictions = read_json(assembled.reports / "predictions" / f"{recipe.data.val_split}.json")
        correct = np.array([p["answer"] == data.answers[a] if a >= 0 else False
                            for p, a in zip(predictions, val.answer)])
        rows.append({"index": e["index"], "null": e["null"], "gain": e.get("gain"),
                     "surrogate_loss": e["surrogate_loss"], "final_loss": e["final_loss"],
                     "accuracy_where_used": float(correct[used].mean()),
                     "accuracy_elsewhere": float(correct[~used & (val.answer >= 0)].mean())})
    candidates = [r for r in rows if not r["null"]]
    target = [r["accuracy_where_used"] for r in candidates]
    return {"questions_using_it": int(used.sum()), "questions": int((val.answer >= 0).sum()),
            "null_accuracy_where_used": [r["accuracy_where_used"] for r in rows if r["null"]],
            "spearman_vs_accuracy_where_used": {
                "gain": float(stats.spearmanr([r["gain"] for r in candidates], target).statistic),
                "surrogate_loss": float(stats.spearmanr([-r["surrogate_loss"] for r in candidates], target).statistic),
                "final_loss": float(stats.spearmanr([-r["final_loss"] for r in candidates], target).statistic)},
            "candidates": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/trust.json")
    parser.add_argument("--workdir", default="runs/bench-trust")
    parser.add_argument("--address", default=None, help="run the trainings as Ray jobs (e.g. local)")
    parser.add_argument("--pairs", default=",".join(PAIRS), help="which pairs, comma-separated")
    parser.add_argument("--choose-on", default="find@nmn-typed")
    args = parser.parse_args()
    root = Path(args.workdir).resolve()
    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    names = [p for p in args.pairs.split(",") if p]
    if args.choose_on not in names:
        names.insert(0, args.choose_on)
    reports, seconds = {}, {}
    for name in names:
        recipe, module, n, overrides, reuse = PAIRS[name]
        if reuse is not None:  # the same generated data as another pair
            overrides = [*overrides, f"data.source='{root / reuse / 'base' / 'data'}'"]
        start = time.perf_counter()
        say(f"== {name}: {n} candidates + {NULLS} nulls, every one transplanted")
        reports[name] = run_correlation(root / name, recipe, n, max(2, n // 2), torch.device("cpu"),
                                        [*overrides, "train.device='cpu'"], say=say, address=args.address,
                                        module=module, transplant="all", nulls=NULLS, margin=MARGIN)
        seconds[name] = round(time.perf_counter() - start, 1)
    chosen, grid = choose_min_gain([c for c in reports[args.choose_on]["candidates"] if not c["null"]])
    settings = TrustSection(min_gain=chosen)
    pairs = {name: judge_pair(report, settings) for name, report in reports.items()}
    for name, report in reports.items():
        if PAIRS[name][1] == "relate":  # a module only some questions use: where it can matter
            pairs[name]["post_hoc_where_used"] = accuracy_where_used(root, name, PAIRS[name][0], PAIRS[name][3], report)
    held_out = [name for name in pairs if name != args.choose_on]

    def pooled(criterion: str) -> dict:
        good = sum(pairs[p][criterion]["good"] for p in held_out)
        bad = sum(pairs[p][criterion]["bad"] for p in held_out)
        good_kept = sum(pairs[p][criterion]["good_kept"] for p in held_out)
        bad_kept = sum(pairs[p][criterion]["bad_kept"] for p in held_out)
        return {"good": good, "bad": bad, "good_kept": good_kept, "bad_kept": bad_kept,
                "good_kept_fraction": good_kept / good if good else None,
                "bad_kept_fraction": bad_kept / bad if bad else None}

    gain_pool = pooled("gain")
    # a rerun finds the trainings done and only judges again: keep the wall times of the run that trained
    earlier = read_json(Path(args.out)) if Path(args.out).exists() else {}
    trained_seconds = {**seconds, **earlier.get("trained_seconds", earlier.get("seconds", {}))}
    write_result(args.out, {
        "benchmark": "trust", "chosen_on": args.choose_on, "default": "gain", "min_gain": chosen,
        "min_gain_grid": grid, "margin": MARGIN, "nulls": NULLS,
        "plateau": "mean final validation loss of the NMN around 3 null modules (lr 1e-7, one epoch); "
                   f"good: final loss < (1 - {MARGIN}) x plateau",
        "settings": dataclasses.asdict(settings), "pairs": pairs,
        "pooled_held_out": {"gain": gain_pool, "variance": pooled("variance")},
        "seconds": seconds, "trained_seconds": trained_seconds,
        "targets": {
            "gain AUROC >= 0.9 on every held-out pair": all(
                (pairs[p]["gain"]["auroc"] or 0) >= 0.9 for p in held_out) if held_out else None,
            "gain keeps >= 90% of the good, pooled over the held-out pairs":
                gain_pool["good_kept_fraction"] is not None and gain_pool["good_kept_fraction"] >= 0.9,
            "gain keeps <= 10% of the bad, pooled over the held-out pairs":
                gain_pool["bad_kept_fraction"] is not None and gain_pool["bad_kept_fraction"] <= 0.1,
        },
    })


if __name__ == "__main__":
    main()
