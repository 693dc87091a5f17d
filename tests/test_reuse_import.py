"""Module packages, fast part two: export and import on prepared data with stand-in features and
untrained modules (no training), so every check of an import runs in the fast loop. The CLI on a
trained run is test_reuse.py."""
from __future__ import annotations

import json
import shutil

import h5py
import numpy as np
import pytest
import torch

from modtrain.card import card_path, save_module
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.job import is_up_to_date
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.registry import build_module
from modtrain.reuse import (
    ImportOptions,
    ensure_imports,
    export_module,
    frozen_import,
    import_module,
    imported_sources,
    training_start,
)
from modtrain.wiring import job_key, module_spec
from modtrain.workdir import Workdir

MODULES = ("encoder", "find", "describe", "measure")


def write_features(data, backbone: str = "b" * 64) -> None:
    """Stand-in features (8 × 4 × 4 per image) for every split, from one named backbone."""
    for split in ("train", "val", "test"):
        images = len(list((data / "images" / split).glob("*.png")))
        with h5py.File(data / "features" / f"{split}.h5", "w") as f:
            f.create_dataset("features", data=np.random.default_rng(0).random((images, 8, 4, 4), np.float32))
            f.attrs.update(backbone="clevr-cnn", backbone_sha256=backbone, features_sha256=f"{split}-{backbone}")


@pytest.fixture(scope="module")
def home(tiny_clevr, tmp_path_factory):
    """A workdir with untrained cards of nmn-typed's four modules on prepared tiny data."""
    from modtrain.datasets.prepare import prepare

    root = tmp_path_factory.mktemp("reuse")
    data = root / "data"
    shutil.copytree(tiny_clevr, data)
    (data / "features").mkdir()
    write_features(data)
    prepare(data)
    prepared = PreparedData(data)
    workdir = Workdir(root / "home", data)
    torch.manual_seed(0)
    for name in MODULES:
        module = build_module(name, "typed", prepared.dims(), prepared.vocab["instances"].get(name, []))
        save_module(workdir.modules, module, {"metrics": {"val_accuracy": 0.5}, "inputs": {}, "training": "modular"})
    return workdir


def recipe_for(data, *extra: str, name: str = "nmn-typed") -> Recipe:
    return Recipe.load(name, [f"data.source='{data}'", *extra]).resolved()


@pytest.fixture
def packages(home, tmp_path):
    for name in MODULES:
        export_module(home, name, tmp_path / "packages" / name, "nmn-typed")
    return tmp_path / "packages"


def test_a_frozen_import_is_trained_as_far_as_the_plan_knows(home, packages, tmp_path):
    here = Workdir(tmp_path / "here", home.data)
    recipe, data = recipe_for(home.data), PreparedData(home.data)
    record = import_module(packages / "describe", here, recipe, data, say=lambda m: None)
    assert record["mode"] == "frozen" and record["features"] == "same backbone"
    assert record["new_instances"] == [] and record["unknown_answers"] == [] and record["unknown_tokens"] == []
    ours = json.loads(card_path(here.modules, "describe").read_text())
    theirs = json.loads(card_path(home.modules, "describe").read_text())
    assert ours["weights_sha256"] == theirs["weights_sha256"] == record["weights_sha256"]  # same words: same weights
    assert ours["imported"]["from"] == str(packages / "describe") and ours["metrics"] == theirs["metrics"]
    assert frozen_import(here, "describe") == record and is_up_to_date(recipe, "describe", data, here)
    assert frozen_import(here, "find") is None and not is_up_to_date(recipe, "find", data, here)
    assert imported_sources(here, recipe.modules) == {"describe": f"imported from {packages / 'describe'} (frozen)"}
    # other weights written over it (retrained by hand): no longer the import, so no longer up to date
    save_module(here.modules, build_module("describe", "typed", data.dims(), ours["instances"]), ours)
    assert frozen_import(here, "describe") is None


