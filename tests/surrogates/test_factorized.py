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


def test_factorization_is_low_rank():
    s = _surrogate()
    full = s.project.weight.T @ s.read[0]  # (C + HW) × A
    assert torch.linalg.matrix_rank(full) <= 3
