import pytest

from modtrain.errors import ModtrainError
from modtrain.layout import Layout, parse_layout


def test_string_form_round_trips():
    text = "describe[color](and(find[red],find[cube]))"
    layout = parse_layout(text)
    assert layout == Layout("describe", "color",
                            (Layout("and", None, (Layout("find", "red"), Layout("find", "cube"))),))
    assert str(layout) == text
    assert parse_layout(" describe[color]( and( find[red] , find[cube] ) ) ") == layout


def test_depth_size_shape_instances():
    layout = parse_layout("compare[less_than](measure[count](find[red]),"
                          "measure[count](and(find[cube],relate[left](find[blue]))))")
    assert layout.depth == 5
    assert layout.size == 8
    assert layout.shape() == "compare[](measure[](find[]),measure[](and(find[],relate[](find[]))))"
    assert layout.instances()[:3] == [("compare", "less_than"), ("measure", "count"), ("find", "red")]
    # same shape, other instances
    other = parse_layout("compare[greater_than](measure[exist](find[a]),"
                         "measure[count](and(find[b],relate[right](find[c]))))")
    assert other.shape() == layout.shape() and other != layout


@pytest.mark.parametrize("bad", ["", "find[red", "find[red](", "and(find[a],)", "find[red] extra", "(find)"])
def test_invalid_layouts_are_named(bad):
    with pytest.raises(ModtrainError, match="invalid layout"):
        parse_layout(bad)


def test_parsed_layouts_share_their_equal_subtrees():
    first = parse_layout("measure[count](and(find[red],find[cube]))")
    second = parse_layout("describe[shape](and(find[red],find[cube]))")
    assert first.children[0] is second.children[0]
    assert first.children[0].children[0] is parse_layout("find[red]")
    assert Layout.of("find", "red") is first.children[0].children[0]
    # a node built directly is equal to (and hashes like) the shared one, not the same object
    direct = Layout("and", None, (Layout("find", "red"), Layout("find", "cube")))
    assert direct == first.children[0] and hash(direct) == hash(first.children[0])
    assert direct is not first.children[0]


def test_the_table_of_shared_layouts_lets_go_of_unused_ones():
    from modtrain import layout as layout_module

    text = "exist(find[a_layout_no_other_test_parses])"
    parse_layout(text)
    assert not any(str(node) == text for node in layout_module._interned.values())
    held = parse_layout(text)
    assert any(node is held for node in layout_module._interned.values())
