"""``modtrain report correlation``: can the surrogate's loss pick a good find, and can its
statistics tell which modules to trust? (paper §5.3)

Any module trained through a surrogate can be studied (``--module``, find by default).

1. Train N candidates through the surrogate, each with random hyperparameters (batch size,
   learning rate, weight decay, the module's dropout, the surrogate's rank) and a random
   number of epochs, every draw from its own seeded generator (the reference code re-seeded
   the global RNG per run and so drew the same configuration every time). The surrogate's
   dropout is fixed (it draws the MC samples the statistics read). Record each one's
   surrogate validation loss (a true NLL), accuracy and trust statistics (``modtrain.trust``:
   NLL gain over the baseline with its bootstrap interval, MC-dropout variance, mutual
   information), and whether each criterion keeps it.
2. Pick K of the modules the recipe's trust criterion keeps, spread evenly over the
   surrogate-loss range, lowest variance first (the paper's selection, Fig. 7).
3. Transplant each picked module, frozen, into the NMN and train every other module (the
   encoder, describe, measure, ...) jointly with one fixed configuration — reading the frozen
   module's outputs from its virtual dataset, which computes the same thing without running
   it again — and record the final validation loss and accuracy. The discarded modules are
   transplanted too (up to K; every candidate with ``transplant="all"``), and so are ``nulls``
   modules that learned nothing (their training's learning rate 1e-7, one epoch): their mean
   final loss is the *plateau*. A candidate is good when its final loss is below the plateau
   by more than ``margin`` (5%) of it.
4. Pearson r (p-value, 95% confidence interval) and Spearman ρ between surrogate and final
   loss over the picked modules (Fig. 8), over every transplanted candidate, and over each
   criterion's kept ones, with r leaving out the 2 most extreme points; per criterion, its
   AUROC against "good" and how many good and bad modules it keeps; Fig. 7 (loss vs
   variance) and Fig. 8; JSON, CSV and markdown.

Every training is its own job in its own folder; a rerun skips the finished ones.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from modtrain.cache import caches_up_to_date, write_caches
from modtrain.card import load_card
from modtrain.data import PreparedData
from modtrain.device import use_threads
from modtrain.errors import ModtrainError
from modtrain.io import write_json, write_text
from modtrain.job import Job, is_up_to_date, job_key, joint_spec, train_module
from modtrain.pipeline import ensure_data
from modtrain.plan import Plan, make_plan
from modtrain.recipe import Recipe
from modtrain.registry import module_class
from modtrain.reports.plots import pyplot, save_figure
from modtrain.train import cards_match
from modtrain.trust import CRITERIA, TrustSection, card_verdict, judge
from modtrain.workdir import Workdir

FINAL = "final"  # the job around the frozen candidate: its [train] settings are the recipe's defaults
NULL_LR = 1e-7   # a null module's learning rate: one epoch of it leaves the module as it was initialized
# Each statistic as a score, higher = more trustworthy: the two criteria, and two that are only
# recorded (the MC mutual information, and the surrogate's loss itself as a reference).
SCORES: dict[str, Callable[[dict], float]] = {
    "gain": lambda e: e["gain"],
    "variance": lambda e: -e["variance"],
    "mutual_information": lambda e: -e["mutual_information"],
    "surrogate_loss": lambda e: -e["surrogate_loss"],
}


def draw_hyperparameters(seed: int, index: int, max_epochs: int = 20) -> dict[str, Any]:
    """Candidate ``index``'s configuration, from its own generator (paper §5.4 ranges)."""
    rng = np.random.default_rng([seed, index])
    return {
        "batch_size": int(round(2 ** rng.uniform(4, 9))),        # 16 … 512, log-uniform
        "lr": float(10 ** rng.uniform(-5, -1)),                  # 1e-5 … 1e-1
        "weight_decay": float(10 ** rng.uniform(-10, 0)),        # 1e-10 … 1
        "dropout": float(rng.uniform(0.0, 0.9)),                 # the module's dropout on its input features
        "epochs": int(rng.integers(1, max_epochs + 1)),
        "surrogate_rank": int(rng.choice([4, 8, 16, 32, 64])),
    }


