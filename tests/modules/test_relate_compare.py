"""relate and compare: signatures under both interfaces, same_* excluding the object, what they can express."""
import pytest
import torch

from modtrain.registry import build_module
from modtrain.types import AnswerLogits, Features, Heatmap, Mask, Probabilities

DIMS = {"features": 6, "height": 4, "width": 5, "answers": 7}
RELATIONS = ["behind", "front", "left", "right", "same_color", "same_material", "same_shape", "same_size"]


@pytest.mark.parametrize("interface, attention, answer", [("typed", Mask, Probabilities),
                                                          ("gradient", Heatmap, AnswerLogits)])
def test_signatures_follow_the_interface(interface, attention, answer):
    relate = build_module("relate", interface, DIMS, RELATIONS)
    assert relate.signature() == ((attention, Features), attention)
    compare = build_module("compare", interface, DIMS, ["equal_color", "less_than"])
    assert compare.signature() == ((answer, answer), AnswerLogits)


@pytest.mark.parametrize("interface", ["typed", "gradient"])
def test_same_excludes_the_object_itself(interface):
    torch.manual_seed(0)
    relate = build_module("relate", interface, DIMS, RELATIONS)
    with torch.no_grad():
        for p in relate.parameters():
            p.normal_()
        relate.b2.fill_(50.0)  # every location attended before the exclusion (a ReLU could give 0)
    features = torch.randn(len(RELATIONS), 6, 4, 5)
    attention = torch.zeros(len(RELATIONS), 4, 5)
    attention[:, 2, 3] = 1.0  # one object, at row 2, column 3
    out = relate(attention, features, torch.arange(len(RELATIONS)))
    relate.excludes_self.zero_()  # the same module without the exclusion
    unmasked = relate(attention, features, torch.arange(len(RELATIONS)))
    same = torch.tensor([r.startswith("same_") for r in RELATIONS])
    assert torch.all(out[same, 2, 3] == 0) and torch.all(unmasked[same, 2, 3] > 0)
    elsewhere = torch.ones(4, 5, dtype=torch.bool)
    elsewhere[2, 3] = False
    assert torch.equal(out[:, elsewhere], unmasked[:, elsewhere])  # only the object itself is excluded
    assert torch.equal(out[~same], unmasked[~same])  # spatial relations are left alone


@pytest.mark.parametrize("interface", ["typed", "gradient"])
def test_relate_is_its_hidden_layer_at_every_location(interface):
    """relate's factored forward equals the layer it stands for: at location l,
    w2·relu(W1·[f_l; f_l⊙obj; coords_l − position] + b1) + b2 (then the constraint and same_*'s
    exclusion), with obj and position the attention-weighted feature and coordinates. Gradients
    reach every parameter."""
    from modtrain.modules.relate import coordinates

    torch.manual_seed(0)
    relate = build_module("relate", interface, DIMS, RELATIONS)
    with torch.no_grad():
        for p in relate.parameters():
            p.normal_()
    features = torch.randn(5, 6, 4, 5)
    attention = torch.rand(5, 4, 5)
    instance = torch.tensor([0, 3, 4, 3, 7])
    flat = features.flatten(2)
    weights = attention.flatten(1) / (attention.flatten(1).sum(1, keepdim=True) + 1e-6)
    obj = torch.einsum("bcl,bl->bc", flat, weights)
    coords = coordinates(4, 5)
    offset = coords.unsqueeze(0) - (weights @ coords.T).unsqueeze(2)
    inputs = torch.cat([flat, flat * obj.unsqueeze(2), offset], 1)                       # B, 2C+2, HW
    hidden = torch.relu(torch.einsum("bki,bil->bkl", relate.w1[instance], inputs) + relate.b1[instance, :, None])
    raw = torch.einsum("bk,bkl->bl", relate.w2[instance], hidden) + relate.b2[instance, None]
    peak = attention / attention.flatten(1).amax(1).view(5, 1, 1)
    keep = torch.where(relate.excludes_self[instance].view(5, 1, 1), 1 - peak, torch.ones_like(peak))
    expected = relate.constrain(raw.view(5, 4, 5)) * keep
    out = relate(attention, features, instance)
    assert torch.allclose(out, expected, atol=1e-4)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in relate.parameters())


def test_relate_reads_positions():
    """Shifting the attended object changes where relate points, with the features unchanged."""
    torch.manual_seed(0)
    relate = build_module("relate", "typed", DIMS, ["left"])
    features = torch.randn(1, 6, 4, 5).expand(2, -1, -1, -1)
    attention = torch.zeros(2, 4, 5)
    attention[0, 1, 0], attention[1, 1, 4] = 1.0, 1.0
    out = relate(attention, features, torch.tensor([0, 0]))
    assert not torch.allclose(out[0], out[1])


def test_compare_reads_both_inputs_and_their_order():
    torch.manual_seed(0)
    compare = build_module("compare", "typed", DIMS, ["less_than"])
    a, b = torch.softmax(torch.randn(3, 7), 1), torch.softmax(torch.randn(3, 7), 1)
    instance = torch.zeros(3, dtype=torch.long)
    assert not torch.allclose(compare(a, b, instance), compare(b, a, instance))
    assert not torch.allclose(compare(a, b, instance), compare(a, a, instance))
