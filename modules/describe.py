"""describe[attr]: attended vector → answer logits, one linear map per instance."""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import NMNModule, pick_instance, register_module


@register_module("describe")
class Describe(NMNModule):
    """Dependent input (find's attention, as an attended vector), direct supervision."""

    inputs = ("Attended",)
    output = "AnswerLogits"
    has_instances = True
    defaults = {"dropout": 0.0}
    needs = ("features", "answers")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        n, c, a = len(instances), self.dims["features"], self.dims["answers"]
        self.weight = nn.Parameter(torch.randn(n, a, c) / c ** 0.5)
        self.bias = nn.Parameter(torch.zeros(n, a))
        self.dropout = nn.Dropout(hparams["dropout"])

    def forward(self, attended: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        # Few instances (one per attribute): all run in one einsum, each sample keeps its own.
        raw = torch.einsum("bc,nac->bna", self.dropout(attended), self.weight) + self.bias
        return self.constrain(pick_instance(raw, instance))
