"""Parameter-free attention modules: ``and``, ``or`` and a constant all-ones ``scene``.

Typed interface: min / max, which keep a mask a mask (paper §5.5); gradient interface:
product / sum, as the original NMN.
"""
from __future__ import annotations

import torch

from modtrain.registry import NMNModule, register_module


@register_module("and")
class And(NMNModule):
    parameter_free = True
    inputs = ("Attention", "Attention")
    output = "Attention"

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.interface.and_(left, right)


@register_module("or")
class Or(NMNModule):
    parameter_free = True
    inputs = ("Attention", "Attention")
    output = "Attention"

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        # the gradient interface's sum is already ≥ 0; the typed max stays in (0, 1)
        return self.interface.or_(left, right)


@register_module("scene")
class Scene(NMNModule):
    """A constant ``scene``: attention on every location. The prepared layouts map CLEVR's
    ``scene`` to a learned ``find[*all*]`` instead (an all-ones map carries no count); this
    stays for layouts written by hand."""

    parameter_free = True
    inputs = ("Features",)
    output = "Attention"

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = features.shape
        return features.new_ones(batch, height, width)