def select_spread(losses: list[float], kept: list[bool], preference: list[float], k: int) -> list[int]:
    """K indices among the ``kept`` candidates with a finite loss: the loss range cut into k equal
    bins, each bin's most preferred module (lowest ``preference``: the variance, as the paper); an
    empty bin takes the unpicked module nearest its centre (most preferred on ties)."""
    pool = [i for i in range(len(losses)) if kept[i] and math.isfinite(losses[i])]
    if len(pool) <= k:
        return sorted(pool, key=lambda i: losses[i])
    low, high = min(losses[i] for i in pool), max(losses[i] for i in pool)
    width = (high - low) / k or 1.0
    picked: list[int] = []
    empty: list[float] = []
    for b in range(k):
        members = [i for i in pool if min(int((losses[i] - low) / width), k - 1) == b]
        if members:
            picked.append(min(members, key=lambda i: (preference[i], i)))
        else:
            empty.append(low + (b + 0.5) * width)
    for centre in empty:
        rest = [i for i in pool if i not in picked]
        picked.append(min(rest, key=lambda i: (abs(losses[i] - centre), preference[i], i)))
    return sorted(picked, key=lambda i: losses[i])


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        return
    os.symlink(target.resolve(), link)


def _frozen(plan: Plan, module: str) -> tuple[str, ...]:
    """What the final NMN keeps frozen: the studied module and the modules it reads, but not the
    prior's producer (the encoder), which trains with the rest."""
    upstream = [m for m in plan.module(module).consumes if m != plan.prior]
    return (*upstream, module)


STATISTICS = ("nll_baseline", "gain", "gain_low", "gain_high", "variance", "mutual_information", "questions")


def train_candidate(recipe_raw: dict, where: str, module: str, root: str, data_dir: str, device: str,
                    threads: int = 0) -> dict:
    """Train one candidate (unless already trained); its surrogate's metrics and trust statistics,
    or why it failed."""
    if threads:
        use_threads(threads)
    recipe = Recipe(recipe_raw, where)
    workdir = Workdir(Path(root), Path(data_dir))
    data = PreparedData(data_dir)
    try:
        trained = not is_up_to_date(recipe, module, data, workdir)
        if trained:
            train_module(workdir, recipe, module, torch.device(device), data)
        surrogate = load_card(workdir.modules, module)["surrogate"]
        return {"surrogate_loss": surrogate["val_loss"], "surrogate_accuracy": surrogate["val_accuracy"],
                **{k: surrogate["trust"][k] for k in STATISTICS}, "trained_now": trained}
    except ModtrainError as e:  # e.g. a NaN loss at a wild learning rate: recorded, never selected
        return {"surrogate_loss": math.nan, "surrogate_accuracy": math.nan, "failed": str(e),
                **{k: math.nan for k in STATISTICS}}


def train_final(recipe_raw: dict, where: str, module: str, root: str, data_dir: str, candidate_root: str,
                device: str, threads: int = 0) -> dict:
    """The NMN trained end to end around the frozen candidate (unless already trained), reading the
    candidate's outputs from its virtual dataset: its final validation loss and accuracy."""
    if threads:
        use_threads(threads)
    recipe = Recipe(recipe_raw, where)
    plan = make_plan(recipe)
    data = PreparedData(data_dir)
    candidate = Workdir(Path(candidate_root), Path(data_dir))
    frozen = _frozen(plan, module)
    if not caches_up_to_date(candidate, plan, module, data):
        # the report judges trust
        write_caches(candidate, plan, module, data, torch.device(device), allow_untrusted=True)
    workdir = Workdir(Path(root), Path(data_dir))
    spec = joint_spec(plan, FINAL, frozen)
    sources = {m: candidate for m in frozen}
    key = job_key(spec, recipe, data, sources, workdir)
    if cards_match(workdir.modules, list(spec.trainable), key):
        card = load_card(workdir.modules, spec.trainable[0])
    else:
        card = Job(workdir, recipe, torch.device(device), spec, data, sources, plan).run()
    return {"final_loss": card["metrics"]["val_loss"], "final_accuracy": card["metrics"]["val_accuracy"]}


