import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.types import (
    INTERFACES,
    Attended,
    Heatmap,
    Mask,
    TypeCheckError,
    attend,
    bmm_rows,
    get_interface,
)


def test_hard_constraints_put_values_in_the_domain():
    raw = torch.randn(4, 5, 5) * 10
    Mask.check(Mask.constrain(raw))
    Heatmap.check(Heatmap.constrain(raw))
    with pytest.raises(TypeCheckError, match="below 0"):
        Mask.check(raw)
    with pytest.raises(TypeCheckError, match="expected 3 dimensions"):
        Mask.check(torch.zeros(2, 3))
    with pytest.raises(TypeCheckError, match="NaN"):
        Attended.check(torch.tensor([[float("nan")]]))


def test_logic_per_interface():
    a, b = torch.tensor([[[0.2, 0.9]]]), torch.tensor([[[0.5, 0.4]]])
    typed, gradient = INTERFACES["typed"], INTERFACES["gradient"]
    assert torch.equal(typed.and_(a, b), torch.tensor([[[0.2, 0.4]]]))
    assert torch.equal(typed.or_(a, b), torch.tensor([[[0.5, 0.9]]]))
    assert torch.allclose(gradient.and_(a, b), a * b) and torch.allclose(gradient.or_(a, b), a + b)


def test_answer_combination_per_interface():
    root, prior = torch.tensor([[2.0, 0.0, -1.0]]), torch.tensor([[0.0, 1.0, 0.0]])
    typed = INTERFACES["typed"].combine(root, prior)
    assert torch.allclose(typed, torch.log_softmax(root + prior, -1))
    geometric = INTERFACES["gradient"].combine(root, prior).exp()
    expected = (torch.softmax(root, -1) * torch.softmax(prior, -1)).sqrt()
    assert torch.allclose(geometric, expected / expected.sum())
    assert torch.allclose(INTERFACES["typed"].combine(root, None).exp().sum(), torch.tensor(1.0))


def test_attend_is_a_weighted_average():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    attention = torch.zeros(2, 2, 2)
    attention[:, 0, 1] = 1.0
    assert torch.allclose(attend(features, attention), features[:, :, 0, 1], atol=1e-4)
    uniform = attend(features, torch.ones(2, 2, 2))
    assert torch.allclose(uniform, features.flatten(2).mean(2), atol=1e-4)
    assert torch.allclose(attend(features, torch.zeros(2, 2, 2), "softmax"), features.flatten(2).mean(2))
    with pytest.raises(ModtrainError, match="valid: weighted, softmax"):
        attend(features, attention, "max")


# (rows, whether they are read in place): every row twice in a shuffled order; rows once, some
# missing; rows that are few of the batch's (gathered: reading the whole batch costs more); every
# row once, one row twice (its second occurrence gathered)
ROW_CASES = [([4, 1, 0, 3, 2, 5, 1, 0, 5, 2, 3, 4], True), ([5, 0, 3, 2], True), ([3, 1, 3, 3, 3], False),
             ([0, 1, 2, 3, 4, 5, 0], False)]


@pytest.mark.parametrize("rows, in_place", ROW_CASES)
def test_bmm_rows_is_the_product_on_the_gathered_rows_bit_for_bit(rows, in_place, monkeypatch):
    torch.manual_seed(0)
    flat = torch.randn(6, 5, 7)
    rows = torch.tensor(rows)
    operand = torch.randn(len(rows), 7, 1)
    expected = torch.bmm(flat[rows], operand)
    copies = []
    index_select = torch.Tensor.index_select
    monkeypatch.setattr(torch.Tensor, "index_select",
                        lambda self, *a: copies.append(self.shape == flat.shape) or index_select(self, *a))
    result = bmm_rows(flat, rows, operand)
    assert torch.equal(result, expected)
    assert any(copies) is not in_place  # the rows' features were copied only when that is cheaper


@pytest.mark.parametrize("mode", ["weighted", "softmax"])
def test_attend_over_rows_equals_attending_the_gathered_features(mode):
    torch.manual_seed(1)
    features = torch.randn(4, 3, 2, 2)
    rows = torch.tensor([2, 0, 2, 1, 3, 0, 1, 3])
    attention = torch.rand(len(rows), 2, 2)
    assert torch.equal(attend(features, attention, mode, rows), attend(features[rows], attention, mode))


def test_unknown_interface():
    with pytest.raises(ModtrainError, match="valid: typed, gradient"):
        get_interface("fuzzy")
