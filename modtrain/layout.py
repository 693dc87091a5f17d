"""Layouts: trees of module calls, e.g. ``describe[color](and(find[red],find[cube]))``.

A layout is what the assembler executes for one question. Its *shape* is the same tree
with the instances left out; questions that share a shape run as one batch with gathered
instance parameters (docs/design.md, "Execution and the assembler").
"""
from __future__ import annotations

import re
import weakref
from dataclasses import dataclass
from functools import cached_property
from typing import Iterator

from modtrain.errors import ModtrainError

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_:]*")  # ":" for given:TYPE leaves
_INSTANCE = re.compile(r"[^\[\]()\s,]+")


@dataclass(frozen=True)
class Layout:
    """One module call and the calls that feed it (its children, in argument order)."""

    module: str
    instance: str | None = None
    children: tuple["Layout", ...] = ()

    @cached_property
    def text(self) -> str:
        """The string form, e.g. ``describe[color](find[red])`` (computed once)."""
        text = self.module if self.instance is None else f"{self.module}[{self.instance}]"
        if self.children:
            text += "(" + ",".join(c.text for c in self.children) + ")"
        return text

    @classmethod
    def of(cls, module: str, instance: str | None = None, children: tuple["Layout", ...] = ()) -> "Layout":
        """The one ``Layout`` of this call while any is alive: equal subtrees are one object.

        A data folder's layouts share most of their subtrees (``find[cube]``, ``and(find[red],…)``);
        built through here, each distinct subtree is held once, with its text and shape computed
        once, so the memory of a job's layouts grows with the distinct subtrees, not with the
        layouts' summed size (at 160k CLEVR-like questions, 47k layouts: the folder's layouts and a find
        job's wirings took 93 + 120 MB one node per call, 48 + 25 MB shared; tracemalloc)."""
        key = (module, instance, children)
        node = _interned.get(key)
        if node is None:
            node = _interned[key] = cls(module, instance, children)
        return node

    def __str__(self) -> str:
        return self.text

    def __hash__(self) -> int:
        return hash(self.text)

    @property
    def depth(self) -> int:
        """Modules on the longest path from a leaf to the root."""
        return 1 + max((c.depth for c in self.children), default=0)

    @property
    def size(self) -> int:
        """Number of module calls."""
        return 1 + sum(c.size for c in self.children)

    def nodes(self) -> Iterator["Layout"]:
        """Every call, root first (pre-order)."""
        yield self
        for child in self.children:
            yield from child.nodes()

    def shape(self) -> str:
        """The layout without its instances: ``describe[](and(find[],find[]))``."""
        return self._shape

    @cached_property
    def _shape(self) -> str:
        text = self.module if self.instance is None else f"{self.module}[]"
        if self.children:
            text += "(" + ",".join(c.shape() for c in self.children) + ")"
        return text

    def instances(self) -> list[tuple[str, str]]:
        """(module, instance) of every call that has an instance, pre-order."""
        return [(n.module, n.instance) for n in self.nodes() if n.instance is not None]


def parse_layout(text: str) -> Layout:
    """Parse the string form written by ``str(Layout)``; spaces are allowed."""
    parser = _Parser(text)
    layout = parser.layout()
    parser.skip_space()
    if parser.pos != len(text):
        parser.fail("unexpected text after the layout")
    return layout


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.pos = 0

    def fail(self, why: str) -> None:
        raise ModtrainError(
            f"invalid layout {self.text!r} at character {self.pos}: {why} "
            f"(expected e.g. 'describe[color](and(find[red],find[cube]))')"
        )

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def expect(self, char: str) -> None:
        if self.peek() != char:
            self.fail(f"expected {char!r}")
        self.pos += 1

    def match(self, pattern: re.Pattern, what: str) -> str:
        self.skip_space()
        m = pattern.match(self.text, self.pos)
        if not m:
            self.fail(f"expected {what}")
        self.pos = m.end()
        return m.group(0)

    def layout(self) -> Layout:
        module = self.match(_NAME, "a module name")
        instance = None
        if self.peek() == "[":
            self.pos += 1
            instance = self.match(_INSTANCE, "an instance name")
            self.expect("]")
        children = []
        if self.peek() == "(":
            self.pos += 1
            children.append(self.layout())
            while self.peek() == ",":
                self.pos += 1
                children.append(self.layout())
            self.expect(")")
        return Layout.of(module, instance, tuple(children))


# Layout.of's table: a call → its node; an entry lives as long as its node does
_interned: "weakref.WeakValueDictionary[tuple, Layout]" = weakref.WeakValueDictionary()
