"""``modtrain report correlation``: can the surrogate's loss pick a good find? (paper §5.3)

Any module trained through a surrogate can be studied (``--module``, find by default).

1. Train N find modules through the factorized surrogate, each with random hyperparameters
   (batch size, learning rate, weight decay, dropout) and a random number of epochs, every
   draw from its own seeded generator (the reference code re-seeded the global RNG per run
   and so drew the same configuration every time). Record each one's surrogate validation
   loss (a true NLL), accuracy and MC-dropout predictive variance.
2. Discard modules over the variance threshold; pick K spread evenly over the surrogate-loss
   range, lowest variance first.
3. Transplant each picked find, frozen, into the NMN and train every other module (the
   encoder, describe, measure, ...) jointly with one fixed configuration — reading the frozen
   find's outputs from its virtual dataset, which computes the same thing without running
   find again — and record the final validation loss and accuracy.
4. Pearson r (p-value, 95% confidence interval) and Spearman ρ between surrogate and final
   loss, and between the accuracies; Fig. 7 (loss vs variance) and Fig. 8 (final vs
   surrogate loss with the regression line and its band); JSON, CSV and markdown.

Every training is its own job in its own folder; a rerun skips the finished ones.
"""
from __future__ import annotations

import csv
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
from modtrain.errors import ModtrainError
from modtrain.io import write_json, write_text
from modtrain.job import Job, job_key, joint_spec
from modtrain.pipeline import ensure_data
from modtrain.plan import Plan, make_plan
from modtrain.recipe import Recipe
from modtrain.registry import module_class
from modtrain.reports.plots import pyplot, save_figure
from modtrain.job import is_up_to_date, train_module
from modtrain.train import cards_match
from modtrain.workdir import Workdir

FINAL = "final"  # the job around the frozen candidate: its [train] settings are the recipe's defaults

def draw_hyperparameters(seed: int, index: int, max_epochs: int = 20) -> dict[str, Any]:
    """Candidate ``index``'s configuration, from its own generator (paper §5.4 ranges)."""
    rng = np.random.default_rng([seed, index])
    return {
        "batch_size": int(round(2 ** rng.uniform(4, 9))),        # 16 … 512, log-uniform
        "lr": float(10 ** rng.uniform(-5, -1)),                  # 1e-5 … 1e-1
        "weight_decay": float(10 ** rng.uniform(-10, 0)),        # 1e-10 … 1
        "dropout": float(rng.uniform(0.0, 0.9)),                 # find's dropout on its input features
        "epochs": int(rng.integers(1, max_epochs + 1)),
        # the surrogate's own settings (§5.3): its dropout is what the MC variance measures
        "surrogate_dropout": float(10 ** rng.uniform(math.log10(0.003), math.log10(0.3))),  # straddles the threshold
        "surrogate_rank": int(rng.choice([4, 8, 16, 32, 64])),
    }


def select_spread(losses: list[float], variances: list[float], k: int, threshold: float) -> tuple[list[int], list[int]]:
    """(selected, discarded) indices: drop variance > threshold, then cut the remaining loss
    range into k equal bins and take each bin's lowest-variance module; an empty bin takes
    the unpicked module nearest its centre (lowest variance on ties)."""
    discarded = [i for i, v in enumerate(variances) if not v <= threshold or not math.isfinite(losses[i])]
    kept = [i for i in range(len(losses)) if i not in discarded]
    if len(kept) <= k:
        return sorted(kept, key=lambda i: losses[i]), discarded
    low, high = min(losses[i] for i in kept), max(losses[i] for i in kept)
    width = (high - low) / k or 1.0
    picked: list[int] = []
    empty: list[float] = []
    for b in range(k):
        members = [i for i in kept if min(int((losses[i] - low) / width), k - 1) == b]
        if members:
            picked.append(min(members, key=lambda i: (variances[i], i)))
        else:
            empty.append(low + (b + 0.5) * width)
    for centre in empty:
        rest = [i for i in kept if i not in picked]
        picked.append(min(rest, key=lambda i: (abs(losses[i] - centre), variances[i], i)))
    return sorted(picked, key=lambda i: losses[i]), discarded


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


def train_candidate(recipe_raw: dict, where: str, module: str, root: str, data_dir: str, device: str,
                    threads: int = 0) -> dict:
    """Train one candidate (unless already trained); its surrogate's metrics, or why it failed."""
    if threads:
        torch.set_num_threads(threads)
    recipe = Recipe(recipe_raw, where)
    workdir = Workdir(Path(root), Path(data_dir))
    data = PreparedData(data_dir)
    try:
        trained = not is_up_to_date(recipe, module, data, workdir)
        if trained:
            train_module(workdir, recipe, module, torch.device(device), data)
        surrogate = load_card(workdir.modules, module)["surrogate"]
        return {"surrogate_loss": surrogate["val_loss"], "surrogate_accuracy": surrogate["val_accuracy"],
                "variance": surrogate["predictive_variance"], "trained_now": trained}
    except ModtrainError as e:  # e.g. a NaN loss at a wild learning rate: recorded, never selected
        return {"surrogate_loss": math.nan, "surrogate_accuracy": math.nan, "variance": math.inf, "failed": str(e)}


