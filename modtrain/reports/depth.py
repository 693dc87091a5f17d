"""``modtrain report depth``: compositional generalization by program depth (paper §5.6, Fig. 13/14).

Every system trains only on questions of program depth ≤ D (``data.max_train_depth``: the
training split and the validation questions that stop it early; the reported splits are never
filtered) and is then evaluated, by the assembler, on every depth of the validation split and on
the training split's questions deeper than D, which it never saw (as the paper does). With
``--reference`` each system is also trained on every depth: its curve shows what the depth
limit costs at each depth.

Systems (one shared data folder, one shared set of training defaults, as ``report compare``):
the recipe's NMN modular with data types (typed) and without (gradient), the same NMN trained
end to end in each interface, and FiLM (``recipes/film.toml``). The paper trained both NMN
versions end to end for this experiment; modtrain measures modular training as well.
"""
from __future__ import annotations

import copy
import math
import shutil
import statistics
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from modtrain.assemble import assemble
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import read_json, write_json, write_text
from modtrain.pipeline import ensure_data
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.registry import parameter_free_names
from modtrain.reports.compare import SYSTEMS as OTHER_SYSTEMS
from modtrain.reports.compare import _check_same_data, _slug, shared_defaults, train_version
from modtrain.reports.plots import pyplot, save_figure
from modtrain.workdir import Workdir

# (label, recipe — None: the report's --recipe —, interface, how it trains)
SYSTEMS = (
    ("modular typed", None, "typed", "modular"),
    ("modular gradient", None, "gradient", "modular"),
    ("end-to-end typed", None, "typed", "end-to-end"),
    ("end-to-end gradient", None, "gradient", "end-to-end"),
    *((label, name, "typed", "end-to-end") for label, name in OTHER_SYSTEMS),  # FiLM, Stack-NMN, LNMN
)
# the systems a report trains unless told: the method's four and FiLM (Stack-NMN and LNMN train
# several times slower on the CPU: ask for them with --system)
DEFAULT_SYSTEMS = tuple(s[0] for s in SYSTEMS[:5])
LIMITED, ALL = "depth-limited", "all depths"


def errors_by_depth(correct: np.ndarray, depth: np.ndarray) -> dict[str, dict]:
    """Error (1 − accuracy) and question count per program depth (questions without one left out)."""
    return {str(d): {"questions": int((depth == d).sum()), "error": float(1.0 - correct[depth == d].mean())}
            for d in sorted(set(depth[depth >= 0].tolist()))}


def taught(data: PreparedData, split: str, max_depth: int) -> set[tuple[str, str | None]]:
    """Every (module, instance) that occurs in a labelled question of ``split`` of depth ≤ ``max_depth``."""
    s = data.split(split)
    used = s.layout[s.trainable(max_depth) & (s.layout >= 0)]
    return {(n.module, n.instance) for i in np.unique(used) for n in data.layouts[i].nodes()}


def composable(data: PreparedData, split: str, train_split: str, max_depth: int) -> np.ndarray:
    """Which questions of ``split`` a depth-limited NMN can answer by composition: every module
    instance of their layout occurs in a training question of depth ≤ ``max_depth`` (modules
    without parameters always can). A relate question is deeper than 5 in CLEVR's programs, so
    with D = 5 no relate is ever trained and the NMNs answer those questions by their prior alone;
    this subset, the same for every system, separates composition from what was never taught."""
    seen = taught(data, train_split, max_depth)
    free = set(parameter_free_names())
    ok = np.array([all(n.module in free or (n.module, n.instance) in seen for n in layout.nodes())
                   for layout in data.layouts] + [False])
    return ok[data.split(split).layout]


