"""Checks of the method that can fail: the trust flag, the frozen-module shortcut, ASHA, a bad
layout, the surrogate-vs-final correlation."""
import json
import shutil

import pytest
import torch

from modtrain.assemble import assemble, format_report
from modtrain.card import load_card
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.execute import Executor
from modtrain.io import sha256_json
from modtrain.job import Job, JobSpec, joint_spec
from modtrain.pipeline import run_pipeline
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.tune import tune_module
from modtrain.types import TypeCheckError
from modtrain.workdir import Workdir

pytestmark = pytest.mark.slow  # trains on tiny data: 'pytest -m "not slow"' skips it

CPU = torch.device("cpu")


@pytest.fixture
def copied(tiny_run, tmp_path):
    """A copy of the tiny nmn-typed run, reading the tiny data in place."""
    recipe, workdir, _, _ = tiny_run
    root = tmp_path / "run"
    shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
    return recipe.with_overrides([f"data.source='{workdir.data}'"]), Workdir(root, workdir.data)


def test_a_find_stuck_at_the_prior_stops_the_run_before_it_is_cached(copied):
    """A find trained at lr 1e-7 for two epochs learned nothing: its surrogate does no better than
    the prior, and the run stops naming the gain; the normally trained find of the same data is trusted."""
    recipe, workdir = copied
    trained = load_card(workdir.modules, "find")["surrogate"]
    assert trained["verdict"]["trusted"] and trained["trust"]["gain"] > 2 * recipe.trust.min_gain
    stuck = recipe.with_overrides(["modules.find.lr=1e-7", "modules.find.max_epochs=2"])
    cache_before = json.dumps(sorted(p.name for p in (workdir.caches / "find").iterdir()))
    with pytest.raises(ModtrainError, match=r"find.json: find is not trusted: gain −?[0-9.]+% \(interval .*\) < 5.0%: "
                                            r"the surrogate reading find does no better than the prior "
                                            r"\(trust.criterion "
                                            r"= gain\), so it is not cached or used\..*--allow-untrusted"):
        run_pipeline(stuck, workdir, CPU, say=lambda m: None)
    card = load_card(workdir.modules, "find")
    assert card["surrogate"]["trustworthy"] is False and card["metrics"]["selected_on"] == "val_accuracy"
    assert (card["surrogate"]["trust"]["gain"] < recipe.trust.min_gain
            and card["surrogate"]["verdict"]["criterion"] == "gain")
    assert json.dumps(sorted(p.name for p in (workdir.caches / "find").iterdir())) == cache_before  # not written
    report = run_pipeline(stuck, workdir, CPU, say=lambda m: None, allow_untrusted=True)
    assert report["modules"]["find"]["trustworthy"] is False
    assert "warning: find is not trusted: gain" in format_report(report)
    # another criterion re-judges the card's statistics: nothing is trained again
    paper = run_pipeline(stuck.with_overrides(["trust.criterion='variance'"]), workdir, CPU, say=lambda m: None,
                         allow_untrusted=True)
    assert paper["modules"]["find"]["trust_criterion"] == "variance"
    assert paper["modules"]["find"]["trust_reason"].startswith("predictive variance")
    assert load_card(workdir.modules, "find")["created"] == card["created"]


def test_the_frozen_find_shortcut_equals_training_around_find_itself(copied, tmp_path):
    """The correlation report trains the other modules around a frozen find from find's virtual
    dataset; running find itself, frozen, must train the same network."""
    recipe, workdir = copied
    # without dropout: the two graphs call describe and measure in another order, so dropout
    # masks would come from other draws of the same random stream
    recipe = recipe.with_overrides(["train.max_epochs=2", "train.patience=5", "modules.measure.dropout=0.0"])
    plan = make_plan(recipe)
    shortcut = joint_spec(plan, "final", ("find",))
    assert shortcut.trainable == ("encoder", "describe", "measure")
    whole = JobSpec(**{**shortcut.__dict__, "recompute": ("find",)})
    sources = {"find": workdir}
    cached = Job(Workdir(tmp_path / "cached", workdir.data), recipe, CPU, shortcut, sources=sources, plan=plan).run()
    running = Job(Workdir(tmp_path / "running", workdir.data), recipe, CPU, whole, sources=sources, plan=plan)
    ran = running.run()
    assert running.needs_features and "find" in running.runs  # find really ran
    for key in ("train_loss", "val_loss", "val_accuracy"):
        assert ran["metrics"][key] == pytest.approx(cached["metrics"][key], rel=1e-4)


def _with_layout(source, target, index: int, layout: str):
    """A copy of a prepared data folder whose layout ``index`` is replaced."""
    shutil.copytree(source, target)
    vocab = json.loads((target / "vocab.json").read_text())
    vocab["layouts"][index] = layout
    (target / "vocab.json").write_text(json.dumps(vocab))
    import h5py

    for path in target.glob("*.h5"):
        with h5py.File(path, "a") as f:
            f.attrs["vocab_sha256"] = sha256_json(vocab)
            f.attrs["data_fingerprint"] = sha256_json([sha256_json(vocab), f.attrs["questions_sha256"]])


def test_a_bad_layout_is_refused_before_any_module_runs(copied, tmp_path, monkeypatch):
    recipe, workdir = copied
    data = PreparedData(workdir.data)
    index = int(data.split("val").layout[0])
    describe = next(i for i, lay in enumerate(data.layouts) if lay.module == "describe")
    bad = f"describe[color](measure[count]({data.layouts[describe].children[0]}))"  # answers into describe
    _with_layout(workdir.data, tmp_path / "data", index, bad)
    calls = []
    monkeypatch.setattr(Executor, "_call", lambda self, *a, **k: calls.append(a))
    monkeypatch.setattr(torch.nn.LSTM, "forward", lambda self, *a, **k: calls.append(a))
    with pytest.raises(TypeCheckError, match=r"measure\[count\].* carries AnswerLogits, but describe expects Attended"):
        assemble(Workdir(workdir.root, tmp_path / "data"), recipe, CPU)
    assert calls == []


@pytest.mark.slow
def test_asha_stops_poor_trials(ray_local, tiny_run, tmp_path):
    recipe, workdir, _, _ = tiny_run
    shared = Workdir(tmp_path / "shared", workdir.data)
    shutil.copytree(workdir.root, shared.root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
    recipe = Recipe.load(str(shared.root / "recipe.toml"), ["train.max_epochs=6", "train.patience=6",
                                                            "train.device='cpu'"])
    summary = tune_module(recipe, shared, "describe", 6, scheduler="asha", say=lambda m: None)
    stopped = [t for t in summary["trials"] if t["epochs"] < 6]
    assert stopped and all(t["kept_accuracy"] is None for t in stopped)  # stopped: no card, never the best
    assert summary["best"]["epochs"] == 6 and summary["best"]["kept_accuracy"] is not None
