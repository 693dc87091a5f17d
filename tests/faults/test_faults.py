"""Faults and bad inputs, as a hostile user or a dying machine makes them: each gives exit status 1
and one line naming the file or key and what to do, and no finished artifact changes unless it
is rebuilt. Runs on copies of the tiny nmn-typed run."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from modtrain.card import load_card, load_module, save_module
from modtrain.cli import main
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import sha256_file, write_json
from modtrain.job import Job, is_up_to_date
from modtrain.recipe import Recipe
from modtrain.workdir import Workdir

CPU = torch.device("cpu")
pytestmark = pytest.mark.slow


@pytest.fixture
def run_copy(tiny_run, tmp_path):
    """A copy of the tiny run with its own copy of the data (so files can be damaged)."""
    recipe, workdir, _, _ = tiny_run
    root = tmp_path / "run"
    shutil.copytree(workdir.root, root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
    data = tmp_path / "data"
    shutil.copytree(workdir.data, data)
    raw = Recipe.load(root / "recipe.toml").raw
    raw["data"]["source"] = str(data)
    copy = Recipe(raw, str(root / "recipe.toml"))
    copy.write(root)
    return copy, Workdir(root, data)


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line_error(result, *fragments):
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def _digests(workdir: Workdir) -> dict[str, str]:
    return {str(p.relative_to(workdir.root)): sha256_file(p)
            for folder in (workdir.modules, workdir.caches) for p in sorted(folder.rglob("*")) if p.is_file()}


def _damage(path: Path, at: float = 0.5, size: int = 64) -> None:
    """Overwrite ``size`` bytes in the middle of a file with random ones."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    data[start:start + size] = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))


def test_corrupt_weights_are_named_and_rebuilt_by_run(run_copy):
    recipe, workdir = run_copy
    weights = workdir.modules / "describe.pt"
    weights.write_bytes(weights.read_bytes()[:100])  # truncated
    result = _cli("assemble", "--workdir", workdir.root)
    _one_line_error(result, f"{weights} cannot be read", "modtrain train describe")
    messages = []
    from modtrain.pipeline import run_pipeline

    run_pipeline(recipe, workdir, CPU, say=messages.append)
    assert "train describe ..." in messages and "train find ..." not in messages
    load_module(workdir.modules, "describe")  # rebuilt, and matching its card again


def test_corrupt_checkpoint_starts_the_job_over(run_copy, caplog):
    recipe, workdir = run_copy
    recipe = recipe.with_overrides(["train.max_epochs=2", "train.patience=5"])
    checkpoint = workdir.modules / ".encoder.ckpt"
    checkpoint.write_bytes(b"\x80\x04 not a checkpoint")
    card = Job.for_module(workdir, recipe, "encoder", CPU).run()
    assert card["metrics"]["epochs"] == 2 and not checkpoint.exists()
    assert any(".encoder.ckpt cannot be read" in r.message for r in caplog.records)


def test_random_bytes_inside_a_cache_are_caught_by_its_checksums(run_copy):
    recipe, workdir = run_copy
    cache = workdir.cache("find", "train")
    with h5py.File(cache, "r") as f:
        chunk = f["value"].id.get_chunk_info(0)
    data = bytearray(cache.read_bytes())
    start = chunk.byte_offset + chunk.size // 2
    data[start:start + 64] = bytes(64)  # zeros over attention values: still a valid HDF5 file
    cache.write_bytes(bytes(data))
    with h5py.File(cache, "r") as f:
        assert f.attrs["producer"] == "find"  # its metadata still reads as up to date
    result = _cli("train", "measure", "--workdir", workdir.root)
    _one_line_error(result, f"{cache} cannot be read", "corrupt", "modtrain cache find")
    messages = []
    from modtrain.pipeline import run_pipeline

    run_pipeline(recipe, workdir, CPU, say=messages.append)
    assert "cache find ..." in messages  # rebuilt, then its consumers retrained only if it changed
    with h5py.File(cache, "r") as f:
        f["value"][()]  # every chunk passes its checksum again


def test_a_full_disk_is_one_line_and_the_previous_file_stays(run_copy, monkeypatch):
    recipe, workdir = run_copy
    before = _digests(workdir)
    real_save = torch.save

    def full(obj, path, *args, **kwargs):
        if str(path).endswith(".tmp") and "measure.pt" in str(path):
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(ModtrainError, match=r"no space left on the device while writing .*modules/measure.pt; "
                                            r"the previous file is unchanged"):
        Job.for_module(workdir, recipe.with_overrides(["train.max_epochs=1"]), "measure", CPU).run()
    after = _digests(workdir)
    assert after["modules/measure.pt"] == before["modules/measure.pt"]
    assert not list(workdir.modules.glob(".measure.pt.*.tmp"))


