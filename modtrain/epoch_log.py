"""Where a job's per-epoch metrics go (``train.loggers``): JSON lines in ``logs/JOB.jsonl``, and
TensorBoard event files in ``tensorboard/JOB`` of the workdir (``tensorboard --logdir W/tensorboard``).

A resumed job's logs hold exactly the epochs its checkpoint holds: the JSON lines are rewritten
from the checkpoint's history, and TensorBoard discards events from the epoch the job resumes at.
"""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from modtrain.io import write_text

if TYPE_CHECKING:
    from modtrain.workdir import Workdir

LOGGERS = ("jsonl", "tensorboard")

# TensorBoard tags by metric, grouped into panels; the trust statistics go under trust/
_TAGS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "accuracy/val",
         "seconds": "time/epoch_seconds", "lr": "train/lr"}


def tag(metric: str) -> str:
    """The TensorBoard tag of a metric (``val_gain`` → ``trust/gain``)."""
    return _TAGS.get(metric) or f"trust/{metric.removeprefix('val_')}"


class EpochLog:
    """The loggers of one job, opened on the epochs it already has (a resumed job's history)."""

    def __init__(self, workdir: Workdir, name: str, loggers: tuple[str, ...], history: list[dict[str, Any]]):
        self.jsonl = workdir.logs / f"{name}.jsonl" if "jsonl" in loggers else None
        self.writer = None
        # the lines of the epochs the job already has: the file is replaced by them, atomically,
        # when the first new epoch is written, so a job that dies before one (a full disk, Ctrl-C)
        # leaves the previous run's log as it was
        self._history = [json.dumps(m) + "\n" for m in history]
        if "tensorboard" in loggers:
            from tensorboardX import SummaryWriter

            # purge_step: events of epochs after the checkpoint (a run killed mid-way) are dropped
            self.writer = SummaryWriter(str(workdir.tensorboard / name), purge_step=len(history) + 1,
                                        flush_secs=30)

    def write(self, metrics: dict[str, Any], lr: float) -> None:
        """One epoch's metrics (``metrics["epoch"]`` is the step)."""
        if self.jsonl is not None:
            if self._history is not None:
                self.jsonl.parent.mkdir(parents=True, exist_ok=True)
                write_text(self.jsonl, "".join(self._history) + json.dumps(metrics) + "\n")
                self._history = None
            else:
                with open(self.jsonl, "a") as f:
                    f.write(json.dumps(metrics) + "\n")
        if self.writer is not None:
            for key, value in {**metrics, "lr": lr}.items():
                if key not in ("epoch", "val_questions") and isinstance(value, (int, float)):
                    self.writer.add_scalar(tag(key), value, metrics["epoch"])
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
