"""One training loop for every job (``modtrain.job`` says what a job trains on and computes).

Adam, the data shuffled every epoch, early stopping on validation accuracy, the best
epoch's weights kept, metrics per epoch as JSON lines (``logs/NAME.jsonl``), a checkpoint
per epoch so an interrupted job resumes, seeded and deterministic on CPU, CUDA + AMP
when present. A job can ask for more: a loss besides the answer's, another step after each
weight step, global-norm gradient clipping, and an exponential moving average of the weights,
which is then what is validated and kept (``_auxiliary_loss``, ``_after_step``,
``_training_settings``; a job passes on what its module asks through ``NMNModule``'s training hooks).
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from modtrain.card import load_card, load_weights
from modtrain.data import PreparedData, ReadAhead, shuffled_batches, window_batches
from modtrain.epoch_log import EpochLog
from modtrain.errors import ModtrainError
from modtrain.io import atomic_path, sha256_json
from modtrain.progress import progress
from modtrain.recipe import Recipe, TrainSection
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)


# An epoch whose mean training loss is this many times the loss of the job's first batch (the
# untrained module's) has diverged — a learning rate far too high — even without a NaN.
DIVERGED = 10.0


def _read_checkpoint(path: Path) -> dict | None:
    """A job's checkpoint, or None; an unreadable one (a killed write, a full disk) is dropped."""
    if not path.exists():
        return None
    try:
        # tensors, numbers and plain containers only: unpickling anything else could run code
        saved = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(saved, dict) or "key" not in saved:
            raise ValueError("not a modtrain checkpoint")
        return saved
    except Exception as e:  # noqa: BLE001 - any unreadable file means the same: start over
        log.warning("%s cannot be read (%s); the job starts from its first epoch", path, str(e).splitlines()[0][:100])
        path.unlink(missing_ok=True)
        return None


