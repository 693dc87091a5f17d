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


def test_the_read_out_starts_at_the_scale_of_its_rank():
    """W_B per root starts as N(0, 1/rank): a projected input of unit scale gives logits of unit scale."""
    s = surrogate_class("factorized")(INTERFACES["typed"], [6, 20], DIMS["answers"],
                                      ["describe[color]", "measure[exist]", "measure[count]"], rank=64)
    assert s.read.shape == (3, 64, DIMS["answers"]) and abs(s.read.std().item() - 64 ** -0.5) < 0.01
    assert s.project.bias is None  # W_A has no bias: a zero input reads out the bias and the prior alone


def test_factorization_holds_rank_times_the_sides_not_their_product():
    s = _surrogate()  # inputs 6 + 20, rank 3, 3 roots, 7 answers
    assert s.num_parameters() == (6 + 20) * 3 + 3 * 3 * 7 + 3 * 7
    assert s.num_parameters() < (6 + 20) * 7 * 3  # a full map per root would hold this many


def test_mc_summary_on_a_hand_made_case():
    import math

    from modtrain.surrogates.factorized import mc_summary

    probs = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]],    # sample 1
                          [[0.4, 0.4, 0.2], [0.1, 0.3, 0.6]]])   # sample 2
    result = mc_summary(probs)
    assert torch.allclose(result.mean_probs, torch.tensor([[0.45, 0.35, 0.2], [0.1, 0.2, 0.7]]))
    # the top answer's probability, (0.5, 0.4) and (0.8, 0.6): unbiased variance, as the reference computes it
    assert result.variance.tolist() == pytest.approx([0.005, 0.02])

    def entropy(p):
        return -sum(x * math.log(x) for x in p)

    information = entropy([0.45, 0.35, 0.2]) - (entropy([0.5, 0.3, 0.2]) + entropy([0.4, 0.4, 0.2])) / 2
    assert result.mutual_information[0].item() == pytest.approx(information, rel=1e-5)
    same = mc_summary(probs[:1].expand(5, -1, -1))  # samples that agree: no variance, no information
    assert same.variance.abs().max() == 0 and same.mutual_information.abs().max() < 1e-6
    one = mc_summary(probs[:1])  # a single sample has no spread: zero, not the unbiased estimate's NaN
    assert one.variance.tolist() == [0.0, 0.0]


def test_dropout_sits_after_the_rank_projection():
    """With rank 1 a sample either keeps the one projected value or drops it: at most two distinct
    predictions per question. Dropout on the 26 inputs would give many."""
    values, part, root, prior = _inputs()
    s = surrogate_class("factorized")(INTERFACES["typed"], [6, 20], DIMS["answers"],
                                      ["describe[color]", "measure[exist]", "measure[count]"], rank=1, dropout=0.5)
    s.eval()
    samples = torch.stack([s(values, part, root, prior, force_dropout=True) for _ in range(40)])  # T, B, A
    for question in range(samples.shape[1]):
        assert len({tuple(row) for row in samples[:, question].round(decimals=5).tolist()}) == 2
    assert torch.equal(s(values, part, root, prior), s(values, part, root, prior))  # eval: no dropout
    hidden = s.projected(values, part)
    assert torch.equal(s.read_out(hidden, root, prior), s.read_out(hidden, root, prior))  # nor in read_out


def test_mc_predict_projects_once_and_matches_the_samples_it_draws():
    values, part, root, prior = _inputs()
    s = _surrogate(dropout=0.3).eval()
    torch.manual_seed(5)
    result = s.mc_predict(values, part, root, prior, samples=30)
    torch.manual_seed(5)
    hidden = s.projected(values, part).expand(30, 8, 3)
    drawn = s.read_out(hidden, root, prior, force_dropout=True).exp()
    assert torch.allclose(result.mean_probs, drawn.mean(0), atol=1e-6)
    assert torch.allclose(drawn.sum(-1), torch.ones(30, 8))
