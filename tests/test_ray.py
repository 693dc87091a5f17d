"""Jobs on Ray and per-module searches with Ray Tune (a local Ray: 2 CPUs, one per session)."""
import json
import os
import shutil
import signal

import pytest
import torch

from modtrain.card import load_card
from modtrain.distributed import absolute, gpus_per_job, run_pipeline_on_ray
from modtrain.errors import ModtrainError
from modtrain.job import train_module
from modtrain.recipe import Recipe
from modtrain.reports.hpo import hpo_report
from modtrain.tune import parse_expression, search_space, tune_module
from modtrain.workdir import Workdir

pytestmark = pytest.mark.slow  # trains on tiny data: 'pytest -m "not slow"' skips it

FAST = ["train.max_epochs=3", "train.patience=3", "train.device='cpu'"]


def _shared(tiny_run, tmp_path):
    recipe, workdir, _, _ = tiny_run
    root = tmp_path / "shared"
    shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data"))
    return Workdir(root, workdir.data)


def test_gpu_request_on_a_cpu_cluster_fails_fast(ray_local, tiny_run, tmp_path):
    assert gpus_per_job(None) == 0.0
    with pytest.raises(ModtrainError, match=r"--gpus-per-job 1: the Ray cluster has 0 GPU\(s\) "
                                            r"and no node has more than 0 "
                                            r"\(node \w+: 0 GPU\(s\), 2 CPU\(s\)\); Ray would wait forever"):
        gpus_per_job(1.0)
    recipe, workdir, _, _ = tiny_run
    with pytest.raises(ModtrainError, match="Ray would wait forever"):
        run_pipeline_on_ray(recipe, Workdir(tmp_path / "gpu", workdir.data), "local", print, gpus=0.5)
    assert not (tmp_path / "gpu" / "modules").exists()


def test_search_space_errors():
    assert parse_expression("uniform(0, 0.9)", "x").lower == 0.0
    with pytest.raises(ModtrainError, match=r"search.find.lr: 'normal\(0, 1\)' is not a search expression"):
        parse_expression("normal(0, 1)", "search.find.lr")
    recipe = Recipe.load("nmn-typed", ["search.find.depth='randint(1, 3)'"])
    with pytest.raises(ModtrainError, match="unknown key search.find.depth; valid: .*search.find.lr"):
        search_space(recipe, "find")
    bare = Recipe.load("e2e")
    with pytest.raises(ModtrainError, match=r"recipe e2e has no \[search.find\] table"):
        search_space(bare, "find")
    with pytest.raises(ModtrainError, match="is relative"):
        absolute("runs/tune")


