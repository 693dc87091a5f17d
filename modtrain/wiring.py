"""What a job trains and takes as given, what its result depends on, and how each question runs
in it (docs/design.md, "Jobs"); ``modtrain.job`` trains it.

A job trains some modules — one in modular training, all of them end to end — with others
frozen (``JobSpec``). It trains on the questions whose layout it can run: every module of the
layout is trained by the job, frozen (already trained) or parameter-free; for a module trained
through a surrogate (indirect supervision, paper §3.1) the root is the surrogate's place. So find
trains on the questions whose root reads its attention through and/or only; relate, once find
is trained, on those where relate's output reaches the root through and/or and other relates;
compare, once describe and measure are trained, on the comparisons.

Each question runs its *wiring* (``Wirer``): its layout with every maximal frozen subtree
replaced by a ``given`` leaf, the subtree's output read from the virtual dataset of its
last-trained module (``modtrain.cache``), or — for cheap producers the plan recomputes — left in
place and run frozen.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from modtrain.cache import parametric_modules
from modtrain.card import weights_sha256
from modtrain.data import PreparedData, sample_order
from modtrain.execute import given_name
from modtrain.layout import Layout
from modtrain.plan import Plan
from modtrain.recipe import Recipe
from modtrain.registry import module_class
from modtrain.reuse import import_record
from modtrain.types import Attended, DataType, get_interface
from modtrain.workdir import Workdir


@dataclass(frozen=True)
class JobSpec:
    """What a job trains and what it takes as given."""

    name: str                    # the job's name: a module's, or e.g. e2e
    trainable: tuple[str, ...]   # modules it trains
    frozen: tuple[str, ...]      # trained modules whose outputs it uses
    recompute: tuple[str, ...]   # frozen modules it runs from the features instead of reading their caches
    surrogate: str | None        # the module trained through a surrogate, which stands in for the root
    training: str                # what the cards say: modular, end-to-end, ...


def module_spec(plan: Plan, name: str) -> JobSpec:
    """Modular training of one module, as its plan entry says."""
    m = plan.module(name)
    return JobSpec(name, (name,), tuple(m.consumes), tuple(m.recomputes),
                   name if m.supervision == "indirect" else None, "modular")


def joint_spec(plan: Plan, name: str, frozen: tuple[str, ...] = ()) -> JobSpec:
    """Every module of the plan but ``frozen`` trained at once, end to end."""
    trainable = tuple(m.name for m in plan.modules if m.name not in frozen)
    training = "end-to-end" if not frozen else f"end-to-end around a frozen {', '.join(frozen)}"
    return JobSpec(name, trainable, tuple(frozen), (), None, training)


def job_key(spec: JobSpec, recipe: Recipe, data: PreparedData, sources: dict[str, Workdir],
            workdir: Workdir) -> dict[str, Any]:
    """Everything a job's result depends on; a card whose key differs is out of date."""
    config = recipe.train_config(spec.name).key()
    inputs = {p: weights_sha256(sources.get(p, workdir).modules, p) for p in spec.frozen}
    versions = {m: v for m in spec.trainable if (v := module_class(m).version) > 1}
    # a module imported to train here starts from the import's weights, with its hyperparameters
    # (modular jobs only: a joint training trains every module from scratch, imports or not)
    starts = {m: r for m in spec.trainable if spec.training == "modular"
              and (r := import_record(workdir, m)) is not None and r["mode"] != "frozen"}
    hparams = {m: starts[m]["hyperparameters"] if m in starts else recipe.module_hparams(m) for m in spec.trainable}
    return {"kind": spec.training, "interface": recipe.interface, "seed": recipe.seed,
            "hyperparameters": hparams, "train": config,
            "surrogate": recipe.surrogate(spec.surrogate) if spec.surrogate else None,
            "data_fingerprint": data.fingerprint(recipe.data.train_split, recipe.data.val_split), "inputs": inputs,
            **({"max_train_depth": recipe.data.max_train_depth} if recipe.data.max_train_depth is not None else {}),
            **({"module_versions": versions} if versions else {}),
            **({"imported": {m: [r["mode"], r["weights_sha256"]] for m, r in starts.items()}} if starts else {}),
            **({"order": order} if (order := sample_order(recipe.data, data)) else {})}


