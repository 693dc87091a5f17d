"""The factorized surrogate gradient module (paper §5.2–5.3, Fig. 6), for modules whose output
is an attention (find, relate) and so has no loss of its own.

It consumes the module's output the way the root modules would — for find under describe,
the attended feature vector; under measure, the flattened attention: one part of the input
vector per way a root reads it, the unused parts zeroed, as the paper's code does — and maps
it to answer logits with a rank-L factorized linear map W = W_A·W_B, L ≪ min(N, M). W_A is
shared; W_B is kept per root instance (describe[color], measure[count], ...) so that, like the
root modules it stands for, it knows what is asked even without the encoder's prior. In the
typed interface the cached encoder prior is added as a bias (§5.5).

Dropout sits between W_A and W_B at a fixed rate (0.3), where the method's reference code puts
it, and is never searched: validation draws MC-dropout samples from it (Gal & Ghahramani, 2016)
with the trained module in eval mode, and reports the NLL of the mean prediction and the two
uncertainty statistics ``modtrain.trust`` judges and records.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from modtrain.registry import register_surrogate, resolve_hparams
from modtrain.types import Interface


@dataclass
class MCResult:
    """MC-dropout predictions of a batch of B questions."""

    mean_probs: torch.Tensor          # (B, A)
    variance: torch.Tensor            # (B,) unbiased variance over samples of the argmax answer's probability
    mutual_information: torch.Tensor  # (B,) BALD: H[mean] − mean over samples of H[sample]


def mc_summary(probs: torch.Tensor) -> MCResult:
    """From (T, B, A) probabilities of T dropout samples: the mean prediction and, per question,
    the paper's statistic — the variance over samples of the probability of the answer the mean
    prediction picks (§5.3; unbiased, as the reference computes it) — and the mutual information
    between the answer and the dropout mask."""
    mean = probs.mean(0)
    top = mean.argmax(1)
    top_probs = probs.gather(2, top.view(1, -1, 1).expand(len(probs), -1, 1)).squeeze(2)  # T, B
    variance = top_probs.var(0, unbiased=True) if len(probs) > 1 else torch.zeros_like(top_probs[0])

    def entropy(p: torch.Tensor) -> torch.Tensor:
        return -(p * p.clamp_min(1e-12).log()).sum(-1)

    return MCResult(mean, variance, (entropy(mean) - entropy(probs).mean(0)).clamp_min(0.0))


@register_surrogate("factorized")
class FactorizedSurrogate(nn.Module):
    defaults = {"rank": 64, "dropout": 0.3, "mc_samples": 20}

    def __init__(self, interface: Interface, parts: list[int], answers: int, roots: list[str], **hparams):
        """``parts``: the size of each way a root reads the module's output (e.g. [C, H·W] for
        describe's attended vector and measure's flattened attention); ``roots``: the root
        instances it stands for."""
        super().__init__()
        self.interface = interface
        self.parts = list(parts)
        self.roots = list(roots)
        self.hparams = resolve_hparams(self.defaults, hparams, "surrogate factorized")
        rank = self.hparams["rank"]
        self.project = nn.Linear(sum(self.parts), rank, bias=False)                          # W_A
        self.read = nn.Parameter(torch.randn(len(self.roots), rank, answers) / rank ** 0.5)  # W_B per root
        self.read_bias = nn.Parameter(torch.zeros(len(self.roots), answers))

    def projected(self, values: list[torch.Tensor], part: torch.Tensor) -> torch.Tensor:
        """(B, L): the output as the roots read it, through W_A. ``values[k]``: (B, parts[k]), the
        output read the k-th way; ``part``: (B,) which way each question's root reads it."""
        x = torch.cat([v * (part == k).to(v.dtype).unsqueeze(1) for k, v in enumerate(values)], dim=1)
        return self.project(x)

    def read_out(self, hidden: torch.Tensor, root: torch.Tensor, prior: torch.Tensor | None,
                 force_dropout: bool = False) -> torch.Tensor:
        """Answer log-probabilities from (..., B, L) projected inputs; ``root``: (B,) each question's
        root instance. Leading dimensions are independent dropout samples."""
        hidden = F.dropout(hidden, self.hparams["dropout"], training=self.training or force_dropout)
        logits = torch.einsum("...bl,nla->...bna", hidden, self.read) + self.read_bias
        logits = logits[..., torch.arange(len(root), device=root.device), root, :]  # each question's root
        return self.interface.combine(logits, prior if self.interface.train_with_prior() else None)

    def forward(self, values, part, root, prior=None, force_dropout: bool = False) -> torch.Tensor:
        """Answer log-probabilities; ``prior`` is used only in the typed interface."""
        return self.read_out(self.projected(values, part), root, prior, force_dropout)

    @torch.no_grad()
    def mc_predict(self, values, part, root, prior=None, samples: int | None = None) -> MCResult:
        """The mean prediction and its uncertainty over ``samples`` dropout masks: W_A once, the
        masks and W_B per sample."""
        samples = samples or self.hparams["mc_samples"]
        hidden = self.projected(values, part)
        return mc_summary(self.read_out(hidden.expand(samples, *hidden.shape), root, prior, force_dropout=True).exp())

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