def train_final(recipe_raw: dict, where: str, module: str, root: str, data_dir: str, candidate_root: str,
                device: str, threads: int = 0) -> dict:
    """The NMN trained end to end around the frozen candidate (unless already trained), reading the
    candidate's outputs from its virtual dataset: its final validation loss and accuracy."""
    if threads:
        torch.set_num_threads(threads)
    recipe = Recipe(recipe_raw, where)
    plan = make_plan(recipe)
    data = PreparedData(data_dir)
    candidate = Workdir(Path(candidate_root), Path(data_dir))
    frozen = _frozen(plan, module)
    if not caches_up_to_date(candidate, plan, module, data):
        write_caches(candidate, plan, module, data, torch.device(device), allow_untrusted=True)  # the report judges trust
    workdir = Workdir(Path(root), Path(data_dir))
    spec = joint_spec(plan, FINAL, frozen)
    sources = {m: candidate for m in frozen}
    key = job_key(spec, recipe, data, sources, workdir)
    if cards_match(workdir.modules, list(spec.trainable), key):
        card = load_card(workdir.modules, spec.trainable[0])
    else:
        card = Job(workdir, recipe, torch.device(device), spec, data, sources, plan).run()
    return {"final_loss": card["metrics"]["val_loss"], "final_accuracy": card["metrics"]["val_accuracy"]}


def run_correlation(root: str | Path, recipe_name: str, n_modules: int, k_select: int, device: torch.device,
                    overrides: list[str] = (), seed: int = 0, max_epochs: int = 20,
                    say: Callable[[str], None] = print, address: str | None = None, module: str = "find") -> dict:
    """The whole report for ``module`` (one trained through a surrogate), resumable; with
    ``address``, the N + K trainings run as Ray jobs."""
    from modtrain.distributed import run_tasks
    from modtrain.pipeline import run_job

    if k_select < 2 or n_modules < k_select:
        raise ModtrainError(f"--modules {n_modules} --select {k_select}: need 2 ≤ select ≤ modules")
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
    # what every candidate reads (the prior in typed, find for relate, ...): trained and cached once
    for job in plan.jobs:
        if job.module in upstream and job.kind in ("train", "cache"):
            result = run_job(job, base_recipe, plan, base, data, device, say=lambda m: say(f"base: {m}"))
            if not result["skipped"]:
                say(f"base: {job.name} done")
    threshold = base_recipe.surrogate(module)[1].get("variance_threshold", 0.0025)
    own = module_class(module).defaults

    entries, tasks = [], []
    for i in range(n_modules):
        hp = draw_hyperparameters(seed, i, max_epochs)
        settings = [f"modules.{module}.batch_size={hp['batch_size']}", f"modules.{module}.lr={hp['lr']}",
                    f"modules.{module}.weight_decay={hp['weight_decay']}",
                    f"modules.{module}.max_epochs={hp['epochs']}", f"modules.{module}.patience={hp['epochs']}"]
        if "dropout" in own:
            settings.append(f"modules.{module}.dropout={hp['dropout']}")
        settings += [f"modules.{module}.surrogate_dropout={hp['surrogate_dropout']}",
                     f"modules.{module}.surrogate_rank={hp['surrogate_rank']}"]
        recipe = Recipe.load(recipe_name, [*overrides, source, f"seed={seed + i}", *settings])
        workdir = Workdir(root / "candidates" / f"{module}-{i:03d}", Path(data_dir))
        for name in upstream:
            for suffix in (".pt", ".json"):
                _link(base.modules / f"{name}{suffix}", workdir.modules / f"{name}{suffix}")
            if (base.caches / name).exists():
                _link(base.caches / name, workdir.caches / name)
        entries.append({"index": i, **hp, "workdir": str(workdir.root)})
        tasks.append((recipe.raw, recipe.where, module, str(workdir.root), data_dir))
    results = run_tasks(train_candidate, tasks, address, str(device), say,
                        [f"candidate {i + 1}/{n_modules}: {module} with batch {e['batch_size']}, lr {e['lr']:.2g}, "
                         f"weight decay {e['weight_decay']:.1g}, dropout {e['dropout']:.2f}, {e['epochs']} epochs"
                         for i, e in enumerate(entries)])
    for entry, result in zip(entries, results):
        entry.update({k: v for k, v in result.items() if k != "trained_now"})
        if "failed" in result:
            say(f"candidate {entry['index']}: failed: {result['failed']}")

    selected, discarded = select_spread([e["surrogate_loss"] for e in entries], [e["variance"] for e in entries],
                                        k_select, threshold)
    for e in entries:
        e["selected"], e["discarded"] = e["index"] in selected, e["index"] in discarded
    final_recipe = Recipe.load(recipe_name, [*overrides, source, f"seed={seed}"])
    # the discarded ones too (up to K, lowest loss first): does the threshold keep the better modules?
    trained_discarded = sorted((i for i in discarded if math.isfinite(entries[i]["surrogate_loss"])),
                               key=lambda i: entries[i]["surrogate_loss"])[:k_select]
    transplanted = [*selected, *trained_discarded]
    finals = [(final_recipe.raw, final_recipe.where, module, str(root / "final" / f"{module}-{i:03d}"), data_dir,
               entries[i]["workdir"]) for i in transplanted]
    for i, result in zip(transplanted, run_tasks(train_final, finals, address, str(device), say,
                                                 [f"final NMN around {module} {i}" for i in transplanted])):
        entries[i].update(result)

    report = {"recipe": base_recipe.name, "interface": base_recipe.interface, "module": module,
              "modules": n_modules, "select": k_select,
              "seed": seed, "variance_threshold": threshold, "candidates": entries,
              "threshold_check": threshold_check(entries, threshold),
              "loss": correlation([entries[i]["surrogate_loss"] for i in selected], [entries[i]["final_loss"] for i in selected]),
              "accuracy": correlation([entries[i]["surrogate_accuracy"] for i in selected],
                                      [entries[i]["final_accuracy"] for i in selected])}
    reports = root / "reports"
    write_json(reports / "correlation.json", report)
    write_text(reports / "correlation.csv", to_csv(entries))
    write_text(reports / "correlation.md", format_markdown(report))
    plot_variance(report, reports / "correlation_variance.png")
    plot_losses(report, reports / "correlation_loss.png")
    return report


