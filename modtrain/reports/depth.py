"""``modtrain report depth``: compositional generalization by program depth (paper §5.6, Fig. 13/14).

Every system trains only on questions of program depth ≤ D (``data.max_train_depth``: the
training split and the validation questions that stop it early; the reported splits are never
filtered) and is then evaluated, by the assembler, on every depth of the test split (the
validation split where the data has no test split; the summary says which) and on the training
split's questions deeper than D, which it never saw (as the paper does). With ``--reference``
each system is also trained on every depth: its curve shows what the depth limit costs.

The protocol, so that the report cannot flatter (issue 26):
- the questions that chose the early-stopping epoch (validation, ≤ D) are never the reported ones;
- the seen and unseen means count only the balanced depths (the generator's ``balance_depth``
  range, else ≥ 3) with ≥ ``min_questions`` (100) questions: depth 2 is count(scene) alone in
  CLEVR and would weigh as much as a depth of every family. The others are drawn, not averaged;
- every system trains ``seeds`` (3) times; each depth and each mean and ratio has its mean and a
  95% Student-t interval over the seeds;
- a system whose seen-depth error is not ≥ 10 points below the prior's (the modular NMN's
  question-only encoder, trained on the same depths) is labelled "did not train".

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


def interval(values: list[float], confidence: float = 0.95) -> dict:
    """Mean and Student-t interval over seeds (None with one seed: one seed is a smoke test)."""
    from scipy import stats

    finite = [v for v in values if not math.isnan(v)]
    mean = statistics.fmean(finite) if finite else math.nan
    if len(finite) < 2:
        return {"mean": mean, "interval": None, "values": values}
    half = stats.t.ppf((1 + confidence) / 2, len(finite) - 1) * statistics.stdev(finite) / math.sqrt(len(finite))
    return {"mean": mean, "interval": [mean - half, mean + half], "values": values}


def _depth_range(data: PreparedData, recipe: Recipe) -> tuple[int, int | None]:
    """The depths the seen and unseen means may count, (low, high or None): the range the generator
    balanced (``generate.json``'s ``balance_depth``, else the recipe's), else every depth ≥ 3.
    Shallower depths hold few families (depth 2 is only count(scene) in CLEVR), so one family would
    weigh as much as a depth of all of them: they are drawn, not averaged."""
    from modtrain.datasets.generate import parse_depth_range

    generated = Path(data.root) / "generate.json"
    text = read_json(generated, "generator summary").get("balance_depth") if generated.exists() else None
    found = parse_depth_range(text or recipe.data.balance_depth)
    return found if found is not None else (3, None)


def run_depth(root: str | Path, max_depth: int, device: torch.device, recipe_name: str = "nmn-clevr",
              systems: list[str] | None = None, reference: bool = False, overrides: list[str] = (),
              data_dir: str | Path | None = None, say: Callable[[str], None] = print, fresh: bool = False,
              min_questions: int = 100, seeds: int = 3) -> dict:
    """Train (or reuse, unless ``fresh``) every system on depths ≤ ``max_depth`` (and on all depths
    with ``reference``), once per seed; write ``reports/depth.{json,md,png}``; return the summary."""
    if max_depth < 1:
        raise ModtrainError(f"--max-train-depth {max_depth}: must be ≥ 1")
    if seeds < 1:
        raise ModtrainError(f"--seeds {seeds}: must be ≥ 1 (a verdict needs 3)")
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
    # the questions that stop training early (val, ≤ D) are never the ones reported (test)
    reported = "test" if "test" in data.split_names(data.root) else val
    regimes = [(LIMITED, max_depth)] + ([(ALL, None)] if reference else [])
    masks = {split: composable(data, split, train, max_depth) for split in (reported, train)}
    results: dict[str, dict] = {}
    for label, name, interface, how in SYSTEMS:
        if label not in chosen:
            continue
        for regime, limit in regimes:
            runs = []
            for seed in range(seeds):
                recipe = shared_defaults(Recipe.load(name or recipe_name, [
                    *overrides, f"interface='{interface}'", f"data.source='{source}'", f"seed={seed}",
                    *([f"data.max_train_depth={limit}"] if limit is not None else [])]))
                recipe, untaught = without_untaught(recipe, data)
                if untaught and seed == 0:
                    say(f"{label}: no training question of depth ≤ {limit} uses {', '.join(untaught)}: not trained; "
                        f"the questions that need it are answered by the prior alone")
                folder = (root / _slug(label) / (f"depth-{limit}" if limit is not None else "all-depths")
                          / f"seed-{seed}")
                if fresh:
                    shutil.rmtree(folder, ignore_errors=True)
                workdir = Workdir.for_recipe(recipe, folder)
                _check_same_data(workdir, data, data.fingerprint(train, val))
                say(f"== {label}, seed {seed}, trained on "
                    f"{f'depths ≤ {limit}' if limit is not None else 'every depth'} ({folder})")
                report = train_version(how, recipe, workdir, device, say)  # assembles every split but train
                assemble(workdir, recipe, device, splits=[train], data=data)  # its predictions, for the unseen depths
                runs.append(_evaluate(workdir, data, report, untaught, reported, train, masks, limit))
            results.setdefault(label, {})[regime] = {"runs": runs}
    share = {}  # per split and depth: the fraction of questions in the composable subset
    for split in (reported, train):
        depth = data.split(split).depth
        share[split] = {str(d): float(masks[split][depth == d].mean()) for d in sorted(set(depth[depth >= 0].tolist()))}
    summary = summarize(results, max_depth, min_questions, share, _depth_range(data, base))
    summary.update(recipe=recipe_name,
                   dataset={"root": str(data.root), "data_fingerprint": data.fingerprint(train, val)},
                   splits={"reported": reported, "early_stopping": val, "train": train}, seeds=list(range(seeds)))
    reports = root / "reports"
    write_json(reports / "depth.json", summary)
    write_text(reports / "depth.md", format_markdown(summary))
    plot_depth(summary, reports / "depth.png")
    return summary


def _evaluate(workdir: Workdir, data: PreparedData, report: dict, untaught: list[str], reported: str, train: str,
              masks: dict, limit: int | None) -> dict:
    """One trained run: its error per depth on the reported split (every question, the composable
    ones) and on the training questions deeper than the limit, and the prior's accuracy per depth
    (the question-only encoder, where the system has one)."""
    entry = {"workdir": str(workdir.root), "accuracy": report["splits"][reported]["accuracy"], "untaught": untaught,
             "skipped": report["splits"][reported]["skipped"],
             "untrusted": sorted(n for n, m in report["modules"].items() if m.get("trustworthy") is False),
             "prior_accuracy": {d: row["encoder_accuracy"] for d, row in report["splits"][reported]["by_depth"].items()
                                if row.get("encoder_accuracy") is not None}}
    for split, role in ((reported, "report"), (train, "train_unseen")):
        s = data.split(split)
        keep = s.answer >= 0
        if role == "train_unseen":  # the training questions deeper than D, never trained on
            if limit is None:
                continue
            keep &= s.depth > limit
        correct = _correct(workdir, data, split)
        entry[role] = errors_by_depth(correct[keep], s.depth[keep])
        subset = keep & masks[split]
        entry[f"{role}_composable"] = errors_by_depth(correct[subset], s.depth[subset])
    return entry


# the system whose encoder (trained alone, on the questions alone) is the prior every system must beat
PRIOR_FROM = ("modular typed", "modular gradient")
TRAINED_MARGIN = 0.10  # a system within 10 points of the prior at seen depths "did not train"


def summarize(results: dict[str, dict], max_depth: int, min_questions: int, composable_share: dict,
              depth_range: tuple[int, int | None] = (3, None)) -> dict:
    """Per system and regime, over its seeds: the error per depth (mean, 95% interval), and the mean
    error at seen (≤ D) and unseen (> D) depths of the reported split and their ratio, counting only
    the balanced depths (``depth_range``) with ≥ ``min_questions`` questions; on every question and
    on the composable ones. A system whose seen-depth error is not ≥ 10 points below the prior's
    is marked ``trained: false`` ("did not train"); no target may be judged on it."""
    low, high = depth_range
    counted = lambda d: d >= low and (high is None or d <= high)  # noqa: E731
    seen, unseen = (lambda d: counted(d) and d <= max_depth), (lambda d: counted(d) and d > max_depth)
    for regimes in results.values():
        for regime, entry in regimes.items():
            runs = entry["runs"]
            for role in ("report", "report_composable", "train_unseen", "train_unseen_composable"):
                if role not in runs[0]:
                    continue
                entry[role] = {d: {"questions": e["questions"], **interval([r[role][d]["error"] for r in runs])}
                               for d, e in runs[0][role].items()}
            for subset in ("", "_composable"):
                seen_errors = [mean_error(r[f"report{subset}"], seen, min_questions) for r in runs]
                unseen_errors = [mean_error(r[f"report{subset}"], unseen, min_questions) for r in runs]
                entry[f"seen_error{subset}"] = interval(seen_errors)
                entry[f"unseen_error{subset}"] = interval(unseen_errors)
                entry[f"unseen_over_seen{subset}"] = interval([u / s if s else math.nan
                                                               for s, u in zip(seen_errors, unseen_errors)])
                if f"train_unseen{subset}" in runs[0]:
                    entry[f"train_unseen_error{subset}"] = interval(
                        [mean_error(r[f"train_unseen{subset}"], unseen, min_questions) for r in runs])
            entry["counted_depths"] = sorted(int(d) for d, e in runs[0]["report"].items()
                                             if counted(int(d)) and e["questions"] >= min_questions)
    prior = _prior_seen_error(results, seen, min_questions)
    for regimes in results.values():
        for entry in regimes.values():
            if prior is None:
                entry["trained"] = None
                continue
            margin = prior["error"] - entry["seen_error"]["mean"]
            entry["above_prior_points"] = round(100 * margin, 2)
            entry["trained"] = bool(margin >= TRAINED_MARGIN)
    return {"max_train_depth": max_depth, "min_questions": min_questions, "composable_share": composable_share,
            "counted_depths": {"low": low, "high": high}, "prior": prior, "trained_margin": TRAINED_MARGIN,
            "systems": results}


def _prior_seen_error(results: dict, seen: Callable[[int], bool], min_questions: int) -> dict | None:
    """The prior's mean error at the counted seen depths, averaged over the seeds of the first of
    ``PRIOR_FROM`` that was run (its question-only encoder, depth-limited like every system)."""
    for label in PRIOR_FROM:
        runs = results.get(label, {}).get(LIMITED, {}).get("runs", [])
        if runs and runs[0]["prior_accuracy"]:
            errors = [mean_error({d: {"questions": r["report"][d]["questions"], "error": 1 - a}
                                  for d, a in r["prior_accuracy"].items()}, seen, min_questions) for r in runs]
            return {"from": f"{label}'s encoder", "error": statistics.fmean(errors)}
    return None


def _named(label: str, entry: dict) -> str:
    return f"{label} (did not train)" if entry.get("trained") is False else label


def _cell(stat: dict | None, scale: float = 100, digits: int = 1) -> str:
    if stat is None:
        return "-"
    if stat["interval"] is None:
        return f"{scale * stat['mean']:.{digits}f}"
    low, high = stat["interval"]
    return f"{scale * stat['mean']:.{digits}f} [{scale * low:.{digits}f}, {scale * high:.{digits}f}]"


def format_markdown(summary: dict) -> str:
    d, systems = summary["max_train_depth"], summary["systems"]
    depths = sorted({int(k) for s in systems.values() for k in s[LIMITED]["report"]})
    counted = next(iter(systems.values()))[LIMITED]["counted_depths"]
    seeds = len(summary.get("seeds", [0]))
    prior = summary.get("prior")
    lines = [f"# Error by program depth, trained on depths ≤ {d} (paper §5.6)", "",
             f"Error (%) on the {summary['splits']['reported']} split per exact depth, mean over {seeds} seed(s) "
             f"with its 95% interval where there are several. Seen: ≤ {d}; unseen: > {d}. Early stopping used "
             f"the {summary['splits']['early_stopping']} questions of depth ≤ {d}, never the reported ones. The "
             f"seen and unseen means count each depth once and only the balanced depths with at least "
             f"{summary['min_questions']} questions ({', '.join(map(str, counted)) or 'none'}); the other depths "
             f"are shown, not averaged. Composable: the questions whose every module instance occurs in a "
             f"training question of depth ≤ {d} (the same questions for every system)."]
    if prior:
        lines += ["", f"A system whose seen error is not at least {100 * summary['trained_margin']:.0f} points below "
                      f"the prior's ({prior['from']}: {100 * prior['error']:.1f}%) is marked *did not train*; no "
                      f"target is judged on it."]
    for subset, title in (("", "every question"), ("_composable", "composable questions")):
        lines += ["", f"## {title}", "",
                  "| system | seen | unseen | unseen / seen | "
                  "train questions > D | " + " | ".join(map(str, depths)) + " |",
                  "|---" * (len(depths) + 5) + "|"]
        for label, regimes in systems.items():
            s = regimes[LIMITED]
            by_depth = s[f"report{subset}"]
            cells = [f"{100 * by_depth[str(k)]['mean']:.1f}" if str(k) in by_depth else "-" for k in depths]
            lines.append(f"| {_named(label, s)} | {_cell(s[f'seen_error{subset}'])} | "
                         f"{_cell(s[f'unseen_error{subset}'])} | {_cell(s[f'unseen_over_seen{subset}'], 1, 2)} | "
                         f"{_cell(s.get(f'train_unseen_error{subset}'))} | " + " | ".join(cells) + " |")
        counts = next(iter(systems.values()))[LIMITED][f"report{subset}"]
        lines.append("| (questions) | | | | | " + " | ".join(str(counts.get(str(k), {}).get("questions", 0))
                                                         for k in depths) + " |")
    if any(ALL in r for r in systems.values()):
        lines += ["", "Trained on every depth (reference): mean error at depths > D, %:", "",
                  "| system | depth-limited | every depth trained | "
                  "composable, depth-limited | composable, every depth |",
                  "|---|---|---|---|---|"]
        lines += [f"| {label} | {_cell(r[LIMITED]['unseen_error'])} | {_cell(r[ALL]['unseen_error'])} | "
                  f"{_cell(r[LIMITED]['unseen_error_composable'])} | {_cell(r[ALL]['unseen_error_composable'])} |"
                  for label, r in systems.items() if ALL in r]
    untaught = sorted({m for r in systems.values() for run in r[LIMITED]["runs"] for m in run.get("untaught", [])})
    if untaught:
        lines += ["", f"Not trained by any system (no training question of depth ≤ {d} uses them): "
                      f"{', '.join(untaught)}; the questions that need them are answered by the prior alone "
                      f"(FiLM answers them as it answers any)."]
    untrusted = [f"{label} ({regime}, seed {i}): {', '.join(run['untrusted'])}" for label, r in systems.items()
                 for regime, e in r.items() for i, run in enumerate(e["runs"]) if run.get("untrusted")]
    if untrusted:
        lines += ["", "Used although their surrogates do not trust them: " + "; ".join(untrusted) + "."]
    return "\n".join(lines) + "\n"


def plot_depth(summary: dict, path: Path) -> Path:
    """Error by depth per system (Fig. 13/14): the reported split and the training split's unseen
    questions, every question (top) and the composable ones (bottom); the mean over seeds with its
    95% band (cut at 0 and 100%: with 3 seeds a thin depth's Student-t interval is wider); a dashed
    line between seen and unseen depths, grey shading over the depths the means leave out
    (unbalanced or thin); each system's every-depth reference, thin and dotted; a system that did
    not train is drawn dashed and named so."""
    plt = pyplot()
    import seaborn as sns

    d, n = summary["max_train_depth"], summary["min_questions"]
    systems = summary["systems"]
    colors = dict(zip(systems, sns.color_palette("tab10", len(systems))))
    figure, axes = plt.subplots(2, 2, figsize=(12, 8), sharey=True, sharex=True)
    counted = set(next(iter(systems.values()))[LIMITED]["counted_depths"])

    def curve(axis, errors, band=True, **style):
        points = sorted((int(k), e) for k, e in errors.items() if e["questions"] > 0)
        if not points:
            return
        xs = [k for k, _ in points]
        axis.plot(xs, [100 * e["mean"] for _, e in points], **style)
        if band and all(e["interval"] is not None for _, e in points):  # drawn within 0–100% (the JSON: as is)
            axis.fill_between(xs, [max(0.0, 100 * e["interval"][0]) for _, e in points],
                              [min(100.0, 100 * e["interval"][1]) for _, e in points], color=style["color"],
                              alpha=0.15)

    for row, subset in enumerate(("", "_composable")):
        for label, regimes in systems.items():
            limited = regimes[LIMITED]
            style = {"color": colors[label], "marker": "o", "label": _named(label, limited),
                     "linestyle": "--" if limited.get("trained") is False else "-"}
            curve(axes[row, 0], limited[f"report{subset}"], **style)
            if ALL in regimes:
                curve(axes[row, 0], regimes[ALL][f"report{subset}"], band=False, color=colors[label], linewidth=1,
                      alpha=0.6, linestyle=":", label=f"{label}, every depth trained")
            curve(axes[row, 1], limited[f"train_unseen{subset}"], **style)
        which = "every question" if not subset else "composable questions"
        for axis, title in zip(axes[row], (f"{summary['splits']['reported']}, {which}",
                                           f"training questions deeper than {d}, {which}")):
            axis.axvline(d + 0.5, color="black", linestyle="--", linewidth=1)
            for depth in {int(k) for r in systems.values() for k in r[LIMITED]["report"]} - counted:
                axis.axvspan(depth - 0.5, depth + 0.5, color="grey", alpha=0.12, linewidth=0)
            axis.set_title(title, fontsize="medium")
            axis.set_ylim(0, 100)
        axes[row, 0].set_ylabel("error (%)")
    for axis in axes[1]:
        axis.set_xlabel("program depth")
    axes[0, 0].legend(fontsize="x-small")
    figure.suptitle(f"Trained on depths ≤ {d} (dashed line: seen | unseen); grey: depths not averaged "
                    f"(unbalanced, or under {n} questions)")
    figure.tight_layout()
    return save_figure(figure, path)
