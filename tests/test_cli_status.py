"""Data folders as they come (split names found by name), ``modtrain status``, ``run --dry-run`` and
``modtrain recipes``."""
import importlib.resources
import json
import shutil

import pytest
from click.testing import CliRunner
from modtrain.datasets.generate import generate

from modtrain.cli import main
from modtrain.recipe import shipped_recipes

KEYS = "choose with --set data.train_split=NAME --set data.val_split=NAME"


def _files(root):
    """Every file under ``root`` with its modification time: what a command that writes nothing leaves."""
    return {str(p): p.stat().st_mtime_ns for p in sorted(root.rglob("*"))} if root.exists() else {}


@pytest.fixture(scope="module")
def vqa2014(tmp_path_factory):
    """A VQA v1 folder named as released: OpenEnded_*_train2014_questions.json, ..._val2014_..."""
    root = tmp_path_factory.mktemp("vqa2014")
    generate(root, {"train2014": 4, "val2014": 2}, 3, "no-relate", format="vqa", workers=0)
    return root


@pytest.fixture(scope="module")
def cogent(tmp_path_factory):
    """A CLEVR-CoGenT folder: trainA, valA, testA, valB, testB."""
    root = tmp_path_factory.mktemp("cogent")
    generate(root, {"train": 4, "val": 2, "test": 2}, 3, "no-relate", combos="A", workers=0)
    generate(root, {"val": 2, "test": 2}, 3, "no-relate", combos="B", workers=0)
    return root


def test_a_vqa_release_runs_as_it_comes(vqa2014, tmp_path):
    workdir = tmp_path / "w"
    args = ["--recipe", "nmn-vqa", "--data", str(vqa2014), "--workdir", str(workdir)]
    result = CliRunner().invoke(main, ["run", "--dry-run", *args])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "run would do next:"
    assert lines[1].split() == ["data", "features", "for", "train2014,", "val2014,", "prepare"]
    assert lines[2].split()[:2] == ["train", "encoder"] and lines[-1].split()[0] == "assemble"
    assert not workdir.exists()  # a dry run writes nothing
    status = json.loads(CliRunner().invoke(main, ["status", "--json", *args]).output)
    assert (status["data"]["train_split"], status["data"]["val_split"]) == ("train2014", "val2014")
    assert {m["state"] for m in status["modules"]} == {"untrained"} and not workdir.exists()


def test_cogent_trains_on_a_and_stops_on_val_a(cogent, tmp_path):
    args = ["--recipe", "nmn-typed", "--data", str(cogent), "--workdir", str(tmp_path / "w")]
    status = json.loads(CliRunner().invoke(main, ["status", "--json", *args]).output)
    assert (status["data"]["train_split"], status["data"]["val_split"]) == ("trainA", "valA")
    table = CliRunner().invoke(main, ["data", "info", str(cogent)]).output
    assert "modtrain run trains on trainA and stops early on valA" in table


def test_splits_that_cannot_be_chosen_stop_before_anything_is_written(cogent, tmp_path):
    runner = CliRunner()
    workdir = tmp_path / "w"
    args = ["--recipe", "nmn-typed", "--data", str(cogent), "--workdir", str(workdir)]
    before = _files(cogent)
    for extra, line in (
            (["--set", "data.train_split=bogus"],
             f"Error: data.train_split = 'bogus': data folder {cogent} has no such split; its splits: trainA, valA, "
             f"valB, testA, testB; {KEYS}"),
            (["--set", "data.train_split='valB'", "--set", "data.val_split='valB'"],
             "Error: --set data.train_split='valB' --set data.val_split='valB': data.train_split and "
             "data.val_split are both 'valB': a module stops early on "
             "questions it does not train on; name another validation split"),
            (["--set", "data.val_split='testB'", "--set", "data.train_split='testB'"], None)):
        result = runner.invoke(main, ["run", *args, *extra])
        assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
        assert line is None or result.output.strip() == line
        assert "prepare" not in result.output
    result = runner.invoke(main, ["assemble", *args, "--split", "valA,bogus"])
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: --split bogus: {cogent} has no such split; its splits: trainA, valA, "
                                     f"valB, testA, testB")
    ambiguous = tmp_path / "ab"
    shutil.copytree(cogent, ambiguous)
    generate(ambiguous, {"train": 2}, 2, "no-relate", combos="B", workers=0)
    result = runner.invoke(main, ["run", "--recipe", "nmn-typed", "--data", str(ambiguous), "--workdir", str(workdir)])
    assert result.exit_code == 1 and result.output.strip() == (
        f"Error: data folder {ambiguous} has 2 training splits (trainA, trainB), so data.train_split = 'auto' cannot "
        f"choose one; its splits: trainA, trainB, valA, valB, testA, testB; {KEYS}")
    assert not workdir.exists() and _files(cogent) == before


