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


def test_unknown_interface():
    with pytest.raises(ModtrainError, match="valid: typed, gradient"):
        get_interface("fuzzy")
