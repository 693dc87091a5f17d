"""``modtrain status`` and ``run --dry-run``: where a workdir stands, without training anything.

Per module of the recipe's plan: trained and up to date, stale (and which of the inputs its
card records changed: settings, seed, data, the weights of a module it reads), or untrained;
its surrogate's verdict under the recipe's ``[trust]``; whether its virtual dataset (cache) is
fresh; its validation accuracy. Then the jobs ``modtrain run`` would do next — the same checks
``run`` makes (``modtrain.pipeline``), so the two never disagree.
"""
from __future__ import annotations

from typing import Any

from modtrain.cache import cache_status
from modtrain.card import card_path
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import read_json, sha256_json
from modtrain.job import job_key, module_spec
from modtrain.plan import Plan, make_plan
from modtrain.recipe import TRAIN_KEYS, Recipe
from modtrain.reuse import frozen_import, imported_sources
from modtrain.train import cards_match
from modtrain.trust import card_verdict
from modtrain.workdir import Workdir

TRAINED, STALE, UNTRAINED, UNCHECKED = "trained", "stale", "untrained", "unchecked"
IMPORTED = "imported"  # frozen from another experiment (modtrain.reuse): never trained here


def _changed(what: str, then: Any, now: Any) -> str:
    return f"{what} {then!r} → {now!r}"


def _table_changes(prefix: str, then: dict, now: dict) -> list[str]:
    return [_changed(f"{prefix}{k}", then.get(k), now.get(k)) for k in sorted(set(then) | set(now))
            if then.get(k) != now.get(k)]


def why_stale(card: dict[str, Any], key: dict[str, Any], name: str, training: str,
              own_train: set[str] = frozenset()) -> list[str]:
    """Which of the job key's parts differ from what a module's card records (its ``training``,
    ``interface``, ``seed``, ``train``, ``hyperparameters``, ``surrogate``, ``data_fingerprint`` and
    ``inputs``, the producers' weight hashes), as short phrases such as ``train.lr 0.01 → 0.005``
    or ``input encoder retrained`` (``own_train``: the training keys the module sets itself, named
    ``modules.NAME.KEY``). Empty when the card matches the key."""
    from modtrain.registry import module_class, surrogate_class

    why = []
    if card.get("training") != training:
        why.append(f"trained {card.get('training')}, now {training}")
    if card.get("interface") != key["interface"]:
        why.append(_changed("interface", card.get("interface"), key["interface"]))
    if card.get("seed") != key["seed"]:
        why.append(_changed("seed", card.get("seed"), key["seed"]))
    then_train = card.get("train", {})
    why += [_changed(f"modules.{name}.{k}" if k in own_train else f"train.{k}", then_train.get(k), v)
            for k, v in key["train"].items() if then_train.get(k) != v]
    if name in key["hyperparameters"]:
        try:
            defaults = module_class(name).defaults
        except ModtrainError:  # a module no longer registered: compare what the recipe sets
            defaults = {}
        why += _table_changes(f"modules.{name}.", {**defaults, **card.get("hyperparameters", {})},
                              {**defaults, **key["hyperparameters"][name]})
    then_surrogate, now_surrogate = card.get("surrogate") or None, key.get("surrogate")
    then_name = then_surrogate["name"] if then_surrogate else None
    now_name = now_surrogate[0] if now_surrogate else None
    if then_name != now_name:
        why.append(_changed("surrogate", then_name or "none", now_name or "none"))
    elif now_surrogate:
        try:
            defaults = surrogate_class(now_name).defaults
        except ModtrainError:
            defaults = {}
        why += _table_changes(f"surrogates.{now_name}.", {**defaults, **then_surrogate.get("hyperparameters", {})},
                              {**defaults, **now_surrogate[1]})
    if card.get("data_fingerprint") != key["data_fingerprint"]:
        why.append("the training or validation data changed")
    then_inputs, now_inputs = card.get("inputs", {}), key["inputs"]
    for producer in sorted(set(then_inputs) | set(now_inputs)):
        then, now = then_inputs.get(producer), now_inputs.get(producer)
        if then == now:
            continue
        why.append(f"input {producer} " + ("not trained" if now is None else "newly read" if then is None
                                           else "retrained"))
    if not why and card.get("job_key") != sha256_json(key):
        why.append("a setting the card does not record changed (e.g. data.max_train_depth)")
    return why


def _verdict(card: dict[str, Any], recipe: Recipe) -> dict[str, Any] | None:
    verdict = card_verdict(card, recipe.trust)
    if verdict is None:
        return None
    stats = (card.get("surrogate") or {}).get("trust") or {}
    value = stats.get("gain" if verdict.criterion == "gain" else "variance")
    return {"trusted": verdict.trusted, "criterion": verdict.criterion, "value": value, "reason": verdict.reason}


