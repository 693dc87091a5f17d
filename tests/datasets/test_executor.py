import pytest
from modtrain.datasets.clevr import FUNCTIONS
from modtrain.datasets.clevr import compact_program as P
from modtrain.datasets.executor import (
    ProgramError,
    execute,
    program_depth,
    question_type,
    relate_hops,
)

RED = ("filter_color", [0], ["red"])


CASES = [
    ([("scene",), ("count", [0])], "4"),
    ([("scene",), RED, ("count", [1])], "2"),
    ([("scene",), ("filter_shape", [0], ["sphere"]), ("count", [1])], "2"),
    ([("scene",), ("filter_size", [0], ["small"]), ("count", [1])], "2"),
    ([("scene",), ("filter_material", [0], ["metal"]), ("count", [1])], "2"),
    ([("scene",), ("filter_color", [0], ["yellow"]), ("exist", [1])], "no"),
    ([("scene",), ("filter_color", [0], ["green"]), ("exist", [1])], "yes"),
    ([("scene",), ("filter_color", [0], ["blue"]), ("unique", [1]), ("query_shape", [2])], "sphere"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("query_color", [2])], "red"),
    ([("scene",), ("filter_shape", [0], ["cylinder"]), ("unique", [1]), ("query_size", [2])], "large"),
    ([("scene",), ("filter_color", [0], ["green"]), ("unique", [1]), ("query_material", [2])], "metal"),
    # the blue sphere has three objects in front of it
    ([("scene",), ("filter_color", [0], ["blue"]), ("unique", [1]), ("relate", [2], ["front"]), ("count", [3])], "3"),
    # what is right of the cube and behind the cylinder? the blue sphere
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("relate", [2], ["right"]),
      ("scene",), ("filter_shape", [4], ["cylinder"]), ("unique", [5]), ("relate", [6], ["behind"]),
      ("intersect", [3, 7]), ("unique", [8]), ("query_color", [9])], "blue"),
    ([("scene",), ("filter_color", [0], ["blue"]), ("scene",), ("filter_color", [2], ["green"]),
      ("union", [1, 3]), ("count", [4])], "2"),
    ([("scene",), RED, ("scene",), ("filter_material", [2], ["metal"]), ("intersect", [1, 3]), ("count", [4])], "1"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("same_color", [2]), ("unique", [3]),
      ("query_shape", [4])], "cylinder"),
    ([("scene",), ("filter_color", [0], ["blue"]), ("unique", [1]), ("same_shape", [2]), ("unique", [3]),
      ("query_color", [4])], "green"),
    ([("scene",), ("filter_color", [0], ["blue"]), ("unique", [1]), ("same_size", [2]), ("count", [3])], "1"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("same_material", [2]), ("count", [3])], "1"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("query_color", [2]),
      ("scene",), ("filter_shape", [4], ["cylinder"]), ("unique", [5]), ("query_color", [6]),
      ("equal_color", [3, 7])], "yes"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("query_size", [2]),
      ("scene",), ("filter_color", [4], ["blue"]), ("unique", [5]), ("query_size", [6]),
      ("equal_size", [3, 7])], "no"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("query_shape", [2]),
      ("scene",), ("filter_color", [4], ["blue"]), ("unique", [5]), ("query_shape", [6]),
      ("equal_shape", [3, 7])], "no"),
    ([("scene",), ("filter_shape", [0], ["cube"]), ("unique", [1]), ("query_material", [2]),
      ("scene",), ("filter_color", [4], ["green"]), ("unique", [5]), ("query_material", [6]),
      ("equal_material", [3, 7])], "yes"),
    ([("scene",), RED, ("count", [1]), ("scene",), ("filter_shape", [3], ["sphere"]), ("count", [4]),
      ("equal_integer", [2, 5])], "yes"),
    ([("scene",), ("filter_color", [0], ["green"]), ("count", [1]), ("scene",), RED, ("count", [4]),
      ("less_than", [2, 5])], "yes"),
    ([("scene",), ("filter_color", [0], ["green"]), ("count", [1]), ("scene",), RED, ("count", [4]),
      ("greater_than", [2, 5])], "no"),
]


@pytest.mark.parametrize("nodes, answer", CASES)
def test_answers_on_hand_built_scene(scene, nodes, answer):
    assert execute(P(*nodes), scene) == answer


def test_every_clevr_function_is_covered_above():
    covered = {node[0] for nodes, _ in CASES for node in nodes}
    assert sorted(set(FUNCTIONS) - covered) == []


def test_unique_over_several_objects_is_a_clear_error(scene):
    with pytest.raises(ProgramError, match=r"node 2 \(unique\) needs exactly one object but its input has 2"):
        execute(P(("scene",), RED, ("unique", [1]), ("query_shape", [2])), scene)


def test_unique_over_nothing_is_an_error(scene):
    with pytest.raises(ProgramError, match="has 0"):
        execute(P(("scene",), ("filter_color", [0], ["yellow"]), ("unique", [1]), ("query_shape", [2])), scene)


def test_type_mismatch_names_the_node_and_the_fix(scene):
    with pytest.raises(ProgramError, match=r"node 2 \(relate\) expects an object.*insert 'unique'"):
        execute(P(("scene",), RED, ("relate", [1], ["left"]), ("count", [2])), scene)


def test_unknown_value_is_an_error(scene):
    with pytest.raises(ProgramError, match="valid: gray, red"):
        execute(P(("scene",), ("filter_color", [0], ["magenta"]), ("count", [1])), scene)


def test_metrics():
    deep = P(("scene",), ("filter_color", [0], ["red"]), ("unique", [1]), ("relate", [2], ["left"]),
             ("filter_shape", [3], ["cube"]), ("unique", [4]), ("relate", [5], ["front"]),
             ("count", [6]))
    assert program_depth(deep) == 8
    assert relate_hops(deep) == 2
    assert question_type(deep) == "count"
    # depth follows the longest branch, not the program length
    two = P(("scene",), ("count", [0]), ("scene",), ("filter_color", [2], ["red"]),
            ("filter_shape", [3], ["cube"]), ("count", [4]), ("less_than", [1, 5]))
    assert len(two) == 7 and program_depth(two) == 5
    assert question_type(two) == "compare-integer"
    assert question_type(P(("scene",), ("exist", [0]))) == "exist"
    assert question_type(P(("scene",), ("unique", [0]), ("query_size", [1]))) == "query-attribute"
    assert question_type(P(("scene",), ("unique", [0]), ("query_size", [1]), ("scene",), ("unique", [3]),
                           ("query_size", [4]), ("equal_size", [2, 5]))) == "compare-attribute"
    with pytest.raises(ProgramError, match="gives no answer"):
        question_type(P(("scene",), ("filter_color", [0], ["red"])))