def test_every_check_refuses_with_the_package_and_the_way_on(home, packages, tmp_path):
    data = PreparedData(home.data)
    here = Workdir(tmp_path / "here", home.data)

    def refused(package, recipe=None, options=ImportOptions()) -> str:
        with pytest.raises(ModtrainError) as caught:
            import_module(package, here, recipe or recipe_for(home.data), data, options, say=lambda m: None)
        text = str(caught.value)
        assert text.startswith(f"cannot import {json.loads((package / 'package.json').read_text())['name']} from ")
        assert "\n" not in text
        return text

    assert "recipe film has no module 'describe'" in refused(packages / "describe", recipe_for(home.data, name="film"))
    assert "gradient" in refused(packages / "find", recipe_for(home.data, name="nmn-original"))
    # another backbone's features: refused, unless declared compatible
    other = tmp_path / "other"
    shutil.copytree(packages / "find", other)
    package = json.loads((other / "package.json").read_text())
    package["features"]["backbone_sha256"] = "c" * 64
    (other / "package.json").write_text(json.dumps(package))
    assert "cccccccccccc" in refused(other) and "--features-compatible" in refused(other)
    record = import_module(other, here, recipe_for(home.data), data, ImportOptions(features_compatible=True),
                           say=lambda m: None)
    assert "declared compatible" in record["features"] and "cccccccccccc" in record["features"]
    # a shape that differs is refused even when declared compatible
    package = json.loads((packages / "measure" / "package.json").read_text())
    package["features"]["shape"] = [8, 5, 5]
    (tmp_path / "measure5").mkdir()
    shutil.copy(packages / "measure" / "weights.pt", tmp_path / "measure5" / "weights.pt")
    (tmp_path / "measure5" / "package.json").write_text(json.dumps(package))
    assert "(8, 5, 5)" in refused(tmp_path / "measure5", options=ImportOptions(features_compatible=True))
    # the signature: a card whose output type is not the module's here
    package = json.loads((packages / "describe" / "package.json").read_text())
    package["card"]["signature"]["output"] = "Prior"
    (tmp_path / "sig").mkdir()
    shutil.copy(packages / "describe" / "weights.pt", tmp_path / "sig" / "weights.pt")
    (tmp_path / "sig" / "package.json").write_text(json.dumps(package))
    assert "signature" in refused(tmp_path / "sig")
    # a module trained here is not replaced without --replace
    shutil.copytree(home.modules, here.modules, dirs_exist_ok=True)
    assert "--replace" in refused(packages / "measure")
    import_module(packages / "measure", here, recipe_for(home.data), data, ImportOptions(replace=True),
                  say=lambda m: None)
    assert (here.root / "imports" / "replaced" / "measure.json").exists()


def lacking(packages, tmp_path, name: str) -> tuple:
    """A copy of ``name``'s package without its first instance (its rows removed)."""
    from modtrain.card import state_sha256
    from modtrain.reuse import vocabulary_axes

    folder = tmp_path / f"{name}-lacking"
    shutil.copytree(packages / name, folder)
    package = json.loads((folder / "package.json").read_text())
    state = torch.load(folder / "weights.pt", weights_only=True)
    card = package["card"]
    word = card["instances"][0]
    axes = vocabulary_axes(name, "typed", card["dimensions"], card["instances"], card["hyperparameters"])
    for key, found in axes.items():
        for axis, (kind, _) in found.items():
            if kind == "instances":
                state[key] = state[key].narrow(axis, 1, state[key].shape[axis] - 1)
    card["instances"] = package["vocabulary"]["instances"] = card["instances"][1:]
    card["weights_sha256"] = state_sha256(state)
    torch.save(state, folder / "weights.pt")
    (folder / "package.json").write_text(json.dumps(package))
    return folder, word, state


