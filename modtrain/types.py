"""Neural data types and the two interfaces (paper §3.2, §5.5, Table 3).

A data type holds a *hard constraint*, applied at the output of every module that
produces it (an activation or a clamp, so values lie in the domain by construction), and
a ``check()`` of its domain and, where checkable, its manifold.

| element   | ``gradient`` (original NMN)       | ``typed`` (neural data types)          |
|-----------|-----------------------------------|----------------------------------------|
| attention | Heatmap: ReLU, ≥ 0                | Mask: sigmoid, in (0, 1)               |
| AND / OR  | product / sum                     | min / max                              |
| answer    | logits; joined with the prior by  | probabilities (softmax) where another  |
|           | the geometric mean of softmaxes   | module reads them; softmax(root logits |
|           |                                   | + encoder prior) at the root           |
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
    from_dataset: bool = False  # read from the data (tokens, features, a cache), not computed by a module

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
Tokens = DataType("Tokens", 2, from_dataset=True)
Features = DataType("Features", 4, from_dataset=True)
# Attention maps (B, H, W). Sigmoid saturates to exactly 0 or 1 in float32, so the check
# is on the closed interval.
Mask = DataType("Mask", 3, torch.sigmoid, 0.0, 1.0)
Heatmap = DataType("Heatmap", 3, F.relu, 0.0, None)
# Attention-weighted average of features (B, C).
Attended = DataType("Attended", 2)
# Answer logits of a root module (B, A), and the encoder's prior logits (B, A).
AnswerLogits = DataType("AnswerLogits", 2)
Prior = DataType("Prior", 2)
# An answer as another module reads it in the typed interface (compare, paper Table 3): a
# distribution over the answers, the softmax of the producer's logits.
Probabilities = DataType("Probabilities", 2, lambda x: torch.softmax(x, dim=-1), 0.0, 1.0)

TYPES = {t.name: t for t in (Tokens, Features, Mask, Heatmap, Attended, AnswerLogits, Prior, Probabilities)}
# Placeholders in module signatures: the interface's attention type, and its type for an
# answer that another module reads.
ATTENTION = "Attention"
ANSWER = "Answer"


def attend(features: torch.Tensor, attention: torch.Tensor, mode: str = "weighted",
           rows: torch.Tensor | None = None) -> torch.Tensor:
    """Attended vector (B, C): features averaged with the attention as weights.

    ``weighted``: Σ a·f / Σ a (the original NMN's weighted average); ``softmax``: weights
    softmax(a) over locations (paper §5.5 searches over both). With ``rows``, attention ``i`` is
    over ``features[rows[i]]``, read in place rather than gathered (``bmm_rows``), bit for bit
    the same vectors.
    """
    flat_attention = attention.flatten(1)         # B, HW
    if mode == "softmax":
        weights = torch.softmax(flat_attention, dim=1)
    elif mode == "weighted":
        weights = flat_attention / (flat_attention.sum(1, keepdim=True) + 1e-6)
    else:
        raise ModtrainError(f"unknown attention mode {mode!r}; valid: weighted, softmax")
    if rows is None:
        return torch.bmm(features.flatten(2), weights.unsqueeze(2)).squeeze(2)
    return bmm_rows(features.flatten(2), rows, weights.unsqueeze(2)).squeeze(2)


def bmm_rows(flat: torch.Tensor, rows: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
    """``bmm(flat[rows], right)`` without copying ``flat[rows]`` where reading the rows in place
    is cheaper.

    A module call's rows repeat (``describe(and(find[a], find[b]))`` beside ``describe(find[c])``
    on the same row) and need not cover the batch. The k-th occurrences of the rows are one
    product each: in place, one bmm over the whole batch with zero operands for the rows without
    a k-th occurrence, when they are at least half of the batch; else a bmm on their gathered
    rows. Either way each row's product is computed alone by the same kernel, so the result is
    bit for bit ``bmm`` on the gathered rows (tests/test_types.py).
    """
    n, count = flat.shape[0], len(rows)
    counts = torch.bincount(rows, minlength=n)
    if count == 0 or int(counts.max()) == 1:
        occurrences = [(None, rows)]
    else:  # slot[i]: how many times rows[i] occurred before position i
        order = torch.argsort(rows, stable=True)
        slot = torch.empty_like(rows)
        slot[order] = torch.arange(count, device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows[order]]
        by_slot = torch.argsort(slot, stable=True)
        occurrences = [(mine, rows[mine]) for mine in by_slot.split(torch.bincount(slot).tolist())]
    out = None
    for mine, at in occurrences:
        operand = right if mine is None else right[mine]
        if n <= 2 * len(at):
            padded = right.new_zeros(n, *right.shape[1:])
            padded[at] = operand
            part = torch.bmm(flat, padded).index_select(0, at)
        else:
            part = torch.bmm(flat.index_select(0, at), operand)
        if mine is None:
            return part
        if out is None:  # in the product's dtype (bf16 under autocast)
            out = part.new_empty(count, *part.shape[1:])
        out[mine] = part
    return out


@dataclass(frozen=True)
class Interface:
    """How modules talk: the attention type, AND/OR, how an answer is read, the answer combination."""

    name: str
    attention: DataType
    answer: DataType  # how a module reads another module's answer (compare's inputs)
    and_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    or_: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

    def resolve(self, type_name: str) -> DataType:
        """A signature's type name with ``Attention`` and ``Answer`` replaced by this interface's types."""
        if type_name == ATTENTION:
            return self.attention
        if type_name == ANSWER:
            return self.answer
        return TYPES[type_name]

    def converts(self, source: DataType, target: DataType) -> bool:
        """Whether an edge carrying ``source`` may feed an input of type ``target`` (after conversion)."""
        return source is target or (target is Attended and source is self.attention) or (
            target is Probabilities and source is AnswerLogits)

    def convert(self, value: torch.Tensor, source: DataType, target: DataType, features: Callable[[], torch.Tensor],
                mode: str = "weighted", rows: torch.Tensor | None = None) -> torch.Tensor:
        """``value`` of type ``source`` as an input of type ``target`` reads it; ``features`` gives
        the rows' features, asked for only when the conversion needs them (attention → attended);
        with ``rows``, it gives the whole batch's and value ``i`` is about row ``rows[i]``."""
        if source is target:
            return value
        if target is Attended:
            return attend(features(), value, mode, rows)
        if target is Probabilities:
            return Probabilities.constrain(value)
        raise TypeCheckError(f"no conversion from {source} to {target}")

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
    "typed": Interface("typed", Mask, Probabilities, torch.minimum, torch.maximum),
    "gradient": Interface("gradient", Heatmap, AnswerLogits, torch.mul, torch.add),
}


def get_interface(name: str) -> Interface:
    """The interface called ``name``."""
    if name not in INTERFACES:
        raise ModtrainError(f"unknown interface {name!r}; valid: {', '.join(INTERFACES)}")
    return INTERFACES[name]
