"""Bad values and I/O failures the first fault round let through: each is refused with one line
(click's usage errors exit 2, modtrain's errors 1), before anything is written or replaced."""
import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from modtrain.datasets.features import features_command, features_path
from modtrain.datasets.prepare import prepare

from modtrain.cli import main
from modtrain.epoch_log import EpochLog
from modtrain.errors import ModtrainError, io_error_line
from modtrain.io import atomic_path
from modtrain.reports.compare import run_compare
from modtrain.workdir import Workdir

FIXTURE20 = Path(__file__).parent.parent / "fixtures" / "vqa20"


def _one_line_error(result, exit_code, pattern):
    assert result.exit_code == exit_code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert re.search(pattern, lines[-1]), lines
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args, option", [
    (["data", "generate", "D", "--images", "0"], "--images"),
    (["data", "generate", "D", "--images", "-5"], "--images"),
    (["data", "generate", "D", "--questions-per-image", "0"], "--questions-per-image"),
    (["data", "generate", "D", "--val-images", "0"], "--val-images"),
    (["data", "generate", "D", "--workers", "-1"], "--workers"),
    (["data", "features", "D", "--batch-size", "0"], "--batch-size"),
    (["data", "features", "D", "--pretrain-images", "0"], "--pretrain-images"),
    (["data", "features", "D", "--pretrain-epochs", "0"], "--pretrain-epochs"),
    (["tune", "find", "--retries", "-1"], "--retries"),
    (["tune", "find", "--cpus-per-trial", "0"], "--cpus-per-trial"),
    (["tune", "find", "--cpus-per-job", "0"], "--cpus-per-job"),
    (["report", "depth", "--min-questions", "-1"], "--min-questions"),
    (["report", "compare", "--seeds", "0"], "--seeds"),
    (["report", "compare", "--tune", "-1"], "--tune"),
])
def test_out_of_range_numbers_are_refused_before_anything_runs(tmp_path, args, option):
    args = [str(tmp_path / "D") if a == "D" else a for a in args]
    if args[:2] == ["data", "features"]:
        (tmp_path / "D").mkdir()
    result = CliRunner().invoke(main, args)
    _one_line_error(result, 2, rf"Invalid value for '{option}'.*not in the range")
    assert not (tmp_path / "D").exists() or not any((tmp_path / "D").iterdir())


def test_compare_refuses_a_recipe_with_one_module(tmp_path):
    with pytest.raises(ModtrainError, match=r"recipe film has one module \(film\).*nothing to compare.*"
                                            r"--system 'FiLM'"):
        run_compare(tmp_path / "c", 1, torch.device("cpu"), recipe_name="film")
    assert not (tmp_path / "c").exists()


def _vqa(tmp_path) -> Path:
    data = tmp_path / "vqa"
    shutil.copytree(FIXTURE20, data)
    return data


def test_prepare_refuses_a_repeated_question_id(tmp_path):
    data = _vqa(tmp_path)
    path = data / "Questions" / "OpenEnded_mscoco_train2014_questions.json"
    raw = json.loads(path.read_text())
    raw["questions"][5]["question_id"] = raw["questions"][2]["question_id"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ModtrainError, match=rf"{path.name}: question 5 repeats question_id "
                                            rf"{raw['questions'][2]['question_id']} \(question 2\)"):
        prepare(data)
    assert not (data / "train2014.h5").exists()


def test_prepare_refuses_an_annotation_without_answers(tmp_path):
    data = _vqa(tmp_path)
    path = data / "Annotations" / "mscoco_val2014_annotations.json"
    raw = json.loads(path.read_text())
    raw["annotations"][1]["answers"] = []
    path.write_text(json.dumps(raw))
    with pytest.raises(ModtrainError, match=rf"{path.name}: annotation 1 \(question_id \d+\) has no answers"):
        prepare(data)


def test_clevr_cnn_refuses_weights_it_would_ignore(tiny_clevr, tmp_path):
    with pytest.raises(ModtrainError, match=r"--weights junk.pt: clevr-cnn keeps its own weights .*clevr-cnn.pt.*"
                                            r"--backbone resnet101"):
        features_command(tiny_clevr, "clevr-cnn", weights="junk.pt")