def test_new_instances_are_refused_or_trained_alone_and_finetune_trains_it_all(home, packages, tmp_path):
    data, recipe = PreparedData(home.data), recipe_for(home.data)
    here = Workdir(tmp_path / "here", home.data)
    folder, word, state = lacking(packages, tmp_path, "measure")
    with pytest.raises(ModtrainError, match=f"lacks: {word}; train them alone with --new-instances train"):
        import_module(folder, here, recipe, data, say=lambda m: None)
    record = import_module(folder, here, recipe, data, ImportOptions(new_instances="train"), say=lambda m: None)
    assert record["mode"] == "new-instances" and record["new_instances"] == [word]
    assert record["instances"] == [*json.loads((folder / "package.json").read_text())["card"]["instances"], word]
    assert not card_path(here.modules, "measure").exists() and frozen_import(here, "measure") is None
    _, start, masks = training_start(here, "measure")
    for key, mask in masks.items():  # only the appended instance's entries are new
        assert mask.select(0, len(record["instances"]) - 1).all() and not mask.narrow(0, 0, 1).any()
        assert torch.equal(start[key][:-1], state[key])
    # the job starts from the import, and its key says so (another import: another key)
    plan = make_plan(recipe)
    key = job_key(module_spec(plan, "measure"), recipe, data, {}, here)
    assert key["imported"] == {"measure": ["new-instances", record["weights_sha256"]]}
    record = import_module(packages / "measure", here, recipe, data, ImportOptions(finetune=True), say=lambda m: None)
    _, start, masks = training_start(here, "measure")
    assert record["mode"] == "finetune" and masks == {}
    assert job_key(module_spec(plan, "measure"), recipe, data, {}, here)["imported"] == {
        "measure": ["finetune", record["weights_sha256"]]}


def test_a_run_imports_what_the_recipe_and_from_ask_for_once(home, packages, tmp_path):
    data = PreparedData(home.data)
    here = Workdir(tmp_path / "here", home.data)
    (home.root / "recipe.toml").write_text(recipe_for(home.data).to_toml())
    recipe = recipe_for(home.data, f"modules.describe.from='{packages / 'describe'}'")
    said = []
    done = ensure_imports(recipe, here, data, said.append, grow_from=home.root, only=["encoder", "find"])
    assert done == ["describe", "encoder", "find"] and len(said) == 3
    assert json.loads((here.root / "imports" / "find.json").read_text())["grown_from"] == str(home.root.resolve())
    assert frozen_import(here, "measure") is None  # not asked for: it trains here
    assert ensure_imports(recipe, here, data, said.append, grow_from=home.root, only=["encoder", "find"]) == []
    with pytest.raises(ModtrainError, match="--from-modules: relate not trained in"):
        ensure_imports(recipe, here, data, said.append, grow_from=home.root, only=["relate"])
    with pytest.raises(ModtrainError, match="not a workdir"):
        ensure_imports(recipe, here, data, said.append, grow_from=tmp_path)


def test_growing_imports_what_would_train_the_same_and_drops_what_is_no_longer_chosen(home, tmp_path):
    """nmn-typed grown into nmn-clevr: encoder and find read the same producers in both, so they are
    imported; describe and measure read relate in nmn-clevr, so they train there, saying why."""
    data = PreparedData(home.data)
    (home.root / "recipe.toml").write_text(recipe_for(home.data).to_toml())
    clevr = recipe_for(home.data, name="nmn-clevr")
    grown = Workdir(tmp_path / "grown", home.data)
    said = []
    assert ensure_imports(clevr, grown, data, said.append, grow_from=home.root) == ["encoder", "find"]
    for name in ("describe", "measure"):
        assert any(m.startswith(f"{name}: trained here, not imported from") and "reads relate" in m for m in said)
    assert frozen_import(grown, "find") is not None and frozen_import(grown, "describe") is None
    # chosen by hand: describe imported anyway, and the imports of the earlier run no longer chosen are dropped
    said.clear()
    assert ensure_imports(clevr, grown, data, said.append, grow_from=home.root, only=["describe"]) == ["describe"]
    assert frozen_import(grown, "describe") is not None
    assert frozen_import(grown, "find") is None and not card_path(grown.modules, "find").exists()
    assert not (grown.root / "imports" / "find.json").exists()
    assert f"find: no longer imported from {home.root}; it trains here" in said
