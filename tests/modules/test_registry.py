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
                                            r"valid: attention, bias, channels, dropout"):
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


GROUPS = {"color": [0, 2], "shape": [2, 6], "size": [2, 6], "material": [2, 6]}


def test_find_and_describe_read_only_their_attributes_channels_where_the_features_say_which(tmp_path):
    """Features split by attribute (``attribute_channels``): find[cube] reads only the shape
    channels, find[red] only the colour ones, describe[color] only the colour ones; their other
    weights are 0 and stay 0 through training; the card rebuilds the same module."""
    from modtrain.card import load_module, save_module

    dims = {**DIMS, "attribute_channels": GROUPS}
    torch.manual_seed(0)
    find = build_module("find", "typed", dims, ["cube", "red", "thing"])
    x = torch.randn(3, 6, 4, 5)
    colour_changed, form_changed = x.clone(), x.clone()
    colour_changed[:, :2] += 5.0
    form_changed[:, 2:] += 5.0
    find.eval()
    ids = {name: torch.full((3,), i) for i, name in enumerate(find.instances)}
    assert torch.equal(find(x, ids["cube"]), find(colour_changed, ids["cube"]))
    assert not torch.allclose(find(x, ids["cube"]), find(form_changed, ids["cube"]))
    assert torch.equal(find(x, ids["red"]), find(form_changed, ids["red"]))
    assert not torch.allclose(find(x, ids["red"]), find(colour_changed, ids["red"]))
    assert not torch.allclose(find(x, ids["thing"]), find(colour_changed, ids["thing"]))  # no attribute: all
    # rows_forward (evaluation's path) reads the same channels
    rows = torch.tensor([0, 2])
    assert torch.equal(find.rows_forward(colour_changed, rows, ids["cube"][:2]), find(x[rows], ids["cube"][:2]))
    find.train()
    optimizer = torch.optim.Adam(find.parameters(), lr=0.1, weight_decay=0.01)
    for _ in range(3):
        loss = find(x, torch.tensor([0, 1, 2])).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert torch.all(find.weight[0, :2] == 0) and torch.all(find.weight[1, 2:] == 0)
    assert torch.all(find.weight[0, 2:] != 0) and torch.all(find.weight[2] != 0)
    assert find.dims["attribute_channels"] == GROUPS
    save_module(tmp_path, find, {})
    loaded, card = load_module(tmp_path, "find")
    assert card["dimensions"]["attribute_channels"] == GROUPS and torch.equal(loaded.mask, find.mask)
    describe = build_module("describe", "typed", dims, ["color", "shape"])
    attended = torch.randn(3, 6)
    moved = attended.clone()
    moved[:, 2:] += 3.0
    assert torch.equal(describe(attended, torch.tensor([0] * 3)), describe(moved, torch.tensor([0] * 3)))
    assert not torch.allclose(describe(attended, torch.tensor([1] * 3)), describe(moved, torch.tensor([1] * 3)))


def test_channels_all_ignores_the_split_and_attribute_needs_one():
    dims = {**DIMS, "attribute_channels": GROUPS}
    torch.manual_seed(0)
    find = build_module("find", "typed", dims, ["cube"], channels="all").eval()
    x = torch.randn(2, 6, 4, 5)
    moved = x.clone()
    moved[:, :2] += 5.0
    assert not torch.allclose(find(x, torch.tensor([0, 0])), find(moved, torch.tensor([0, 0])))
    assert "attribute_channels" not in find.dims
    plain = build_module("find", "typed", DIMS, ["cube"])  # auto without a split: every channel
    assert torch.all(plain.weight != 0)
    with pytest.raises(ModtrainError, match="channels='attribute' needs features that say which channels"):
        build_module("describe", "typed", DIMS, ["color"], channels="attribute")
    with pytest.raises(ModtrainError, match="find as a cell reads every feature channel"):
        build_module("find", "typed", dims, ["cube"], impl="cell")


def test_a_blind_encoder_reads_every_value_of_an_attribute_as_one_word(tmp_path):
    """``attribute_values='blind'``: questions that differ only in which colour (or which shape) they
    name get the same prior; reading them (the default), they do not; the card keeps the groups."""
    from modtrain.card import load_module, save_module

    dims = {**DIMS, "attribute_tokens": {"color": [3, 4], "shape": [5, 6, 7]}}
    red_cube, cyan_cube, red_ball = (torch.tensor([[2, 3, 5, 8]]), torch.tensor([[2, 4, 5, 8]]),
                                     torch.tensor([[2, 3, 7, 8]]))
    other = torch.tensor([[2, 3, 5, 9]])  # a word of no attribute still counts
    lengths = torch.tensor([4])
    torch.manual_seed(0)
    blind = build_module("encoder", "typed", dims, attribute_values="blind").eval()
    prior = blind(red_cube, lengths)
    assert torch.equal(prior, blind(cyan_cube, lengths)) and torch.equal(prior, blind(red_ball, lengths))
    assert not torch.allclose(prior, blind(other, lengths))
    reading = build_module("encoder", "typed", dims).eval()
    assert not torch.allclose(reading(red_cube, lengths), reading(cyan_cube, lengths))
    save_module(tmp_path, blind, {})
    loaded, card = load_module(tmp_path, "encoder")
    assert card["dimensions"]["attribute_tokens"] == dims["attribute_tokens"]
    assert torch.equal(loaded(cyan_cube, lengths), prior)
    with pytest.raises(ModtrainError, match="attribute_values='blind' needs the question tokens"):
        build_module("encoder", "typed", DIMS, attribute_values="blind")


def test_the_words_that_name_attribute_values_include_synonyms_and_plurals():
    from modtrain.datasets.families import value_words

    words = value_words()
    assert words["balls"] == words["block"] == words["cylinders"] == "shape"
    assert words["shiny"] == words["matte"] == "material" and words["cyan"] == "color" and words["small"] == "size"
    assert not {"thing", "things", "object", "big", "color", "shape", "what"} & set(words)
