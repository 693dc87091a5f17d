"""Files a hostile user can plant in a workdir or a recipe: none of them runs code, writes outside
the workdir or is followed through a link."""
import pickle
import shutil

import numpy as np
import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.job import Job
from modtrain.recipe import Recipe
from modtrain.train import _plain, _read_checkpoint
from modtrain.workdir import Workdir

CPU = torch.device("cpu")


class _Payload:
    """Unpickled with weights_only=False, this would create the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_crafted_checkpoint_runs_nothing_and_is_dropped(tmp_path):
    marker, ckpt = tmp_path / "pwned", tmp_path / ".find.ckpt"
    ckpt.write_bytes(pickle.dumps({"key": "x", "model": _Payload(marker)}))
    assert _read_checkpoint(ckpt) is None
    assert not marker.exists() and not ckpt.exists()


def test_a_checkpoint_keeps_only_what_weights_only_loads(tmp_path):
    """Statistics computed with numpy (the trust gain, the bootstrap interval) are stored as
    Python numbers, so a checkpoint reads back with weights_only=True."""
    ckpt = tmp_path / ".find.ckpt"
    state = {"key": "k", "model": {"w": torch.ones(2)}, "rng": torch.get_rng_state(),
             "state": {"epoch": np.int64(2), "history": [{"val_gain": np.float64(0.25), "hist": np.arange(3)}],
                       "pair": (np.float32(0.5), 1)}}
    torch.save(_plain(state), ckpt)
    saved = _read_checkpoint(ckpt)
    assert saved is not None and saved["state"]["epoch"] == 2 and type(saved["state"]["epoch"]) is int
    assert saved["state"]["history"] == [{"val_gain": 0.25, "hist": [0, 1, 2]}]
    assert saved["state"]["pair"] == (0.5, 1) and torch.equal(saved["model"]["w"], torch.ones(2))


def test_a_symlinked_lock_is_refused_and_its_target_untouched(tmp_path):
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    workdir = Workdir(tmp_path / "run", tmp_path / "data")
    workdir.root.mkdir()
    (workdir.root / ".modtrain.lock").symlink_to(outside)
    with pytest.raises(ModtrainError, match=r"\.modtrain\.lock is a symbolic link \(to .*precious\.txt\); .*remove"):
        with workdir.lock():
            pass
    assert outside.read_text() == "keep me\n"


def test_the_lock_still_holds_a_workdir(tmp_path):
    workdir = Workdir(tmp_path / "run", tmp_path / "data")
    with workdir.lock():
        assert (workdir.root / ".modtrain.lock").read_text().strip().isdigit()
        with pytest.raises(ModtrainError, match="is busy"):
            with workdir.lock():
                pass


@pytest.mark.parametrize("name", ["../evil", "a/b", "..", ".", "", "x\\y"])
def test_a_recipe_name_is_one_folder_name(name):
    raw = Recipe.load("nmn-typed").raw
    with pytest.raises(ModtrainError, match=r"name = .*one folder name"):
        Recipe({**raw, "name": name}, "r.toml")
    Recipe({**raw, "name": "my-run_2.v1"}, "r.toml")  # an ordinary name is fine


@pytest.mark.slow
def test_a_find_checkpoint_resumes_with_weights_only(tiny_run, tmp_path, validations):
    """A surrogate-trained find, interrupted after its second epoch's checkpoint, resumes from it
    (only the remaining epochs are validated) and ends with the weights of an uninterrupted run."""
    recipe, workdir, _, _ = tiny_run
    recipe = recipe.with_overrides(["train.max_epochs=4", "train.patience=50"])
    runs = {}
    for name in ("whole", "resumed"):
        root = tmp_path / name
        shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
        for path in (root / "modules").glob("find.*"):
            path.unlink()
        runs[name] = Workdir(root, workdir.data)
    whole = Job.for_module(runs["whole"], recipe, "find", CPU).run()
    validations.calls, validations.stop_at = 0, 3  # during epoch 3, after epoch 2's checkpoint
    with pytest.raises(KeyboardInterrupt):
        Job.for_module(runs["resumed"], recipe, "find", CPU).run()
    ckpt = runs["resumed"].modules / ".find.ckpt"
    assert torch.load(ckpt, weights_only=True)["state"]["epoch"] == 2
    validations.calls, validations.stop_at = 0, None
    resumed = Job.for_module(runs["resumed"], recipe, "find", CPU).run()
    assert validations.calls == 2  # epochs 3 and 4 only
    assert resumed["weights_sha256"] == whole["weights_sha256"]
