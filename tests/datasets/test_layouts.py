import pytest
from modtrain.datasets.clevr import compact_program as P
from modtrain.datasets.layouts import program_to_layout

SCENE = ("scene",)
RED = ("filter_color", [0], ["red"])


CASES = [
    ([SCENE, ("count", [0])], "measure[count](find[*all*])"),
    ([SCENE, RED, ("exist", [1])], "measure[exist](find[red])"),
    # filter_X[v] → find[v] ANDed with its input (the whole scene is left out: it adds nothing)
    ([SCENE, RED, ("filter_shape", [1], ["cube"]), ("filter_size", [2], ["large"]),
      ("filter_material", [3], ["metal"]), ("count", [4])],
     "measure[count](and(find[metal],and(find[large],and(find[cube],find[red]))))"),
    ([SCENE, RED, ("unique", [1]), ("query_shape", [2])], "describe[shape](find[red])"),
    ([SCENE, RED, ("unique", [1]), ("query_color", [2])], "describe[color](find[red])"),
    ([SCENE, RED, ("unique", [1]), ("query_size", [2])], "describe[size](find[red])"),
    ([SCENE, RED, ("unique", [1]), ("query_material", [2])], "describe[material](find[red])"),
    ([SCENE, RED, SCENE, ("filter_shape", [2], ["cube"]), ("union", [1, 3]), ("count", [4])],
     "measure[count](or(find[red],find[cube]))"),
    ([SCENE, RED, SCENE, ("filter_shape", [2], ["cube"]), ("intersect", [1, 3]), ("exist", [4])],
     "measure[exist](and(find[red],find[cube]))"),
    ([SCENE, RED, ("unique", [1]), ("relate", [2], ["left"]), ("filter_shape", [3], ["cube"]), ("count", [4])],
     "measure[count](and(find[cube],relate[left](find[red])))"),
    ([SCENE, RED, ("unique", [1]), ("same_color", [2]), ("exist", [3])],
     "measure[exist](relate[same_color](find[red]))"),
    ([SCENE, RED, ("unique", [1]), ("same_shape", [2]), ("count", [3])],
     "measure[count](relate[same_shape](find[red]))"),
    ([SCENE, RED, ("unique", [1]), ("same_size", [2]), ("count", [3])],
     "measure[count](relate[same_size](find[red]))"),
    ([SCENE, RED, ("unique", [1]), ("same_material", [2]), ("count", [3])],
     "measure[count](relate[same_material](find[red]))"),
    ([SCENE, RED, ("unique", [1]), ("query_size", [2]), SCENE, ("filter_shape", [4], ["cube"]), ("unique", [5]),
      ("query_size", [6]), ("equal_size", [3, 7])],
     "compare[equal_size](describe[size](find[red]),describe[size](find[cube]))"),
    ([SCENE, RED, ("unique", [1]), ("query_color", [2]), SCENE, ("unique", [4]), ("query_color", [5]),
      ("equal_color", [3, 6])],
     "compare[equal_color](describe[color](find[red]),describe[color](find[*all*]))"),
    ([SCENE, RED, ("unique", [1]), ("query_shape", [2]), SCENE, ("unique", [4]), ("query_shape", [5]),
      ("equal_shape", [3, 6])],
     "compare[equal_shape](describe[shape](find[red]),describe[shape](find[*all*]))"),
    ([SCENE, RED, ("unique", [1]), ("query_material", [2]), SCENE, ("unique", [4]), ("query_material", [5]),
      ("equal_material", [3, 6])],
     "compare[equal_material](describe[material](find[red]),describe[material](find[*all*]))"),
    ([SCENE, RED, ("count", [1]), SCENE, ("count", [3]), ("equal_integer", [2, 4])],
     "compare[equal_integer](measure[count](find[red]),measure[count](find[*all*]))"),
    ([SCENE, RED, ("count", [1]), SCENE, ("count", [3]), ("less_than", [2, 4])],
     "compare[less_than](measure[count](find[red]),measure[count](find[*all*]))"),
    ([SCENE, RED, ("count", [1]), SCENE, ("count", [3]), ("greater_than", [2, 4])],
     "compare[greater_than](measure[count](find[red]),measure[count](find[*all*]))"),
    # intersect with the whole scene is the identity too
    ([SCENE, RED, SCENE, ("intersect", [1, 2]), ("count", [3])], "measure[count](find[red])"),
]


@pytest.mark.parametrize("nodes, layout", CASES)
def test_program_to_layout(nodes, layout):
    assert str(program_to_layout(P(*nodes))) == layout


def test_every_function_has_a_rule():
    from modtrain.datasets.clevr import FUNCTIONS

    covered = {node[0] for nodes, _ in CASES for node in nodes}
    assert sorted(set(FUNCTIONS) - covered) == []