def threshold_check(entries: list[dict], threshold: float) -> dict[str, Any]:
    """How many candidates the variance threshold discarded, how the final losses of the discarded
    compare with the kept, and a threshold calibrated on this data's variances (Tukey's upper
    fence, Q3 + 1.5·IQR: what is an outlier among these modules) for when the paper's does not
    separate them (§5.3)."""
    finite = [e for e in entries if math.isfinite(e["variance"])]
    variances = np.array([e["variance"] for e in finite])
    q1, q3 = np.percentile(variances, [25, 75]) if len(variances) else (math.nan, math.nan)

    def final(group):
        losses = [e["final_loss"] for e in group if math.isfinite(e.get("final_loss", math.nan))]
        return {"transplanted": len(losses), "mean_final_loss": float(np.mean(losses)) if losses else None}

    kept = [e for e in entries if e["selected"]]
    discarded = [e for e in entries if e["discarded"]]
    return {"threshold": threshold, "candidates": len(entries), "discarded": len(discarded),
            "failed": sum("failed" in e for e in entries),
            "kept": final(kept), "discarded_finals": final(discarded),
            "variance_quartiles": [float(q1), float(q3)], "calibrated_threshold": float(q3 + 1.5 * (q3 - q1))}


def correlation(x: list[float], y: list[float]) -> dict[str, Any]:
    """Pearson r with p-value and 95% CI, Spearman ρ with p-value."""
    from scipy import stats

    if len(x) < 3:
        return {"n": len(x), "pearson_r": math.nan, "pearson_p": math.nan, "pearson_ci95": [math.nan, math.nan],
                "spearman_rho": math.nan, "spearman_p": math.nan}
    pearson = stats.pearsonr(x, y)
    ci = pearson.confidence_interval(0.95)
    spearman = stats.spearmanr(x, y)
    return {"n": len(x), "pearson_r": float(pearson.statistic), "pearson_p": float(pearson.pvalue),
            "pearson_ci95": [float(ci.low), float(ci.high)],
            "spearman_rho": float(spearman.statistic), "spearman_p": float(spearman.pvalue)}


COLUMNS = ("index", "batch_size", "lr", "weight_decay", "dropout", "surrogate_dropout", "surrogate_rank", "epochs",
           "surrogate_loss", "surrogate_accuracy",
           "variance", "discarded", "selected", "final_loss", "final_accuracy", "failed")