def test_from_h5_refuses_a_file_that_names_another_split(tiny_clevr, tmp_path):
    """val and test have 8 images each: the row count alone would take val's file as test's."""
    data = tmp_path / "clevr"
    shutil.copytree(tiny_clevr, data)
    sources = tmp_path / "elsewhere"
    sources.mkdir()
    sizes = {"train": 30, "val": 8, "test": 8}
    for split, n in sizes.items():
        with h5py.File(sources / f"{split}_features.h5", "w") as f:
            f["features"] = np.zeros((n, 4, 2, 2), np.float32)
            f.attrs["split"] = "val" if split == "test" else split
    with pytest.raises(ModtrainError, match=r"test_features.h5: its attribute split = 'val', but it would stand for "
                                            r"split 'test'"):
        features_command(data, from_h5=str(sources / "{split}_features.h5"))
    assert not any(features_path(data, s).exists() for s in sizes)  # all or none


def test_ctrl_c_exits_130_with_one_line(monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("modtrain.recipe.shipped_recipes", interrupted)
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 130, result.output
    assert result.output.strip().splitlines() == ["interrupted; what was finished is kept: the same command resumes"]


@pytest.mark.parametrize("error, line", [
    (PermissionError(errno.EACCES, "Permission denied", "/w/run/.modtrain.lock"),
     "/w/run/.modtrain.lock: Permission denied; it must be writable by you"),
    (OSError(errno.EROFS, "Read-only file system", "/w/run/modules"),
     "/w/run/modules: Read-only file system; it is on a read-only file system: choose another folder"),
    (OSError(errno.ENOSPC, "No space left on device"), "No space left on device; free some space"),
    (RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file data/0: "
                  "file write failed"), "an I/O error: [enforce fail at inline_container.cc:664]"),
])
def test_io_errors_are_one_line(monkeypatch, error, line):
    assert io_error_line(error).startswith(line)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr("modtrain.recipe.shipped_recipes", failing)
    result = CliRunner().invoke(main, ["recipes"])
    _one_line_error(result, 1, "^Error: " + line.replace("[", r"\[").replace(".", r"\.").replace("(", r"\("))


def test_other_runtime_errors_are_not_hidden():
    assert io_error_line(RuntimeError("mat1 and mat2 shapes cannot be multiplied")) is None
    assert io_error_line(ValueError("x")) is None


def test_the_previous_log_stays_until_a_new_epoch_is_written(tmp_path):
    workdir = Workdir(tmp_path / "run", tmp_path / "data")
    workdir.logs.mkdir(parents=True)
    log = workdir.logs / "find.jsonl"
    log.write_text('{"epoch": 1}\n{"epoch": 2}\n')
    EpochLog(workdir, "find", ("jsonl",), []).close()  # a new run that died before its first epoch
    assert log.read_text() == '{"epoch": 1}\n{"epoch": 2}\n'
    epoch_log = EpochLog(workdir, "find", ("jsonl",), [{"epoch": 1, "val_loss": 0.5}])  # resumed after epoch 1
    epoch_log.write({"epoch": 2, "val_loss": 0.4}, 0.001)
    epoch_log.write({"epoch": 3, "val_loss": 0.3}, 0.001)
    epoch_log.close()
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1, 2, 3]


@contextlib.contextmanager
def _tmpfs(path: Path, options: str):
    """A tmpfs mounted at ``path``, where this machine lets a test mount one (else the test is skipped)."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode().strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 512 KiB disk."""
    with _tmpfs(tmp_path / "disk", "size=512k") as mount:
        yield mount


def test_a_full_disk_while_saving_a_checkpoint_is_one_error_and_keeps_the_old_file(tiny_disk):
    target = tiny_disk / ".find.ckpt"
    torch.save({"w": torch.zeros(10)}, target)
    before = target.read_bytes()
    with pytest.raises(ModtrainError, match=rf"no space left on the device while writing {target}; "
                                            r"the previous file is unchanged"):
        with atomic_path(target) as tmp:
            torch.save({"w": torch.zeros(1 << 20)}, tmp)  # 4 MiB
    assert target.read_bytes() == before
    assert [p.name for p in tiny_disk.iterdir()] == [".find.ckpt"]


