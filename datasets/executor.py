"""Execute CLEVR v1.0 programs on scenes; per-question program metrics.

Values flowing between nodes: an object set (frozenset of object indices), one object
(int), an attribute value (str), an integer, a boolean. Answers are formatted as
released: "yes"/"no", "3", "red".
"""
from __future__ import annotations

from typing import Any

from modtrain.datasets.clevr import ATTRIBUTES, FUNCTIONS, RELATIONS, ProgramNode, Scene

from modtrain.errors import ModtrainError

QUESTION_TYPES = ("exist", "count", "compare-integer", "query-attribute", "compare-attribute")


class ProgramError(ModtrainError):
    """A program that cannot run on its scene (e.g. ``unique`` over two objects)."""


class _Object(int):
    """An object index, distinct from an integer answer."""


def _kind(value: Any) -> str:
    if isinstance(value, frozenset):
        return "object set"
    if isinstance(value, _Object):
        return "object"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    return "attribute value"


def _expect(value: Any, kind: str, i: int, node: ProgramNode) -> Any:
    if _kind(value) != kind:
        hint = " (insert 'unique' before it)" if kind == "object" and _kind(value) == "object set" else ""
        raise ProgramError(
            f"program node {i} ({node.function}) expects an {kind} but its input is an "
            f"{_kind(value)}{hint}"
        )
    return value


def execute_all(program: list[ProgramNode], scene: Scene) -> list[Any]:
    """The output of every node, in program order."""
    objects = scene.objects
    outputs: list[Any] = []
    for i, node in enumerate(program):
        f = node.function
        if f not in FUNCTIONS:
            raise ProgramError(f"program node {i} has unknown function {f!r}")
        args = [outputs[j] for j in node.inputs]
        if f == "scene":
            out: Any = frozenset(range(len(objects)))
        elif f.startswith("filter_"):
            attr, value = f[len("filter_"):], node.value_inputs[0]
            if value not in ATTRIBUTES[attr]:
                raise ProgramError(
                    f"program node {i} ({f}) has value {value!r}; valid: {', '.join(ATTRIBUTES[attr])}"
                )
            out = frozenset(o for o in _expect(args[0], "object set", i, node)
                            if objects[o][attr] == value)
        elif f == "unique":
            members = _expect(args[0], "object set", i, node)
            if len(members) != 1:
                raise ProgramError(
                    f"program node {i} (unique) needs exactly one object but its input has "
                    f"{len(members)}"
                )
            out = _Object(next(iter(members)))
        elif f == "relate":
            relation = node.value_inputs[0]
            if relation not in RELATIONS:
                raise ProgramError(
                    f"program node {i} (relate) has relation {relation!r}; valid: {', '.join(RELATIONS)}"
                )
            out = frozenset(scene.relationships[relation][_expect(args[0], "object", i, node)])
        elif f in ("union", "intersect"):
            a, b = (_expect(x, "object set", i, node) for x in args)
            out = a | b if f == "union" else a & b
        elif f.startswith("same_"):
            attr = f[len("same_"):]
            me = _expect(args[0], "object", i, node)
            out = frozenset(o for o in range(len(objects))
                            if o != me and objects[o][attr] == objects[me][attr])
        elif f == "count":
            out = len(_expect(args[0], "object set", i, node))
        elif f == "exist":
            out = len(_expect(args[0], "object set", i, node)) > 0
        elif f.startswith("query_"):
            out = str(objects[_expect(args[0], "object", i, node)][f[len("query_"):]])
        elif f.startswith("equal_") and f != "equal_integer":
            a, b = (_expect(x, "attribute value", i, node) for x in args)
            out = a == b
        else:  # equal_integer, less_than, greater_than
            a, b = (_expect(x, "integer", i, node) for x in args)
            out = {"equal_integer": a == b, "less_than": a < b, "greater_than": a > b}[f]
        outputs.append(out)
    return outputs


def format_answer(value: Any) -> str:
    """A final node's output as a released answer string."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, frozenset):
        raise ProgramError("the program ends in an object set; it must end in an answer")
    return str(int(value)) if isinstance(value, int) and not isinstance(value, _Object) else str(value)


def execute(program: list[ProgramNode], scene: Scene) -> str:
    """The program's answer on the scene."""
    final = execute_all(program, scene)[-1]
    if isinstance(final, _Object):
        raise ProgramError("the program ends in an object; it must end in an answer")
    return format_answer(final)


def program_depth(program: list[ProgramNode]) -> int:
    """Nodes on the longest path from a leaf to the root (the last node)."""
    depth: list[int] = []
    for node in program:
        depth.append(1 + max((depth[j] for j in node.inputs), default=0))
    return depth[-1]


def relate_hops(program: list[ProgramNode]) -> int:
    """Number of ``relate`` steps."""
    return sum(node.function == "relate" for node in program)


def question_type(program: list[ProgramNode]) -> str:
    """The family of the root function: one of QUESTION_TYPES."""
    root = program[-1].function
    if root in ("exist", "count"):
        return root
    if root in ("equal_integer", "less_than", "greater_than"):
        return "compare-integer"
    if root.startswith("query_"):
        return "query-attribute"
    if root.startswith("equal_"):
        return "compare-attribute"
    raise ProgramError(f"program ends in {root!r}, which gives no answer")
