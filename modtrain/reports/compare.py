"""``modtrain report compare``: paper Table 2 and Fig. 10 on one dataset.

Three versions of one recipe's NMN (``--recipe``, nmn-typed by default; nmn-clevr for every
CLEVR program) — end-to-end (gradient interface), modular (gradient, §5.4) and modular + data
types (typed, §5.5) — each trained with ``--seeds N`` seeds in its own workdir under the
compare folder, sharing one data folder. Runs already trained there are reused (``fresh``
retrains them).
Reports accuracy (mean ± std over seeds, overall and per question type), training wall
time per module against the end-to-end training (stacked bars, Fig. 10), and what
retraining one module after a change costs as a fraction of an end-to-end training.

``--system`` adds end-to-end systems of the NMN family on the same data, seeds and protocol
(``SYSTEMS``: FiLM, Stack-NMN with ground-truth layouts or from scratch, LNMN), each its own
recipe trained end to end and evaluated by the same assembler.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import shutil
import statistics
from pathlib import Path
from typing import Callable

import torch

from modtrain.card import trained_cards
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import write_json, write_text
from modtrain.pipeline import ensure_data, job_times, run_end_to_end, run_job, run_pipeline
from modtrain.plan import Plan, make_plan
from modtrain.recipe import Recipe, TrainSection
from modtrain.reports.plots import pyplot, save_figure
from modtrain.workdir import Workdir

# (label, interface, how it trains) — paper Table 2
VERSIONS = (
    ("end-to-end", "gradient", "end-to-end"),
    ("modular", "gradient", "modular"),
    ("modular + data types", "typed", "modular"),
)


# (label, recipe) — other end-to-end systems a comparison can add (--system): one module that
# answers from the question and the image, trained end to end on the same data
SYSTEMS = (
    ("FiLM", "film"),
    ("Stack-NMN (ground truth)", "snmn-gt"),
    ("Stack-NMN (scratch)", "snmn-scratch"),
    ("LNMN", "lnmn"),
)


# (label, interface, how) — a version of the compared NMN a comparison can add like a system
# (--system): the typed NMN trained end to end
EXTRA_VERSIONS = (("end-to-end + data types", "typed", "end-to-end"),)


def _slug(label: str) -> str:
    return label.replace(" + ", "-").replace(" ", "-")


def _check_same_data(workdir: Workdir, data: PreparedData, fingerprint: str) -> None:
    """Refuse a run folder whose modules were trained on other data (``fingerprint``: of the splits
    they train and stop on) or another vocabulary."""
    for card in trained_cards(workdir.modules) if workdir.modules.exists() else []:
        if card.get("vocab_sha256") != data.vocab_sha256:
            raise ModtrainError(
                f"cannot compare: {workdir.modules / card['name']}.json was trained with another vocabulary "
                f"({str(card.get('vocab_sha256'))[:12]} vs {data.vocab_sha256[:12]} of {data.root}); "
                f"use another --workdir or remove {workdir.root}")
        if card.get("data_fingerprint") != fingerprint:
            raise ModtrainError(
                f"cannot compare: {workdir.modules / card['name']}.json was trained on another dataset "
                f"({str(card.get('data_fingerprint'))[:12]} vs {fingerprint[:12]} of {data.root}); "
                f"use another --workdir or remove {workdir.root}")


def _mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
            "per_seed": values}


def train_version(how: str, recipe: Recipe, workdir: Workdir, device: torch.device,
                  say: Callable[[str], None]) -> dict:
    """Train one version ("end-to-end" or "modular") unless up to date; the assembler's report.
    A comparison goes on past an untrusted module, and says so (paper §5.3)."""
    if how == "end-to-end":
        return run_end_to_end(recipe, workdir, device, say=say)
    return run_pipeline(recipe, workdir, device, say=say, allow_untrusted=True)


def shared_defaults(recipe: Recipe) -> Recipe:
    """The recipe with every module's own training settings removed: every module, and the whole
    network end to end, trains with the one ``[train]`` table."""
    raw = copy.deepcopy(recipe.raw)
    for section in raw.get("modules", {}).values():
        for key in TrainSection.searched():
            section.pop(key, None)
    return Recipe(raw, recipe.where)


def tuned(recipe: Recipe, workdir: Workdir, how: str, trials: int, device: torch.device,
          say: Callable[[str], None]) -> tuple[Recipe, dict[str, float]]:
    """The recipe with the best configuration of ``trials`` random trials per module — searched in
    training order, each module trained and cached with its best before the next is searched — or,
    end to end, for the whole network (paper §5.4: the same budget for every version). Returns it
    and each search's total trial time."""
    from modtrain.tune import E2E, config_overrides, tune_module

    cost = {}
    if how == "end-to-end":
        summary = tune_module(recipe, workdir, E2E, trials, say=say, allow_untrusted=True)
        return recipe.with_overrides(config_overrides(recipe, E2E, summary["best"]["config"])), {
            E2E: summary["trial_seconds"]}
    with workdir.lock():
        recipe.write(workdir.root)
        data = ensure_data(recipe, workdir, device, say)
    for name in [m.name for m in make_plan(recipe).modules]:
        summary = tune_module(recipe, workdir, name, trials, say=say, allow_untrusted=True)
        recipe = recipe.with_overrides(config_overrides(recipe, name, summary["best"]["config"]))
        cost[name] = summary["trial_seconds"]
        plan = make_plan(recipe)
        with workdir.lock():
            recipe.write(workdir.root)
            for job in plan.jobs:
                if job.module == name and job.kind in ("train", "cache"):
                    run_job(job, recipe, plan, workdir, data, device, say, allow_untrusted=True)
    return recipe, cost


