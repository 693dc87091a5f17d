import random

import pytest
import torch

from modtrain.execute import Executor
from modtrain.layout import parse_layout
from modtrain.registry import build_module
from modtrain.types import TypeCheckError, attend, get_interface

DIMS = {"features": 5, "height": 3, "width": 4, "answers": 6}
SHAPES = [
    "describe[{a}](find[{v}])",
    "describe[{a}](and(find[{v}],find[{w}]))",
    "describe[{a}](and(find[{v}],or(find[{w}],find[{u}])))",
    "measure[{m}](find[{v}])",
    "measure[{m}](or(and(find[{v}],find[{w}]),find[{u}]))",
    "measure[{m}](scene)",
    "describe[{a}](scene)",
]


def _executor(interface, mode="weighted"):
    torch.manual_seed(0)
    values = ["red", "blue", "cube", "sphere", "small"]
    modules = {"find": build_module("find", interface, DIMS, values),
               "describe": build_module("describe", interface, DIMS, ["color", "shape"]),
               "measure": build_module("measure", interface, DIMS, ["exist", "count"])}
    for m in modules.values():
        with torch.no_grad():
            for p in m.parameters():
                p.normal_()
    return Executor(modules, get_interface(interface), mode), values


@pytest.mark.parametrize("interface, mode", [("typed", "weighted"), ("gradient", "weighted"), ("typed", "softmax")])
def test_batched_execution_equals_per_sample_reference(interface, mode):
    executor, values = _executor(interface, mode)
    rng = random.Random(0)
    layouts = [parse_layout(rng.choice(SHAPES).format(a=rng.choice(["color", "shape"]),
                                                      m=rng.choice(["exist", "count"]),
                                                      v=rng.choice(values), w=rng.choice(values), u=rng.choice(values)))
               for _ in range(60)]
    features = torch.randn(60, 5, 3, 4)
    with torch.no_grad():
        batched = executor.run(layouts, features)
        reference = executor.run_reference(layouts, features)
    assert batched.shape == (60, 6)
    assert torch.allclose(batched, reference, atol=1e-5)


def test_reference_matches_hand_computation():
    executor, _ = _executor("typed")
    m = executor.modules
    features = torch.randn(1, 5, 3, 4)
    layout = parse_layout("describe[shape](and(find[red],find[cube]))")
    with torch.no_grad():
        mask = torch.minimum(m["find"](features, torch.tensor([0])), m["find"](features, torch.tensor([2])))
        expected = m["describe"](attend(features, mask), instance=torch.tensor([1]))
        assert torch.allclose(executor.run_reference([layout], features), expected)


def test_type_mismatch_names_the_layout_and_the_edge():
    executor, _ = _executor("typed")
    with pytest.raises(TypeCheckError, match=r"layout describe\[color\]\(measure\[count\]\(find\[red\]\)\): edge "
                                             r"measure\[count\]\(find\[red\]\) → describe\[color\] \(input 1\) carries "
                                             r"AnswerLogits, but describe expects Attended"):
        executor.check(parse_layout("describe[color](measure[count](find[red]))"))
    with pytest.raises(TypeCheckError, match="and takes 2 input"):
        executor.check(parse_layout("measure[count](and(find[red]))"))
    with pytest.raises(TypeCheckError, match="no module 'relate'"):
        executor.check(parse_layout("measure[count](relate[left](find[red]))"))
    with pytest.raises(Exception, match=r"find\[zeppelin\] is not an instance of module find"):
        executor.run([parse_layout("measure[count](find[zeppelin])")], torch.randn(1, 5, 3, 4))


def test_gradient_heatmaps_flow_through_and_or():
    executor, _ = _executor("gradient")
    assert executor.check(parse_layout("measure[count](or(find[red],find[blue]))")).name == "AnswerLogits"
    assert executor.check(parse_layout("or(find[red],find[blue])")).name == "Heatmap"


