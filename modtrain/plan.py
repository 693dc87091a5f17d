"""The planner: compositional dependencies → training strategy and job graph (paper §3.1).

For each module of a recipe, given which modules are already trained:

- input: **decoupled** (every input comes from the dataset) or **dependent** (some input is
  another module's output) → a dependent module trains from virtual datasets (caches) of the
  modules upstream of it, frozen;
- supervision: **direct** (a loss applies to its output: answer logits, or the prior that
  joins them additively like an ensemble member) or **indirect** → it needs a surrogate;
- **codependent** outputs (outputs that interact non-additively before the loss) are flagged
  with how the plan handles them.

Everything follows from the modules' signatures: a module's *stage* is one more than the
highest stage of the modules whose outputs it reads (its upstream), so a module trains once
all its producers are trained; modules of one stage train at once. In the typed interface the
encoder's prior is a bias for every other module's loss, so it trains first (§5.5); in the
gradient interface it joins only at assembly, by the geometric mean (§5.4). For the four-module
NMN this reproduces Table 1.

Which questions a module trains on, and how each frozen part of a layout reaches it, is the
job's business (``modtrain.job``): the plan says which virtual datasets it reads (``reads``),
which cheap frozen producers it recomputes from the features instead (``recomputes``) and
which trained modules its result depends on (``consumes``).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from modtrain.errors import ModtrainError
from modtrain.recipe import Recipe
from modtrain.registry import SURROGATES, module_class, parameter_free_names
from modtrain.types import AnswerLogits, DataType, Features, Prior, Tokens, get_interface


@dataclass
class ModulePlan:
    name: str
    input: str                 # decoupled | dependent
    supervision: str           # direct | indirect
    strategy: str              # how it trains
    stage: int                 # training order: every producer it reads has a lower stage
    reads: list[str]           # producers whose virtual datasets (caches) its job reads, the prior's included
    recomputes: list[str]      # frozen producers its job recomputes from the features instead of a cache
    consumes: list[str]        # every trained module its job depends on (the card's ``inputs``)
    dataset_inputs: list[str]  # what it reads from the data itself (Tokens, Features)
    notes: list[str] = field(default_factory=list)  # codependent outputs and how they are handled
    trained: bool = False


@dataclass
class Job:
    name: str                  # "train find", "cache find", "assemble"
    kind: str                  # train | cache | assemble
    module: str | None
    after: list[str]
    level: int = 0


@dataclass
class Plan:
    recipe: str
    interface: str
    modules: list[ModulePlan]
    jobs: list[Job]
    prior: str | None = None   # the module whose output is the prior (the encoder), if any

    def module(self, name: str) -> ModulePlan:
        for m in self.modules:
            if m.name == name:
                return m
        raise ModtrainError(f"recipe {self.recipe} has no module {name!r}; its modules: "
                            f"{', '.join(m.name for m in self.modules)}")

    def order(self, name: str) -> tuple[int, str]:
        """Sort key of the training order: stage, then name (ties within a stage broken by name)."""
        return self.module(name).stage, name

    def owner(self, modules) -> str:
        """Which producer's virtual dataset holds the output of a frozen subtree made of ``modules``:
        its last-trained module."""
        return max(modules, key=self.order)

    def levels(self) -> list[list[Job]]:
        """Jobs by level: the jobs of one level can run in parallel."""
        out: list[list[Job]] = []
        for job in self.jobs:
            while len(out) <= job.level:
                out.append([])
            out[job.level].append(job)
        return out


def make_plan(recipe: Recipe, trained: set[str] = frozenset(), end_to_end: bool = False) -> Plan:
    """Classify the recipe's modules and order the jobs that train them. ``end_to_end``: the
    modules train jointly, so an indirect one needs no surrogate."""
    interface = get_interface(recipe.interface)
    classes = {name: module_class(name) for name in recipe.modules}
    for name, cls in classes.items():
        if cls.parameter_free:
            raise ModtrainError(f"recipe {recipe.name}: module {name} has no parameters and is never trained; "
                                f"remove [modules.{name}] (layouts use it anyway)")
    signatures = {name: ([interface.resolve(t) for t in cls.inputs], interface.resolve(cls.output))
                  for name, cls in classes.items()}
    free_inputs = [[interface.resolve(t) for t in module_class(n).inputs] for n in parameter_free_names()]
    prior_producers = [n for n, (_, out) in signatures.items() if out is Prior]
    with_prior = interface.train_with_prior()

    def producers_of(wanted: DataType) -> set[str]:
        return {n for n, (_, out) in signatures.items() if interface.converts(out, wanted)}

    upstream: dict[str, list[str]] = {}
    for name, (inputs, output) in signatures.items():
        needed = [t for t in inputs if not t.from_dataset]
        upstream[name] = sorted({p for t in needed for p in producers_of(t)} - {name})
        if needed and not upstream[name]:
            raise ModtrainError(f"recipe {recipe.name}: module {name} needs {', '.join(t.name for t in needed)}, "
                                f"which no module of the recipe produces")

    def after(name: str) -> list[str]:
        """What must be trained before ``name``: its upstream and, in typed, the prior (§5.5)."""
        prior = prior_producers if with_prior and signatures[name][1] is not Prior else []
        return sorted(set(upstream[name]) | set(prior))

    stages: dict[str, int] = {}

    def stage(name: str, seen: tuple[str, ...] = ()) -> int:
        if name in seen:
            raise ModtrainError(f"recipe {recipe.name}: modules {' → '.join((*seen, name))} read each other's "
                                f"outputs in a cycle; none of them can be trained first")
        if name not in stages:
            stages[name] = 1 + max((stage(p, (*seen, name)) for p in after(name)), default=-1)
        return stages[name]

    for name in signatures:
        stage(name)
    modules: list[ModulePlan] = []
    for name, (inputs, output) in signatures.items():
        cls = classes[name]
        # what its job reads: the producers of its inputs, and of the inputs of the parameter-free
        # modules (and, or) its output meets before the loss — those trained before it
        met = {p for types in free_inputs if any(interface.converts(output, t) for t in types)
               for t in types if not t.from_dataset for p in producers_of(t)}
        producers = (set(upstream[name]) | met) - {name}
        producers = {p for p in producers if stages[p] < stages[name]}
        reads_features = Features in inputs
        recomputes = sorted(p for p in producers if reads_features and classes[p].recompute
                            and all(t.from_dataset for t in signatures[p][0]))
        prior = prior_producers if with_prior and output is not Prior else []
        reads = sorted((producers - set(recomputes)) | set(prior), key=lambda p: (stages[p], p))
        modules.append(ModulePlan(name, "dependent" if upstream[name] else "decoupled",
                                  "direct" if output in (AnswerLogits, Prior) else "indirect", "", stages[name],
                                  reads, recomputes, [], [t.name for t in inputs if t in (Tokens, Features)],
                                  trained=name in trained))
    modules.sort(key=lambda m: m.stage)  # in training order (the recipe's order within a stage)
    by_name = {m.name: m for m in modules}
    for m in sorted(modules, key=lambda m: m.stage):
        direct_inputs = set(m.reads) | set(m.recomputes)
        m.consumes = sorted(direct_inputs.union(*(by_name[p].consumes for p in direct_inputs)),
                            key=lambda p: (stages[p], p))
        inputs, output = signatures[m.name]
        _explain(m, recipe, interface, output, prior_producers, any(interface.converts(output, t) for t in inputs),
                 end_to_end)
    return Plan(recipe.name, interface.name, modules, _jobs(modules), prior_producers[0] if prior_producers else None)


def _explain(m: ModulePlan, recipe: Recipe, interface, output: DataType, prior_producers: list[str],
             upstream_of_itself: bool, end_to_end: bool) -> None:
    """The plan entry's strategy and notes."""
    caches = [p for p in m.reads if p not in prior_producers]
    if end_to_end:
        m.strategy = "end to end"
    elif m.supervision == "direct":
        m.strategy = f"virtual dataset of {', '.join(caches)}" if caches else "direct"
    else:
        surrogate = recipe.surrogate(m.name)
        if surrogate is None:
            raise ModtrainError(
                f"recipe {recipe.name}: module {m.name} has indirect supervision (paper §3.1) and needs a "
                f"surrogate: set modules.{m.name}.surrogate (valid: {', '.join(sorted(SURROGATES))})")
        m.strategy = f"surrogate {surrogate[0]}"
        if caches:
            m.strategy += f" on a virtual dataset of {', '.join(caches)}"
    if output is not Prior and prior_producers:
        if interface.train_with_prior():
            m.notes.append(f"the prior of {', '.join(prior_producers)} is an additive bias (§5.5): trains after it")
        elif output is AnswerLogits:
            m.notes.append(f"joins {', '.join(prior_producers)} by the geometric mean, a codependent gradient "
                           f"(§5.5); trained separately and combined at assembly (§5.4)")
    if output is interface.attention:
        chains = f" and in chains of {m.name}" if upstream_of_itself else ""
        m.notes.append(f"its instances meet in and/or{chains} before the loss: trained jointly in one {m.name} job")
    for p in m.recomputes:
        m.notes.append(f"recomputes the frozen {p} from the features it reads anyway, instead of reading "
                       f"{p}'s virtual dataset")


