"""One training loop for every module, each module trained as its own job.

Adam, the data shuffled every epoch, early stopping on validation accuracy, the best
epoch's weights kept, metrics per epoch as JSON lines (``logs/NAME.jsonl``), a checkpoint
per epoch so an interrupted job resumes, seeded and deterministic on CPU, CUDA + AMP
when present. Each module's job differs only in its setup steps: which questions it
trains on, what it reads (tokens, features, caches) and what it computes.
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from modtrain.cache import open_cache
from modtrain.card import load_card, save_module, weights_path, weights_sha256
from modtrain.data import PreparedData, shuffled_batches
from modtrain.errors import ModtrainError
from modtrain.execute import Executor
from modtrain.io import atomic_path, sha256_json
from modtrain.plan import make_plan
from modtrain.progress import progress
from modtrain.recipe import Recipe
from modtrain.registry import build_module, surrogate_class
from modtrain.types import attend, get_interface
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)


def job_key(recipe: Recipe, name: str, data: PreparedData, workdir: Workdir) -> dict[str, Any]:
    """Everything a trained module depends on; a card whose key differs is out of date."""
    consumes = make_plan(recipe).module(name).consumes
    inputs = {producer: weights_sha256(workdir.modules, producer) for producer in consumes}
    config = {k: v for k, v in recipe.train_config(name).items() if k not in ("device", "num_workers", "amp")}
    return {"interface": recipe.interface, "seed": recipe.seed, "hyperparameters": recipe.module_hparams(name),
            "train": config, "surrogate": recipe.surrogate(name), "data_fingerprint": data.fingerprint,
            "inputs": inputs}


def cards_match(modules_dir, names: list[str], key: dict[str, Any]) -> bool:
    """Whether every named module has weights and a card recording this job key."""
    key_hash = sha256_json(key)
    for name in names:
        try:
            card = load_card(modules_dir, name)
        except ModtrainError:
            return False
        if card.get("job_key") != key_hash or not weights_path(modules_dir, name).exists():
            return False
    return True


def is_up_to_date(recipe: Recipe, name: str, data: PreparedData, workdir: Workdir) -> bool:
    """Whether ``modules/NAME`` was trained with this recipe, data and producers."""
    return cards_match(workdir.modules, [name], job_key(recipe, name, data, workdir))


@contextlib.contextmanager
def _deterministic():
    """Deterministic kernels while a job trains. Without them the CPU backward of gathers
    (index_put with accumulation) varied in the last bits between processes, so the same job
    gave other weights in a Ray worker than in a long-running process."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)


