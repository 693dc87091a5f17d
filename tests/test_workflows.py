"""Data workflows users hit: other split names (CLEVR-CoGenT), an existing data folder, several
assembled splits, family names of folders modtrain did not generate."""
import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from modtrain.datasets.info import data_info
from modtrain.datasets.prepare import prepare

from modtrain.cli import main
from modtrain.errors import ModtrainError
from modtrain.job import Job
from modtrain.recipe import Recipe
from modtrain.workdir import Workdir

pytestmark = pytest.mark.slow  # trains on tiny data: 'pytest -m "not slow"' skips it

CPU = torch.device("cpu")


def _renamed_splits(source, target, names: dict[str, str]):
    """A copy of a prepared data folder with its splits renamed (train → trainA, ...)."""
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.h5", "vocab.json", "generate.json"))
    for old, new in names.items():
        (target / "questions" / f"CLEVR_{old}_questions.json").rename(
            target / "questions" / f"CLEVR_{new}_questions.json")
        (target / "scenes" / f"CLEVR_{old}_scenes.json").rename(target / "scenes" / f"CLEVR_{new}_scenes.json")
        (target / "images" / old).rename(target / "images" / new)
        for image in (target / "images" / new).iterdir():
            image.rename(image.with_name(image.name.replace(f"CLEVR_{old}_", f"CLEVR_{new}_")))
        shutil.copy(source / "features" / f"{old}.h5", target / "features" / f"{new}.h5")
    return target


def test_cogent_splits_train_with_the_recipe_split_keys(tiny_run, tmp_path):
    _, workdir, _, _ = tiny_run
    data = _renamed_splits(workdir.data, tmp_path / "cogent", {"train": "trainA", "val": "valA", "test": "valB"})
    summary = prepare(data)
    assert summary["vocab"]["split"] == "trainA"
    with pytest.raises(ModtrainError, match="--vocab-split 'train': .* has no such split; "
                                            "its splits: trainA, valA, valB"):
        prepare(data, vocab_split="train")
    recipe = Recipe.load("nmn-typed", ["data.train_split='trainA'", "data.val_split='valA'", f"data.source='{data}'",
                                       "train.max_epochs=1", "train.device='cpu'"])
    card = Job.for_module(Workdir.for_recipe(recipe, tmp_path / "run"), recipe, "encoder", CPU).run()
    assert card["metrics"]["train_questions"] == len(json.loads(
        (data / "questions" / "CLEVR_trainA_questions.json").read_text())["questions"])
    result = CliRunner().invoke(main, ["data", "prepare", str(data), "--vocab-split", "valA"])
    assert result.exit_code == 0 and "vocab (built on valA)" in result.output


def test_a_cogent_folder_runs_as_it_comes(tiny_run, tmp_path):
    """No split key: run trains on trainA, stops early on valA, reports valB; assemble --split valB
    evaluates it alone; a split the folder lacks is named with the splits it has."""
    _, workdir, _, _ = tiny_run
    data = _renamed_splits(workdir.data, tmp_path / "cogent", {"train": "trainA", "val": "valA", "test": "valB"})
    root = tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(main, ["run", "--recipe", "nmn-typed", "--workdir", str(root), "--data", str(data),
                                  "--set", "train.max_epochs=1", "--device", "cpu", "--allow-untrusted"])
    assert result.exit_code == 0, result.output
    written = Recipe.load(root / "recipe.toml").raw["data"]
    assert (written["train_split"], written["val_split"]) == ("trainA", "valA")  # the workdir names its splits
    report = json.loads((root / "reports" / "assemble.json").read_text())
    assert set(report["splits"]) == {"valA", "valB"}
    card = json.loads((root / "modules" / "encoder.json").read_text())
    assert card["metrics"]["train_questions"] == len(json.loads(
        (data / "questions" / "CLEVR_trainA_questions.json").read_text())["questions"])
    result = runner.invoke(main, ["assemble", "--workdir", str(root), "--split", "valB"])
    assert result.exit_code == 0 and "[valB]" in result.output and "[valA]" not in result.output
    result = runner.invoke(main, ["assemble", "--workdir", str(root), "--split", "val"])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: --split val: {data} has no such split; its splits: trainA, valA, valB"
    result = runner.invoke(main, ["status", "--workdir", str(root)])
    assert result.exit_code == 0 and "trains on trainA, stops early on valA" in result.output


def test_run_takes_an_existing_data_folder(tiny_run, tmp_path):
    _, workdir, _, _ = tiny_run
    root = tmp_path / "run"
    result = CliRunner().invoke(main, ["run", "--recipe", "nmn-typed", "--workdir", str(root),
                                       "--data", str(workdir.data),
                                       "--set", "train.max_epochs=1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert not (root / "data").exists()  # nothing generated: the given folder was used
    assert Recipe.load(root / "recipe.toml").data.source == str(workdir.data.resolve())


def test_assemble_merges_the_splits_it_evaluates(tiny_run, tmp_path):
    _, workdir, _, _ = tiny_run
    root = tmp_path / "run"
    shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
    runner = CliRunner()
    (root / "reports" / "assemble.json").unlink()
    data = ["--data", str(workdir.data)]
    assert runner.invoke(main, ["assemble", "--workdir", str(root), *data, "--split", "val"]).exit_code == 0
    assert runner.invoke(main, ["assemble", "--workdir", str(root), *data, "--split", "test"]).exit_code == 0
    report = json.loads((root / "reports" / "assemble.json").read_text())
    assert set(report["splits"]) == {"val", "test"}  # test did not drop val
    result = runner.invoke(main, ["assemble", "--workdir", str(root), *data, "--split", "val,test"])
    assert result.exit_code == 0 and "[val]" in result.output and "[test]" in result.output


def test_family_names_come_from_the_data_itself(tiny_clevr, tmp_path):
    named = data_info(tiny_clevr)["splits"]["train"]["families"]
    assert "exist" in named  # modtrain generated it: its names hold
    other = tmp_path / "other"
    shutil.copytree(tiny_clevr, other)
    (other / "generate.json").unlink()  # a folder from elsewhere: only its indices are known
    families = data_info(other)["splits"]["train"]["families"]
    assert families and all(name.startswith("family ") for name in families)