@dataclass
class Cut:
    """A frozen subtree of a question's layout, replaced by a ``given`` leaf."""

    node: int          # its pre-order index in the question's layout
    owner: str         # the producer whose virtual dataset holds its output
    column: str        # which of the cache's columns: value, or attended
    data_type: DataType
    slot: int          # the leaf's index among the layout's given leaves of this type


@dataclass
class Wiring:
    """How one layout runs in a job."""

    layout: Layout               # with given leaves; below the root when a surrogate stands in for it
    cuts: list[Cut]
    root: str | None = None      # the root instance a surrogate stands in for, e.g. describe[color]
    root_reads: DataType | None = None  # how that root reads its input


class Wirer:
    """Wires layouts for a job: which questions it trains on and what each one runs."""

    def __init__(self, spec: JobSpec, plan: Plan, interface):
        self.spec, self.plan, self.interface = spec, plan, interface
        self.trainable, self.frozen, self.recompute = set(spec.trainable), set(spec.frozen), set(spec.recompute)
        self._cache: dict[str, Wiring | None] = {}

    def signature(self, module: str) -> tuple[list[DataType], DataType]:
        cls = module_class(module)
        return [self.interface.resolve(t) for t in cls.inputs], self.interface.resolve(cls.output)

    def wire(self, layout: Layout) -> Wiring | None:
        """The wiring of a layout, or None if the job does not train on it."""
        if layout.text not in self._cache:
            self._cache[layout.text] = self._wire(layout)
        return self._cache[layout.text]

    def _wire(self, layout: Layout) -> Wiring | None:
        usable = self.trainable | self.frozen
        root, root_reads, body, start = None, None, layout, 0
        if self.spec.surrogate is not None:
            if len(layout.children) != 1:
                return None
            inputs = [t for t in self.signature(layout.module)[0] if not t.from_dataset]
            root = layout.module if layout.instance is None else f"{layout.module}[{layout.instance}]"
            root_reads, body, start = inputs[0], layout.children[0], 1
        modules = parametric_modules(body)
        if not modules <= usable or not modules & self.trainable:
            return None
        cuts: list[Cut] = []
        slots: dict[str, int] = defaultdict(int)

        def visit(node: Layout, index: int, reads: DataType | None) -> Layout:
            inside = parametric_modules(node)
            if inside and inside <= self.frozen and not inside <= self.recompute:
                output = self.signature(node.module)[1]
                column, data_type = ("attended", Attended) if reads is Attended and output is \
                    self.interface.attention else ("value", output)
                cuts.append(Cut(index, self.plan.owner(inside), column, data_type, slots[data_type.name]))
                slots[data_type.name] += 1
                return Layout.of(given_name(data_type), str(cuts[-1].slot))
            wanted = [t for t in self.signature(node.module)[0] if not t.from_dataset]
            children, position = [], index + 1
            for child, child_reads in zip(node.children, wanted):
                children.append(visit(child, position, child_reads))
                position += child.size
            return Layout.of(node.module, node.instance, tuple(children))

        return Wiring(visit(body, start, root_reads), cuts, root, root_reads)


def training_questions(plan: Plan, recipe: Recipe, data: PreparedData) -> dict[str, int]:
    """How many labelled questions of the training split each module's job trains on (``modtrain plan``)."""
    interface = get_interface(recipe.interface)
    s = data.split(recipe.data.train_split)
    labelled = s.trainable(recipe.data.max_train_depth)
    counts = {}
    for m in plan.modules:
        spec = module_spec(plan, m.name)
        if m.name == plan.prior:
            counts[m.name] = int(labelled.sum())
            continue
        wirer = Wirer(spec, plan, interface)
        usable = np.array([wirer.wire(layout) is not None for layout in data.layouts] + [False], bool)
        counts[m.name] = int((labelled & usable[s.layout]).sum())
    return counts