class ModuleJob:
    """Trains one module. Subclasses set up data and model and say what a batch computes."""

    name: str

    # Called after every epoch with its metrics and the checkpoint file (Ray Tune reports through it).
    on_epoch: Callable[[dict[str, Any], Path], None] | None = None

    def __init__(self, workdir: Workdir, recipe: Recipe, device: torch.device, data: PreparedData | None = None):
        self.workdir, self.recipe, self.device = workdir, recipe, device
        self.data = data or PreparedData(workdir.data)
        self.interface = get_interface(recipe.interface)
        self.config = recipe.train_config(self.name)
        self.seed = recipe.seed
        self.key = self._job_key()

    def _job_key(self) -> dict[str, Any]:
        return job_key(self.recipe, self.name, self.data, self.workdir)

    # -- setup steps -------------------------------------------------------------------------
    def _labelled(self, split, mask=None) -> np.ndarray:
        keep = split.answer >= 0
        if mask is not None:
            keep &= mask
        return np.flatnonzero(keep)

    def _setup_data(self) -> None:
        raise NotImplementedError

    def _setup_model(self) -> None:
        """Sets ``self.module`` (kept) and ``self.model`` (everything optimized)."""
        raise NotImplementedError

    def _setup_optimizer(self) -> None:
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.config["lr"],
                                          weight_decay=self.config["weight_decay"])

    def _load(self, split: str, rows: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Answer log-probabilities of a batch."""
        raise NotImplementedError

    def _card_extra(self, best: dict[str, float]) -> dict[str, Any]:
        """More card fields, given the best epoch's metrics."""
        return {}

    # -- validation --------------------------------------------------------------------------
    def _validate(self) -> dict[str, float]:
        """Validation NLL and accuracy of what the module trains on."""
        self.model.eval()
        total_loss, correct, count = 0.0, 0, 0
        with torch.no_grad():
            for rows in shuffled_batches(self.val_rows, self.config["batch_size"] * 4, None):
                batch = self._load("val", rows)
                log_probs = self._forward(batch).float()
                total_loss += F.nll_loss(log_probs, batch["answer"], reduction="sum").item()
                correct += (log_probs.argmax(1) == batch["answer"]).sum().item()
                count += len(rows)
        return {"val_loss": total_loss / max(1, count), "val_accuracy": correct / max(1, count)}

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train, keep the best epoch, write ``modules/NAME.pt`` and its card; return the card."""
        with _deterministic():
            torch.manual_seed(self.seed)
            self._setup_data()
            if len(self.train_rows) == 0 or len(self.val_rows) == 0:
                raise ModtrainError(f"{self.name}: no labelled training or validation questions for this module")
            self._setup_model()
            self.model.to(self.device)
            self._setup_optimizer()
            return self._fit()

    def _autocast(self):
        if self.device.type == "cuda" and self.config["amp"]:
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def checkpoint_path(self):
        return self.workdir.modules / f".{self.name}.ckpt"

    def _fit(self) -> dict[str, Any]:
        key_hash = sha256_json(self.key)
        state = {"epoch": 0, "best": None, "best_metrics": None, "bad_epochs": 0, "history": [], "seconds": 0.0,
                 "samples": 0}
        ckpt_path = self.checkpoint_path()
        log_path = self.workdir.logs / f"{self.name}.jsonl"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        if ckpt_path.exists():
            saved = torch.load(ckpt_path, map_location="cpu", weights_only=False)
            if saved["key"] == key_hash:
                self.model.load_state_dict(saved["model"])
                self.optimizer.load_state_dict(saved["optimizer"])
                torch.set_rng_state(saved["rng"])
                state = saved["state"]
                log.info("%s: resuming after epoch %d", self.name, state["epoch"])
        if state["epoch"] == 0:
            log_path.write_text("")
        batch_size, patience = self.config["batch_size"], self.config["patience"]
        while state["epoch"] < self.config["max_epochs"] and state["bad_epochs"] < patience:
            epoch = state["epoch"] + 1
            self.model.train()
            start = time.perf_counter()
            batches = shuffled_batches(self.train_rows, batch_size, self.seed, epoch)
            train_loss = 0.0
            with progress(enumerate(batches, 1), f"{self.name} epoch {epoch}", len(batches)) as bar:
                for b, rows in bar:
                    batch = self._load("train", rows)
                    with self._autocast():
                        loss = F.nll_loss(self._forward(batch).float(), batch["answer"])
                    if not torch.isfinite(loss):
                        raise ModtrainError(
                            f"{self.name}: the loss is {loss.item()} at epoch {epoch}, batch {b}; nothing was "
                            f"saved. Lower the learning rate (now {self.config['lr']}) or check the inputs")
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                    train_loss += loss.item() * len(rows)
            seconds = time.perf_counter() - start
            metrics = {"epoch": epoch, "train_loss": train_loss / len(self.train_rows), **self._validate(),
                       "seconds": round(seconds, 3)}
            state["seconds"] += seconds
            state["samples"] += len(self.train_rows)
            state["history"].append(metrics)
            with open(log_path, "a") as f:
                f.write(json.dumps(metrics) + "\n")
            log.info("%s epoch %d: %s", self.name, epoch,
                     ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
            if state["best_metrics"] is None or metrics["val_accuracy"] > state["best_metrics"]["val_accuracy"]:
                state["best"] = copy.deepcopy({k: v.cpu() for k, v in self.model.state_dict().items()})
                state["best_metrics"] = metrics
                state["bad_epochs"] = 0
            else:
                state["bad_epochs"] += 1
            state["epoch"] = epoch
            with atomic_path(ckpt_path) as tmp:
                torch.save({"key": key_hash, "model": self.model.state_dict(),
                            "optimizer": self.optimizer.state_dict(), "rng": torch.get_rng_state(),
                            "state": state}, tmp)
            if self.on_epoch is not None:
                self.on_epoch(metrics, ckpt_path)
        self.model.load_state_dict(state["best"])
        result = self._save(key_hash, state)
        ckpt_path.unlink(missing_ok=True)
        return result

    def _card_fields(self, key_hash: str, state: dict) -> dict[str, Any]:
        """What every card of this job records: settings, data, metrics, timings."""
        best = state["best_metrics"]
        return {
            "job_key": key_hash,
            "train": self.config,
            "seed": self.seed,
            "data_fingerprint": self.key["data_fingerprint"],
            "vocab_sha256": self.data.vocab_sha256,
            "metrics": {"best_epoch": best["epoch"], "epochs": state["epoch"], "val_accuracy": best["val_accuracy"],
                        "val_loss": best["val_loss"], "train_loss": best["train_loss"],
                        "train_questions": int(len(self.train_rows)), "val_questions": int(len(self.val_rows))},
            "timings": {"train_seconds": round(state["seconds"], 2),
                        "samples_per_second": round(state["samples"] / max(state["seconds"], 1e-9), 1)},
        }

    def _save(self, key_hash: str, state: dict) -> dict[str, Any]:
        """Write the trained module and its card; return the card."""
        return save_module(self.workdir.modules, self.module, {
            **self._card_fields(key_hash, state), "inputs": self.key["inputs"],
            **self._card_extra(state["best_metrics"]),
        })


class EncoderJob(ModuleJob):
    """Question → answer: the prior (decoupled input, direct supervision)."""

    name = "encoder"

    def _setup_data(self) -> None:
        self.splits = {s: self.data.split(s) for s in ("train", "val")}
        self.train_rows = self._labelled(self.splits["train"])
        self.val_rows = self._labelled(self.splits["val"])

    def _setup_model(self) -> None:
        self.module = build_module("encoder", self.interface, self.data.dims(), [],
                                   **self.recipe.module_hparams("encoder"))
        self.model = self.module

    def _load(self, split, rows):
        s = self.splits[split]
        return {"tokens": torch.from_numpy(s.tokens[rows]).long().to(self.device),
                "lengths": torch.from_numpy(s.lengths[rows]).long(),
                "answer": torch.from_numpy(s.answer[rows]).long().to(self.device)}

    def _forward(self, batch):
        return F.log_softmax(self.module(batch["tokens"], batch["lengths"]), dim=-1)


class _RootJob(ModuleJob):
    """Shared by jobs that need each question's root module and, in typed, the prior."""

    def _root_rows(self, split, modules: tuple[str, ...]):
        root_modules, root_instances = self.data.roots(split)
        return self._labelled(split, np.isin(root_modules, modules)), root_modules, root_instances

    def _prior(self, split: str):
        if not self.interface.train_with_prior():
            return None
        return open_cache(self.workdir, "encoder", split, self.data.split(split).fingerprint, "prior_logits")


class FindJob(_RootJob):
    """find through a surrogate gradient module (decoupled input, indirect supervision; §5.2)."""

    name = "find"

    def _setup_data(self) -> None:
        self.splits, self.features, self.priors, self.root_ids, self.is_measure = {}, {}, {}, {}, {}
        names = {}
        for s in ("train", "val"):
            split = self.splits[s] = self.data.split(s)
            rows, modules, instances = self._root_rows(split, ("describe", "measure"))
            setattr(self, f"{s}_rows", rows)
            names[s] = np.array([f"{m}[{i}]" for m, i in zip(modules, instances)], dtype=object)
            self.is_measure[s] = modules == "measure"
            self.features[s] = split.features()
            self.priors[s] = self._prior(s)
        # the surrogate's read-out is per root instance (describe[color], measure[count], ...)
        self.roots = sorted(set(names["train"][self.train_rows]))
        index = {r: i for i, r in enumerate(self.roots)}
        for s in ("train", "val"):
            rows = getattr(self, f"{s}_rows")
            unknown = sorted(set(names[s][rows]) - set(index))
            if unknown:
                raise ModtrainError(f"{s} questions have root(s) {', '.join(unknown)}, never seen in training")
            self.root_ids[s] = np.array([index.get(n, -1) for n in names[s]], dtype=np.int64)

    def _setup_model(self) -> None:
        choice = self.recipe.surrogate("find")
        if choice is None:
            raise ModtrainError("find has indirect supervision (paper §3.1): train it through a surrogate, "
                                "e.g. 'modtrain train find --surrogate factorized'")
        dims = self.data.dims()
        self.module = build_module("find", self.interface, dims, self.data.vocab["instances"]["find"],
                                   **self.recipe.module_hparams("find"))
        surrogate_name, surrogate_hparams = choice
        self.surrogate = surrogate_class(surrogate_name)(self.interface, dims, self.roots, **surrogate_hparams)
        self.model = nn.ModuleDict({"find": self.module, "surrogate": self.surrogate})
        self.executor = Executor({"find": self.module}, self.interface, self.module.hparams["attention"])

    def _load(self, split, rows):
        s = self.splits[split]
        batch = {
            "features": torch.from_numpy(self.features[split].take(s.image_index[rows])).float().to(self.device),
            "layouts": [self.data.root_input(i) for i in s.layout[rows]],
            "is_measure": torch.from_numpy(self.is_measure[split][rows]).to(self.device),
            "root": torch.from_numpy(self.root_ids[split][rows]).to(self.device),
            "answer": torch.from_numpy(s.answer[rows]).long().to(self.device),
        }
        if self.priors[split] is not None:
            batch["prior"] = torch.from_numpy(self.priors[split].take(rows)).to(self.device)
        return batch

    def _surrogate_inputs(self, batch):
        attention = self.executor.run(batch["layouts"], batch["features"])
        attended = attend(batch["features"], attention, self.module.hparams["attention"])
        return attention, attended, batch["is_measure"], batch["root"], batch.get("prior")

    def _forward(self, batch):
        return self.surrogate(*self._surrogate_inputs(batch))

    def _validate(self):
        """MC-dropout validation (§5.3): NLL of the mean prediction, accuracy, predictive variance."""
        self.model.eval()
        nll, correct, variance, count = 0.0, 0, 0.0, 0
        with torch.no_grad():
            for rows in shuffled_batches(self.val_rows, self.config["batch_size"] * 4, None):
                batch = self._load("val", rows)
                result = self.surrogate.mc_predict(*self._surrogate_inputs(batch))
                probs = result.mean_probs.float()
                nll -= torch.log(probs.gather(1, batch["answer"][:, None]).clamp_min(1e-12)).sum().item()
                correct += (probs.argmax(1) == batch["answer"]).sum().item()
                variance += result.variance.sum().item()
                count += len(rows)
        return {"val_loss": nll / count, "val_accuracy": correct / count, "val_variance": variance / count}

    def _card_extra(self, best):
        hparams = self.surrogate.hparams
        return {"surrogate": {
            "name": self.surrogate.name, "hyperparameters": hparams, "roots": self.roots,
            "parameters": self.surrogate.num_parameters(),
            "describe_measure_parameters": _root_module_parameters(self.data, self.recipe, self.interface),
            "val_loss": best["val_loss"], "val_accuracy": best["val_accuracy"],
            "predictive_variance": best["val_variance"],
            "trustworthy": best["val_variance"] <= hparams["variance_threshold"],
        }}


def _root_module_parameters(data: PreparedData, recipe: Recipe, interface) -> int:
    """Parameters describe + measure would have, for the surrogate's size comparison."""
    total = 0
    for name in ("describe", "measure"):
        instances = data.vocab["instances"].get(name)
        if instances and name in recipe.modules:
            module = build_module(name, interface, data.dims(), instances, **recipe.module_hparams(name))
            total += sum(p.numel() for p in module.parameters())
    return total


class _CachedRootJob(_RootJob):
    """describe and measure: trained from find's virtual dataset alone (§5.4), never touching features."""

    column: str  # which cache column is the module's input

    def _setup_data(self) -> None:
        self.splits, self.inputs, self.priors, self.instance_names = {}, {}, {}, {}
        for s in ("train", "val"):
            split = self.splits[s] = self.data.split(s)
            rows, _, instances = self._root_rows(split, (self.name,))
            setattr(self, f"{s}_rows", rows)
            self.instance_names[s] = instances
            self.inputs[s] = open_cache(self.workdir, "find", s, split.fingerprint, self.column)
            self.priors[s] = self._prior(s)

    def _setup_model(self) -> None:
        self.module = build_module(self.name, self.interface, self.data.dims(), self.data.vocab["instances"][self.name],
                                   **self.recipe.module_hparams(self.name))
        self.model = self.module
        self.instance_ids = {}
        for s, names in self.instance_names.items():
            rows = getattr(self, f"{s}_rows")
            ids = np.full(len(names), -1, np.int64)
            ids[rows] = self.module.instance_ids(list(names[rows]), f"{s} questions")
            self.instance_ids[s] = ids

    def _load(self, split, rows):
        s = self.splits[split]
        batch = {"input": torch.from_numpy(self.inputs[split].take(rows)).float().to(self.device),
                 "instance": torch.from_numpy(self.instance_ids[split][rows]).to(self.device),
                 "answer": torch.from_numpy(s.answer[rows]).long().to(self.device)}
        if self.priors[split] is not None:
            batch["prior"] = torch.from_numpy(self.priors[split].take(rows)).to(self.device)
        return batch

    def _forward(self, batch):
        logits = self.module(batch["input"], instance=batch["instance"])
        return self.interface.combine(logits, batch.get("prior"))


class DescribeJob(_CachedRootJob):
    name = "describe"
    column = "attended"


class MeasureJob(_CachedRootJob):
    name = "measure"
    column = "attention"


JOBS: dict[str, type[ModuleJob]] = {j.name: j for j in (EncoderJob, FindJob, DescribeJob, MeasureJob)}


def train_module(workdir: Workdir, recipe: Recipe, name: str, device: torch.device,
                 data: PreparedData | None = None) -> dict[str, Any]:
    """``modtrain train NAME``: train one module as its own job; return its card."""
    if name not in recipe.modules:
        raise ModtrainError(f"recipe {recipe.name} has no module {name!r}; its modules: {', '.join(recipe.modules)}")
    if name not in JOBS:
        raise ModtrainError(f"no training job for module {name!r}; valid: {', '.join(JOBS)}")
    return JOBS[name](workdir, recipe, device, data).run()
