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
from modtrain.datasets.families import value_words
from torch import nn

from modtrain.errors import ModtrainError
from modtrain.registry import (
    CHANNELS,
    ChannelWeights,
    NMNModule,
    attribute_channel_mask,
    pick_instance,
    register_module,
)
from modtrain.values import Range


@register_module("find")
class Find(ChannelWeights, NMNModule):
    """Decoupled input (image features), indirect supervision: trains through a surrogate."""

    inputs = ("Features",)
    output = "Attention"
    has_instances = True
    # attention: how downstream modules turn this module's output into an attended vector
    # (weighted average or softmax, paper §5.5).
    # channels: which feature channels an instance reads (modtrain.registry.CHANNELS): on features
    # that keep colour apart from shape (clevr-cnn --pretrain-split), find[cube] reads only the
    # shape channels and cannot find cubes by the colours they had in training (CoGenT, issue 29)
    defaults = {"bias": True, "dropout": 0.0, "attention": "weighted", "impl": "linear", "channels": "auto"}
    limits = {"attention": Range(choices=("weighted", "softmax")), "impl": Range(choices=("linear", "cell")),
              "channels": CHANNELS}
    needs = ("features",)
    # Not recomputed by the jobs that read the features anyway (relate): with find recomputed,
    # relate's job ran at 3459 samples/s against 4712 reading find's cache (the fastest of
    # three, bench/results/clevr.json, relate_find_paths).
    recompute = False

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        self.dropout = nn.Dropout2d(hparams["dropout"])
        attribute_of = value_words().get  # find[cube]: shape
        if hparams["impl"] == "cell":
            if attribute_channel_mask(self, dims, attribute_of) is not None:
                raise ModtrainError("find as a cell reads every feature channel; give it channels='all' on "
                                    "features split by attribute, or use impl='linear'")
            from modtrain.modules.lnmn import Cell

            channels = self.dims["features"]
            self.cell = Cell(channels, maps=1, answer=False)
            self.embedding = nn.Embedding(len(instances), channels)  # the cell's text input c, per instance
            return
        self.cell = None
        self.init_channel_weights(torch.randn(len(instances), self.dims["features"]) / self.dims["features"] ** 0.5,
                                  dims, attribute_of)
        self.bias = nn.Parameter(torch.zeros(len(instances))) if hparams["bias"] else None
        # Channel dropout (Dropout2d, above), as the paper's code drops feature maps: one draw per
        # channel, not per value, which is also ~50× cheaper on a CPU than element dropout here.

    def rows_forward(self, features: torch.Tensor, rows: torch.Tensor, instance: torch.Tensor) -> torch.Tensor | None:
        """``forward(features[rows], instance)`` without copying ``features[rows]``, in evaluation
        (the executor asks first; None: not here, gather and call ``forward``). A layout runs
        find on its row once per filter, several times a question on CLEVR's programs. So in
        evaluation find computes every instance's map of each row once, and each call picks its
        own (bench/results/assembler.json): bit for bit what ``forward`` gives on the gathered
        rows, whatever else is in the batch (a cache of find and find recomputed agree)."""
        if self.cell is not None or self.training:
            return None
        used, where = torch.unique(rows, return_inverse=True)
        if 2 * len(used) < len(features):  # few of the batch's rows: compute only theirs
            features, rows = features.index_select(0, used), where
        return self._output(self._every_instance(features)[rows, instance], instance)

    def _every_instance(self, features: torch.Tensor) -> torch.Tensor:
        """(B, instances, H, W): every instance's raw map of every row. One (instances, C) @ (C, HW)
        product per row, the same for every row and batch size (so a row's bits never depend on
        the rest of the batch)."""
        b, _, h, w = features.shape
        weight = self.masked_weight()
        weight = weight.expand(b, *weight.shape)
        return torch.bmm(weight, features.flatten(2)).view(b, -1, h, w)

    def forward(self, features: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        features = self.dropout(features)
        if self.cell is not None:
            scene = features.new_ones(features.shape[0], *features.shape[2:])
            return self.constrain(self.cell(features, self.embedding(instance), [scene]))
        b, _, h, w = features.shape
        if not self.training:  # as rows_forward computes it
            return self._output(pick_instance(self._every_instance(features), instance), instance)
        # (B, 1, C) @ (B, C, HW): one batched matmul on the features as they lie in memory,
        # ~7× faster on a CPU than the equivalent einsum, which copies them to (B, HW, C).
        raw = torch.bmm(self.masked_weight()[instance].unsqueeze(1), features.flatten(2)).view(b, h, w)
        return self._output(raw, instance)

    def _output(self, raw: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            raw = raw + self.bias[instance][:, None, None]
        return self.constrain(raw)