def test_a_full_disk_while_writing_hdf5_is_one_error(tiny_disk):
    target = tiny_disk / "val.h5"
    with pytest.raises(ModtrainError, match=rf"no space left on the device while writing {target}; nothing was"):
        with atomic_path(target) as tmp:
            with h5py.File(tmp, "w") as f:
                f["value"] = np.zeros((1 << 20,), np.float32)
    assert not os.listdir(tiny_disk)


@pytest.mark.slow
def test_run_refuses_features_that_do_not_fit_and_rebuilds_nothing(tiny_run, tmp_path):
    """A data folder of the user's whose train features have a row too few: run stops up front,
    naming the split and the command that extracts them again; the backbone and the file stay."""
    _, workdir, _, _ = tiny_run
    data = tmp_path / "data"
    shutil.copytree(workdir.data, data)
    bad = data / "features" / "train.h5"
    with h5py.File(bad, "r") as f:
        rows = f["features"][:-1]
    with h5py.File(bad, "w") as f:
        f["features"] = rows
    before = {p.name: p.read_bytes() for p in (data / "features").iterdir()}
    result = CliRunner().invoke(main, ["run", "--recipe", str(workdir.root / "recipe.toml"), "--data", str(data),
                                       "--workdir", str(tmp_path / "run"), "--device", "cpu"])
    _one_line_error(result, 1, rf"train.h5: 'features' has {len(rows)} rows but the split has {len(rows) + 1} "
                               rf"images.*split 'train'.*modtrain data features {data} --retrain.*nothing was changed")
    assert {p.name: p.read_bytes() for p in (data / "features").iterdir()} == before


@pytest.mark.parametrize("text, message", [
    ("loguniform(1e-1, 1e-5)",
     r"the lower bound 0.1 must be below the upper bound 1e-05, e.g. loguniform\(1e-05, 0.1\)"),
    ("uniform(0.5, 0.5)", r"the lower bound 0.5 must be below the upper bound 0.5"),
    ("randint(8, 2)", r"the lower bound 8 must be below"),
    ("loguniform(0, 1)", r"loguniform needs bounds above 0"),
    ("uniform(0)", r"uniform takes a lower and an upper bound"),
    ("choice([])", r"choice takes one non-empty list"),
])
def test_search_ranges_are_checked_before_ray_starts(text, message):
    from modtrain.tune import parse_expression

    with pytest.raises(ModtrainError, match=rf"search.find.lr: '{re.escape(text)}': {message}"):
        parse_expression(text, "search.find.lr")


def test_a_bad_set_value_is_blamed_on_the_set():
    from modtrain.recipe import Recipe

    with pytest.raises(ModtrainError, match=r"^--set train.lr=-1: train.lr"):
        Recipe.load("nmn-typed", ["train.max_epochs=3", "train.lr=-1"])
    recipe = Recipe.load("nmn-typed")
    with pytest.raises(ModtrainError, match=r"^--set data.val_split='train' --set data.train_split='train': "):
        recipe.with_overrides(["data.val_split='train'", "data.train_split='train'"])
    with pytest.raises(ModtrainError, match=r"^--set train.bogus=1: unknown key train.bogus"):
        recipe.with_overrides(["train.bogus=1"])


@pytest.fixture
def listening():
    """A local TCP service (a web server, or one that never answers), on a free port."""
    import http.server
    import socket
    import threading

    servers = []

    def start(kind):
        if kind == "http":
            server = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server.shutdown)
            return server.server_address[1]
        quiet = socket.socket()
        quiet.bind(("127.0.0.1", 0))
        quiet.listen(4)
        servers.append(quiet.close)
        return quiet.getsockname()[1]

    yield start
    for stop in servers:
        stop()