def to_csv(entries: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for e in entries:
        writer.writerow({c: e.get(c, "") for c in COLUMNS})
    return out.getvalue()


def format_markdown(report: dict) -> str:
    def row(name, c):
        lo, hi = c["pearson_ci95"]
        return (f"| {name} | {c['n']} | {c['pearson_r']:.3f} | {c['pearson_p']:.2g} | [{lo:.3f}, {hi:.3f}] | "
                f"{c['spearman_rho']:.3f} | {c['spearman_p']:.2g} |")
    kept = sum(not e["discarded"] for e in report["candidates"])
    check = report["threshold_check"]

    def mean(group):
        value = check[group]["mean_final_loss"]
        return "-" if value is None else f"{value:.3f} ({check[group]['transplanted']} transplanted)"

    return "\n".join([
        f"# Surrogate vs final ({report['recipe']}, {report['interface']} interface, {report.get('module', 'find')})", "",
        f"{report['modules']} modules trained through the surrogate; {kept} under the variance threshold "
        f"{report['variance_threshold']}, {check['discarded']} over it or failed; {report['select']} selected and "
        f"transplanted, frozen, into the NMN.", "",
        "| measure | n | Pearson r | p | 95% CI | Spearman ρ | p |", "|---|---|---|---|---|---|---|",
        row("surrogate loss vs final loss", report["loss"]),
        row("surrogate accuracy vs final accuracy", report["accuracy"]), "",
        f"Final validation loss: selected {mean('kept')}, discarded {mean('discarded_finals')}. A threshold "
        f"calibrated on these variances (Q3 + 1.5·IQR): {check['calibrated_threshold']:.4g}.", ""])


def plot_variance(report: dict, path: Path) -> Path:
    """Fig. 7: every module's surrogate loss and predictive variance, discarded and selected marked,
    the paper's threshold and the calibrated one; beside it, the final loss of every transplanted
    module against its variance (does the threshold discard the worse ones?)."""
    plt = pyplot()
    figure, (axis, finals) = plt.subplots(1, 2, figsize=(12, 4.5))
    groups = (("discarded", "tab:red"), ("selected", "tab:blue"), ("other", "tab:gray"))
    for name, color in groups:
        points = [e for e in report["candidates"] if math.isfinite(e["surrogate_loss"]) and math.isfinite(e["variance"])
                  and (e["discarded"] if name == "discarded" else e["selected"] if name == "selected"
                       else not e["discarded"] and not e["selected"])]
        axis.scatter([e["surrogate_loss"] for e in points], [max(e["variance"], 1e-9) for e in points],
                     c=color, label=f"{name} ({len(points)})", s=28)
    calibrated = report["threshold_check"]["calibrated_threshold"]
    for ax in (axis, finals):
        ax.axhline(report["variance_threshold"], color="tab:red", linestyle="--", linewidth=1,
                   label=f"threshold {report['variance_threshold']:g}")
        if math.isfinite(calibrated) and calibrated > 0:
            ax.axhline(calibrated, color="tab:purple", linestyle=":", linewidth=1, label=f"calibrated {calibrated:.2g}")
        ax.set_yscale("log")
        ax.set_ylabel("predictive variance (MC dropout)")
    axis.set_xlabel("surrogate validation loss (NLL)")
    axis.set_title("Modules trained through the surrogate (paper Fig. 7)")
    axis.legend(fontsize="small")
    moved = [e for e in report["candidates"] if math.isfinite(e.get("final_loss", math.nan)) and math.isfinite(e["variance"])]
    for name, color in (("discarded", "tab:red"), ("selected", "tab:blue")):
        points = [e for e in moved if e[name]]
        finals.scatter([e["final_loss"] for e in points], [max(e["variance"], 1e-9) for e in points], c=color,
                       label=f"{name} ({len(points)})", s=28)
    finals.set_xlabel("final NMN validation loss (NLL), module frozen")
    finals.set_title("Does the threshold discard the worse modules?")
    finals.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path)


def plot_losses(report: dict, path: Path) -> Path:
    """Fig. 8: final vs surrogate loss with the regression line and its 95% band."""
    plt = pyplot()
    import seaborn as sns

    picked = [e for e in report["candidates"] if e["selected"]]
    figure, axis = plt.subplots(figsize=(6, 4.5))
    sns.regplot(x=[e["surrogate_loss"] for e in picked], y=[e["final_loss"] for e in picked], ci=95, ax=axis,
                scatter_kws={"s": 30})
    c = report["loss"]
    axis.set_xlabel("surrogate validation loss (NLL)")
    axis.set_ylabel("final NMN validation loss (NLL)")
    axis.set_title(f"Pearson r = {c['pearson_r']:.2f} (p = {c['pearson_p']:.1g}), n = {c['n']} (paper Fig. 8)")
    figure.tight_layout()
    return save_figure(figure, path)