def without_untaught(recipe: Recipe, data: PreparedData) -> tuple[Recipe, list[str]]:
    """The recipe without the layout modules that no training or no validation question within its
    depth limit uses (they could not train or stop; the questions that need them are answered by the prior alone,
    counted as skipped), and their names."""
    if recipe.data.max_train_depth is None:
        return recipe, []
    d = recipe.data  # a job needs questions to train on and to stop on
    seen = set.intersection(*({module for module, _ in taught(data, split, d.max_train_depth)}
                              for split in (d.train_split, d.val_split)))
    prior = make_plan(recipe).prior
    untaught = sorted(m for m in recipe.modules if m != prior and m not in seen)
    if not untaught:
        return recipe, []
    raw = copy.deepcopy(recipe.raw)
    for m in untaught:
        raw["modules"].pop(m, None)
        raw.get("search", {}).pop(m, None)
    return Recipe(raw, recipe.where), untaught


def _correct(workdir: Workdir, data: PreparedData, split: str) -> np.ndarray:
    """Per question of ``split``, whether the system's assembled answer (its predictions file) is right."""
    predictions = read_json(workdir.reports / "predictions" / f"{split}.json", "predictions")
    index = {a: i for i, a in enumerate(data.answers)}
    s = data.split(split)
    by_question = {p["question_index"]: index[p["answer"]] for p in predictions}
    return np.array([by_question[int(q)] for q in s.question_index]) == s.answer


def mean_error(errors: dict[str, dict], depths: Callable[[int], bool], min_questions: int) -> float:
    """The unweighted mean error over the depths ``depths`` accepts that have at least
    ``min_questions`` questions (each depth counts once, as in the paper's per-depth curves)."""
    values = [e["error"] for d, e in errors.items() if depths(int(d)) and e["questions"] >= min_questions]
    return statistics.fmean(values) if values else math.nan


def run_depth(root: str | Path, max_depth: int, device: torch.device, recipe_name: str = "nmn-clevr",
              systems: list[str] | None = None, reference: bool = False, overrides: list[str] = (),
              data_dir: str | Path | None = None, say: Callable[[str], None] = print, fresh: bool = False,
              min_questions: int = 20) -> dict:
    """Train (or reuse, unless ``fresh``) every system on depths ≤ ``max_depth`` (and on all depths
    with ``reference``); write ``reports/depth.{json,md,png}``; return the summary."""
    if max_depth < 1:
        raise ModtrainError(f"--max-train-depth {max_depth}: must be ≥ 1")
    labels = [s[0] for s in SYSTEMS]
    chosen = systems or list(DEFAULT_SYSTEMS)
    unknown = [s for s in chosen if s not in labels]
    if unknown:
        raise ModtrainError(f"unknown system(s) {', '.join(map(repr, unknown))}; valid: {', '.join(labels)}")
    root = Path(root)
    base = Recipe.load(recipe_name, list(overrides))
    data = (ensure_data(base, Workdir.for_recipe(base, root), device, say) if data_dir is None
            else PreparedData(data_dir))
    source = str(Path(data.root).resolve())
    val, train = base.data.val_split, base.data.train_split
    regimes = [(LIMITED, max_depth)] + ([(ALL, None)] if reference else [])
    masks = {split: composable(data, split, train, max_depth) for split in (val, train)}
    results: dict[str, dict] = {}
    for label, name, interface, how in SYSTEMS:
        if label not in chosen:
            continue
        for regime, limit in regimes:
            recipe = shared_defaults(Recipe.load(name or recipe_name, [
                *overrides, f"interface='{interface}'", f"data.source='{source}'",
                *([f"data.max_train_depth={limit}"] if limit is not None else [])]))
            recipe, untaught = without_untaught(recipe, data)
            if untaught:
                say(f"{label}: no training question of depth ≤ {limit} uses {', '.join(untaught)}: not trained; "
                    f"the questions that need it are answered by the prior alone")
            folder = root / _slug(label) / (f"depth-{limit}" if limit is not None else "all-depths")
            if fresh:
                shutil.rmtree(folder, ignore_errors=True)
            workdir = Workdir.for_recipe(recipe, folder)
            _check_same_data(workdir, data)
            say(f"== {label}, trained on {f'depths ≤ {limit}' if limit is not None else 'every depth'} ({folder})")
            report = train_version(how, recipe, workdir, device, say)  # assembles every split but train
            assemble(workdir, recipe, device, splits=[train], data=data)  # its predictions, for the unseen depths
            entry = {"workdir": str(folder), "val_accuracy": report["splits"][val]["accuracy"], "untaught": untaught,
                     "skipped": report["splits"][val]["skipped"],
                     "untrusted": sorted(n for n, m in report["modules"].items() if m.get("trustworthy") is False)}
            for split, role in ((val, "val"), (train, "train_unseen")):
                s = data.split(split)
                keep = s.answer >= 0
                if role == "train_unseen":  # the training questions deeper than D, never trained on
                    if limit is None:
                        continue
                    keep &= s.depth > max_depth
                correct = _correct(workdir, data, split)
                entry[role] = errors_by_depth(correct[keep], s.depth[keep])
                subset = keep & masks[split]
                entry[f"{role}_composable"] = errors_by_depth(correct[subset], s.depth[subset])
            results.setdefault(label, {})[regime] = entry
    share = {}  # per split and depth: the fraction of questions in the composable subset
    for split in (val, train):
        depth = data.split(split).depth
        share[split] = {str(d): float(masks[split][depth == d].mean()) for d in sorted(set(depth[depth >= 0].tolist()))}
    summary = summarize(results, max_depth, min_questions, share)
    summary.update(recipe=recipe_name, dataset={"root": str(data.root), "data_fingerprint": data.fingerprint()},
                   splits={"val": val, "train": train})
    reports = root / "reports"
    write_json(reports / "depth.json", summary)
    write_text(reports / "depth.md", format_markdown(summary))
    plot_depth(summary, reports / "depth.png")
    return summary


