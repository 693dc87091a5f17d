"""Run layouts batched: questions grouped by layout shape, instance parameters gathered.

A layout's *shape* is its tree with the instances left out. All questions of one shape in
a batch run as one group: every module call in the tree runs once for the whole group,
with each question's instance ids gathered per sample. ``run_reference`` executes one
question at a time and is kept only as the reference the tests compare against.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from modtrain.errors import ModtrainError
from modtrain.layout import Layout
from modtrain.registry import NMNModule, build_module
from modtrain.types import DATASET_TYPES, Attended, DataType, Features, Interface, TypeCheckError, attend

PARAMETER_FREE = ("and", "or", "scene")


@dataclass
class _Node:
    module: str
    slot: int | None
    output: DataType
    children: list["_Node"]
    attend_child: list[bool]  # per child: turn its attention into an attended vector first


def parameter_free_modules(interface: Interface) -> dict[str, NMNModule]:
    """The and/or/scene modules of an interface."""
    return {name: build_module(name, interface, {}) for name in PARAMETER_FREE}


class Executor:
    """Executes layouts with a set of modules under one interface."""

    def __init__(self, modules: dict[str, NMNModule], interface: Interface, attention_mode: str = "weighted"):
        self.modules = {**parameter_free_modules(interface), **modules}
        self.interface = interface
        self.attention_mode = attention_mode
        self._compiled: dict[str, tuple[_Node, int]] = {}
        self._ids: dict[Layout, list[int]] = {}

    # -- type checking -------------------------------------------------------------------------
    def check(self, layout: Layout) -> DataType:
        """Type-check a layout before any tensor is computed; return its output type."""
        return self._compile(layout, layout, [0]).output

    def _compile(self, node: Layout, whole: Layout, slots: list[int]) -> _Node:
        module = self.modules.get(node.module)
        if module is None:
            raise TypeCheckError(f"layout {whole}: no module {node.module!r} (available: "
                                 f"{', '.join(sorted(self.modules))})")
        if (node.instance is not None) != module.has_instances:
            raise TypeCheckError(f"layout {whole}: {node.module} {'needs' if module.has_instances else 'takes no'} instance")
        inputs, output = module.signature()
        wanted = [t for t in inputs if t not in DATASET_TYPES]
        if len(wanted) != len(node.children):
            raise TypeCheckError(f"layout {whole}: {node.module} takes {len(wanted)} input(s), "
                                 f"got {len(node.children)}")
        slot = None
        if node.instance is not None:
            slot = slots[0]
            slots[0] += 1
        children, attend_child = [], []
        for k, (child, expected) in enumerate(zip(node.children, wanted)):
            compiled = self._compile(child, whole, slots)
            converts = expected is Attended and compiled.output is self.interface.attention
            if compiled.output is not expected and not converts:
                label = f"{node.module}[{node.instance}]" if node.instance else node.module
                raise TypeCheckError(
                    f"layout {whole}: edge {child} → {label} (input {k + 1}) carries {compiled.output}, "
                    f"but {node.module} expects {expected}"
                )
            children.append(compiled)
            attend_child.append(converts)
        return _Node(node.module, slot, output, children, attend_child)

    # -- execution -----------------------------------------------------------------------------
    def _compiled_shape(self, layout: Layout) -> tuple[_Node, int]:
        key = layout.shape()
        if key not in self._compiled:
            slots = [0]
            self._compiled[key] = (self._compile(layout, layout, slots), slots[0])
        return self._compiled[key]

    def _instance_ids(self, layout: Layout) -> list[int]:
        if layout not in self._ids:
            self._ids[layout] = [self.modules[m].instance_ids([i], f"layout {layout}")[0]
                                 for m, i in layout.instances()]
        return self._ids[layout]

    def _eval(self, node: _Node, ids: torch.Tensor, features: torch.Tensor, leaves: dict[int, torch.Tensor]) -> torch.Tensor:
        if id(node) in leaves:
            return leaves[id(node)]
        module = self.modules[node.module]
        inputs, _ = module.signature()
        children = iter(zip(node.children, node.attend_child))
        args = []
        for t in inputs:
            if t is Features:
                args.append(features)
                continue
            child, converts = next(children)
            value = self._eval(child, ids, features, leaves)
            args.append(attend(features, value, self.attention_mode) if converts else value)
        if node.slot is not None:
            return module(*args, instance=ids[:, node.slot])
        return module(*args)

    def _run_leaves(self, groups: list[tuple[_Node, torch.Tensor, torch.Tensor]],
                    features: torch.Tensor) -> dict[int, torch.Tensor]:
        """Every leaf call of every group (find, scene: modules that read only the features)
        fused into one call per module, so a batch of many shapes costs one find call."""
        calls: dict[str, list[tuple[_Node, torch.Tensor, torch.Tensor | None]]] = defaultdict(list)
        for tree, index, ids in groups:
            stack = [tree]
            while stack:
                node = stack.pop()
                if node.children:
                    stack.extend(node.children)
                else:
                    calls[node.module].append((node, index, None if node.slot is None else ids[:, node.slot]))
        leaves = {}
        for name, entries in calls.items():
            module = self.modules[name]
            rows = torch.cat([index for _, index, _ in entries])
            args = [features.index_select(0, rows)]
            if entries[0][2] is not None:
                out = module(*args, instance=torch.cat([inst for _, _, inst in entries]))
            else:
                out = module(*args)
            for (node, _, _), part in zip(entries, out.split([len(index) for _, index, _ in entries])):
                leaves[id(node)] = part
        return leaves

    def run(self, layouts: list[Layout], features: torch.Tensor) -> torch.Tensor:
        """Outputs of the layouts (one per row of ``features``), grouped by shape."""
        by_shape: dict[str, list[int]] = defaultdict(list)
        for i, layout in enumerate(layouts):
            by_shape[layout.shape()].append(i)
        if not by_shape:
            raise ModtrainError("no layouts to run")
        groups = []
        for rows in by_shape.values():
            tree, n_slots = self._compiled_shape(layouts[rows[0]])
            ids = torch.tensor([self._instance_ids(layouts[r]) for r in rows], dtype=torch.long,
                               device=features.device).view(len(rows), n_slots)
            groups.append((tree, torch.tensor(rows, device=features.device), ids))
        leaves = self._run_leaves(groups, features)
        out = None
        for tree, index, ids in groups:
            result = self._eval(tree, ids, features.index_select(0, index), leaves)
            if out is None:
                out = result.new_empty((len(layouts), *result.shape[1:]))
            out[index] = result
        return out

    def run_reference(self, layouts: list[Layout], features: torch.Tensor) -> torch.Tensor:
        """One question at a time: the per-sample reference for tests and benchmarks."""
        return torch.cat([self.run([layout], features[i:i + 1]) for i, layout in enumerate(layouts)])
