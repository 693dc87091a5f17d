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

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

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
    write_result(args.out, {
        "benchmark": "trust", "chosen_on": args.choose_on, "default": "gain", "min_gain": chosen,
        "min_gain_grid": grid, "margin": MARGIN, "nulls": NULLS,
        "plateau": "mean final validation loss of the NMN around 3 null modules (lr 1e-7, one epoch); "
                   f"good: final loss < (1 - {MARGIN}) x plateau",
        "settings": dataclasses.asdict(settings), "pairs": pairs,
        "pooled_held_out": {"gain": gain_pool, "variance": pooled("variance")},
        "seconds": seconds,
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