def summarize(results: dict[str, dict], max_depth: int, min_questions: int, composable_share: dict) -> dict:
    """Per system: mean error at seen (≤ D) and unseen (> D) depths of val, their ratio, and the
    same on the training split's unseen questions; on every question and on the composable ones."""
    seen, unseen = (lambda d: d <= max_depth), (lambda d: d > max_depth)
    for regimes in results.values():
        for regime, entry in regimes.items():
            for subset in ("", "_composable"):
                val = entry[f"val{subset}"]
                entry[f"seen_error{subset}"] = mean_error(val, seen, min_questions)
                entry[f"unseen_error{subset}"] = mean_error(val, unseen, min_questions)
                entry[f"unseen_over_seen{subset}"] = (entry[f"unseen_error{subset}"] / entry[f"seen_error{subset}"]
                                                      if entry[f"seen_error{subset}"] else math.nan)
                if f"train_unseen{subset}" in entry:
                    entry[f"train_unseen_error{subset}"] = mean_error(entry[f"train_unseen{subset}"], unseen,
                                                                      min_questions)
    return {"max_train_depth": max_depth, "min_questions": min_questions, "composable_share": composable_share,
            "systems": results}


def format_markdown(summary: dict) -> str:
    d, systems = summary["max_train_depth"], summary["systems"]
    depths = sorted({int(k) for s in systems.values() for k in s[LIMITED]["val"]})
    lines = [f"# Error by program depth, trained on depths ≤ {d} (paper §5.6)", "",
             f"Validation error (%) per exact depth. Seen: ≤ {d}; unseen: > {d}. Means count each depth once, "
             f"leaving out depths with fewer than {summary['min_questions']} questions. Composable: the questions "
             f"whose every module instance occurs in a training question of depth ≤ {d} (the same questions for "
             f"every system)."]
    for subset, title in (("", "every question"), ("_composable", "composable questions")):
        lines += ["", f"## {title}", "",
                  "| system | seen | unseen | unseen / seen | "
                  "train questions > D | " + " | ".join(map(str, depths)) + " |",
                  "|---" * (len(depths) + 5) + "|"]
        for label, regimes in systems.items():
            s = regimes[LIMITED]
            val = s[f"val{subset}"]
            cells = [f"{100 * val[str(k)]['error']:.1f}" if str(k) in val else "-" for k in depths]
            lines.append(f"| {label} | {100 * s[f'seen_error{subset}']:.1f} | {100 * s[f'unseen_error{subset}']:.1f} | "
                         f"{s[f'unseen_over_seen{subset}']:.2f} | {100 * s[f'train_unseen_error{subset}']:.1f} | "
                         + " | ".join(cells) + " |")
        counts = next(iter(systems.values()))[LIMITED][f"val{subset}"]
        lines.append("| (questions) | | | | | " + " | ".join(str(counts.get(str(k), {}).get("questions", 0))
                                                         for k in depths) + " |")
    if any(ALL in r for r in systems.values()):
        lines += ["", "Trained on every depth (reference): mean validation error at depths > D, %:", "",
                  "| system | depth-limited | every depth trained | "
                  "composable, depth-limited | composable, every depth |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {100 * r[LIMITED]['unseen_error']:.1f} | {100 * r[ALL]['unseen_error']:.1f} | "
                  f"{100 * r[LIMITED]['unseen_error_composable']:.1f} | {100 * r[ALL]['unseen_error_composable']:.1f} |"
                  for label, r in systems.items() if ALL in r]
    untaught = sorted({m for r in systems.values() for m in r[LIMITED].get("untaught", [])})
    if untaught:
        lines += ["", f"Not trained by any system (no training question of depth ≤ {d} uses them): "
                      f"{', '.join(untaught)}; the questions that need them are answered by the prior alone "
                      f"(FiLM answers them as it answers any)."]
    untrusted = [f"{label} ({regime}): {', '.join(e['untrusted'])}" for label, r in systems.items()
                 for regime, e in r.items() if e.get("untrusted")]
    if untrusted:
        lines += ["", "Used although their surrogates do not trust them: " + "; ".join(untrusted) + "."]
    return "\n".join(lines) + "\n"


