"""describe[attr]: attended vector → answer logits, one linear map per instance."""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import CHANNELS, NMNModule, attribute_channel_mask, pick_instance, register_module


@register_module("describe")
class Describe(NMNModule):
    """Dependent input (find's attention, as an attended vector), direct supervision."""

    inputs = ("Attended",)
    output = "AnswerLogits"
    has_instances = True
    # channels: describe[shape] reads only the shape channels of features split by attribute
    # (modtrain.registry.CHANNELS, clevr-cnn --pretrain-split)
    defaults = {"dropout": 0.0, "channels": "auto"}
    limits = {"channels": CHANNELS}
    needs = ("features", "answers")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        n, c, a = len(instances), self.dims["features"], self.dims["answers"]
        mask = attribute_channel_mask(self, dims, lambda instance: instance)  # describe[shape]: shape
        weight = torch.randn(n, a, c) / c ** 0.5
        self.register_buffer("mask", None if mask is None else mask[:, None, :], persistent=False)
        self.weight = nn.Parameter(weight if mask is None else weight * self.mask)
        self.bias = nn.Parameter(torch.zeros(n, a))
        self.dropout = nn.Dropout(hparams["dropout"])

    def forward(self, attended: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        # Few instances (one per attribute): all run in one einsum, each sample keeps its own.
        weight = self.weight if self.mask is None else self.weight * self.mask
        raw = torch.einsum("bc,nac->bna", self.dropout(attended), weight) + self.bias
        return self.constrain(pick_instance(raw, instance))
