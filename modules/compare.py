"""compare[op]: two answers → yes/no logits, for CLEVR's equal_X, equal_integer, less_than, greater_than.

Typed interface: the inputs are answer distributions (softmax of describe's or measure's
logits, paper Table 3); gradient interface: the raw logits. Per instance, a hidden layer reads
both inputs, their product (for distributions, Σ of it is the probability that they agree)
and a rank-R bilinear form of the two (x^T P Q^T y, which holds orderings such as
Σ_{i<j} x_i y_j for less_than).
"""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import NMNModule, pick_instance, register_module


@register_module("compare")
class Compare(NMNModule):
    """Dependent input (two root-module answers, from their virtual datasets), direct supervision."""

    inputs = ("Answer", "Answer")
    output = "AnswerLogits"
    has_instances = True
    defaults = {"hidden": 64, "rank": 16, "dropout": 0.0}
    needs = ("answers",)

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        n, a, hidden, rank = len(instances), self.dims["answers"], hparams["hidden"], hparams["rank"]
        self.w1 = nn.Parameter(torch.randn(n, 3 * a, hidden) / (3 * a) ** 0.5)
        self.left = nn.Parameter(torch.randn(n, a, rank) / a ** 0.5)
        self.right = nn.Parameter(torch.randn(n, a, rank) / a ** 0.5)
        self.bilinear = nn.Parameter(torch.randn(n, rank, hidden) / rank ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(n, hidden))
        self.w2 = nn.Parameter(torch.randn(n, hidden, a) / hidden ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(n, a))
        self.dropout = nn.Dropout(hparams["dropout"])

    def forward(self, left: torch.Tensor, right: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        # Few instances (seven CLEVR comparisons): all run at once and each sample keeps its own.
        pair = torch.cat([left, right, left * right], dim=1)
        products = torch.einsum("ba,nar->bnr", left, self.left) * torch.einsum("ba,nar->bnr", right, self.right)
        hidden = torch.relu(torch.einsum("bk,nkh->bnh", pair, self.w1)
                            + torch.einsum("bnr,nrh->bnh", products, self.bilinear) + self.b1)
        raw = torch.einsum("bnh,nha->bna", self.dropout(hidden), self.w2) + self.b2
        return self.constrain(pick_instance(raw, instance))
