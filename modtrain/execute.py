"""Run layouts batched: questions grouped by layout shape, instance parameters gathered.

A layout's *shape* is its tree with the instances left out. All questions of one shape in
a batch run as one group: every module call in the tree runs once for the whole group,
with each question's instance ids gathered per sample. ``run_reference`` executes one
question at a time and is kept only as the reference the tests compare against.

A layout may hold ``given:TYPE[k]`` leaves: values that come with the batch instead of being
computed (a frozen subtree's output read from its virtual dataset); see ``Given``.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from modtrain.errors import ModtrainError
from modtrain.layout import Layout
from modtrain.registry import NMNModule, build_module, parameter_free_names, pick_instance
from modtrain.types import DataType, Features, Interface, TypeCheckError


@dataclass
class _Node:
    module: str
    slot: int | None
    output: DataType
    children: list["_Node"]
    inputs: list[DataType]    # per child: the type the module reads it as (converted if it differs)
    height: int = 0           # 0 for leaves, else 1 + the highest child


class Given(nn.Module):
    """A leaf whose value comes with the batch: ``given:TYPE[k]`` is the row's k-th given value
    of that type, from a (B, K, ...) tensor passed to ``Executor.run`` under ``given_name(TYPE)``."""

    has_instances = True

    def __init__(self, data_type: DataType):
        super().__init__()
        self.name = given_name(data_type)
        self.data_type = data_type
        self.source = DataType(f"Given{data_type.name}", data_type.ndim + 1, from_dataset=True)

    def signature(self) -> tuple[tuple[DataType, ...], DataType]:
        return (self.source,), self.data_type

    def instance_ids(self, names: list[str], where: str = "") -> list[int]:
        return [int(n) for n in names]

    def forward(self, values: torch.Tensor, instance: torch.Tensor) -> torch.Tensor:
        return pick_instance(values, instance)


def given_name(data_type: DataType) -> str:
    """The module name of a given leaf of this type."""
    return f"given:{data_type.name}"


def parameter_free_modules(interface: Interface) -> dict[str, NMNModule]:
    """The parameter-free modules (and, or, ...) of an interface."""
    return {name: build_module(name, interface, {}) for name in parameter_free_names()}


class Executor:
    """Executes layouts with a set of modules under one interface."""

    def __init__(self, modules: dict[str, nn.Module], interface: Interface, attention_mode: str = "weighted"):
        self.modules = {**parameter_free_modules(interface), **modules}
        self.interface = interface
        self.attention_mode = attention_mode
        self._compiled: dict[str, tuple[_Node, int, list[_Node]]] = {}  # shape → tree, slots, its nodes
        self._ids: dict[str, list[int]] = {}

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
            raise TypeCheckError(f"layout {whole}: {node.module} "
                                 f"{'needs' if module.has_instances else 'takes no'} instance")
        inputs, output = module.signature()
        wanted = [t for t in inputs if not t.from_dataset]
        if len(wanted) != len(node.children):
            raise TypeCheckError(f"layout {whole}: {node.module} takes {len(wanted)} input(s), "
                                 f"got {len(node.children)}")
        slot = None
        if node.instance is not None:
            slot = slots[0]
            slots[0] += 1
        children = []
        for k, (child, expected) in enumerate(zip(node.children, wanted)):
            compiled = self._compile(child, whole, slots)
            if not self.interface.converts(compiled.output, expected):
                label = f"{node.module}[{node.instance}]" if node.instance else node.module
                raise TypeCheckError(
                    f"layout {whole}: edge {child} → {label} (input {k + 1}) carries {compiled.output}, "
                    f"but {node.module} expects {expected}"
                )
            children.append(compiled)
        height = 1 + max((c.height for c in children), default=-1)
        return _Node(node.module, slot, output, children, wanted, height)

    # -- execution -----------------------------------------------------------------------------
    def _compiled_shape(self, layout: Layout) -> tuple[_Node, int, list[_Node]]:
        """The shape's tree, its number of instance slots, and its nodes (parents before children)."""
        key = layout.shape()
        if key not in self._compiled:
            slots = [0]
            tree = self._compile(layout, layout, slots)
            nodes, stack = [], [tree]
            while stack:
                nodes.append(stack.pop())
                stack.extend(nodes[-1].children)
            self._compiled[key] = (tree, slots[0], nodes)
        return self._compiled[key]

    def _instance_ids(self, layout: Layout) -> list[int]:
        ids = self._ids.get(layout.text)  # keyed by the text: hashing and comparing trees is slower
        if ids is None:
            ids = self._ids[layout.text] = [self.modules[m].instance_ids([i], f"layout {layout}")[0]
                                            for m, i in layout.instances()]
        return ids

    def run(self, layouts: list[Layout], features: torch.Tensor | None = None,
            given: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs of the layouts, one per row of ``features`` and of the ``given`` tensors
        (name → (B, K, ...): the values of the rows' ``given:TYPE[k]`` leaves).

        Questions are grouped by shape; then the calls of all groups run level by level
        (leaves first), one call per module and level, each on the concatenated rows of
        every group that needs it. A batch of many shapes thus costs a handful of module
        calls rather than one per node of every shape. Where each node's rows lie in its call's
        output is planned first, on integers, so that a call gathers its inputs in one index
        per input however many nodes it serves (bench/results/assembler.json).
        """
        by_shape: dict[str, list[int]] = defaultdict(list)
        for i, layout in enumerate(layouts):
            by_shape[layout.shape()].append(i)
        if not by_shape:
            raise ModtrainError("no layouts to run")
        batch = {Features.name: features, **{self.modules[name].source.name: v for name, v in (given or {}).items()}}
        device = next(v.device for v in batch.values() if v is not None)
        levels: dict[int, dict[str, list[_Member]]] = defaultdict(lambda: defaultdict(list))
        roots = []
        for rows in by_shape.values():
            tree, n_slots, nodes = self._compiled_shape(layouts[rows[0]])
            ids = np.array([self._instance_ids(layouts[r]) for r in rows], dtype=np.int64).reshape(len(rows), n_slots)
            index = np.array(rows, dtype=np.int64)
            roots.append((tree, index))
            for node in nodes:
                levels[node.height][node.module].append(_Member(node, index, ids))
        calls: list[tuple[str, list[_Member]]] = []
        where: dict[int, tuple[int, int]] = {}  # node → (its call, where its rows start in the call's output)
        for height in sorted(levels):
            for name, members in levels[height].items():
                offset = 0
                for member in members:
                    where[id(member.node)] = (len(calls), offset)
                    offset += len(member.rows)
                calls.append((name, members))
        outputs: list[torch.Tensor] = []
        for name, members in calls:
            outputs.append(self._call(name, members, batch, outputs, where, device))
        # every root's value, in the order of the questions
        return _gather(outputs, [(where[id(tree)], index) for tree, index in roots], len(layouts), device)

    def _call(self, name: str, members: list["_Member"], batch: dict[str, torch.Tensor | None],
              outputs: list[torch.Tensor], where: dict[int, tuple[int, int]], device: torch.device) -> torch.Tensor:
        """One module call for every node in ``members``, on their concatenated rows."""
        module = self.modules[name]
        inputs, _ = module.signature()
        rows = torch.from_numpy(np.concatenate([m.rows for m in members])).to(device)
        first = members[0].node
        instance = (torch.from_numpy(np.concatenate([m.ids[:, m.node.slot] for m in members])).to(device)
                    if first.slot is not None else None)
        if inputs == (Features,) and instance is not None and hasattr(module, "rows_forward"):
            # the rows' features are not copied (find in evaluation: bench/results/assembler.json)
            result = module.rows_forward(batch[Features.name], rows, instance)
            if result is not None:
                return result
        args, k = [], 0
        for t in inputs:
            if t.from_dataset:
                args.append(_rows(batch, t, rows))
                continue
            value = _gather(outputs, [(where[id(m.node.children[k])], m.rows) for m in members], None, device)
            # attention → attended reads the batch's features in place (bench/results/assembler.json)
            args.append(self.interface.convert(value, first.children[k].output, first.inputs[k],
                                               lambda: _whole(batch, Features), self.attention_mode, rows))
            k += 1
        return module(*args, instance=instance) if instance is not None else module(*args)

    def trace(self, layout: Layout, features: torch.Tensor) -> list[tuple[Layout, DataType, torch.Tensor]]:
        """Every call's output for one question (``features`` of one image), children first."""
        tree, _, _ = self._compiled_shape(layout)
        ids = torch.tensor([self._instance_ids(layout)], dtype=torch.long, device=features.device)
        out = []

        def visit(node: _Node, call: Layout) -> torch.Tensor:
            module = self.modules[node.module]
            inputs, output = module.signature()
            children = iter(zip(node.children, node.inputs, call.children))
            args = []
            for t in inputs:
                if t is Features:
                    args.append(features)
                    continue
                child, expected, child_call = next(children)
                value = visit(child, child_call)
                args.append(self.interface.convert(value, child.output, expected, lambda: features,
                                                   self.attention_mode))
            value = module(*args, instance=ids[:, node.slot]) if node.slot is not None else module(*args)
            out.append((call, output, value))
            return value

        visit(tree, layout)
        return out

    def run_reference(self, layouts: list[Layout], features: torch.Tensor) -> torch.Tensor:
        """One question at a time, each call straight down its tree: the per-sample reference for
        tests and benchmarks (no grouping by shape, the fastest way to run a single question)."""
        return torch.cat([self.trace(layout, features[i:i + 1])[-1][2] for i, layout in enumerate(layouts)])


class _Member(NamedTuple):
    """A node of one shape group, in a module call: the group's questions and instance ids."""
    node: _Node
    rows: np.ndarray   # the group's rows of the batch
    ids: np.ndarray    # (rows, slots): each row's instance ids


def _gather(outputs: list[torch.Tensor], parts: list[tuple[tuple[int, int], np.ndarray]],
            size: int | None, device: torch.device) -> torch.Tensor:
    """Values spread over calls' outputs, as one tensor: ``parts`` are ((call, start), rows) —
    ``len(rows)`` values from ``outputs[call][start:]``. In the order of the parts (``size`` None),
    or placed at ``rows`` of a tensor of ``size`` rows. One slice or one index, never one op per part."""
    sources: dict[int, int] = {}  # call → where its output starts in the concatenation
    base = 0
    starts = np.empty(len(parts), dtype=np.int64)
    lengths = np.empty(len(parts), dtype=np.int64)
    for j, ((call, start), rows) in enumerate(parts):
        if call not in sources:
            sources[call] = base
            base += len(outputs[call])
        starts[j] = sources[call] + start
        lengths[j] = len(rows)
    source = outputs[call] if len(sources) == 1 else torch.cat([outputs[c] for c in sources])
    ends = starts + lengths
    if size is None and (starts[1:] == ends[:-1]).all():  # one contiguous run
        return source[starts[0]:ends[-1]]
    # part j's values are starts[j], starts[j] + 1, ...: one arange, shifted per part
    before = np.cumsum(lengths) - lengths  # where part j's values go
    index = np.arange(before[-1] + lengths[-1], dtype=np.int64) + np.repeat(starts - before, lengths)
    if size is not None:
        placed = np.empty(size, dtype=np.int64)
        placed[np.concatenate([rows for _, rows in parts])] = index
        if len(source) == size and (placed == np.arange(size)).all():
            return source
        index = placed
    return source.index_select(0, torch.from_numpy(index).to(device))


def _whole(batch: dict[str, torch.Tensor | None], data_type: DataType) -> torch.Tensor:
    values = batch.get(data_type.name)
    if values is None:
        raise ModtrainError(f"a layout reads {data_type}, but none was given with the batch")
    return values


def _rows(batch: dict[str, torch.Tensor | None], data_type: DataType, rows: torch.Tensor) -> torch.Tensor:
    return _whole(batch, data_type).index_select(0, rows)