def test_given_leaves_stand_for_the_subtrees_they_replace():
    from modtrain.execute import Given, given_name
    from modtrain.types import AnswerLogits, Attended

    executor, _ = _executor("typed")
    compare = build_module("compare", "typed", DIMS, ["equal_color"])
    leaves = {given_name(t): Given(t) for t in (Attended, AnswerLogits)}
    # a given leaf reads a (B, K, ...) tensor of its type's values, one more dimension than the type
    leaf = leaves["given:Attended"]
    assert leaf.name == "given:Attended" and leaf.signature()[1] is Attended
    source = leaf.signature()[0][0]
    assert source.name == "GivenAttended" and source.ndim == Attended.ndim + 1 and source.from_dataset
    with_given = Executor({**executor.modules, "compare": compare, **leaves}, get_interface("typed"))
    full = Executor({**executor.modules, "compare": compare}, get_interface("typed"))
    features = torch.randn(4, 5, 3, 4)
    whole = parse_layout("compare[equal_color](describe[color](find[red]),describe[color](and(find[blue],find[cube])))")
    with torch.no_grad():
        left = full.run([whole.children[0]] * 4, features)
        right = full.run([whole.children[1]] * 4, features)
        given = {given_name(AnswerLogits): torch.stack([left, right], 1)}
        wired = parse_layout("compare[equal_color](given:AnswerLogits[0],given:AnswerLogits[1])")
        # compare reads answer probabilities in the typed interface: the executor converts the logits
        assert torch.allclose(with_given.run([wired] * 4, None, given), full.run([whole] * 4, features), atol=1e-6)
        expected = compare(torch.softmax(left, 1), torch.softmax(right, 1), instance=torch.zeros(4, dtype=torch.long))
        assert torch.allclose(full.run([whole] * 4, features), expected, atol=1e-6)
        attended = attend(features, full.run([parse_layout("find[red]")] * 4, features))
        wired = parse_layout("describe[shape](given:Attended[0])")
        assert torch.allclose(with_given.run([wired] * 4, None, {given_name(Attended): attended.unsqueeze(1)}),
                              full.run([parse_layout("describe[shape](find[red])")] * 4, features), atol=1e-6)


@pytest.mark.parametrize("interface", ["typed", "gradient"])
def test_find_in_evaluation_runs_on_the_rows_features_without_copying_them(interface, monkeypatch):
    """In evaluation the executor hands find the whole batch's features and the rows of its calls
    (``rows_forward``): every instance's map of each row once, each call picking its own. Same
    outputs as gathering the rows and calling find, whatever the order and repetition of the
    rows; in training, the gather."""
    executor, values = _executor(interface)
    find = executor.modules["find"]
    features = torch.randn(7, 5, 3, 4)
    rows = torch.tensor([3, 0, 3, 6, 3, 0, 2])  # unsorted, a row three times, rows 1, 4, 5 never
    instance = torch.tensor([0, 4, 2, 1, 0, 3, 2])
    find.eval()
    with torch.no_grad():
        expected = find(features[rows], instance)
        assert torch.equal(find.rows_forward(features, rows, instance), expected)  # bit for bit
    find.train()
    assert find.rows_forward(features, rows, instance) is None
    for module in executor.modules.values():
        module.eval()
    calls = []
    rows_forward = type(find).rows_forward

    def spy(self, all_features, call_rows, call_instance):
        calls.append(len(call_rows))
        return rows_forward(self, all_features, call_rows, call_instance)

    monkeypatch.setattr(type(find), "rows_forward", spy)
    layouts = [parse_layout(s.format(a="color", m="count", v=values[i % 5], w=values[(i + 1) % 5],
                                     u=values[(i + 2) % 5])) for i, s in enumerate(SHAPES * 3)]
    features = torch.randn(len(layouts), 5, 3, 4)
    with torch.no_grad():
        batched = executor.run(layouts, features)
        reference = executor.run_reference(layouts, features)
    assert torch.allclose(batched, reference, atol=1e-5)
    finds = sum(layout.text.count("find[") for layout in layouts)
    assert calls == [finds]  # one call, for every find of the batch, features never gathered
