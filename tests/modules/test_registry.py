"""Every registered module, built and run on random inputs, satisfies its declared types."""
import pytest
import torch

from modtrain.errors import ModtrainError
from modtrain.registry import MODULES, build_module, module_class
from modtrain.types import Features, Tokens

DIMS = {"features": 6, "height": 4, "width": 5, "answers": 7, "tokens": 11}
INSTANCES = ["a", "b", "c"]


def _random_input(data_type, batch, interface):
    if data_type is Tokens:
        return torch.randint(1, DIMS["tokens"], (batch, 9))
    if data_type is Features:
        return torch.randn(batch, DIMS["features"], DIMS["height"], DIMS["width"])
    shapes = {"Attended": (batch, DIMS["features"]), "AnswerLogits": (batch, DIMS["answers"]),
              "Prior": (batch, DIMS["answers"]), "Probabilities": (batch, DIMS["answers"])}
    if data_type.name in shapes:
        return data_type.constrain(torch.randn(shapes[data_type.name]))
    return data_type.constrain(torch.randn(batch, DIMS["height"], DIMS["width"]) * 3)  # attention


module_class("find")  # load the registry
NAMES = sorted(MODULES)


@pytest.mark.parametrize("interface", ["typed", "gradient"])
@pytest.mark.parametrize("name", NAMES)
def test_output_satisfies_declared_type(name, interface):
    torch.manual_seed(0)
    cls = module_class(name)
    module = build_module(name, interface, DIMS, INSTANCES if cls.has_instances else [])
    input_types, output_type = module.signature()
    batch = 5
    args = [_random_input(t, batch, module.interface) for t in input_types]
    if Tokens in input_types:  # the question's lengths follow its tokens (encoder, film)
        args.insert(1, torch.tensor([9, 3, 1, 5, 9]))
    kwargs = {"instance": torch.tensor([0, 2, 1, 0, 2])} if cls.has_instances else {}
    out = module(*args, **kwargs)
    output_type.check(out, where=name)
    assert out.shape[0] == batch
    if name in ("find", "and", "or", "scene"):
        assert output_type.name == ("Mask" if interface == "typed" else "Heatmap")


@pytest.mark.parametrize("interface", ["typed", "gradient"])
def test_find_as_a_learnable_cell_satisfies_the_attention_type(interface):
    """find with ``impl = "cell"`` (an LNMN attention cell) is a Mask (typed) or a Heatmap
    (gradient) for any structure, its instances applied per sample."""
    from modtrain.modules.lnmn import OPERATIONS

    torch.manual_seed(0)
    find = build_module("find", interface, DIMS, INSTANCES, impl="cell")
    features = torch.randn(5, 6, 4, 5) * 3
    instance = torch.tensor([0, 2, 1, 0, 2])
    output_type = find.signature()[1]
    assert output_type.name == ("Mask" if interface == "typed" else "Heatmap")
    for first in OPERATIONS:  # every operation of the node that reads the image
        with torch.no_grad():
            find.cell.nodes[0].alpha.copy_(torch.full((6,), -9.0))
            find.cell.nodes[0].alpha[OPERATIONS.index(first)] = 9.0
        out = find(features, instance)
        output_type.check(out, where=f"find cell ({first})")
        assert out.shape == (5, 4, 5)
        for i in range(5):
            assert torch.allclose(out[i], find(features[i:i + 1], instance[i:i + 1])[0], atol=1e-6)
    assert not torch.allclose(out[0], out[2])  # the instance matters


def test_instances_are_applied_per_sample():
    torch.manual_seed(0)
    find = build_module("find", "typed", DIMS, INSTANCES)
    features = torch.randn(3, 6, 4, 5)
    batched = find(features, torch.tensor([2, 0, 1]))
    for i, inst in enumerate([2, 0, 1]):
        assert torch.allclose(batched[i], find(features[i:i + 1], torch.tensor([inst]))[0])


def test_factory_errors_name_the_valid_choices():
    with pytest.raises(ModtrainError, match="unknown module 'transform'; valid: and, compare, describe"):
        build_module("transform", "typed", DIMS)
    with pytest.raises(ModtrainError, match=r"unknown hyperparameter\(s\) depth for module find; "
                                            r"valid: attention, bias, dropout"):
        build_module("find", "typed", DIMS, INSTANCES, depth=3)
    with pytest.raises(ModtrainError, match="unknown instance|is not an instance"):
        build_module("find", "typed", DIMS, INSTANCES).instance_ids(["zz"], "layout find[zz]")


def test_encoder_ignores_padding():
    torch.manual_seed(0)
    encoder = build_module("encoder", "typed", DIMS).eval()
    tokens = torch.tensor([[3, 4, 5, 0, 0]])
    padded_other = torch.tensor([[3, 4, 5, 9, 9]])
    length = torch.tensor([3])
    assert torch.allclose(encoder(tokens, length), encoder(padded_other, length))