def keeps(entry: dict, settings: TrustSection) -> dict[str, bool]:
    """Whether each criterion keeps a candidate (a failed one: none)."""
    if "failed" in entry or not math.isfinite(entry["gain"]):
        return {c: False for c in CRITERIA}
    return {c: judge(entry, dataclasses.replace(settings, criterion=c)).trusted for c in CRITERIA}


def run_correlation(root: str | Path, recipe_name: str, n_modules: int, k_select: int, device: torch.device,
                    overrides: list[str] = (), seed: int = 0, max_epochs: int = 20,
                    say: Callable[[str], None] = print, address: str | None = None, module: str = "find",
                    transplant: str = "spread", nulls: int = 3, margin: float = 0.05) -> dict:
    """The whole report for ``module`` (one trained through a surrogate), resumable; with
    ``address``, the trainings run as Ray jobs. ``transplant``: "spread" (the K picked and up to K
    discarded) or "all" (every candidate); ``nulls`` modules that learned nothing define the plateau."""
    from modtrain.distributed import run_tasks
    from modtrain.pipeline import run_job

    if k_select < 2 or n_modules < k_select:
        raise ModtrainError(f"--modules {n_modules} --select {k_select}: need 2 ≤ select ≤ modules")
    if transplant not in ("spread", "all"):
        raise ModtrainError(f"--transplant {transplant!r}: valid: spread, all")
    if nulls < 0 or not 0 <= margin < 1:
        raise ModtrainError(f"--nulls {nulls} --margin {margin}: need nulls ≥ 0 and 0 ≤ margin < 1")
    root = Path(root).resolve()
    base_recipe = Recipe.load(recipe_name, list(overrides))
    if base_recipe.surrogate(module) is None:
        raise ModtrainError(f"recipe {base_recipe.name} trains {module} without a surrogate; use one that sets "
                            f"modules.{module}.surrogate (e.g. nmn-typed)")
    plan = make_plan(base_recipe)
    base = Workdir.for_recipe(base_recipe, root / "base")
    base.root.mkdir(parents=True, exist_ok=True)
    data = ensure_data(base_recipe, base, device, say)
    data_dir = str(Path(data.root).resolve())
    source = f"data.source='{data_dir}'"
    upstream = plan.module(module).consumes
    # what every candidate reads (the prior in typed, find for relate, ...): trained and cached once,
    # whatever the trust criterion says of it (said in the report: the candidates stand on it)
    for job in plan.jobs:
        if job.module in upstream and job.kind in ("train", "cache"):
            result = run_job(job, base_recipe, plan, base, data, device, say=lambda m: say(f"base: {m}"),
                             allow_untrusted=True)
            if not result["skipped"]:
                say(f"base: {job.name} done")
    upstream_trust = {}
    for name in upstream:
        verdict = card_verdict(load_card(base.modules, name), base_recipe.trust)
        if verdict is not None:
            upstream_trust[name] = dataclasses.asdict(verdict)
            if not verdict.trusted:
                say(f"base: {name} is not trusted ({verdict.reason}); the {module} candidates read it anyway")
    own = module_class(module).defaults

    entries, tasks = [], []
    for i in range(n_modules + nulls):
        null = i >= n_modules
        hp = draw_hyperparameters(seed, i, max_epochs)
        if null:  # as initialized: the plateau's reference
            hp.update(lr=NULL_LR, epochs=1, weight_decay=0.0, dropout=0.0)
        settings = [f"modules.{module}.batch_size={hp['batch_size']}", f"modules.{module}.lr={hp['lr']}",
                    f"modules.{module}.weight_decay={hp['weight_decay']}",
                    f"modules.{module}.max_epochs={hp['epochs']}", f"modules.{module}.patience={hp['epochs']}"]
        if "dropout" in own:
            settings.append(f"modules.{module}.dropout={hp['dropout']}")
        settings.append(f"modules.{module}.surrogate_rank={hp['surrogate_rank']}")
        recipe = Recipe.load(recipe_name, [*overrides, source, f"seed={seed + i}", *settings])
        workdir = Workdir(root / "candidates" / f"{module}-{'null-' if null else ''}{i:03d}", Path(data_dir))
        for name in upstream:
            for suffix in (".pt", ".json"):
                _link(base.modules / f"{name}{suffix}", workdir.modules / f"{name}{suffix}")
            if (base.caches / name).exists():
                _link(base.caches / name, workdir.caches / name)
        entries.append({"index": i, "null": null, **hp, "workdir": str(workdir.root)})
        tasks.append((recipe.raw, recipe.where, module, str(workdir.root), data_dir))
    results = run_tasks(train_candidate, tasks, address, str(device), say,
                        [f"candidate {i + 1}/{len(entries)}: {module}{' (null)' if e['null'] else ''} with batch "
                         f"{e['batch_size']}, lr {e['lr']:.2g}, weight decay {e['weight_decay']:.1g}, dropout "
                         f"{e['dropout']:.2f}, {e['epochs']} epochs" for i, e in enumerate(entries)])
    for entry, result in zip(entries, results):
        entry.update({k: v for k, v in result.items() if k != "trained_now"})
        entry.update({f"kept_{c}": kept for c, kept in keeps(entry, base_recipe.trust).items()})
        if "failed" in result:
            say(f"candidate {entry['index']}: failed: {result['failed']}")

    candidates = entries[:n_modules]
    criterion = base_recipe.trust.criterion
    selected = select_spread([e["surrogate_loss"] for e in candidates], [e[f"kept_{criterion}"] for e in candidates],
                             [e["variance"] for e in candidates], k_select)
    for e in entries:  # a null module is neither: it is the plateau's reference
        e["selected"], e["discarded"] = e["index"] in selected, not e["null"] and not e[f"kept_{criterion}"]
    trainable = [e["index"] for e in candidates if math.isfinite(e["surrogate_loss"])]
    if transplant == "all":
        transplanted = trainable
    else:  # the discarded ones too (up to K, lowest loss first): does the criterion keep the better modules?
        transplanted = selected + sorted((i for i in trainable if entries[i]["discarded"]),
                                         key=lambda i: entries[i]["surrogate_loss"])[:k_select]
    transplanted += [e["index"] for e in entries[n_modules:] if math.isfinite(e["surrogate_loss"])]
    final_recipe = Recipe.load(recipe_name, [*overrides, source, f"seed={seed}"])
    finals = [(final_recipe.raw, final_recipe.where, module,
               str(root / "final" / Path(entries[i]["workdir"]).name), data_dir, entries[i]["workdir"])
              for i in transplanted]
    for i, result in zip(transplanted, run_tasks(train_final, finals, address, str(device), say,
                                                 [f"final NMN around {Path(entries[i]['workdir']).name}"
                                                  for i in transplanted])):
        entries[i].update(result)

    report = {"recipe": base_recipe.name, "interface": base_recipe.interface, "module": module,
              "modules": n_modules, "select": k_select, "seed": seed, "trust": dataclasses.asdict(base_recipe.trust),
              "upstream_trust": upstream_trust, "candidates": entries, **quality(entries, margin),
              "transplant": transplant}
    picked = [entries[i] for i in selected]
    moved = [e for e in candidates if math.isfinite(e.get("final_loss", math.nan))]
    report["loss"] = correlation([e["surrogate_loss"] for e in picked], [e["final_loss"] for e in picked])
    report["accuracy"] = correlation([e["surrogate_accuracy"] for e in picked], [e["final_accuracy"] for e in picked])
    report["loss_transplanted"] = correlation([e["surrogate_loss"] for e in moved], [e["final_loss"] for e in moved])
    report["criteria"] = criteria_check(entries, report.get("good_below"))
    reports = root / "reports"
    write_json(reports / "correlation.json", report)
    write_text(reports / "correlation.csv", to_csv(entries))
    write_text(reports / "correlation.md", format_markdown(report))
    plot_variance(report, reports / "correlation_variance.png")
    plot_losses(report, reports / "correlation_loss.png")
    return report


