import torch

from modtrain.registry import surrogate_class
from modtrain.types import INTERFACES

DIMS = {"features": 6, "height": 4, "width": 5, "answers": 7}


def _inputs(batch=8):
    torch.manual_seed(1)
    return (torch.rand(batch, 4, 5), torch.randn(batch, 6), torch.tensor([0, 1] * (batch // 2), dtype=torch.bool),
            torch.randint(0, 3, (batch,)), torch.randn(batch, 7))


def _surrogate(interface="typed", **hparams):
    torch.manual_seed(0)
    return surrogate_class("factorized")(INTERFACES[interface], DIMS, ["describe[color]", "measure[exist]", "measure[count]"],
                                         rank=3, **hparams)


def test_variance_is_zero_without_dropout_and_positive_with_it():
    args = _inputs()
    assert _surrogate(dropout=0.0).mc_predict(*args).variance.abs().max() == 0
    result = _surrogate(dropout=0.5).mc_predict(*args, samples=20)
    assert (result.variance > 0).all()
    assert torch.allclose(result.mean_probs.sum(1), torch.ones(8))


def test_prior_is_a_bias_only_in_the_typed_interface():
    attention, attended, is_measure, root, prior = _inputs()
    typed = _surrogate("typed", dropout=0.0).eval()
    assert not torch.allclose(typed(attention, attended, is_measure, root, prior), typed(attention, attended, is_measure, root))
    gradient = _surrogate("gradient", dropout=0.0).eval()
    assert torch.allclose(gradient(attention, attended, is_measure, root, prior), gradient(attention, attended, is_measure, root))


def test_reads_attended_for_describe_and_attention_for_measure():
    attention, attended, is_measure, root, _ = _inputs()
    s = _surrogate(dropout=0.0).eval()
    base = s(attention, attended, is_measure, root)
    changed_attention = s(attention + 1, attended, is_measure, root)
    changed_attended = s(attention, attended + 1, is_measure, root)
    describe_rows, measure_rows = ~is_measure, is_measure
    assert torch.allclose(base[describe_rows], changed_attention[describe_rows])
    assert not torch.allclose(base[measure_rows], changed_attention[measure_rows])
    assert torch.allclose(base[measure_rows], changed_attended[measure_rows])


def test_factorization_is_low_rank():
    s = _surrogate()
    full = s.project.weight.T @ s.read[0]  # (C + HW) × A
    assert torch.linalg.matrix_rank(full) <= 3