# one module per way of training: the prior's producer, through a surrogate, on a virtual dataset
# (measure trains as describe does)
@pytest.mark.parametrize("module", ["encoder", "find", "describe"])
def test_two_trial_search_per_module(ray_local, tiny_run, tmp_path, module):
    recipe, _, _, _ = tiny_run
    shared = _shared(tiny_run, tmp_path)
    recipe = Recipe.load(str(shared.root / "recipe.toml"), FAST + [f"search.{module}.batch_size='lograndint(32, 256)'",
                                                               f"search.{module}.lr='loguniform(1e-3, 3e-2)'"])
    # a search judged whatever its trials' trust (three epochs may not teach find enough to be trusted)
    summary = tune_module(recipe, shared, module, 2, say=lambda m: None, allow_untrusted=True)
    assert len(summary["trials"]) == 2 and all(t["status"] == "done" for t in summary["trials"])
    out = shared.root / "tune" / module
    assert (out / "best.toml").exists() and (out / "trials.json").exists()
    best = load_card(out / "best", module)
    assert best["metrics"]["val_accuracy"] == pytest.approx(summary["best"]["kept_accuracy"])
    trusted = [t for t in summary["trials"] if t["trustworthy"]] or summary["trials"]  # the trusted, if any
    assert summary["best"]["kept_accuracy"] == max(t["kept_accuracy"] for t in trusted)
    if module == "find":  # every trial judged, and report hpo says how
        assert all(t["trust_reason"].startswith("gain ") for t in summary["trials"])
        shown = hpo_report(shared.root)["modules"]["find"]["trust"]
        assert [(t["trusted"], t["reason"]) for t in shown] == [(t["trustworthy"], t["trust_reason"])
                                                                 for t in summary["trials"]]
    # the best configuration retrains to the same accuracy (same recipe, seed, data and threads)
    retrain = Workdir(tmp_path / "retrain", shared.data)
    best_recipe = Recipe.load(str(out / "recipe.toml"))
    for producer in {"find": ["encoder"], "describe": ["find", "encoder"],
                     "measure": ["find", "encoder"]}.get(module, []):
        shutil.copytree(shared.caches / producer, retrain.caches / producer)
        for suffix in (".pt", ".json"):
            retrain.modules.mkdir(parents=True, exist_ok=True)
            shutil.copy(shared.modules / f"{producer}{suffix}", retrain.modules / f"{producer}{suffix}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the trial
    try:
        card = train_module(retrain, best_recipe, module, torch.device("cpu"))
    finally:
        torch.set_num_threads(threads)
    assert card["metrics"]["val_accuracy"] == pytest.approx(best["metrics"]["val_accuracy"])
    assert card["weights_sha256"] == best["weights_sha256"]


def test_interrupted_search_resumes(ray_local, tiny_run, tmp_path):
    from ray import tune

    shared = _shared(tiny_run, tmp_path)
    recipe = Recipe.load(str(shared.root / "recipe.toml"), FAST)

    class CtrlC(tune.Callback):  # the user presses Ctrl-C once two trials have finished
        finished = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            CtrlC.finished += 1
            if CtrlC.finished == 2:
                os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(ModtrainError, match=r"the describe search was interrupted with 2 of 4 trials finished; no "
                                            r"best configuration was written. Rerun the same command to resume it"):
        tune_module(recipe, shared, "describe", 4, cpus_per_trial=2, callbacks=[CtrlC()], say=lambda m: None)
    assert not (shared.root / "tune" / "describe" / "best.toml").exists()
    cards = list((shared.root / "tune" / "describe" / "trials").glob("*/modules/describe.json"))
    assert len(cards) == 2  # two trials finished, the others never ran to the end
    stamps = {p: p.stat().st_mtime_ns for p in cards}
    messages = []
    summary = tune_module(recipe, shared, "describe", 4, cpus_per_trial=2, say=messages.append)
    assert any("resuming" in m for m in messages)
    assert sum(t["status"] == "done" and t["epochs"] == 3 for t in summary["trials"]) == 4
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # finished trials did not run again
    assert len(list((shared.root / "tune" / "describe" / "trials").glob("*/modules/describe.json"))) == 4
    with pytest.raises(ModtrainError, match="other settings"):
        tune_module(recipe, shared, "describe", 5, say=lambda m: None)


def test_hpo_report(ray_local, tiny_run, tmp_path):
    shared = _shared(tiny_run, tmp_path)
    recipe = Recipe.load(str(shared.root / "recipe.toml"), FAST)
    drawn = {}
    for module in ("describe", "measure", "e2e"):
        drawn[module] = [t["config"] for t in tune_module(recipe, shared, module, 2, say=lambda m: None)["trials"]]
    # the draws come from the recipe's seed: the same search again draws the same configurations
    again = tune_module(recipe, shared, "describe", 2, fresh=True, say=lambda m: None)
    assert sorted(map(str, (t["config"] for t in again["trials"]))) == sorted(map(str, drawn["describe"]))
    assert drawn["describe"][0] != drawn["describe"][1]
    report = hpo_report(shared.root)
    assert set(report["modules"]) == {"describe", "measure", "e2e"}
    assert all(len(r["scores"]) == 2 for r in report["modules"].values())
    assert report["e2e_trial_seconds"] > 0 and report["modular_trial_seconds"] > 0
    for name in ("hpo_accuracy.png", "hpo_time.png"):
        assert (shared.reports / name).stat().st_size > 1000
    assert json.loads((shared.reports / "hpo.json").read_text())["modules"]["measure"]["trials"] == 2