def quality(entries: list[dict], margin: float) -> dict[str, Any]:
    """The plateau (mean final loss of the null modules) and the final loss a good module is below
    (the plateau less ``margin`` of it); each transplanted candidate marked good or not."""
    nulls = [e["final_loss"] for e in entries if e["null"] and math.isfinite(e.get("final_loss", math.nan))]
    if not nulls:
        return {"plateau": None, "margin": margin, "good_below": None}
    plateau = float(np.mean(nulls))
    good_below = plateau * (1 - margin)
    for e in entries:
        if not e["null"] and math.isfinite(e.get("final_loss", math.nan)):
            e["good"] = bool(e["final_loss"] < good_below)
    return {"plateau": plateau, "null_final_losses": nulls, "margin": margin, "good_below": good_below}


def auroc(scores: list[float], positive: list[bool]) -> float:
    """The probability that a random positive scores above a random negative (ties count half)."""
    pos = [s for s, p in zip(scores, positive) if p]
    neg = [s for s, p in zip(scores, positive) if not p]
    if not pos or not neg:
        return math.nan
    above = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return float(above / (len(pos) * len(neg)))


def criteria_check(entries: list[dict], good_below: float | None) -> dict[str, Any]:
    """Per criterion (and per recorded statistic): how many candidates it keeps, the final losses of
    the kept and the discarded, the correlation over its kept ones, and against "good" its AUROC
    and the good and bad it keeps."""
    candidates = [e for e in entries if not e["null"]]
    moved = [e for e in candidates if math.isfinite(e.get("final_loss", math.nan))]
    out = {}
    for name, score in SCORES.items():
        row: dict[str, Any] = {}
        if name in CRITERIA:
            kept = [e for e in moved if e[f"kept_{name}"]]
            discarded = [e for e in moved if not e[f"kept_{name}"]]
            row.update(kept=sum(e[f"kept_{name}"] for e in candidates),
                       discarded=sum(not e[f"kept_{name}"] for e in candidates),
                       kept_mean_final_loss=_mean([e["final_loss"] for e in kept]),
                       discarded_mean_final_loss=_mean([e["final_loss"] for e in discarded]),
                       loss_over_kept=correlation([e["surrogate_loss"] for e in kept], [e["final_loss"] for e in kept]))
        if good_below is not None:
            judged = [e for e in moved if "good" in e]
            good = [e["good"] for e in judged]
            row.update(auroc=auroc([score(e) for e in judged], good), good=sum(good), bad=len(good) - sum(good))
            if name in CRITERIA:
                row.update(good_kept=sum(e["good"] and e[f"kept_{name}"] for e in judged),
                           bad_kept=sum(not e["good"] and e[f"kept_{name}"] for e in judged))
        out[name] = row
    return out


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def correlation(x: list[float], y: list[float]) -> dict[str, Any]:
    """Pearson r with p-value and 95% CI, Spearman ρ with p-value, and Pearson r without the two most
    extreme points (largest standardized distance from the mean): whether r rests on them."""
    from scipy import stats

    empty = {"n": len(x), "pearson_r": math.nan, "pearson_p": math.nan, "pearson_ci95": [math.nan, math.nan],
             "spearman_rho": math.nan, "spearman_p": math.nan, "pearson_r_without_2_extreme": math.nan}
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return empty
    pearson = stats.pearsonr(x, y)
    ci = pearson.confidence_interval(0.95)
    spearman = stats.spearmanr(x, y)
    xs, ys = np.asarray(x, float), np.asarray(y, float)
    distance = ((xs - xs.mean()) / xs.std()) ** 2 + ((ys - ys.mean()) / ys.std()) ** 2
    rest = np.argsort(distance)[:-2]
    robust = float(stats.pearsonr(xs[rest], ys[rest]).statistic) if len(rest) >= 3 and np.ptp(xs[rest]) > 0 \
        and np.ptp(ys[rest]) > 0 else math.nan
    return {"n": len(x), "pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "pearson_ci95": [float(ci.low), float(ci.high)],
            "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue),
            "pearson_r_without_2_extreme": robust}