def run_compare(root: str | Path, seeds: int, device: torch.device, overrides: list[str] = (),
                data_dir: str | Path | None = None, say: Callable[[str], None] = print, fresh: bool = False,
                recipe_name: str = "nmn-typed", tune: int = 0, systems: list[str] = (),
                split: str | None = None, version_overrides: list[str] = ()) -> dict:
    """Train (or reuse, unless ``fresh``) every version × seed of the recipe and write
    ``reports/compare.{json,md}`` and the plot. The data folder is reused either way.

    Every version gets the same treatment: without ``tune``, one shared set of defaults (the
    recipe's ``[train]``, every module's own training settings dropped); with ``tune`` = N, N
    random trials per module (and N for the whole network end to end) on the recipe's search
    spaces, then the seeds trained with the best configuration. ``systems``: labels of ``SYSTEMS``
    or ``EXTRA_VERSIONS`` to add, under the same protocol. ``split``: the split the summary reports
    (default: test, else val). ``version_overrides``: settings of the NMN versions alone (an
    encoder's, which the added systems do not have), the same for every version."""
    valid = [label for label, _ in SYSTEMS] + [label for label, _, _ in EXTRA_VERSIONS]
    unknown = sorted(set(systems) - set(valid))
    if unknown:
        raise ModtrainError(f"unknown system(s) {', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    if seeds < 1:
        raise ModtrainError(f"--seeds {seeds}: need at least one seed")
    if tune < 0:
        raise ModtrainError(f"--tune {tune}: trials per module must be 0 (shared defaults) or more")
    root = Path(root)
    base = Recipe.load(recipe_name, list(overrides))
    if len(base.modules) < 2:
        system = next((label for label, name in SYSTEMS if name == base.name), None)
        raise ModtrainError(f"recipe {base.name} has one module ({', '.join(base.modules)}): trained module by "
                            f"module or end to end it is the same network, so there is nothing to compare; compare "
                            f"an NMN recipe (nmn-typed, nmn-clevr, nmn-vqa)"
                            + (f" and add it with --system {system!r}" if system else ""))
    if data_dir is None:
        data = ensure_data(base, Workdir.for_recipe(base, root), device, say)
    else:
        data = PreparedData(data_dir)
    source = str(Path(data.root).resolve())
    # the splits every version trains and stops on (a CLEVR-CoGenT folder: trainA, valA)
    used = Recipe.load(recipe_name, [*overrides, f"data.source='{source}'"]).resolved().data
    fingerprint = data.fingerprint(used.train_split, used.val_split)
    runs, searches = [], {}
    entries = [(label, recipe_name, [*version_overrides, f"interface='{interface}'"], how)
               for label, interface, how in (*VERSIONS, *(v for v in EXTRA_VERSIONS if v[0] in systems))]
    # the added systems train with the compared recipe's [train] table, whatever their own says
    shared = [f"train.{k}={v!r}" for k, v in dataclasses.asdict(base.train_config("e2e")).items()
              if k in TrainSection.searched()]
    entries += [(label, name, shared, "end-to-end") for label, name in SYSTEMS if label in systems]
    for label, name, settings, how in entries:
        version = shared_defaults(Recipe.load(name, [*overrides, *settings, f"data.source='{source}'"]))
        if tune:
            search = Workdir.for_recipe(version, root / _slug(label) / "search")
            if fresh:
                shutil.rmtree(search.root, ignore_errors=True)
            say(f"== {label}: searching {tune} trials per {'module' if how == 'modular' else 'network'}")
            version, searches[label] = tuned(version, search, how, tune, device, say)
        for seed in range(seeds):
            recipe = version.with_overrides([f"seed={seed}"])
            folder = root / _slug(label) / f"seed{seed}"
            if fresh:
                shutil.rmtree(folder, ignore_errors=True)
            workdir = Workdir.for_recipe(recipe, folder)
            _check_same_data(workdir, data, fingerprint)
            say(f"== {label}, seed {seed} ({workdir.root})")
            report = train_version(how, recipe, workdir, device, say)
            times = job_times(workdir)
            epochs = {c["name"]: {"epochs": c["metrics"]["epochs"], "best_epoch": c["metrics"]["best_epoch"]}
                      for c in trained_cards(workdir.modules)}
            untrusted = {n: m.get("trust_reason", "untrusted") for n, m in report["modules"].items()
                         if m.get("trustworthy") is False}
            runs.append({"version": label, "how": how, "seed": seed, "workdir": str(workdir.root), "report": report,
                         "times": times, "epochs": epochs, "untrusted": untrusted,
                         "train": {m: dataclasses.asdict(recipe.train_config("e2e" if how == "end-to-end" else m))
                                   for m in recipe.modules}})
    summary = summarize(runs, data, make_plan(base), split, fingerprint)
    summary["protocol"] = ({"name": "tuned", "trials_per_module": tune, "search_trial_seconds": searches}
                           if tune else {"name": "shared defaults", "trials_per_module": 0})
    reports = root / "reports"
    write_json(reports / "compare.json", summary)
    write_text(reports / "compare.md", format_markdown(summary))
    plot_times(summary, reports / "compare_time.png")
    return summary


def summarize(runs: list[dict], data: PreparedData, plan: Plan, split: str | None = None,
              fingerprint: str | None = None) -> dict:
    """Accuracy mean ± std per version and question type on ``split`` (default: test, else val),
    times, retraining fractions."""
    reported = runs[0]["report"]["splits"]
    split = split or ("test" if "test" in reported else "val")
    if split not in reported:
        raise ModtrainError(f"the compared runs report splits {', '.join(reported)}; "
                            f"there is no {split!r} to summarize")
    versions: dict[str, dict] = {}
    for label in dict.fromkeys(r["version"] for r in runs):
        mine = [r for r in runs if r["version"] == label]
        how = mine[0]["how"]
        splits = [r["report"]["splits"][split] for r in mine]
        types = list(splits[0]["by_type"])
        jobs = sorted({j for r in mine for j in r["times"]})
        times = {j: statistics.fmean(r["times"].get(j, 0.0) for r in mine) for j in jobs}
        train_total = sum(v for j, v in times.items() if j.startswith("train "))
        versions[label] = {
            "how": how, "seeds": [r["seed"] for r in mine], "workdirs": [r["workdir"] for r in mine],
            # per seed and module: the epochs trained and the one kept (early stopping)
            "epochs": {str(r["seed"]): r.get("epochs", {}) for r in mine},
            # per seed: modules over their surrogate's variance threshold, used anyway
            "untrusted": {str(r["seed"]): r["untrusted"] for r in mine if r.get("untrusted")},
            "train": mine[0].get("train", {}),
            "accuracy": _mean_std([s["accuracy"] for s in splits]),
            # the encoder of the same runs alone: the prior from the question (end to end, a part of the network)
            "encoder_alone": _mean_std([s["encoder_accuracy"] for s in splits]),
            "by_type": {t: _mean_std([s["by_type"][t]["accuracy"] for s in splits]) for t in types},
            # VQA data: the official VQA accuracy too, overall and per answer type
            **({"vqa_accuracy": _mean_std([s["vqa_accuracy"] for s in splits]),
                "encoder_alone_vqa": _mean_std([s["encoder_vqa_accuracy"] for s in splits]),
                "by_type_vqa": {t: _mean_std([s["by_type"][t]["vqa_accuracy"] for s in splits]) for t in types}}
               if "vqa_accuracy" in splits[0] else {}),
            "seconds": times,
            "total_seconds": {"training": train_total,
                              "with_caches": train_total + sum(v for j, v in times.items() if j.startswith("cache "))},
        }
    e2e = versions.get("end-to-end", {}).get("total_seconds", {}).get("training")
    retraining = {}
    for label, v in versions.items():
        if v["how"] != "modular" or not e2e:
            continue
        t = v["seconds"]
        fractions = {}
        for m in plan.modules:
            fractions[f"{m.name} alone"] = t.get(f"train {m.name}", math.nan) / e2e
            after = [n.name for n in plan.modules if m.name in n.consumes]
            if after:
                changed = [m.name, *after]
                seconds = sum(t.get(f"{kind} {n}", 0.0) for n in changed for kind in ("train", "cache"))
                fractions[f"{m.name}, then its cache and what reads it ({', '.join(after)})"] = seconds / e2e
        fractions["all modules, caches included"] = v["total_seconds"]["with_caches"] / e2e
        retraining[label] = fractions
    return {"split": split, "dataset": {"root": str(data.root), "data_fingerprint": fingerprint or data.fingerprint(),
                                        "vocab_sha256": data.vocab_sha256},
            "jobs": [j.name for j in plan.jobs if j.kind != "assemble"],
            "versions": versions, "retraining_vs_end_to_end": retraining}


def _pm(stat: dict) -> str:
    return f"{100 * stat['mean']:.2f} ± {100 * stat['std']:.2f}"


def format_markdown(summary: dict) -> str:
    """Table 2 (accuracy), per type, times and retraining costs, as markdown."""
    versions = summary["versions"]
    seeds = max(len(v["seeds"]) for v in versions.values())
    protocol = summary.get("protocol", {"name": "shared defaults"})
    if protocol["name"] == "tuned":
        said = (f"Protocol: tuned — {protocol['trials_per_module']} random trials per module for the modular versions "
                f"and {protocol['trials_per_module']} for the whole network end to end, on the recipe's search spaces; "
                f"the seeds trained with each version's best configuration.")
    else:
        said = ("Protocol: shared defaults — every module of every version, and the whole network end to end, "
                "trained with the recipe's one [train] table (no module's own settings).")
    vqa = all("vqa_accuracy" in v for v in versions.values())
    lines = [f"# Modular vs end-to-end ({summary['split']} split, {seeds} seed(s), mean ± std %)", "", said, ""]
    if vqa:
        lines += ["| version | VQA accuracy | accuracy (most common answer) | encoder alone, VQA accuracy |",
                  "|---|---|---|---|"]
        lines += [f"| {label} | {_pm(v['vqa_accuracy'])} | {_pm(v['accuracy'])} | {_pm(v['encoder_alone_vqa'])} |"
                  for label, v in versions.items()]
    else:
        lines += ["| version | accuracy |", "|---|---|"]
        lines += [f"| {label} | {_pm(v['accuracy'])} |" for label, v in versions.items()]
    types = list(next(iter(versions.values()))["by_type"])
    for key, what in (([("by_type_vqa", "VQA accuracy per answer type")] if vqa else [])
                      + [("by_type", "Accuracy per type")]):
        lines += ["", f"{what}:", "", "| version | " + " | ".join(types) + " |", "|---" * (len(types) + 1) + "|"]
        lines += [f"| {label} | " + " | ".join(_pm(v[key][t]) for t in types) + " |" for label, v in versions.items()]
    jobs = summary["jobs"]
    lines += ["", "Training wall time (s, mean over seeds):", "", "| version | " + " | ".join(jobs) +
              " | train e2e | total training | total with caches |", "|---" * (len(jobs) + 4) + "|"]
    for label, v in versions.items():
        cells = [f"{v['seconds'][j]:.1f}" if j in v["seconds"] else "-" for j in (*jobs, "train e2e")]
        lines.append(f"| {label} | " + " | ".join(cells) +
                     f" | {v['total_seconds']['training']:.1f} | {v['total_seconds']['with_caches']:.1f} |")
    lines += ["", "Epochs trained / kept (early stopping), per seed:", "",
              "| version | seed | epochs |", "|---|---|---|"]
    for label, v in versions.items():
        for seed, epochs in v.get("epochs", {}).items():
            cells = ", ".join(f"{m} {e['epochs']}/{e['best_epoch']}" for m, e in epochs.items())
            lines.append(f"| {label} | {seed} | {cells} |")
    untrusted = [(label, seed, module, reason) for label, v in versions.items()
                 for seed, modules in v.get("untrusted", {}).items() for module, reason in modules.items()]
    if untrusted:
        lines += ["", "Used although their surrogates do not trust them: " + "; ".join(
            f"{label} seed {seed}: {module} ({reason})" for label, seed, module, reason in untrusted) + "."]
    if protocol["name"] == "tuned":
        lines += ["", "Search cost, total trial time (s) per module against the end-to-end search (paper Fig. 10):", "",
                  "| version | searches | total |", "|---|---|---|"]
        for label, cost in protocol["search_trial_seconds"].items():
            lines.append(f"| {label} | " + ", ".join(f"{m} {s:.0f}" for m, s in cost.items())
                         + f" | {sum(cost.values()):.0f} |")
    if summary["retraining_vs_end_to_end"]:
        lines += ["", "Retraining after a change, as a fraction of one end-to-end training:", "",
                  "| version | change | fraction |", "|---|---|---|"]
        for label, fractions in summary["retraining_vs_end_to_end"].items():
            lines += [f"| {label} | {what} | {100 * f:.1f}% |" for what, f in fractions.items()]
    return "\n".join(lines) + "\n"


def plot_times(summary: dict, path: Path) -> Path:
    """Stacked training time per module against end-to-end (paper Fig. 10)."""
    plt = pyplot()
    import seaborn as sns

    labels = list(summary["versions"])
    parts = [*summary["jobs"], "train e2e"]
    colors = dict(zip(parts, sns.color_palette("tab20", len(parts))))
    figure, axis = plt.subplots(figsize=(8, 4.5))
    bottoms = [0.0] * len(labels)
    for part in parts:
        heights = [summary["versions"][lab]["seconds"].get(part, 0.0) for lab in labels]
        if any(heights):
            name = "end-to-end" if part == "train e2e" else part.removeprefix("train ")
            axis.bar(labels, heights, bottom=bottoms, label=name, color=colors[part])
            bottoms = [b + h for b, h in zip(bottoms, heights)]
    axis.set_ylabel("training wall time (s)")
    axis.set_title("Training time per module vs end-to-end (mean over seeds)")
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path)