def _jobs(modules: list[ModulePlan]) -> list[Job]:
    jobs: dict[str, Job] = {}
    trained = {m.name for m in modules if m.trained}
    cached = sorted({p for m in modules for p in m.reads})
    for p in cached:
        jobs[f"cache {p}"] = Job(f"cache {p}", "cache", p, [] if p in trained else [f"train {p}"])
    for m in modules:
        if not m.trained:
            jobs[f"train {m.name}"] = Job(f"train {m.name}", "train", m.name,
                                          [f"cache {p}" for p in m.reads]
                                          + [f"train {p}" for p in m.recomputes if p not in trained])
    jobs["assemble"] = Job("assemble", "assemble", None, [j for j in jobs if j.startswith("train ")])

    def level(name: str) -> int:
        job = jobs[name]
        return 0 if not job.after else 1 + max(level(a) for a in job.after)

    for job in jobs.values():
        job.level = level(job.name)
    return sorted(jobs.values(), key=lambda j: (j.level, j.name != "assemble", j.name))


def inputs_text(m: ModulePlan) -> str:
    """Where a module's inputs come from, e.g. ``features, find (recomputed), cache encoder``."""
    parts = [t.lower() for t in m.dataset_inputs]
    parts += [f"{p} (recomputed)" for p in m.recomputes] + [f"cache {p}" for p in m.reads]
    return ", ".join(parts) or "-"