COLUMNS = ("index", "null", "batch_size", "lr", "weight_decay", "dropout", "surrogate_rank", "epochs",
           "surrogate_loss", "surrogate_accuracy", "nll_baseline", "gain", "gain_low", "gain_high", "variance",
           "mutual_information", "kept_gain", "kept_variance", "discarded", "selected", "final_loss",
           "final_accuracy", "good", "failed")


def to_csv(entries: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for e in entries:
        writer.writerow({c: e.get(c, "") for c in COLUMNS})
    return out.getvalue()


def _number(value: Any, form: str) -> str:
    return "-" if value is None or (isinstance(value, float) and not math.isfinite(value)) else format(value, form)


def format_markdown(report: dict) -> str:
    def row(name, c):
        lo, hi = c["pearson_ci95"]
        return (f"| {name} | {c['n']} | {_number(c['pearson_r'], '.3f')} | {_number(c['pearson_p'], '.2g')} | "
                f"[{_number(lo, '.3f')}, {_number(hi, '.3f')}] | {_number(c['spearman_rho'], '.3f')} | "
                f"{_number(c['pearson_r_without_2_extreme'], '.3f')} |")

    trust, criteria = report["trust"], report["criteria"]
    lines = [
        f"# Surrogate vs final ({report['recipe']}, {report['interface']} interface, {report['module']})", "",
        f"{report['modules']} modules trained through the surrogate; the recipe's criterion ({trust['criterion']}) "
        f"keeps {criteria[trust['criterion']]['kept']}; {report['select']} of those selected, spread over the "
        f"surrogate loss, and transplanted, frozen, into the NMN (transplanted besides: "
        f"{'every candidate' if report['transplant'] == 'all' else 'up to as many discarded ones'}).", "",
        "| surrogate vs final | n | Pearson r | p | 95% CI | Spearman ρ | r without the 2 most extreme |",
        "|---|---|---|---|---|---|---|",
        row("loss, selected (Fig. 8)", report["loss"]),
        row("accuracy, selected", report["accuracy"]),
        row("loss, every transplanted candidate", report["loss_transplanted"])]
    lines += [row(f"loss, kept by {name}", criteria[name]["loss_over_kept"]) for name in CRITERIA]
    if report.get("plateau") is not None:
        lines += ["", f"Plateau: the mean final loss around {len(report['null_final_losses'])} modules that learned "
                      f"nothing, {report['plateau']:.3f}; a module is good when its final loss is below "
                      f"{report['good_below']:.3f} ({report['margin']:.0%} under the plateau).", "",
                  "| statistic | AUROC (→ good) | keeps | good kept | bad kept |", "|---|---|---|---|---|"]
        for name, c in criteria.items():
            setting = {"gain": f" (≥ {trust['min_gain']:.0%}, interval above 0)",
                       "variance": f" (≤ {trust['variance_threshold']:g})"}.get(name, " (recorded, not a criterion)")
            kept = f"{c['kept']} | {c['good_kept']} of {c['good']} | {c['bad_kept']} of {c['bad']}" if "kept" in c \
                else "- | - | -"
            lines.append(f"| {name}{setting} | {_number(c['auroc'], '.3f')} | {kept} |")
    lines += ["", "Mean final loss of the transplanted: " + "; ".join(
        f"kept by {name} {_number(criteria[name]['kept_mean_final_loss'], '.3f')}, discarded "
        f"{_number(criteria[name]['discarded_mean_final_loss'], '.3f')}" for name in CRITERIA) + ".", ""]
    return "\n".join(lines)


def plot_variance(report: dict, path: Path) -> Path:
    """Fig. 7 — every module's surrogate loss and predictive variance, selected and discarded marked,
    with the paper's threshold — and beside it the final loss of every transplanted module against
    its variance and against its gain, the criteria's limits drawn: which statistic separates the
    modules that made the NMN better?"""
    plt = pyplot()
    figure, (axis, by_variance, by_gain) = plt.subplots(1, 3, figsize=(17, 4.5))
    trust = report["trust"]
    candidates = [e for e in report["candidates"] if not e["null"] and math.isfinite(e["surrogate_loss"])]
    for name, color in (("discarded", "tab:red"), ("selected", "tab:blue"), ("other", "tab:gray")):
        points = [e for e in candidates
                  if (e["discarded"] if name == "discarded" else e["selected"] if name == "selected"
                      else not e["discarded"] and not e["selected"])]
        axis.scatter([e["surrogate_loss"] for e in points], [max(e["variance"], 1e-9) for e in points],
                     c=color, label=f"{name} by {trust['criterion']} ({len(points)})", s=28)
    axis.set_xlabel("surrogate validation loss (NLL)")
    axis.set_title("Modules trained through the surrogate (paper Fig. 7)")
    moved = [e for e in report["candidates"] if math.isfinite(e.get("final_loss", math.nan))]
    groups = (("good", "tab:green", lambda e: e.get("good") is True), ("not good", "tab:orange",
              lambda e: not e["null"] and e.get("good") is not True), ("null", "black", lambda e: e["null"]))
    for name, color, member in groups:
        points = [e for e in moved if member(e)]
        by_variance.scatter([e["final_loss"] for e in points], [max(e["variance"], 1e-9) for e in points], c=color,
                            label=f"{name} ({len(points)})", s=28)
        by_gain.scatter([e["final_loss"] for e in points], [100 * e["gain"] for e in points], c=color,
                        label=f"{name} ({len(points)})", s=28)
    for ax in (axis, by_variance):
        ax.axhline(trust["variance_threshold"], color="tab:red", linestyle="--", linewidth=1,
                   label=f"variance threshold {trust['variance_threshold']:g}")
        ax.set_yscale("log")
        ax.set_ylabel("predictive variance (MC dropout)")
    by_gain.axhline(100 * trust["min_gain"], color="tab:red", linestyle="--", linewidth=1,
                    label=f"min gain {trust['min_gain']:.0%}")
    by_gain.set_ylabel("NLL gain over the baseline (%)")
    for ax in (by_variance, by_gain):
        if report.get("good_below") is not None:
            ax.axvline(report["good_below"], color="tab:green", linestyle=":", linewidth=1, label="good below")
        ax.set_xlabel("final NMN validation loss (NLL), module frozen")
    by_variance.set_title("Variance against the final loss")
    by_gain.set_title("Gain against the final loss")
    for ax in (axis, by_variance, by_gain):
        ax.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_losses(report: dict, path: Path) -> Path:
    """Fig. 8: final vs surrogate loss with the regression line and its 95% band."""
    plt = pyplot()
    import seaborn as sns

    picked = [e for e in report["candidates"] if e.get("selected")]
    figure, axis = plt.subplots(figsize=(6, 4.5))
    sns.regplot(x=[e["surrogate_loss"] for e in picked], y=[e["final_loss"] for e in picked], ci=95, ax=axis,
                scatter_kws={"s": 30})
    c = report["loss"]
    axis.set_xlabel("surrogate validation loss (NLL)")
    axis.set_ylabel("final NMN validation loss (NLL)")
    axis.set_title(f"Pearson r = {c['pearson_r']:.2f} (p = {c['pearson_p']:.1g}), n = {c['n']} (paper Fig. 8)")
    figure.tight_layout()
    return save_figure(figure, path)
