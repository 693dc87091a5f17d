"""``modtrain report hpo``: every evaluation of every module's search (paper Fig. 9 and 12)
and the total search time per module against an end-to-end search of the same size (Fig. 10)."""
from __future__ import annotations

from pathlib import Path

from modtrain.errors import ModtrainError
from modtrain.io import read_json, write_json
from modtrain.plan import make_plan
from modtrain.recipe import RESOLVED, Recipe
from modtrain.reports.plots import pyplot, save_figure


def load_searches(tune_dirs: list[Path], order: list[str] = ()) -> dict[str, dict]:
    """``trials.json`` of every search found under the given ``tune/`` folders, in ``order``
    (the plan's training order), then any other module, the end-to-end search last."""
    searches = {}
    for folder in tune_dirs:
        for path in sorted(Path(folder).glob("*/trials.json")):
            summary = read_json(path, "search summary")
            searches[summary["module"]] = summary
    if not searches:
        raise ModtrainError(f"no searches found in {', '.join(map(str, tune_dirs))}; run 'modtrain tune MODULE' first")
    rank = {name: k for k, name in enumerate(order)}
    return dict(sorted(searches.items(), key=lambda kv: (kv[0] == "e2e", rank.get(kv[0], len(rank)), kv[0])))


def hpo_report(workdir: str | Path, e2e_workdir: str | Path | None = None) -> dict:
    """Write ``reports/hpo.json``, ``hpo_accuracy.png`` and ``hpo_time.png``; return the JSON."""
    workdir = Path(workdir)
    dirs = [workdir / "tune"] + ([Path(e2e_workdir) / "tune"] if e2e_workdir else [])
    order = []
    if (workdir / RESOLVED).exists():
        order = [m.name for m in make_plan(Recipe.load(workdir / RESOLVED), end_to_end=True).modules]
    searches = load_searches(dirs, order)
    report = {"modules": {}}
    for module, s in searches.items():
        scores = [t["best_score"] if t["best_score"] is not None else 0.0 for t in s["trials"]]
        report["modules"][module] = {
            "trials": len(s["trials"]), "failed": sum(t["status"] == "error" for t in s["trials"]),
            "untrustworthy": sum(t.get("trustworthy") is False for t in s["trials"]),
            # each trial's verdict under the search's [trust] settings (None: no surrogate judges it)
            "trust": [{"trial_id": t["trial_id"], "trusted": t.get("trustworthy"), "gain": t.get("gain"),
                       "kept_accuracy": t.get("kept_accuracy"), "reason": t.get("trust_reason")} for t in s["trials"]],
            "scores": scores, "best_score": max(scores), "best_config": s["best"]["config"],
            "trial_seconds": s["trial_seconds"], "search_seconds": s["search_seconds"],
            "scheduler": s["scheduler"], "search": s["search"]}
    modular = [m for m in report["modules"] if m != "e2e"]
    report["modular_trial_seconds"] = sum(report["modules"][m]["trial_seconds"] for m in modular)
    if "e2e" in report["modules"]:
        report["e2e_trial_seconds"] = report["modules"]["e2e"]["trial_seconds"]
    reports = workdir / "reports"
    write_json(reports / "hpo.json", report)
    _plot_scores(report, reports / "hpo_accuracy.png")
    _plot_times(report, reports / "hpo_time.png")
    return report


def _plot_scores(report: dict, path: Path) -> Path:
    plt = pyplot()
    import seaborn as sns

    rows = [(m, 100 * score) for m, r in report["modules"].items() for score in r["scores"]]
    figure, axis = plt.subplots(figsize=(7, 4.5))
    sns.swarmplot(x=[m for m, _ in rows], y=[v for _, v in rows], ax=axis, size=5, warn_thresh=1.0)
    axis.set_ylabel("validation accuracy (%) per evaluation")
    axis.set_title("Every evaluation of each module's search (paper Fig. 9, 12; find: its surrogate)", fontsize=10)
    figure.tight_layout()
    return save_figure(figure, path)


def _plot_times(report: dict, path: Path) -> Path:
    plt = pyplot()
    import seaborn as sns

    modules = [m for m in report["modules"] if m != "e2e"]
    colors = dict(zip(modules, sns.color_palette("tab10", len(modules))))
    figure, axis = plt.subplots(figsize=(6, 4.5))
    bottom = 0.0
    for m in modules:
        seconds = report["modules"][m]["trial_seconds"]
        axis.bar(["modular"], [seconds], bottom=[bottom], color=colors[m], label=m)
        bottom += seconds
    if "e2e" in report["modules"]:
        axis.bar(["end-to-end"], [report["modules"]["e2e"]["trial_seconds"]], color="tab:gray", label="end-to-end")
    axis.set_ylabel("total trial time (s)")
    axis.set_title("Search time: modules vs end-to-end (paper Fig. 10)", fontsize=10)
    axis.legend(fontsize="small")
    figure.tight_layout()
    return save_figure(figure, path)