def _cache(workdir: Workdir, plan: Plan, producer: str, data: PreparedData | None) -> dict[str, Any]:
    """Whether a producer's virtual dataset is fresh on every split (the header check, without reading
    every chunk: ``run`` reads them)."""
    if data is None:
        return {"state": "unchecked", "why": "the data is not prepared"}
    for split in data.splits():
        problem = cache_status(workdir, plan, producer, split, data.split(split).fingerprint)
        if problem is not None:
            return {"state": "missing" if "not found" in problem else "stale", "why": problem}
    return {"state": "fresh", "why": None}


def _prepared(workdir: Workdir) -> PreparedData | None:
    if not (workdir.data / "vocab.json").exists():
        return None
    try:
        return PreparedData(workdir.data)
    except ModtrainError:
        return None


def workdir_status(recipe: Recipe, workdir: Workdir, allow_untrusted: bool = False) -> dict[str, Any]:
    """Where a workdir stands under ``recipe`` (resolved): its data, every module of the plan, and
    the jobs ``modtrain run`` would do next (``next``). Reads only; writes nothing."""
    from modtrain.pipeline import data_steps

    try:
        steps, data_problem = data_steps(recipe, workdir), None
    except ModtrainError as e:
        steps, data_problem = None, str(e)
    data = _prepared(workdir)
    plan = make_plan(recipe)
    producers = {p for m in plan.modules for p in m.reads}
    sources = imported_sources(workdir, recipe.modules)
    modules = []
    for m in plan.modules:
        spec = module_spec(plan, m.name)
        path = card_path(workdir.modules, m.name)
        card = read_json(path, "module card") if path.exists() else None
        entry: dict[str, Any] = {"name": m.name, "state": UNTRAINED, "why": [], "training": None,
                                 "imported": sources.get(m.name),
                                 "val_accuracy": None, "trust": None,
                                 "cache": _cache(workdir, plan, m.name, data) if m.name in producers else None}
        if card is not None:
            entry.update(training=card.get("training"), val_accuracy=card.get("metrics", {}).get("val_accuracy"),
                         trust=_verdict(card, recipe))
            if frozen_import(workdir, m.name) is not None:
                entry["state"] = IMPORTED
            elif data is None:
                entry.update(state=UNCHECKED, why=["the data is not prepared"])
            else:
                key = job_key(spec, recipe, data, {}, workdir)
                if cards_match(workdir.modules, [m.name], key):
                    entry["state"] = TRAINED
                else:
                    own = set(recipe.raw.get("modules", {}).get(m.name, {})) & TRAIN_KEYS
                    entry.update(state=STALE, why=why_stale(card, key, m.name, spec.training, own)
                                 or [f"{workdir.modules / m.name}.pt is missing or not its card's weights"])
        modules.append(entry)
    d = recipe.data
    return {"workdir": str(workdir.root), "recipe": recipe.name,
            "data": {"folder": str(workdir.data), "steps": steps, "problem": data_problem,
                     "splits": data.splits() if data is not None else [],
                     "train_split": d.train_split, "val_split": d.val_split},
            "modules": modules, "next": next_jobs(plan, modules, steps, data is not None, allow_untrusted)}


def next_jobs(plan: Plan, modules: list[dict[str, Any]], data_steps: list[str] | None, prepared: bool,
              allow_untrusted: bool = False) -> list[dict[str, str]]:
    """The jobs ``run`` would do next, in its order, each with why: a job runs when its result is not
    up to date, and so does every job after one that runs (its inputs change). ``data_steps``: what
    the data needs first (None: the data folder cannot be read)."""
    by_name = {m["name"]: m for m in modules}
    out: list[dict[str, str]] = []
    if data_steps is None:
        return out
    if data_steps:
        out.append({"job": "data", "why": ", ".join(data_steps)})
    regenerated = any(step.startswith("generate") for step in data_steps)
    # the jobs whose running changes what comes after them: a training (new weights), and a cache
    # rewritten because of one; a cache rewritten only because it was missing changes nothing after it
    changes: set[str] = set()
    for job in plan.jobs:
        upstream = next((a for a in job.after if a in changes), None)
        if job.kind == "assemble":
            why = "always: evaluates the assembled network"
        elif upstream is not None:
            why = f"after {upstream}"
        elif regenerated or not prepared:
            why = "the data is generated again" if regenerated else "the data is not prepared yet"
        elif job.kind == "train":
            m = by_name[job.module]
            why = None if m["state"] in (TRAINED, IMPORTED) else \
                "not trained" if m["state"] == UNTRAINED else "stale: " + "; ".join(m["why"])
        else:
            cache = by_name[job.module]["cache"]
            why = None if cache["state"] == "fresh" else f"cache {cache['state']}"
        trust = by_name[job.module]["trust"] if job.kind == "cache" else None
        if job.kind == "cache" and trust is not None and not trust["trusted"] and upstream is None \
                and not allow_untrusted:  # run checks a module's trust before it caches it, fresh or not
            why = f"stops here: {job.module} is not trusted ({trust['reason']}); pass --allow-untrusted to go on"
        if why is None:
            continue
        out.append({"job": job.name, "why": why})
        if why.startswith("stops here"):  # run raises there: nothing after it runs
            break
        if job.kind == "train" or upstream is not None or regenerated or not prepared:
            changes.add(job.name)
    return out
