"""measure[exist|count]: flattened attention → small MLP → answer logits, per instance."""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import NMNModule, pick_instance, register_module


@register_module("measure")
class Measure(NMNModule):
    """Dependent input (find's attention), direct supervision."""

    inputs = ("Attention",)
    output = "AnswerLogits"
    has_instances = True
    defaults = {"hidden": 128, "dropout": 0.0}
    needs = ("height", "width", "answers")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        n, k, h, a = len(instances), self.dims["height"] * self.dims["width"], hparams["hidden"], self.dims["answers"]
        self.w1 = nn.Parameter(torch.randn(n, k, h) / k ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(n, h))
        self.w2 = nn.Parameter(torch.randn(n, h, a) / h ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(n, a))
        self.dropout = nn.Dropout(hparams["dropout"])

    def forward(self, attention: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        # Two instances: both MLPs run in one einsum per layer and each sample keeps its own
        # answer, ~4× faster to train on a CPU than gathering weight matrices per sample.
        flat = self.dropout(attention.flatten(1))
        hidden = self.dropout(torch.relu(torch.einsum("bk,nkh->bnh", flat, self.w1) + self.b1))
        raw = torch.einsum("bnh,nha->bna", hidden, self.w2) + self.b2
        return self.constrain(pick_instance(raw, instance))
