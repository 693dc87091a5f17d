"""The planner: compositional dependencies → training strategy and job graph (paper §3.1).

For each module of a recipe, given which modules are already trained:

- input: **decoupled** (every input comes from the dataset) or **dependent** (some input is
  another module's output) → a dependent module trains from a virtual dataset (cache);
- supervision: **direct** (a loss applies to its output: answer logits, or the prior that
  joins them additively like an ensemble member) or **indirect** → it needs a surrogate;
- **codependent** outputs (outputs that interact non-additively before the loss) are flagged
  with how the plan handles them.

In the typed interface the encoder's prior is a bias for find's surrogate, describe and
measure, so the encoder trains first (§5.5); in the gradient interface it joins only at
assembly, by the geometric mean (§5.4). For the NMN this reproduces Table 1.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from modtrain.errors import ModtrainError
from modtrain.recipe import Recipe
from modtrain.registry import SURROGATES, module_class
from modtrain.types import DATASET_TYPES, AnswerLogits, Attended, Prior, get_interface


@dataclass
class ModulePlan:
    name: str
    input: str                 # decoupled | dependent
    supervision: str           # direct | indirect
    strategy: str              # how it trains
    consumes: list[str]        # producers whose caches it trains from
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

    def module(self, name: str) -> ModulePlan:
        return next(m for m in self.modules if m.name == name)

    def levels(self) -> list[list[Job]]:
        """Jobs by level: the jobs of one level can run in parallel."""
        out: list[list[Job]] = []
        for job in self.jobs:
            while len(out) <= job.level:
                out.append([])
            out[job.level].append(job)
        return out


def make_plan(recipe: Recipe, trained: set[str] = frozenset()) -> Plan:
    """Classify the recipe's modules and order the jobs that train them."""
    interface = get_interface(recipe.interface)
    signatures = {}
    for name in recipe.modules:
        cls = module_class(name)
        signatures[name] = ([interface.resolve(t) for t in cls.inputs], interface.resolve(cls.output))
    prior_producers = [n for n, (_, out) in signatures.items() if out is Prior]

    def producers_of(wanted) -> list[str]:
        found = []
        for name, (_, out) in signatures.items():
            if out is wanted or (wanted is Attended and out is interface.attention):
                found.append(name)
        return found

    modules = []
    for name, (inputs, output) in signatures.items():
        upstream = sorted({p for t in inputs if t not in DATASET_TYPES for p in producers_of(t)} - {name})
        dependent = any(t not in DATASET_TYPES for t in inputs)
        if dependent and not upstream:
            raise ModtrainError(f"recipe {recipe.name}: module {name} needs "
                                f"{', '.join(t.name for t in inputs if t not in DATASET_TYPES)}, which no module of the recipe produces")
        direct = output in (AnswerLogits, Prior)
        notes = []
        consumes = list(upstream)
        if output is not Prior and prior_producers:
            if interface.train_with_prior():
                consumes += prior_producers
                notes.append(f"the prior of {', '.join(prior_producers)} is an additive bias (§5.5): trains after it")
            elif direct:
                notes.append(f"joins {', '.join(prior_producers)} by the geometric mean, a codependent gradient "
                             f"(§5.5); trained separately and combined at assembly (§5.4)")
        if output is interface.attention:
            notes.append(f"its instances meet in and/or before the loss: trained jointly in one {name} job")
        if direct:
            strategy = "direct" if not dependent else f"virtual dataset of {', '.join(upstream)}"
        else:
            surrogate = recipe.surrogate(name)
            if surrogate is None:
                raise ModtrainError(
                    f"recipe {recipe.name}: module {name} has indirect supervision (paper §3.1) and needs a "
                    f"surrogate: set modules.{name}.surrogate (valid: {', '.join(sorted(SURROGATES))})")
            strategy = f"surrogate {surrogate[0]}"
            if dependent:
                strategy += f" on a virtual dataset of {', '.join(upstream)}"
        modules.append(ModulePlan(name, "dependent" if dependent else "decoupled",
                                  "direct" if direct else "indirect", strategy, consumes, notes, name in trained))
    return Plan(recipe.name, interface.name, modules, _jobs(modules))


def _jobs(modules: list[ModulePlan]) -> list[Job]:
    jobs: dict[str, Job] = {}
    cached = sorted({p for m in modules for p in m.consumes})
    for p in cached:
        jobs[f"cache {p}"] = Job(f"cache {p}", "cache", p, [])
    for m in modules:
        if not m.trained:
            jobs[f"train {m.name}"] = Job(f"train {m.name}", "train", m.name, [f"cache {p}" for p in m.consumes])
    for p in cached:
        if f"train {p}" in jobs:
            jobs[f"cache {p}"].after.append(f"train {p}")
    jobs["assemble"] = Job("assemble", "assemble", None, [j for j in jobs if j.startswith("train ")])

    def level(name: str, seen=()) -> int:
        if name in seen:
            raise ModtrainError(f"the job graph has a cycle through {name}")
        job = jobs[name]
        return 0 if not job.after else 1 + max(level(a, (*seen, name)) for a in job.after)

    for job in jobs.values():
        job.level = level(job.name)
    return sorted(jobs.values(), key=lambda j: (j.level, j.name != "assemble", j.name))


def format_plan(plan: Plan) -> str:
    """The dependency table (paper Table 1) and the job graph."""
    rows = [("module", "input", "supervision", "trains by", "after")]
    for m in plan.modules:
        rows.append((m.name, m.input, m.supervision, m.strategy + (" (trained)" if m.trained else ""),
                     ", ".join(f"cache {p}" for p in m.consumes) or "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = [f"plan for recipe {plan.recipe} ({plan.interface} interface)", ""]
    for k, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    notes = [(m.name, n) for m in plan.modules for n in m.notes]
    if notes:
        lines += ["", "how outputs interact (§3.1):"] + [f"  {name}: {note}" for name, note in notes]
    lines += ["", "jobs (one line per step; ∥ = can run in parallel):"]
    for k, level in enumerate(plan.levels(), 1):
        lines.append(f"  {k}. " + " ∥ ".join(j.name for j in level))
    return "\n".join(lines)
