"""CLEVR programs to NMN layouts, by the mapping in docs/formats.md.

``filter_X[v]`` → ``find[v]`` ANDed with its input; ``scene`` → ``find[*all*]``, a learned
find instance that attends to the objects (the reference code's mapping: an all-ones map
carries no count, so ``count(scene)`` could not be answered from it); ``intersect`` → ``and``;
``union`` → ``or``; ``unique`` → nothing (attention
passes through); ``query_X`` → ``describe[X]``; ``exist``/``count`` → ``measure[...]``;
``relate[r]`` → ``relate[r]``; ``same_X`` → ``relate[same_X]``; ``equal_*``,
``less_than``, ``greater_than`` → ``compare[op]``.

ANDing with the whole scene adds nothing — every object is in it — so it is left out:
``filter_color[red](scene)`` becomes ``find[red]``, and ``scene`` stays only where it is the
whole input (``count(scene)`` → ``measure[count](find[*all*])``).
"""
from __future__ import annotations

from modtrain.datasets.clevr import ProgramNode

from modtrain.errors import ModtrainError
from modtrain.layout import Layout

SCENE_INSTANCE = "*all*"
SCENE = Layout("find", SCENE_INSTANCE)


def _and(a: Layout, b: Layout) -> Layout:
    if a == SCENE:
        return b
    if b == SCENE:
        return a
    return Layout("and", None, (a, b))


def program_to_layout(program: list[ProgramNode]) -> Layout:
    """The NMN layout of a CLEVR program (the root is the program's last node)."""
    converted: list[Layout] = []
    for i, node in enumerate(program):
        f = node.function
        kids = [converted[j] for j in node.inputs]
        if f == "scene":
            layout = SCENE
        elif f.startswith("filter_"):
            layout = _and(Layout("find", node.value_inputs[0]), kids[0])
        elif f == "intersect":
            layout = _and(kids[0], kids[1])
        elif f == "union":
            layout = Layout("or", None, (kids[0], kids[1]))
        elif f == "unique":
            layout = kids[0]
        elif f.startswith("query_"):
            layout = Layout("describe", f[len("query_"):], (kids[0],))
        elif f in ("exist", "count"):
            layout = Layout("measure", f, (kids[0],))
        elif f == "relate":
            layout = Layout("relate", node.value_inputs[0], (kids[0],))
        elif f.startswith("same_"):
            layout = Layout("relate", f, (kids[0],))
        elif f.startswith("equal_") or f in ("less_than", "greater_than"):
            layout = Layout("compare", f, (kids[0], kids[1]))
        else:
            raise ModtrainError(f"program node {i}: no layout rule for function {f!r}")
        converted.append(layout)
    return converted[-1]
