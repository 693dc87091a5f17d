"""The factorized surrogate gradient module (paper §5.2–5.3, Fig. 6), for modules whose output
is an attention (find, relate) and so has no loss of its own.

It consumes the module's output the way the root modules would — for find under describe,
the attended feature vector; under measure, the flattened attention: one part of the input
vector per way a root reads it, the unused parts zeroed, as the paper's code does — and maps
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


def mc_summary(probs: torch.Tensor) -> MCResult:
    """From (T, B, A) probabilities of T dropout samples: the mean prediction, and per question the
    variance over samples of the probability of its most likely answer (§5.3)."""
    mean = probs.mean(0)
    top = mean.argmax(1)
    top_probs = probs.gather(2, top.view(1, -1, 1).expand(len(probs), -1, 1)).squeeze(2)  # T, B
    return MCResult(mean, top_probs.var(0, unbiased=False))


def mc_metrics(probs: torch.Tensor, answers: torch.Tensor) -> dict[str, float]:
    """Sums over a batch, from (T, B, A) MC-dropout probabilities and the true answers: the
    negative log-likelihood of the mean prediction (a true NLL, not cross-entropy applied to
    probabilities), the correct answers, and the predictive variance."""
    result = mc_summary(probs)
    mean = result.mean_probs.float()
    return {"nll": -torch.log(mean.gather(1, answers[:, None]).clamp_min(1e-12)).sum().item(),
            "correct": (mean.argmax(1) == answers).sum().item(), "variance": result.variance.sum().item()}


@register_surrogate("factorized")
class FactorizedSurrogate(nn.Module):
    defaults = {"rank": 64, "dropout": 0.3, "mc_samples": 20, "variance_threshold": 0.0025}

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

    def logits(self, values: list[torch.Tensor], part: torch.Tensor, root: torch.Tensor,
               force_dropout: bool = False) -> torch.Tensor:
        """``values[k]``: (B, parts[k]), the output as read the k-th way; ``part``: (B,) which way
        each question's root reads it; ``root``: (B,) its root instance."""
        x = torch.cat([v * (part == k).to(v.dtype).unsqueeze(1) for k, v in enumerate(values)], dim=1)
        x = F.dropout(x, self.hparams["dropout"], training=self.training or force_dropout)
        return pick_instance(torch.einsum("bl,nla->bna", self.project(x), self.read) + self.read_bias, root)

    def forward(self, values, part, root, prior=None, force_dropout: bool = False) -> torch.Tensor:
        """Answer log-probabilities; ``prior`` is used only in the typed interface."""
        logits = self.logits(values, part, root, force_dropout)
        return self.interface.combine(logits, prior if self.interface.train_with_prior() else None)

    @torch.no_grad()
    def mc_predict(self, values, part, root, prior=None, samples: int | None = None) -> MCResult:
        """Mean prediction and predictive variance over ``samples`` dropout masks."""
        samples = samples or self.hparams["mc_samples"]
        return mc_summary(torch.stack([self(values, part, root, prior, force_dropout=True).exp()
                                       for _ in range(samples)]))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
