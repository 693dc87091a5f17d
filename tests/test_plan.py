import pytest

from modtrain.errors import ModtrainError
from modtrain.plan import format_plan, make_plan
from modtrain.recipe import Recipe

# Paper Table 1: compositional dependencies of the NMN's modules.
TABLE_1 = {"encoder": ("decoupled", "direct"), "find": ("decoupled", "indirect"),
           "describe": ("dependent", "direct"), "measure": ("dependent", "direct")}


@pytest.mark.parametrize("name", ["nmn-typed", "nmn-original"])
def test_planner_reproduces_table_1(name):
    plan = make_plan(Recipe.load(name))
    assert {m.name: (m.input, m.supervision) for m in plan.modules} == TABLE_1
    assert plan.module("find").strategy == "surrogate factorized"
    assert plan.module("describe").strategy == "virtual dataset of find"
    table = format_plan(plan)
    for module, (inp, sup) in TABLE_1.items():
        assert any(line.split()[:3] == [module, inp, sup] for line in table.splitlines())


def test_typed_trains_the_encoder_first():
    levels = [[j.name for j in level] for level in make_plan(Recipe.load("nmn-typed")).levels()]
    assert levels == [["train encoder"], ["cache encoder"], ["train find"], ["cache find"],
                      ["train describe", "train measure"], ["assemble"]]


def test_gradient_trains_encoder_and_find_in_parallel():
    plan = make_plan(Recipe.load("nmn-original"))
    levels = [[j.name for j in level] for level in plan.levels()]
    assert levels == [["train encoder", "train find"], ["cache find"], ["train describe", "train measure"],
                      ["assemble"]]
    assert any("geometric mean" in note for note in plan.module("describe").notes)


def test_trained_modules_are_not_retrained():
    plan = make_plan(Recipe.load("nmn-typed"), trained={"encoder", "find"})
    names = [j.name for j in plan.jobs]
    assert "train encoder" not in names and "train find" not in names
    assert [j.name for j in plan.levels()[0]] == ["cache encoder", "cache find"]
    assert plan.module("describe").trained is False and plan.module("find").trained


def test_indirect_module_without_surrogate_is_refused(tmp_path):
    text = Recipe.load("nmn-typed").to_toml().replace('surrogate = "factorized"\n', "")
    path = tmp_path / "r.toml"
    path.write_text(text)
    with pytest.raises(ModtrainError, match=r"module find has indirect supervision \(paper §3.1\) "
                                            r"and needs a surrogate"):
        make_plan(Recipe.load(path))


def test_dependent_module_without_producer_is_refused(tmp_path):
    path = tmp_path / "r.toml"
    path.write_text('name = "r"\n[modules.encoder]\n[modules.describe]\n')
    with pytest.raises(ModtrainError, match="module describe needs Attended, which no module of the recipe produces"):
        make_plan(Recipe.load(path))
