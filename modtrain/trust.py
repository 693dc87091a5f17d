"""Trust in a module trained through a surrogate: did it earn its place? (paper §3.3, §5.3)

A module with no loss of its own (find, relate) is judged by the surrogate that trained it. In
the typed interface a surrogate that reads nothing from the module predicts exactly the
encoder's prior, which it adds as a bias (§5.5); in the gradient interface it can at best
predict how often each answer follows each root instance (describe[color], measure[count]) in
the training questions. That prediction is the *baseline*. A module is trusted when the
surrogate reading it predicts the validation answers better than the baseline, by a margin
that is not noise (``criterion = "gain"``, the default):

- the relative gain ``1 − NLL_surrogate / NLL_baseline`` (NLL of the MC-dropout mean
  prediction, summed over the module's validation questions) is at least ``min_gain``, and
- the lower end of a paired bootstrap interval of that gain (questions resampled) is above 0.

The paper's statistic — the MC-dropout variance of the probability of the answer the mean
prediction picks, trusted at ≤ 0.0025 (§5.3: 2σ = 0.1) — is computed as the method's reference
computes it (module in eval mode, dropout 0.3 after the surrogate's rank projection, unbiased
variance) and kept beside it, with the MC mutual information (BALD), and is selectable
(``criterion = "variance"``). It is not the default because on our data it is lowest for the
modules that learned nothing: a module whose output carries no information gives the dropout
masks nothing to disagree about (docs/trust.md; ``bench/results/trust.json``).

Trust is judged from statistics a card records, so changing ``[trust]`` re-judges trained
modules without training them again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from modtrain.values import setting

CRITERIA = ("gain", "variance")


@dataclass(frozen=True)
class TrustSection:
    """``[trust]``: when a module trained through a surrogate is used."""

    criterion: str = setting("gain", choices=CRITERIA)
    # the least relative NLL gain over the baseline; chosen on find@nmn-typed's 40 candidates and
    # checked on held-out modules and data (bench/bench_trust.py, bench/results/trust.json)
    min_gain: float = setting(0.05, low=0.0, high=1.0, high_open=True)
    confidence: float = setting(0.95, low=0.5, high=1.0, high_open=True)   # of the bootstrap interval
    bootstrap: int = setting(1000, low=100)                                 # resamples of the questions
    variance_threshold: float = setting(0.0025, low=0.0, low_open=True)    # criterion "variance" (§5.3)


@dataclass(frozen=True)
class Verdict:
    """Whether a module is trusted, by which criterion, and why, in words."""

    trusted: bool
    criterion: str
    reason: str


def gain_interval(nll_module: np.ndarray, nll_baseline: np.ndarray, resamples: int, confidence: float,
                  seed: int) -> tuple[float, float]:
    """Paired bootstrap interval of the relative gain ``1 − Σ nll_module / Σ nll_baseline``: the
    questions are resampled with replacement, the same rows for both NLLs."""
    n = len(nll_module)
    rng = np.random.default_rng([seed, 24])
    gains = np.empty(resamples)
    chunk = max(1, (1 << 20) // max(n, 1))  # at most ~1M indices (8 MiB) at a time, whatever the split's size
    for start in range(0, resamples, chunk):
        rows = rng.integers(0, n, size=(min(chunk, resamples - start), n))
        gains[start:start + len(rows)] = 1.0 - nll_module[rows].sum(1) / np.maximum(nll_baseline[rows].sum(1), 1e-12)
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(gains, [tail, 100 - tail])
    return float(low), float(high)


def trust_statistics(nll_module: np.ndarray, nll_baseline: np.ndarray, variance: np.ndarray,
                     mutual_information: np.ndarray, settings: TrustSection, seed: int) -> dict[str, float]:
    """Per-question NLLs of the surrogate's mean prediction and of the baseline, and the MC
    statistics, summed up: what a card records and ``judge`` reads. Keys are also the names of
    the per-epoch metrics, with a ``val_`` prefix."""
    nll_module, nll_baseline = np.asarray(nll_module, np.float64), np.asarray(nll_baseline, np.float64)
    low, high = gain_interval(nll_module, nll_baseline, settings.bootstrap, settings.confidence, seed)
    return {"nll_baseline": float(nll_baseline.mean()), "nll_module": float(nll_module.mean()),
            "gain": float(1.0 - nll_module.sum() / max(nll_baseline.sum(), 1e-12)), "gain_low": low, "gain_high": high,
            "variance": float(np.mean(variance)), "mutual_information": float(np.mean(mutual_information)),
            "questions": int(len(nll_module))}


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%".replace("-", "−")


def judge(stats: dict[str, Any], settings: TrustSection, module: str = "the module",
          baseline: str = "the baseline") -> Verdict:
    """The verdict of ``settings.criterion`` on a module's recorded statistics, with its reason."""
    if settings.criterion == "variance":
        value, limit = stats["variance"], settings.variance_threshold
        if not value <= limit:
            return Verdict(False, "variance", f"predictive variance {value:.5f} > {limit:g} (paper §5.3): the "
                                              f"surrogate's dropout samples disagree")
        return Verdict(True, "variance", f"predictive variance {value:.5f} ≤ {limit:g} (paper §5.3)")
    gain, low, high = stats["gain"], stats["gain_low"], stats["gain_high"]
    shown = (f"gain {_percent(gain)} (interval {_percent(low)}..{_percent(high)}, "
             f"{settings.confidence:.0%}, {stats['questions']} questions)")
    if not math.isfinite(gain) or gain < settings.min_gain:
        return Verdict(False, "gain", f"{shown} < {_percent(settings.min_gain)}: the surrogate reading {module} "
                                      f"does no better than {baseline}")
    if not low > 0:
        return Verdict(False, "gain", f"{shown} reaches 0: on these questions the surrogate reading {module} "
                                      f"cannot be told from {baseline}")
    return Verdict(True, "gain", f"{shown} ≥ {_percent(settings.min_gain)} over {baseline}")


def metrics_verdict(metrics: dict[str, Any], settings: TrustSection) -> Verdict | None:
    """The verdict on one epoch's validation metrics (``val_gain``, ...); None for a job without a
    surrogate."""
    if "val_gain" not in metrics:
        return None
    return judge({k[len("val_"):]: v for k, v in metrics.items() if k.startswith("val_")}, settings)


def card_verdict(card: dict[str, Any], settings: TrustSection) -> Verdict | None:
    """A trained module's verdict under ``settings``, from its card; None for a module with a loss of
    its own (no surrogate judges it)."""
    surrogate = card.get("surrogate")
    if not surrogate:
        return None
    stats = surrogate.get("trust")
    if stats is None:  # a card of a modtrain before the gain test: its flag alone
        return Verdict(bool(surrogate.get("trustworthy")), "variance",
                       "judged by an older modtrain (no trust statistics on its card); train it again to re-judge")
    return judge(stats, settings, card["name"], stats.get("baseline", "the baseline"))
