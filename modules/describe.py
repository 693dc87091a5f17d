"""describe[attr]: attended vector → answer logits, one linear map per instance."""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import CHANNELS, ChannelWeights, NMNModule, pick_instance, register_module


@register_module("describe")
class Describe(ChannelWeights, NMNModule):
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
        self.init_channel_weights(torch.randn(n, a, c) / c ** 0.5, dims, lambda instance: instance)  # describe[shape]
        self.bias = nn.Parameter(torch.zeros(n, a))
        self.dropout = nn.Dropout(hparams["dropout"])

    def forward(self, attended: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        # Few instances (one per attribute): all run in one einsum, each sample keeps its own.
        raw = torch.einsum("bc,nac->bna", self.dropout(attended), self.masked_weight()) + self.bias
        return self.constrain(pick_instance(raw, instance))
