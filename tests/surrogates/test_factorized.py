import pytest
import torch

from modtrain.registry import surrogate_class
from modtrain.types import INTERFACES

DIMS = {"features": 6, "height": 4, "width": 5, "answers": 7}


def _inputs(batch=8):
    """(attended, flattened attention), which way each row's root reads it (0: attended, as
    describe; 1: attention, as measure), root instance, prior."""
    torch.manual_seed(1)
    return ([torch.randn(batch, 6), torch.rand(batch, 20)], torch.tensor([0, 1] * (batch // 2)),
            torch.randint(0, 3, (batch,)), torch.randn(batch, 7))


def _surrogate(interface="typed", **hparams):
    torch.manual_seed(0)
    return surrogate_class("factorized")(INTERFACES[interface], [6, 20], DIMS["answers"],
                                         ["describe[color]", "measure[exist]", "measure[count]"], rank=3, **hparams)


def test_variance_is_zero_without_dropout_and_positive_with_it():
    args = _inputs()
    assert _surrogate(dropout=0.0).mc_predict(*args).variance.abs().max() == 0
    result = _surrogate(dropout=0.5).mc_predict(*args, samples=20)
    assert (result.variance > 0).all()
    assert torch.allclose(result.mean_probs.sum(1), torch.ones(8))


def test_prior_is_a_bias_only_in_the_typed_interface():
    values, part, root, prior = _inputs()
    typed = _surrogate("typed", dropout=0.0).eval()
    assert not torch.allclose(typed(values, part, root, prior), typed(values, part, root))
    gradient = _surrogate("gradient", dropout=0.0).eval()
    assert torch.allclose(gradient(values, part, root, prior), gradient(values, part, root))


def test_reads_attended_for_describe_and_attention_for_measure():
    (attended, attention), part, root, _ = _inputs()
    s = _surrogate(dropout=0.0).eval()
    base = s([attended, attention], part, root)
    changed_attention = s([attended, attention + 1], part, root)
    changed_attended = s([attended + 1, attention], part, root)
    describe_rows, measure_rows = part == 0, part == 1
    assert torch.allclose(base[describe_rows], changed_attention[describe_rows])
    assert not torch.allclose(base[measure_rows], changed_attention[measure_rows])
    assert torch.allclose(base[measure_rows], changed_attended[measure_rows])


def test_factorization_holds_rank_times_the_sides_not_their_product():
    s = _surrogate()  # inputs 6 + 20, rank 3, 3 roots, 7 answers
    assert s.num_parameters() == (6 + 20) * 3 + 3 * 3 * 7 + 3 * 7
    assert s.num_parameters() < (6 + 20) * 7 * 3  # a full map per root would hold this many


def test_mc_metrics_on_a_hand_made_case():
    import math

    from modtrain.surrogates.factorized import mc_metrics

    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]],    # sample 1
                          [[0.4, 0.4, 0.2], [0.1, 0.3, 0.6]]])   # sample 2
    sums = mc_metrics(probs, torch.tensor([0, 1]))
    # mean predictions [0.45, 0.35, 0.2] and [0.1, 0.2, 0.7]: a true NLL of the mean, not of the samples
    assert sums["nll"] == pytest.approx(-(math.log(0.45) + math.log(0.2)))
    assert sums["correct"] == 1  # the second question's most likely answer is 2, not 1
    # variance of the top answer's probability: (0.5, 0.4) → 0.0025; (0.8, 0.6) → 0.01
    assert sums["variance"] == pytest.approx(0.0125)