def _plain(value: Any) -> Any:
    """``value`` with numpy scalars and arrays as Python numbers and lists: what a checkpoint read
    with ``weights_only=True`` can hold (tensors, numbers, strings, plain containers)."""
    if isinstance(value, dict):
        return type(value)((k, _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return value


def cards_match(modules_dir, names: list[str], key: dict[str, Any]) -> bool:
    """Whether every named module has weights and a card recording this job key."""
    key_hash = sha256_json(key)
    for name in names:
        try:
            card = load_card(modules_dir, name)
        except ModtrainError:
            return False
        if card.get("job_key") != key_hash:
            return False
        try:
            load_weights(modules_dir, name, card)
        except ModtrainError as e:  # a stale artifact: said once, then rebuilt
            log.warning("%s", e)
            return False
    return True


class WeightAverage:
    """An exponential moving average of a model's floating-point state, with TensorFlow's
    warm-up: after n updates the decay is min(decay, (1 + n) / (10 + n)), so the average does not
    start as mostly the initial weights (Stack-NMN evaluates with such an average)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.updates = decay, 0
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        state = model.state_dict()
        for k, v in self.average.items():
            v.mul_(decay).add_(state[k].detach(), alpha=1 - decay)

    @contextlib.contextmanager
    def applied(self, model: torch.nn.Module):
        """The model holds the average inside the block, its own weights again after it."""
        own = {k: v.detach().clone() for k, v in model.state_dict().items() if k in self.average}
        model.load_state_dict(self.average, strict=False)
        try:
            yield
        finally:
            model.load_state_dict(own, strict=False)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, saved: dict) -> None:
        self.updates = saved["updates"]
        for k, v in saved["average"].items():
            self.average[k].copy_(v)


@contextlib.contextmanager
def _deterministic():
    """Deterministic kernels while a job trains. Without them the CPU backward of gathers
    (index_put with accumulation) varied in the last bits between processes, so the same job
    gave other weights in a Ray worker than in a long-running process."""
    enabled, warn_only = (torch.are_deterministic_algorithms_enabled(),
                          torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


def compile_modules(model: torch.nn.Module, backend: str) -> None:
    """``torch.compile`` (``nn.Module.compile``: the parameters and state dict stay as they are)
    of what a job calls: each module of a container (a job's ``ModuleDict``), else the model. A
    frame the backend fails on (no C++ compiler, an operation it lacks) runs eagerly: torch logs
    a warning and the job goes on (``suppress_errors``)."""
    import torch._dynamo

    torch._dynamo.config.suppress_errors = True
    containers = (torch.nn.ModuleDict, torch.nn.ModuleList)
    for module in (model.children() if isinstance(model, containers) else [model]):
        module.compile(backend=backend)


def backward_inputs(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> list | None:
    """What a backward should reach: only what ``optimizer`` steps where ``model`` trains other
    parameters itself (LNMN's α, in its after_step), so that no gradient is computed only to be
    discarded; None (everything) where the optimizer steps them all."""
    stepped = [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]
    learnable = {id(p) for p in model.parameters() if p.requires_grad}
    return stepped if {id(p) for p in stepped} != learnable else None


class TrainingLoop:
    """The loop every job runs. A job sets ``train_rows`` and ``val_rows``, ``model`` (what is
    optimized) and says how a batch is loaded and what it computes; the loop does the rest."""

    name: str
    workdir: Workdir
    recipe: Recipe
    device: torch.device
    data: PreparedData
    config: TrainSection
    seed: int
    key: dict[str, Any]
    model: torch.nn.Module
    train_rows: np.ndarray
    val_rows: np.ndarray

    # Called after every epoch with its metrics and the checkpoint file (Ray Tune reports through it).
    on_epoch: Callable[[dict[str, Any], Path], None] | None = None

    # -- what a job provides -----------------------------------------------------------------
    def _setup_data(self) -> None:
        """Sets ``train_rows`` and ``val_rows``: the labelled questions it trains and validates on."""
        raise NotImplementedError

    def _setup_model(self) -> None:
        """Sets ``model``: everything optimized."""
        raise NotImplementedError

    def _load(self, split: str, rows: np.ndarray) -> dict[str, Any]:
        raise NotImplementedError

    def _forward(self, batch: dict[str, Any]) -> torch.Tensor:
        """Answer log-probabilities of a batch."""
        raise NotImplementedError

    def _save(self, key_hash: str, state: dict) -> dict[str, Any]:
        """Write what was trained and its card(s); return the card."""
        raise NotImplementedError

    def _setup_optimizer(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config.lr,
                                          weight_decay=self.config.weight_decay)

    def _auxiliary_loss(self, batch: dict[str, Any]) -> torch.Tensor | float:
        """A training loss besides the answer's; none by default."""
        return 0.0

    def _after_step(self, epoch: int, batch: int) -> None:
        """After each weight step (another optimizer's step); nothing by default."""

    def _training_settings(self) -> dict[str, float]:
        """What the job asks of the loop: ``grad_clip`` (the global norm gradients are
        clipped to before each step) and ``ema_decay`` (validate and keep an exponential moving
        average of the weights); 0 or absent: neither."""
        return {}

    def _storage(self) -> tuple[np.ndarray, Callable[[np.ndarray], list] | None] | None:
        """For the window order: each training row's storage chunk (of the largest file it reads),
        and ``reads``: for question rows, [(a streamed source, the rows of it they read)] (None
        when nothing streams). None: no file to order by."""
        return None

    def _batches_ended(self) -> None:
        """Called when an epoch's training batches end: let go of what was kept for them."""

    def _epoch_batches(self, epoch: int) -> ReadAhead:
        """The epoch's training batches: shuffled uniformly, or, when the job key's ``order`` says so
        (streamed data), drawn from windows of storage chunks, each window read whole and ahead."""
        order = self.key.get("order")
        if order and not hasattr(self, "_storage_of"):  # the same every epoch
            self._storage_of = self._storage()
        storage = self._storage_of if order else None
        end = self._batches_ended
        if storage is None:
            return ReadAhead([(shuffled_batches(self.train_rows, self.config.batch_size, self.seed, epoch),
                               self.train_rows)], None, end)
        blocks, reads = storage
        return ReadAhead(window_batches(self.train_rows, blocks, self.config.batch_size, self.seed, epoch,
                                        order["window_chunks"]), reads, end)

    def _extra_state(self) -> dict[str, Any]:
        """What else a checkpoint must hold for the job to resume exactly (another optimizer's state)."""
        return {}

    def _restore_extra_state(self, saved: dict[str, Any]) -> None:
        """Restores ``_extra_state``'s contents from a checkpoint."""

    def _validate(self) -> dict[str, float]:
        """Validation NLL and accuracy of what the job trains on."""
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for rows in shuffled_batches(self.val_rows, self.config.batch_size * 4, None):
                batch = self._load("val", rows)
                log_probs = self._forward(batch).float()
                total_loss += F.nll_loss(log_probs, batch["answer"], reduction="sum").item()
                correct += (log_probs.argmax(1) == batch["answer"]).sum().item()
                count += len(rows)
        return {"val_loss": total_loss / max(1, count), "val_accuracy": correct / max(1, count)}

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, keep the best epoch, write the weights and card(s); return the card."""
        with _deterministic():
            torch.manual_seed(self.seed)
            self._setup_data()
            if len(self.train_rows) == 0 or len(self.val_rows) == 0:
                raise ModtrainError(
                    f"{self.name}: no labelled {'training' if len(self.train_rows) == 0 else 'validation'} questions "
                    f"for this job (a module trains on the questions whose path from it to the root crosses only "
                    f"modules trained before it or without parameters); does the data hold questions that use it?"
                    + (f" With data.max_train_depth = {self.recipe.data.max_train_depth}, only questions that shallow "
                       f"count: raise it, or leave the module out of the recipe ('modtrain report depth' does)"
                       if self.recipe.data.max_train_depth is not None else ""))
            self._setup_model()
            self.model.to(self.device)
            if self.config.compile != "off":
                compile_modules(self.model, self.config.compile)
            self._setup_optimizer()
            return self._fit()

    def _autocast(self):
        if self.device.type == "cuda" and self.config.amp:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def checkpoint_path(self) -> Path:
        return self.workdir.modules / f".{self.name}.ckpt"

    def _fit(self) -> dict[str, Any]:
        key_hash = sha256_json(self.key)
        state = {"epoch": 0, "best": None, "best_metrics": None, "bad_epochs": 0, "history": [], "seconds": 0.0,
                 "samples": 0}
        ckpt_path = self.checkpoint_path()
        settings = self._training_settings()
        clip = float(settings.get("grad_clip") or 0)
        average = WeightAverage(self.model, float(settings["ema_decay"])) if settings.get("ema_decay") else None
        saved = _read_checkpoint(ckpt_path)
        if saved is not None and saved["key"] == key_hash:
            self.model.load_state_dict(saved["model"])
            self.optimizer.load_state_dict(saved["optimizer"])
            torch.set_rng_state(saved["rng"])
            if average is not None:
                average.load_state_dict(saved["average"])
            self._restore_extra_state(saved.get("extra", {}))
            state = saved["state"]
            log.info("%s: resuming after epoch %d", self.name, state["epoch"])
        # the logs hold exactly the epochs the checkpoint holds (a run killed between writing an
        # epoch's line and its checkpoint would otherwise list that epoch twice)
        epoch_log = EpochLog(self.workdir, self.name, self.config.loggers, state["history"])
        try:
            return self._epochs(key_hash, state, ckpt_path, epoch_log, clip, average)
        finally:
            epoch_log.close()

    def _epochs(self, key_hash: str, state: dict, ckpt_path: Path, epoch_log: EpochLog, clip: float,
                average: WeightAverage | None) -> dict[str, Any]:
        patience = self.config.patience
        result = None

        def finished() -> bool:
            return state["epoch"] >= self.config.max_epochs or state["bad_epochs"] >= patience

        trained = [p for g in self.optimizer.param_groups for p in g["params"]]
        reached = backward_inputs(self.optimizer, self.model)
        while not finished():
            epoch = state["epoch"] + 1
            self.epoch = epoch
            self.model.train()
            start = time.perf_counter()
            batches = self._epoch_batches(epoch)
            train_loss = 0.0
            with progress(enumerate(batches, 1), f"{self.name} epoch {epoch}", len(batches)) as bar:
                for b, rows in bar:
                    batch = self._load("train", rows)
                    with self._autocast():
                        answer_loss = F.nll_loss(self._forward(batch).float(), batch["answer"])
                        loss = answer_loss + self._auxiliary_loss(batch)
                    if not torch.isfinite(loss):
                        raise ModtrainError(
                            f"{self.name}: the loss is {loss.item()} at epoch {epoch}, batch {b}; nothing was "
                            f"saved. Lower the learning rate (now {self.config.lr}) or check the inputs")
                    # the answer's loss alone: what divergence is judged on and what the log reports
                    # (an auxiliary term such as LNMN's −λ_w·entropy can make the total negative)
                    state.setdefault("first_loss", answer_loss.item())
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward(inputs=reached)
                    if clip > 0:
                        torch.nn.utils.clip_grad_norm_(trained, clip)
                    self.optimizer.step()
                    if average is not None:
                        average.update(self.model)
                    self._after_step(epoch, b)
                    train_loss += answer_loss.item() * len(rows)
            seconds = time.perf_counter() - start
            if train_loss / len(self.train_rows) > DIVERGED * state["first_loss"]:
                raise ModtrainError(
                    f"{self.name}: training diverged: the loss of epoch {epoch} is "
                    f"{train_loss / len(self.train_rows):.4g}, over {DIVERGED:g}× that of its first batch "
                    f"({state['first_loss']:.4g}); nothing was saved. Lower the learning rate (now {self.config.lr})")
            with average.applied(self.model) if average is not None else contextlib.nullcontext():
                # with an average, it is what is validated and kept (``best`` is taken inside)
                metrics = {"epoch": epoch, "train_loss": train_loss / len(self.train_rows), **self._validate(),
                           "seconds": round(seconds, 3)}
                better = (state["best_metrics"] is None
                          or metrics["val_accuracy"] > state["best_metrics"]["val_accuracy"])
                if better:
                    state["best"] = copy.deepcopy({k: v.cpu() for k, v in self.model.state_dict().items()})
            state["seconds"] += seconds
            state["samples"] += len(self.train_rows)
            state["history"].append(metrics)
            epoch_log.write(metrics, self.optimizer.param_groups[0]["lr"])
            log.info("%s epoch %d: %s", self.name, epoch,
                     ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            if better:
                state["best_metrics"] = metrics
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            with atomic_path(ckpt_path) as tmp:
                torch.save(_plain({"key": key_hash, "model": self.model.state_dict(),
                                   "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
                                   "state": state, "extra": self._extra_state(),
                                   **({"average": average.state_dict()} if average is not None else {})}), tmp)
            if finished():  # the card before the last report: a scheduler may stop the job at that report
                self.model.load_state_dict(state["best"])
                result = self._save(key_hash, state)
            if self.on_epoch is not None:
                self.on_epoch(metrics, ckpt_path)
        if result is None:  # resumed from the checkpoint of a job that had finished
            self.model.load_state_dict(state["best"])
            result = self._save(key_hash, state)
        ckpt_path.unlink(missing_ok=True)
        return result

    def _card_fields(self, key_hash: str, state: dict) -> dict[str, Any]:
        """What every card of this job records: settings, data, metrics, timings."""
        best = state["best_metrics"]
        return {
            "job_key": key_hash,
            "train": dataclasses.asdict(self.config),
            "seed": self.seed,
            "data_fingerprint": self.key["data_fingerprint"],
            "vocab_sha256": self.data.vocab_sha256,
            # the epoch kept is the one of best validation accuracy; its loss is that epoch's
            "metrics": {"selected_on": "val_accuracy", "best_epoch": best["epoch"], "epochs": state["epoch"],
                        "val_accuracy": best["val_accuracy"],
                        "val_loss": best["val_loss"], "train_loss": best["train_loss"],
                        "train_questions": int(len(self.train_rows)), "val_questions": int(len(self.val_rows))},
            "timings": {"train_seconds": round(state["seconds"], 2),
                        "samples_per_second": round(state["samples"] / max(state["seconds"], 1e-9), 1)},
        }