def plot_depth(summary: dict, path: Path) -> Path:
    """Error by depth per system (Fig. 13/14): validation and the training split's unseen questions,
    every question (top) and the composable ones (bottom); a dashed line between seen and unseen
    depths; each system's every-depth reference, thin and dotted."""
    plt = pyplot()
    import seaborn as sns

    d, n = summary["max_train_depth"], summary["min_questions"]
    systems = summary["systems"]
    colors = dict(zip(systems, sns.color_palette("tab10", len(systems))))
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), sharey=True, sharex=True)

    def curve(axis, errors, **style):
        points = [(int(k), 100 * e["error"]) for k, e in errors.items() if e["questions"] >= n]
        if points:
            axis.plot(*zip(*points), **style)

    for row, subset in enumerate(("", "_composable")):
        for label, regimes in systems.items():
            curve(axes[row, 0], regimes[LIMITED][f"val{subset}"], color=colors[label], marker="o", label=label)
            if ALL in regimes:
                curve(axes[row, 0], regimes[ALL][f"val{subset}"], color=colors[label], linewidth=1, alpha=0.6,
                      linestyle=":", label=f"{label}, every depth trained")
            curve(axes[row, 1], regimes[LIMITED][f"train_unseen{subset}"], color=colors[label], marker="o", label=label)
        which = "every question" if not subset else "composable questions"
        for axis, title in zip(axes[row], (f"validation, {which}", f"training questions deeper than {d}, {which}")):
            axis.axvline(d + 0.5, color="black", linestyle="--", linewidth=1)
            axis.set_title(title, fontsize="medium")
        axes[row, 0].set_ylabel("error (%)")
    for axis in axes[1]:
        axis.set_xlabel("program depth")
    axes[0, 0].legend(fontsize="x-small")
    figure.suptitle(f"Trained on depths ≤ {d} (dashed: seen | unseen); depths with ≥ {n} questions")
    figure.tight_layout()
    return save_figure(figure, path)
