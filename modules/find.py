"""find[v]: a per-instance 1×1 convolution of the image features → attention.

Typed interface: a sigmoid mask in (0, 1); gradient interface: a ReLU heatmap (paper §5.5,
Table 3). The instance weights are gathered per sample and applied in one batched op.

``impl = "cell"`` (``modtrain train find --impl cell``): find as a learnable LNMN cell instead
(LNMN §3.1: a 3-input attention cell, modules/lnmn.py) whose text input is a learned embedding of
the instance and whose attention input is the whole scene (all ones): its nodes' α choose how
the image, the scene and the instance combine, and they train with the weights, through the same
surrogate and job as the hand-designed find. The output takes the interface's constraint as
always, so the cell is a Mask (typed) or a Heatmap (gradient) like the linear find.
"""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import NMNModule, register_module
from modtrain.values import Range


@register_module("find")
class Find(NMNModule):
    """Decoupled input (image features), indirect supervision: trains through a surrogate."""

    inputs = ("Features",)
    output = "Attention"
    has_instances = True
    # attention: how downstream modules turn this module's output into an attended vector
    # (weighted average or softmax, paper §5.5).
    defaults = {"bias": True, "dropout": 0.0, "attention": "weighted", "impl": "linear"}
    limits = {"attention": Range(choices=("weighted", "softmax")), "impl": Range(choices=("linear", "cell"))}
    needs = ("features",)
    # Not recomputed by the jobs that read the features anyway (relate): with find recomputed,
    # relate's job ran at 3459 samples/s against 4712 reading find's cache (the fastest of
    # three, bench/results/clevr.json, relate_find_paths).
    recompute = False

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        self.dropout = nn.Dropout2d(hparams["dropout"])
        if hparams["impl"] == "cell":
            from modtrain.modules.lnmn import Cell

            channels = self.dims["features"]
            self.cell = Cell(channels, maps=1, answer=False)
            self.embedding = nn.Embedding(len(instances), channels)  # the cell's text input c, per instance
            return
        self.cell = None
        self.weight = nn.Parameter(torch.randn(len(instances), self.dims["features"]) / self.dims["features"] ** 0.5)
        self.bias = nn.Parameter(torch.zeros(len(instances))) if hparams["bias"] else None
        # Channel dropout (Dropout2d, above), as the paper's code drops feature maps: one draw per
        # channel, not per value, which is also ~50× cheaper on a CPU than element dropout here.

    def rows_forward(self, features: torch.Tensor, rows: torch.Tensor, instance: torch.Tensor) -> torch.Tensor | None:
        """``forward(features[rows], instance)`` without copying ``features[rows]``, in evaluation
        (the executor asks first; None: not here, gather and call ``forward``). A layout such as
        ``and(find[a], find[b])`` runs find twice on each of its rows, and gathering their
        features was the assembler's largest copy (bench/results/assembler.json): instead the k-th
        finds of every row are one batched product on the features as they lie."""
        if self.cell is not None or self.training:
            return None
        n, count = features.shape[0], len(rows)
        order = torch.argsort(rows, stable=True)
        counts = torch.bincount(rows, minlength=n)
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(count, device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows[order]]
        _, channels, h, w = features.shape
        flat = features.flatten(2)
        raw = None
        # one (1, C) @ (C, HW) product per row and slot, as ``forward`` computes each call: the same
        # numbers bit for bit, whatever else is in the batch (a cache of find and find recomputed agree)
        for k in range(int(counts.max())):
            mine = slot == k
            weights = features.new_zeros(n, 1, channels)
            weights[rows[mine], 0] = self.weight[instance[mine]]
            part = torch.bmm(weights, flat)[rows[mine], 0]
            if raw is None:  # in the product's dtype (bf16 under autocast)
                raw = part.new_empty(count, h * w)
            raw[mine] = part
        return self._output(raw.view(count, h, w), instance)

    def forward(self, features: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        features = self.dropout(features)
        if self.cell is not None:
            scene = features.new_ones(features.shape[0], *features.shape[2:])
            return self.constrain(self.cell(features, self.embedding(instance), [scene]))
        # (B, 1, C) @ (B, C, HW): one batched matmul on the features as they lie in memory,
        # ~7× faster on a CPU than the equivalent einsum, which copies them to (B, HW, C).
        b, _, h, w = features.shape
        raw = torch.bmm(self.weight[instance].unsqueeze(1), features.flatten(2)).view(b, h, w)
        return self._output(raw, instance)

    def _output(self, raw: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            raw = raw + self.bias[instance][:, None, None]
        return self.constrain(raw)