def test_an_address_that_is_not_ray_is_refused_at_once(listening):
    import time

    from modtrain.distributed import _reachable

    port = listening("http")
    start = time.monotonic()
    with pytest.raises(ModtrainError, match=rf"'127.0.0.1:{port}' is not a Ray cluster: it answered '<!DOCTYPE' "
                                            r"where Ray's GCS speaks gRPC; start one with 'ray start --head'"):
        _reachable(f"127.0.0.1:{port}")
    port = listening("quiet")
    with pytest.raises(ModtrainError, match=rf"'127.0.0.1:{port}' accepts connections but did not answer as a Ray "
                                            r"cluster within 0.5 s"):
        _reachable(f"127.0.0.1:{port}", timeout=0.5)
    assert time.monotonic() - start < 5


def test_a_failed_trial_is_reported_by_its_cause():
    from modtrain.tune import error_line

    wrapped = RuntimeError("ray::ImplicitFunc.train() (pid=123, ip=10.0.0.1)\n  File \"x.py\", line 3, in f\n"
                           "modtrain.errors.ModtrainError: find: the loss is nan at epoch 1, batch 3; "
                           "nothing was saved")
    assert error_line(wrapped) == "find: the loss is nan at epoch 1, batch 3; nothing was saved"

    class TaskError(Exception):
        def __init__(self, cause):
            super().__init__("ray::ImplicitFunc.train() (pid=1)")
            self.cause = cause

    assert error_line(TaskError(ModtrainError("tuning find needs encoder's cache"))) == \
        "tuning find needs encoder's cache"
    assert error_line(RuntimeError("ray::train()\n  File \"x\"\nValueError: bad")) == "ValueError: bad"


@pytest.fixture
def read_only(tmp_path):
    """A read-only file system."""
    with _tmpfs(tmp_path / "ro", "size=64k,ro") as mount:
        yield mount


@pytest.mark.parametrize("args", [
    ["data", "generate", "{ro}/data", "--images", "2", "--workers", "0"],
    ["train", "encoder", "--recipe", "nmn-typed", "--workdir", "{ro}/run", "--device", "cpu"],
])
def test_a_read_only_folder_is_one_line(read_only, args):
    result = CliRunner().invoke(main, [a.format(ro=read_only) for a in args])
    _one_line_error(result, 1, rf"^Error: .*{read_only}.*Read-only file system")


@pytest.mark.slow
def test_ctrl_c_during_generate_stops_the_workers_quietly(tmp_path):
    import signal
    import sys
    import time

    modtrain = str(Path(sys.executable).parent / "modtrain")
    # SIGINT as a shell leaves it (a test process may have inherited it ignored, which the child would too)
    process = subprocess.Popen([modtrain, "data", "generate", str(tmp_path / "d"), "--images", "3000",
                                "--workers", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    # interrupt once the worker has rendered an image: by then the command is inside generate (a
    # fixed delay after the folder appears was sometimes still in start-up on a loaded machine)
    deadline = time.time() + 120
    while not any((tmp_path / "d").rglob("*.png")) and time.time() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "interrupted; what was finished is kept" in err


def test_an_error_closes_the_hdf5_files_left_open_at_exit(tmp_path, monkeypatch):
    import atexit

    import modtrain.cli as cli

    registered = []
    monkeypatch.setattr(atexit, "register", registered.append)

    def failing(*args, **kwargs):
        raise ModtrainError("stop here")

    monkeypatch.setattr("modtrain.recipe.shipped_recipes", failing)
    result = CliRunner().invoke(main, ["recipes"])
    assert result.exit_code == 1 and result.output.strip() == "Error: stop here"
    assert registered == [cli._close_hdf5]
    # in a process of its own: this one's session fixtures hold HDF5 files open
    import sys

    code = (f"import h5py, numpy as np\nfrom modtrain.cli import _close_hdf5\n"
            f"f = h5py.File({str(tmp_path / 'open.h5')!r}, 'w'); f['x'] = np.zeros(3); d = f['x']\n"
            f"_close_hdf5(); print(f.id.valid, d.id.valid)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["0", "0"]
