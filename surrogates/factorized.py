"""The factorized surrogate gradient module for find (paper §5.2–5.3, Fig. 6).

It consumes find's output the way the root modules would — the attended feature vector
for describe-type questions, the flattened attention for measure-type questions (the two
parts of one input vector, the unused part zeroed, as the paper's code does) — and maps
it to answer logits with a rank-L factorized linear map W = W_A·W_B, L ≪ min(N, M), with
dropout on its input. W_A is shared; W_B is kept per root instance (describe[color],
measure[count], ...) so that, like the root modules it stands for, it knows what is asked
even without the encoder's prior. In the typed interface the cached encoder prior is added
as a bias (§5.5). Validation uses MC dropout (Gal & Ghahramani, 2016): the mean prediction,
its negative log-likelihood, and the variance of the probability of the argmax answer;
a run over the variance threshold is untrustworthy (§5.3: 0.0025, i.e. 2σ = 0.1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modtrain.registry import pick_instance, register_surrogate, resolve_hparams
from modtrain.types import Interface


@dataclass
class MCResult:
    """MC-dropout predictions of a batch."""

    mean_probs: torch.Tensor  # (B, A)
    variance: torch.Tensor    # (B,) variance over samples of the argmax answer's probability


@register_surrogate("factorized")
class FactorizedSurrogate(nn.Module):
    defaults = {"rank": 64, "dropout": 0.3, "mc_samples": 20, "variance_threshold": 0.0025}

    def __init__(self, interface: Interface, dims: dict[str, int], roots: list[str], **hparams):
        super().__init__()
        self.interface = interface
        self.roots = list(roots)
        self.hparams = resolve_hparams(self.defaults, hparams, "surrogate factorized")
        features, area, answers = dims["features"], dims["height"] * dims["width"], dims["answers"]
        rank = self.hparams["rank"]
        self.features = features
        self.project = nn.Linear(features + area, rank, bias=False)                          # W_A
        self.read = nn.Parameter(torch.randn(len(self.roots), rank, answers) / rank ** 0.5)  # W_B per root
        self.read_bias = nn.Parameter(torch.zeros(len(self.roots), answers))

    def logits(self, attention: torch.Tensor, attended: torch.Tensor, is_measure: torch.Tensor,
               root: torch.Tensor, force_dropout: bool = False) -> torch.Tensor:
        measure = is_measure.to(attended.dtype).unsqueeze(1)
        x = torch.cat([attended * (1 - measure), attention.flatten(1) * measure], dim=1)
        x = F.dropout(x, self.hparams["dropout"], training=self.training or force_dropout)
        return pick_instance(torch.einsum("bl,nla->bna", self.project(x), self.read) + self.read_bias, root)

    def forward(self, attention, attended, is_measure, root, prior=None, force_dropout: bool = False) -> torch.Tensor:
        """Answer log-probabilities; ``prior`` is used only in the typed interface."""
        logits = self.logits(attention, attended, is_measure, root, force_dropout)
        return self.interface.combine(logits, prior if self.interface.train_with_prior() else None)

    @torch.no_grad()
    def mc_predict(self, attention, attended, is_measure, root, prior=None, samples: int | None = None) -> MCResult:
        """Mean prediction and predictive variance over ``samples`` dropout masks."""
        samples = samples or self.hparams["mc_samples"]
        probs = torch.stack([self(attention, attended, is_measure, root, prior, force_dropout=True).exp()
                             for _ in range(samples)])            # T, B, A
        mean = probs.mean(0)
        top = mean.argmax(1)
        top_probs = probs.gather(2, top.view(1, -1, 1).expand(samples, -1, 1)).squeeze(2)  # T, B
        return MCResult(mean, top_probs.var(0, unbiased=False))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