def format_plan(plan: Plan, questions: dict[str, int] | None = None, imported: dict[str, str] | None = None) -> str:
    """The dependency table (paper Table 1, one row per module: how it trains, where its inputs
    come from and, given ``questions``, on how many training questions) and the job graph.
    ``imported``: per module imported from another experiment, where from and how."""
    imported = imported or {}
    header = ("module", "input", "supervision", "trains by", "inputs from")
    rows = [header + (("train questions",) if questions is not None else ())]
    for m in plan.modules:
        how = " (imported)" if m.name in imported else " (trained)" if m.trained else ""
        row = (m.name, m.input, m.supervision, m.strategy + how, inputs_text(m))
        rows.append(row + ((str(questions.get(m.name, 0)),) if questions is not None else ()))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [f"plan for recipe {plan.recipe} ({plan.interface} interface)", ""]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    if questions is not None:
        lines += ["", "train questions: those whose path from the module to the root crosses only modules trained "
                      "before it or without parameters (for a surrogate, the root is the surrogate's place)"]
    notes = [(m.name, n) for m in plan.modules for n in m.notes]
    if notes:
        lines += ["", "how outputs interact (§3.1):"] + [f"  {name}: {note}" for name, note in notes]
    if imported:
        lines += ["", "imported from other experiments:"] + [f"  {name}: {text}" for name, text in imported.items()]
    lines += ["", "jobs (one line per step; ∥ = can run in parallel):"]
    for k, level in enumerate(plan.levels(), 1):
        lines.append(f"  {k}. " + " ∥ ".join(j.name for j in level))
    return "\n".join(lines)
