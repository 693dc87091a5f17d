"""relate[r]: attention + image features → attention on the objects in relation r to the attended one.

Instances are CLEVR's spatial relations (left, right, front, behind) and its ``same_X``
functions (same_color, same_shape, same_size, same_material). The module reads the attended
object's features and position (the attention-weighted average of the features and of two
coordinate channels) and scores every location from its own features, their product with the
object's (attribute agreement) and its offset from the object (spatial relations), through a
per-instance hidden layer. ``same_X`` excludes the object itself, as CLEVR does: its output is
scaled by one minus the input attention normalized to peak 1, so the attended location gets 0.
The output takes the interface's attention type (mask or heatmap, paper Table 3).
"""
from __future__ import annotations

import torch
from torch import nn

from modtrain.registry import NMNModule, register_module


def coordinates(height: int, width: int) -> torch.Tensor:
    """(2, H·W): x from -1 (left) to 1 (right), y from -1 (top, behind) to 1 (bottom, front)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, height), torch.linspace(-1, 1, width), indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()])


@register_module("relate")
class Relate(NMNModule):
    """Dependent input (an attention from find or another relate), indirect supervision: trains
    through a surrogate, from find's virtual dataset (paper §3.1)."""

    inputs = ("Attention", "Features")
    output = "Attention"
    has_instances = True
    defaults = {"hidden": 64, "dropout": 0.0}
    needs = ("features", "height", "width")

    def __init__(self, interface, dims, instances, hparams):
        super().__init__(interface, dims, instances, hparams)
        n, c, hidden = len(instances), self.dims["features"], hparams["hidden"]
        inputs = 2 * c + 2
        self.w1 = nn.Parameter(torch.randn(n, hidden, inputs) / inputs ** 0.5)
        self.b1 = nn.Parameter(torch.zeros(n, hidden))
        self.w2 = nn.Parameter(torch.randn(n, hidden) / hidden ** 0.5)
        self.b2 = nn.Parameter(torch.zeros(n))
        self.dropout = nn.Dropout(hparams["dropout"])
        self.register_buffer("coords", coordinates(self.dims["height"], self.dims["width"]), persistent=False)
        self.register_buffer("excludes_self", torch.tensor([name.startswith("same_") for name in instances]),
                             persistent=False)

    def forward(self, attention: torch.Tensor, features: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        b, c, h, w = features.shape
        flat = features.flatten(2)                                           # B, C, HW
        weights = attention.flatten(1)
        weights = weights / (weights.sum(1, keepdim=True) + 1e-6)            # B, HW
        obj = torch.bmm(flat, weights.unsqueeze(2))                          # B, C, 1: the object's features
        position = weights @ self.coords.T                                   # B, 2: its position
        # hidden = relu(W1·[f; f⊙obj; coords − position] + b1) at every location, computed as
        # (W1_f + W1_obj·diag(obj))·f + (W1_offset·coords + b1 − W1_offset·position): half the
        # multiply-adds, and the offset term a per-instance table instead of a (B, hidden, 2) @
        # (B, 2, HW) product, which ran slowly on a CPU.
        w1_f, w1_obj, w1_offset = (self.w1[:, :, :c].contiguous(), self.w1[:, :, c:2 * c].contiguous(),
                                   self.w1[:, :, 2 * c:])
        mixed = torch.addcmul(w1_f.index_select(0, instance), w1_obj.index_select(0, instance),
                              obj.transpose(1, 2))                           # B, hidden, C
        shift = (self.b1.index_select(0, instance)
                 - torch.bmm(w1_offset.index_select(0, instance), position.unsqueeze(2)).squeeze(2))
        bias = torch.matmul(w1_offset, self.coords).index_select(0, instance)  # B, hidden, HW
        bias += shift.unsqueeze(2)
        hidden = torch.baddbmm(bias, mixed, flat).relu_()
        raw = (torch.bmm(self.w2.index_select(0, instance).unsqueeze(1), self.dropout(hidden)).squeeze(1)
               + self.b2.index_select(0, instance).unsqueeze(1))
        out = self.constrain(raw.view(b, h, w))
        peak = attention / attention.flatten(1).amax(1).clamp_min(1e-6).view(b, 1, 1)
        keep = torch.where(self.excludes_self[instance].view(b, 1, 1), 1 - peak.clamp(0, 1), torch.ones_like(peak))
        return out * keep
