"""Per-epoch metrics as JSON lines and as TensorBoard events (train.loggers)."""
import dataclasses
import importlib.util
import json
import struct
from pathlib import Path

import pytest
from tensorboardX.proto import event_pb2

from modtrain.epoch_log import EpochLog, tag
from modtrain.errors import ModtrainError
from modtrain.recipe import Recipe

# the toy loop of test_training_settings (tests import in importlib mode: no package to import it from)
_spec = importlib.util.spec_from_file_location("training_settings",
                                               Path(__file__).with_name("test_training_settings.py"))
_toy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_toy)
Toy = _toy.Toy


def read_events(folder) -> list:
    """Every event of a folder's TensorBoard files (TFRecord: length, its CRC, the bytes, their CRC)."""
    events = []
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            events.append(event)
            at += 12 + length + 4
    return events


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list] = {}
    for event in read_events(folder):
        for value in event.summary.value:
            out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def test_every_epoch_reaches_both_logs(tmp_path):
    toy = Toy(tmp_path, {}, max_epochs=3)
    toy.run()
    lines = [json.loads(line) for line in (toy.workdir.logs / "toy.jsonl").read_text().splitlines()]
    assert [m["epoch"] for m in lines] == [1, 2, 3]
    logged = scalars(toy.workdir.tensorboard / "toy")
    for metric, name in (("train_loss", "loss/train"), ("val_loss", "loss/val"), ("val_accuracy", "accuracy/val"),
                         ("seconds", "time/epoch_seconds")):
        assert logged[name] == [(m["epoch"], pytest.approx(m[metric], rel=1e-6)) for m in lines]
    assert logged["train/lr"] == [(1, 0.5), (2, 0.5), (3, 0.5)]  # the optimizer's, as it stepped


def test_only_the_chosen_loggers_write(tmp_path):
    toy = Toy(tmp_path, {}, max_epochs=1)
    toy.config = dataclasses.replace(toy.config, loggers=("tensorboard",))
    toy.run()
    assert not (toy.workdir.logs / "toy.jsonl").exists() and scalars(toy.workdir.tensorboard / "toy")["loss/train"]
    quiet = Toy(tmp_path / "quiet", {}, max_epochs=1)
    quiet.config = dataclasses.replace(quiet.config, loggers=())
    quiet.run()
    assert not quiet.workdir.logs.exists() and not quiet.workdir.tensorboard.exists()


def test_a_resumed_job_drops_the_events_after_its_checkpoint(tmp_path):
    """Reopened on a history of two epochs, the writer marks step 3 as where the run restarts, so
    TensorBoard drops the events a killed run had written for epoch 3 and later."""
    history = [{"epoch": 1, "train_loss": 1.0}, {"epoch": 2, "train_loss": 0.9}]
    from modtrain.workdir import Workdir

    workdir = Workdir(tmp_path / "w", tmp_path / "d")
    log = EpochLog(workdir, "job", ("jsonl", "tensorboard"), history)
    log.write({"epoch": 3, "train_loss": 0.8, "val_gain": 0.12, "val_questions": 500}, lr=0.01)
    log.close()
    assert [json.loads(x)["epoch"] for x in (workdir.logs / "job.jsonl").read_text().splitlines()] == [1, 2, 3]
    events = read_events(workdir.tensorboard / "job")
    restarts = [e.step for e in events if e.HasField("session_log") and e.session_log.status == e.session_log.START]
    assert restarts == [3]
    logged = scalars(workdir.tensorboard / "job")
    assert logged["trust/gain"] == [(3, pytest.approx(0.12))] and "trust/questions" not in logged


def test_tags_and_the_setting():
    assert tag("val_gain_low") == "trust/gain_low" and tag("val_accuracy") == "accuracy/val"
    assert Recipe.load("nmn-typed").train_config("find").loggers == ("jsonl", "tensorboard")
    assert Recipe.load("nmn-typed", ["train.loggers=['jsonl']"]).train_config("find").loggers == ("jsonl",)
    with pytest.raises(ModtrainError, match=r"train.loggers = \['wandb'\]: must be a list of one of 'jsonl', "
                                            r"'tensorboard'"):
        Recipe.load("nmn-typed", ["train.loggers=['wandb']"])
    # where a job logs is not what it trained: the same job key either way
    assert Recipe.load("nmn-typed", ["train.loggers=[]"]).train_config("find").key() == \
        Recipe.load("nmn-typed").train_config("find").key()