def test_a_second_run_on_a_busy_workdir_stops_naming_the_holder(run_copy):
    _, workdir = run_copy
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from modtrain.workdir import Workdir\n"
        f"with Workdir(Path({str(workdir.root)!r}), Path({str(workdir.data)!r})).lock():\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = _digests(workdir)
        start = time.perf_counter()
        result = _cli("run", "--workdir", workdir.root)
        _one_line_error(result, f"{workdir.root} is busy", f"pid {holder.pid}")
        assert time.perf_counter() - start < 10 and _digests(workdir) == before
    finally:
        holder.kill()
        holder.wait()
    result = _cli("cache", "encoder", "--workdir", workdir.root)  # the lock died with its holder
    assert result.exit_code == 0, result.output


def test_temp_files_of_a_killed_writer_are_removed_by_the_next_write(run_copy):
    recipe, workdir = run_copy
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = workdir.modules / f".encoder.json.{dead.stdout.strip()}.deadbeef.tmp"
    stale.write_text("half a card")
    alive = workdir.modules / f".encoder.json.{os.getpid()}.cafecafe.tmp"  # a writer still running: kept
    alive.write_text("being written")
    card = load_card(workdir.modules, "encoder")
    encoder, _ = load_module(workdir.modules, "encoder")
    save_module(workdir.modules, encoder, {k: v for k, v in card.items() if k != "weights_sha256"})
    assert not stale.exists() and alive.exists()


def test_a_resumed_job_logs_each_epoch_once(run_copy, monkeypatch):
    recipe, workdir = run_copy
    recipe = recipe.with_overrides(["train.max_epochs=3", "train.patience=5"])
    saves = {"n": 0}
    real_save = torch.save

    def killed_at_the_third_checkpoint(obj, path, *args, **kwargs):
        if ".encoder.ckpt" in str(path):
            saves["n"] += 1
            if saves["n"] == 3:  # epoch 3 is in the log, but its checkpoint never lands
                raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", killed_at_the_third_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        Job.for_module(workdir, recipe, "encoder", CPU).run()
    log = workdir.logs / "encoder.jsonl"
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2, 3]
    monkeypatch.setattr(torch, "save", real_save)
    Job.for_module(workdir, recipe, "encoder", CPU).run()  # resumes after epoch 2
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [1, 2, 3]


def test_divergence_without_a_nan_stops_with_nothing_saved(run_copy):
    _, workdir = run_copy
    before = _digests(workdir)
    result = _cli("train", "measure", "--workdir", workdir.root, "--set", "modules.measure.lr=1e12",
                  "--set", "train.max_epochs=5", "--set", "train.patience=5")
    _one_line_error(result, "measure: ", "nothing was saved", "learning rate")
    assert _digests(workdir) == before


def test_re_extracted_features_make_modules_and_caches_stale(run_copy):
    recipe, workdir = run_copy
    data = PreparedData(workdir.data)
    assert is_up_to_date(recipe, "encoder", data, workdir)
    for split in data.splits():  # new features, as 'data features --retrain' writes them
        with h5py.File(workdir.data / "features" / f"{split}.h5", "a") as f:
            f.attrs["backbone_sha256"] = "f" * 64
    data = PreparedData(workdir.data)
    assert not is_up_to_date(recipe, "encoder", data, workdir)
    from modtrain.cache import cache_status
    from modtrain.plan import make_plan

    assert "written for other data" in cache_status(workdir, make_plan(recipe), "find", "val",
                                                    data.split("val").fingerprint)


def test_features_from_two_backbones_or_of_another_split_are_refused(run_copy):
    _, workdir = run_copy
    features = workdir.data / "features"
    with h5py.File(features / "val.h5", "a") as f:
        f.attrs["backbone_sha256"] = "0" * 64
    result = _cli("assemble", "--workdir", workdir.root)
    _one_line_error(result, "but val.h5 by 000000000000", "every split must come from one backbone")
    shutil.copy(features / "test.h5", features / "val.h5")  # fewer rows than val's images
    result = _cli("assemble", "--workdir", workdir.root, "--split", "val")
    _one_line_error(result, f"{features / 'val.h5'} has", "rows, but questions of split 'val' refer to image")


def test_a_mixed_assembly_is_refused_naming_both_hashes(run_copy):
    _, workdir = run_copy
    card_path = workdir.modules / "describe.json"
    card = json.loads(card_path.read_text())
    card["inputs"]["find"] = "1234567890ab" + "0" * 52
    write_json(card_path, card)
    result = _cli("assemble", "--workdir", workdir.root)
    find = load_card(workdir.modules, "find")["weights_sha256"][:12]
    _one_line_error(result, "mixed assembly", "describe.json was trained on find 1234567890ab", f"is {find}")