def test_recipes_lists_and_prints_the_shipped_recipes():
    runner = CliRunner()
    result = runner.invoke(main, ["recipes"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == shipped_recipes()
    assert any(line.split()[0] == "nmn-typed" and "module by module with neural data types" in line for line in lines)
    assert all(len(line.split()) > 1 for line in lines)  # every recipe has its description
    result = runner.invoke(main, ["recipes", "nmn-vqa"])
    shipped = (importlib.resources.files("modtrain.recipes") / "nmn-vqa.toml").read_text(encoding="utf-8")
    assert result.exit_code == 0 and result.output == shipped
    result = runner.invoke(main, ["recipes", "nmn-bogus"])
    assert result.exit_code == 1 and "unknown recipe 'nmn-bogus'; shipped: e2e, film" in result.output


def test_status_needs_a_recipe_or_a_workdir_that_has_one(tmp_path):
    result = CliRunner().invoke(main, ["status", "--workdir", str(tmp_path)])
    assert result.exit_code == 1 and "give --recipe NAME" in result.output


# -- on a trained workdir -------------------------------------------------------------------------

@pytest.fixture
def trained(tiny_run, tmp_path):
    """A copy of the tiny nmn-typed run (its data read in place)."""
    _, workdir, _, _ = tiny_run
    root = tmp_path / "run"
    shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
    return root, ["--workdir", str(root), "--data", str(workdir.data)]


@pytest.mark.slow
def test_status_of_a_trained_workdir(trained):
    root, args = trained
    runner = CliRunner()
    before = _files(root)
    status = json.loads(runner.invoke(main, ["status", "--json", *args]).output)
    modules = {m["name"]: m for m in status["modules"]}
    assert list(modules) == ["encoder", "find", "describe", "measure"]
    assert {m["state"] for m in modules.values()} == {"trained"} and status["data"]["steps"] == []
    card = json.loads((root / "modules" / "find.json").read_text())
    assert modules["find"]["val_accuracy"] == card["metrics"]["val_accuracy"]
    assert modules["find"]["trust"]["trusted"] is True and modules["find"]["trust"]["criterion"] == "gain"
    assert modules["find"]["trust"]["value"] == card["surrogate"]["trust"]["gain"]
    assert modules["describe"]["trust"] is None  # trained on its own loss: no surrogate judges it
    assert modules["encoder"]["cache"]["state"] == "fresh" and modules["describe"]["cache"] is None
    assert status["next"] == [{"job": "assemble", "why": "always: evaluates the assembled network"}]
    table = runner.invoke(main, ["status", *args]).output
    assert "find      trained  " in table and "trusted (gain " in table
    assert table.rstrip().endswith("every module is trained and cached: run would only assemble")

    # a changed setting: the module it changes is stale, saying which, and so is what comes after it
    lr = card["train"]["lr"]
    changed = [*args, "--set", f"modules.find.lr={lr * 2}"]
    status = json.loads(runner.invoke(main, ["status", "--json", *changed]).output)
    modules = {m["name"]: m for m in status["modules"]}
    assert modules["find"]["state"] == "stale" and modules["find"]["why"] == [f"modules.find.lr {lr!r} → {lr * 2!r}"]
    assert [j["job"] for j in status["next"]] == ["train find", "cache find", "train describe", "train measure",
                                                  "assemble"]
    assert status["next"][1]["why"] == "after train find"
    dry = runner.invoke(main, ["run", "--dry-run", *changed])
    assert dry.exit_code == 0
    assert dry.output.splitlines()[1].split() == ["train", "find", "stale:", "modules.find.lr", repr(lr), "→",
                                                  repr(lr * 2)]
    assert dry.output.strip() in runner.invoke(main, ["status", *changed]).output  # the same next jobs
    # a stricter trust criterion: run would stop before caching find
    strict = json.loads(runner.invoke(main, ["status", "--json", *args, "--set", "trust.min_gain=0.99"]).output)
    assert [j["job"] for j in strict["next"]] == ["cache find"] and "--allow-untrusted" in strict["next"][0]["why"]
    assert _files(root) == before  # status and dry runs write nothing

    # a missing cache is written again, and nothing after it changes
    (root / "caches" / "find" / "val.h5").unlink()
    status = json.loads(runner.invoke(main, ["status", "--json", *args]).output)
    find = next(m for m in status["modules"] if m["name"] == "find")
    assert find["state"] == "trained" and find["cache"]["state"] == "missing"
    assert "val.h5 not found" in find["cache"]["why"]
    assert status["next"] == [{"job": "cache find", "why": "cache missing"},
                              {"job": "assemble", "why": "always: evaluates the assembled network"}]
    # other weights than the card's: find is retrained, and what read it is stale, naming the input
    card["weights_sha256"] = "0" * 64
    (root / "modules" / "find.json").write_text(json.dumps(card))
    status = json.loads(runner.invoke(main, ["status", "--json", *args]).output)
    modules = {m["name"]: m for m in status["modules"]}
    assert modules["find"]["state"] == "stale" and modules["find"]["why"] == [
        f"{root / 'modules' / 'find'}.pt is missing or not its card's weights"]
    assert modules["describe"]["state"] == "stale" and modules["describe"]["why"] == ["input find retrained"]
    assert modules["find"]["cache"]["state"] == "stale" and "stale cache" in modules["find"]["cache"]["why"]
    assert [j["job"] for j in status["next"]] == ["train find", "cache find", "train describe", "train measure",
                                                  "assemble"]


@pytest.mark.slow
def test_run_does_what_status_said(trained):
    root, args = trained
    runner = CliRunner()
    changed = [*args, "--set", "modules.measure.max_epochs=2"]
    status = json.loads(runner.invoke(main, ["status", "--json", *changed]).output)
    assert [j["job"] for j in status["next"]] == ["train measure", "assemble"]
    assert status["next"][0]["why"].startswith("stale: modules.measure.max_epochs ")
    result = runner.invoke(main, ["run", *changed])
    assert result.exit_code == 0, result.output
    ran = [line.split(":")[0] for line in result.stderr.splitlines() if ": done in" in line]
    assert ran == ["train measure"]
    status = json.loads(runner.invoke(main, ["status", "--json", *changed]).output)
    assert [j["job"] for j in status["next"]] == ["assemble"]
