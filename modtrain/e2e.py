"""``modtrain e2e``: the same NMN trained jointly, end to end — the baseline of paper Table 2.

Same modules, layouts, data, optimizer and stopping rule as modular training; the only
difference is that every question's whole layout runs with the encoder in one graph and
one loss trains all modules at once. The result is saved as ordinary module cards, so
``modtrain assemble`` evaluates both the same way.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from modtrain.card import save_module
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.execute import Executor
from modtrain.recipe import Recipe
from modtrain.registry import build_module
from modtrain.train import ModuleJob, cards_match
from modtrain.types import AnswerLogits
from modtrain.workdir import Workdir

JOB = "e2e"


def e2e_key(recipe: Recipe, data: PreparedData) -> dict[str, Any]:
    """What an end-to-end training depends on."""
    config = {k: v for k, v in recipe.train_config(JOB).items() if k not in ("device", "num_workers", "amp")}
    return {"kind": "end-to-end", "interface": recipe.interface, "seed": recipe.seed, "train": config,
            "hyperparameters": {m: recipe.module_hparams(m) for m in recipe.modules},
            "data_fingerprint": data.fingerprint, "inputs": {}}


def e2e_up_to_date(recipe: Recipe, data: PreparedData, workdir: Workdir) -> bool:
    """Whether every module of the recipe was trained end to end with these settings."""
    return cards_match(workdir.modules, recipe.modules, e2e_key(recipe, data))


class EndToEndJob(ModuleJob):
    """Every module of the recipe trained at once through whole layouts (NMN, paper §5.1)."""

    name = JOB

    def _job_key(self) -> dict[str, Any]:
        return e2e_key(self.recipe, self.data)

    def _setup_data(self) -> None:
        self.splits, self.features = {}, {}
        for s in ("train", "val"):
            split = self.splits[s] = self.data.split(s)
            setattr(self, f"{s}_rows", self._labelled(split, split.layout >= 0))
            self.features[s] = split.features()

    def _setup_model(self) -> None:
        dims = self.data.dims()
        instances = self.data.vocab["instances"]
        self.modules = {m: build_module(m, self.interface, dims, instances.get(m, []), **self.recipe.module_hparams(m))
                        for m in self.recipe.modules}
        if "encoder" not in self.modules:
            raise ModtrainError(f"recipe {self.recipe.name} has no encoder to combine the layouts with")
        self.encoder = self.modules["encoder"]
        layout_modules = {m: module for m, module in self.modules.items() if m != "encoder"}
        mode = self.modules["find"].hparams["attention"] if "find" in self.modules else "weighted"
        self.executor = Executor(layout_modules, self.interface, mode)
        for s in ("train", "val"):
            split = self.splits[s]
            for layout_id in np.unique(split.layout[getattr(self, f"{s}_rows")]):
                if self.executor.check(self.data.layouts[layout_id]) is not AnswerLogits:
                    raise ModtrainError(f"layout {self.data.layouts[layout_id]} does not end in answer logits")
        self.model = nn.ModuleDict(self.modules)

    def _load(self, split, rows):
        s = self.splits[split]
        return {"tokens": torch.from_numpy(s.tokens[rows]).long().to(self.device),
                "lengths": torch.from_numpy(s.lengths[rows]).long(),
                "features": torch.from_numpy(self.features[split].take(s.image_index[rows])).float().to(self.device),
                "layouts": [self.data.layouts[i] for i in s.layout[rows]],
                "answer": torch.from_numpy(s.answer[rows]).long().to(self.device)}

    def _forward(self, batch):
        prior = self.encoder(batch["tokens"], batch["lengths"])
        root = self.executor.run(batch["layouts"], batch["features"])
        return self.interface.combine(root, prior)

    def _save(self, key_hash: str, state: dict) -> dict[str, Any]:
        fields = {**self._card_fields(key_hash, state), "inputs": {}, "training": "end-to-end"}
        cards = {name: save_module(self.workdir.modules, module, fields) for name, module in self.modules.items()}
        return {"name": JOB, "modules": cards, "metrics": fields["metrics"], "timings": fields["timings"]}


def train_end_to_end(workdir: Workdir, recipe: Recipe, device: torch.device,
                     data: PreparedData | None = None) -> dict[str, Any]:
    """Train the recipe's NMN jointly; return a summary with every module's card."""
    return EndToEndJob(workdir, recipe, device, data).run()
