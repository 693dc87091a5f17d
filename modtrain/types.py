"""Neural data types and the two interfaces (paper §3.2, §5.5, Table 3).

A data type holds a *hard constraint*, applied at the output of every module that
produces it (an activation or a clamp, so values lie in the domain by construction), and
a ``check()`` of its domain and, where checkable, its manifold.

| element   | ``gradient`` (original NMN)       | ``typed`` (neural data types)          |
|-----------|-----------------------------------|----------------------------------------|
| attention | Heatmap: ReLU, ≥ 0                | Mask: sigmoid, in (0, 1)               |
| AND / OR  | product / sum                     | min / max                              |
| answer    | geometric mean of the softmaxes   | softmax(root logits + encoder prior)   |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from modtrain.errors import ModtrainError


class TypeCheckError(ModtrainError):
    """A tensor outside its data type's domain, or a layout whose types don't compose."""


@dataclass(frozen=True)
class DataType:
    """What flows on an edge between modules."""

    name: str
    ndim: int  # including the batch dimension
    constrain: Callable[[torch.Tensor], torch.Tensor] = lambda x: x
    low: float | None = None
    high: float | None = None

    def check(self, value: torch.Tensor, where: str = "") -> torch.Tensor:
        """Raise TypeCheckError unless ``value`` lies in this type's domain; return it."""
        at = f" at {where}" if where else ""
        if value.dim() != self.ndim:
            raise TypeCheckError(f"{self.name}{at}: expected {self.ndim} dimensions, got shape {tuple(value.shape)}")
        if not torch.isfinite(value).all():
            raise TypeCheckError(f"{self.name}{at}: holds NaN or infinite values")
        if self.low is not None and value.min() < self.low:
            raise TypeCheckError(f"{self.name}{at}: value {value.min().item():.4g} below {self.low}")
        if self.high is not None and value.max() > self.high:
            raise TypeCheckError(f"{self.name}{at}: value {value.max().item():.4g} above {self.high}")
        return value

    def __str__(self) -> str:
        return self.name


# Inputs from the dataset.
Tokens = DataType("Tokens", 2)
Features = DataType("Features", 4)
# Attention maps (B, H, W). Sigmoid saturates to exactly 0 or 1 in float32, so the check
# is on the closed interval.
Mask = DataType("Mask", 3, torch.sigmoid, 0.0, 1.0)
Heatmap = DataType("Heatmap", 3, F.relu, 0.0, None)
# Attention-weighted average of features (B, C).
Attended = DataType("Attended", 2)
# Answer logits of a root module (B, A), and the encoder's prior logits (B, A).
AnswerLogits = DataType("AnswerLogits", 2)
Prior = DataType("Prior", 2)

TYPES = {t.name: t for t in (Tokens, Features, Mask, Heatmap, Attended, AnswerLogits, Prior)}
# Placeholder in module signatures: the interface's attention type.
ATTENTION = "Attention"
DATASET_TYPES = (Tokens, Features)


def attend(features: torch.Tensor, attention: torch.Tensor, mode: str = "weighted") -> torch.Tensor:
    """Attended vector (B, C): features averaged with the attention as weights.

    ``weighted``: Σ a·f / Σ a (the original NMN's weighted average); ``softmax``: weights
    softmax(a) over locations (paper §5.5 searches over both).
    """
    flat_features = features.flatten(2)           # B, C, HW
    flat_attention = attention.flatten(1)         # B, HW
    if mode == "softmax":
        weights = torch.softmax(flat_attention, dim=1)
    elif mode == "weighted":
        weights = flat_attention / (flat_attention.sum(1, keepdim=True) + 1e-6)
    else:
        raise ModtrainError(f"unknown attention mode {mode!r}; valid: weighted, softmax")
    return torch.bmm(flat_features, weights.unsqueeze(2)).squeeze(2)


@dataclass(frozen=True)
class Interface:
    """How modules talk: the attention type, AND/OR, and the answer combination."""

    name: str
    attention: DataType
    and_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    or_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def resolve(self, type_name: str) -> DataType:
        """A signature's type name with ``Attention`` replaced by this interface's type."""
        return self.attention if type_name == ATTENTION else TYPES[type_name]

    def combine(self, root_logits: torch.Tensor, prior_logits: torch.Tensor | None) -> torch.Tensor:
        """Answer log-probabilities from the root module and the encoder's prior."""
        if prior_logits is None:
            return F.log_softmax(root_logits, dim=-1)
        if self.name == "typed":  # paper §5.5: the prior as an additive bias
            return F.log_softmax(root_logits + prior_logits, dim=-1)
        # original NMN: geometric mean of the two softmaxes, renormalized
        mean = 0.5 * (F.log_softmax(root_logits, dim=-1) + F.log_softmax(prior_logits, dim=-1))
        return F.log_softmax(mean, dim=-1)

    def train_with_prior(self) -> bool:
        """Whether modules downstream of the encoder train with its prior as a bias (§5.5)."""
        return self.name == "typed"


INTERFACES = {
    "typed": Interface("typed", Mask, torch.minimum, torch.maximum),
    "gradient": Interface("gradient", Heatmap, torch.mul, torch.add),
}


def get_interface(name: str) -> Interface:
    """The interface called ``name``."""
    if name not in INTERFACES:
        raise ModtrainError(f"unknown interface {name!r}; valid: {', '.join(INTERFACES)}")
    return INTERFACES[name]
