"""``modtrain tune MODULE``: one Ray Tune search per module (paper §5.4: random search, 50
evaluations per module), never one search comparing losses across modules.

The search space is the recipe's ``[search.MODULE]`` table (the shipped recipes carry the
paper's ranges). Each trial trains the module as its own job in its own folder, reading
the shared workdir's data and producer caches, and reports every epoch to Tune (so ASHA
can stop poor trials early) with the job's checkpoint. The metric is validation accuracy —
for find, its surrogate's; a trial its surrogate does not trust under the recipe's [trust]
settings counts as failed (scored 0, as Fig. 9 shows them). The best configuration is written as a recipe override
file and a full recipe, and its module card is kept. An interrupted search resumes.
"""
from __future__ import annotations

import ast
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from modtrain.errors import ModtrainError, causes
from modtrain.io import read_json, sha256_json, write_json, write_text
from modtrain.recipe import SURROGATE_PREFIX, Recipe, _toml_value
from modtrain.registry import module_class, surrogate_class
from modtrain.trust import TrustSection, card_verdict, metrics_verdict
from modtrain.workdir import Workdir

E2E = "e2e"
SEARCH_KEYS_TRAIN = ("batch_size", "lr", "weight_decay", "max_epochs")
EXPRESSIONS = ("uniform", "loguniform", "randint", "lograndint", "quniform", "choice")
_EXPRESSION = re.compile(r"^\s*(\w+)\s*\((.*)\)\s*$", re.S)


def parse_expression(text: Any, where: str):
    """``loguniform(1e-5, 1e-1)`` → the Tune domain; a plain value stays fixed."""
    if not isinstance(text, str):
        return text
    match = _EXPRESSION.match(text)
    if not match or match.group(1) not in EXPRESSIONS:
        raise ModtrainError(f"{where}: {text!r} is not a search expression; valid: "
                            f"{', '.join(f'{e}(...)' for e in EXPRESSIONS)}, e.g. loguniform(1e-5, 1e-1), "
                            f"choice(['softmax', 'weighted'])")
    try:
        args = ast.literal_eval(f"({match.group(2)},)")
    except (ValueError, SyntaxError):
        raise ModtrainError(f"{where}: cannot read the arguments of {text!r}") from None
    name = match.group(1)
    if name == "choice":
        if len(args) != 1 or not isinstance(args[0], (list, tuple)) or not args[0]:
            raise ModtrainError(f"{where}: {text!r}: choice takes one non-empty list, e.g. choice([32, 64, 128])")
    else:
        if len(args) < 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args[:2]):
            raise ModtrainError(f"{where}: {text!r}: {name} takes a lower and an upper bound, e.g. {name}(1e-5, 1e-1)")
        low, high = args[:2]
        if not low < high:
            raise ModtrainError(f"{where}: {text!r}: the lower bound {low!r} must be below the upper bound {high!r}, "
                                f"e.g. {name}({min(low, high)!r}, {max(low, high)!r})")
        if name.startswith("log") and low <= 0:
            raise ModtrainError(f"{where}: {text!r}: {name} needs bounds above 0 (it samples their logarithm)")
    from ray import tune

    try:
        return getattr(tune, name)(*args)
    except (TypeError, ValueError, AssertionError) as e:
        raise ModtrainError(f"{where}: {text!r}: {e}") from None


def error_line(error: BaseException) -> str:
    """The line that says why a trial failed: a ``ModtrainError``'s message as it would print in
    process, else the exception's own last line (Ray wraps it in a traceback that starts with
    where the trial ran)."""
    own = next((e for e in causes(error) if isinstance(e, ModtrainError)), None)
    if own is not None:
        return str(own).splitlines()[0]
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    marked = [line.split("ModtrainError: ", 1)[1] for line in lines if "ModtrainError: " in line]
    return (marked or lines[-1:] or [type(error).__name__])[0]


def search_space(recipe: Recipe, module: str) -> dict[str, Any]:
    """The Tune search space of one module (or ``e2e``) from the recipe's ``[search.MODULE]``."""
    table = recipe.raw.get("search", {}).get(module)
    if not table:
        raise ModtrainError(f"recipe {recipe.name} has no [search.{module}] table; add one, e.g. "
                            f"[search.{module}] lr = \"loguniform(1e-5, 1e-1)\"")
    valid = set(SEARCH_KEYS_TRAIN) | ({"dropout"} if module == E2E else set(module_class(module).defaults))
    chosen = recipe.surrogate(module) if module != E2E else None
    if chosen is not None:  # the surrogate's own settings, but not its dropout, which the trust statistics measure
        valid |= {SURROGATE_PREFIX + k for k in surrogate_class(chosen[0]).defaults if k != "dropout"}
    space = {}
    for key, text in table.items():
        if key not in valid:
            raise ModtrainError(f"recipe {recipe.name}: unknown key search.{module}.{key}; valid: "
                                f"{', '.join(f'search.{module}.{k}' for k in sorted(valid))}")
        space[key] = parse_expression(text, f"recipe {recipe.name}: search.{module}.{key}")
    return space


def config_overrides(recipe: Recipe, module: str, config: dict[str, Any]) -> list[str]:
    """``--set`` strings that apply a trial's configuration to the recipe."""
    out = []
    for key, value in config.items():
        if module == E2E:
            if key == "dropout":
                out += [f"modules.{m}.dropout={_toml_value(value)}" for m in recipe.modules
                        if "dropout" in module_class(m).defaults]
            else:
                out.append(f"train.{key}={_toml_value(value)}")
        else:
            out.append(f"modules.{module}.{key}={_toml_value(value)}")
    return out


def _link_producers(shared: Workdir, trial: Workdir, producers: list[str]) -> None:
    for producer in producers:
        for name in (f"{producer}.pt", f"{producer}.json"):
            link = trial.modules / name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                os.symlink(shared.modules / name, link)
        cache = trial.caches / producer
        cache.parent.mkdir(parents=True, exist_ok=True)
        if not cache.exists() and (shared.caches / producer).exists():
            os.symlink(shared.caches / producer, cache)


def _trial(config: dict, *, recipe_raw: dict, recipe_where: str, module: str, root: str, data: str,
           threads: int, device: str) -> None:
    """One trial: train the module with this configuration, reporting every epoch."""
    import torch
    from ray import tune

    from modtrain.device import use_threads
    from modtrain.job import Job, joint_spec, module_spec
    from modtrain.plan import make_plan

    use_threads(threads)
    base = Recipe(recipe_raw, recipe_where)
    recipe = base.with_overrides(config_overrides(base, module, config))
    shared = Workdir(Path(root), Path(data))
    # the trial's own folder on the shared storage, outside the folder Ray syncs (it would copy
    # half-written files): WORKDIR/tune/MODULE/trials/TRIAL_ID
    trial = Workdir(shared.root / "tune" / module / "trials" / tune.get_context().get_trial_id(), Path(data))
    plan = make_plan(recipe, end_to_end=module == E2E)
    spec = joint_spec(plan, E2E) if module == E2E else module_spec(plan, module)
    _link_producers(shared, trial, list(spec.frozen))
    job = Job(trial, recipe, torch.device(device), spec, plan=plan)
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a restored trial continues from its last epoch
        with checkpoint.as_directory() as folder:
            trial.modules.mkdir(parents=True, exist_ok=True)
            shutil.copy(Path(folder) / "job.ckpt", job.checkpoint_path())
    def report(metrics: dict, ckpt_path: Path) -> None:
        with tempfile.TemporaryDirectory() as folder:
            shutil.copy(ckpt_path, Path(folder) / "job.ckpt")
            tune.report({**metrics, "score": trial_score(metrics, recipe.trust)},
                        checkpoint=tune.Checkpoint.from_directory(folder))

    job.on_epoch = report
    job.run()


def tune_module(recipe: Recipe, workdir: Workdir, module: str, samples: int, scheduler: str = "fifo",
                search: str = "random", address: str = "local", storage: str | Path | None = None,
                cpus_per_trial: int = 1, gpus_per_trial: float | None = None, retries: int = 1,
                fresh: bool = False, callbacks: list | None = None, say=print,
                allow_untrusted: bool = False) -> dict[str, Any]:
    """Run (or resume) the search for one module; returns its summary. ``callbacks`` are extra
    Ray Tune callbacks (logging, notifications) for a new search."""
    from ray import tune

    from modtrain.cache import cache_status
    from modtrain.data import PreparedData
    from modtrain.distributed import absolute, connect, gpus_per_job
    from modtrain.plan import make_plan

    if samples < 1:
        raise ModtrainError(f"--samples {samples}: need at least one trial")
    if module != E2E and module not in recipe.modules:
        raise ModtrainError(f"recipe {recipe.name} has no module {module!r}; its modules: "
                            f"{', '.join(recipe.modules)} (or {E2E} for the end-to-end network)")
    space = search_space(recipe, module)
    storage = absolute(storage) if storage is not None else (workdir.root.resolve() / "tune" / "ray")
    workdir = Workdir(workdir.root.resolve(), workdir.data.resolve())
    data = PreparedData(workdir.data)
    if module != E2E:  # its producers' caches must exist and be fresh in the shared workdir
        plan = make_plan(recipe)
        for producer in plan.module(module).reads:
            for split in (recipe.data.train_split, recipe.data.val_split):
                problem = cache_status(workdir, plan, producer, split, data.split(split).fingerprint)
                if problem:
                    raise ModtrainError(f"tuning {module} needs {producer}'s cache: {problem}")
    connect(address)
    gpus = gpus_per_job(gpus_per_trial)
    out = workdir.root / "tune" / module
    settings = {"recipe": sha256_json(recipe.raw), "samples": samples, "scheduler": scheduler, "search": search}
    experiment = storage / module
    finished_path = out / "finished.json"
    if fresh:
        shutil.rmtree(experiment, ignore_errors=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, recipe_raw=recipe.raw, recipe_where=recipe.where, module=module,
                             root=str(workdir.root), data=str(workdir.data), threads=cpus_per_trial,
                             device="cuda" if gpus else "cpu"),
        {"cpu": cpus_per_trial, "gpu": gpus})
    # Tune snapshots its state whenever a trial replaces its kept checkpoint (num_to_keep=1) so a
    # resumed search never points at a deleted one; with epochs of seconds it warns every time.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    start = time.perf_counter()
    if tune.Tuner.can_restore(str(experiment)):
        saved = read_json(out / "settings.json") if (out / "settings.json").exists() else None
        if saved != settings:
            raise ModtrainError(f"{experiment} holds a search with other settings ({saved}); pass --fresh to "
                                f"start over")
        say(f"resuming the search in {experiment}")
        tuner = tune.Tuner.restore(str(experiment), trainable, resume_errored=True)
    else:
        write_json(out / "settings.json", settings)
        finished_path.unlink(missing_ok=True)
        tuner = tune.Tuner(trainable, param_space=space, tune_config=tune.TuneConfig(
            metric="score", mode="max", num_samples=samples, scheduler=_scheduler(scheduler, recipe, module),
            search_alg=_searcher(search, recipe.seed)),
            run_config=tune.RunConfig(name=module, storage_path=str(storage), verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=retries),
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                                      callbacks=[_finished_callback(str(finished_path)), *(callbacks or [])]))
    results = tuner.fit()
    seconds = time.perf_counter() - start
    # Ray marks a trial stopped by Ctrl-C terminated like a finished one: count those it told the
    # callback about (finished, stopped by the scheduler, or failed), across restores
    done = set(read_json(finished_path)) if finished_path.exists() else set()
    finished = sum(bool(r.error) or (r.metrics or {}).get("trial_id") in done for r in results)
    if finished < len(results):  # stopped (Ctrl-C, a lost driver): partial trials choose nothing
        raise ModtrainError(f"the {module} search was interrupted with {finished} of {len(results)} trials finished; "
                            f"no best configuration was written. Rerun the same command to resume it "
                            f"(--fresh to start over)")
    return _summarize(results, recipe, workdir, module, out, seconds, settings, allow_untrusted)


def trial_score(metrics: dict[str, float], settings: TrustSection) -> float:
    """What a search maximizes: validation accuracy, or 0 for a module its surrogate does not
    trust under ``settings`` — a failed evaluation, as paper Fig. 9 shows them (§5.3–5.4)."""
    verdict = metrics_verdict(metrics, settings)
    if verdict is not None and not verdict.trusted:
        return 0.0
    return metrics["val_accuracy"]


def _finished_callback(path: str):
    """A Tune callback that records, in a file that outlives the driver, every trial that ended
    for a reason of its own: its last epoch, the scheduler's stop, or an error."""
    from ray import tune

    class Finished(tune.Callback):
        def __init__(self, path: str):
            self.path = path

        def _add(self, trial) -> None:
            done = set(read_json(self.path)) if Path(self.path).exists() else set()
            write_json(self.path, sorted(done | {trial.trial_id}))

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._add(trial)

        def on_trial_error(self, iteration, trials, trial, **info):
            self._add(trial)

    return Finished(path)


def _scheduler(name: str, recipe: Recipe, module: str):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

    if name == "fifo":
        return FIFOScheduler()
    if name == "asha":
        max_t = recipe.train_config("e2e" if module == E2E else module).max_epochs
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=min(2, max_t),
                             reduction_factor=3)
    raise ModtrainError(f"unknown scheduler {name!r}; valid: fifo, asha")


def _searcher(name: str, seed: int):
    """The search algorithm, seeded by the recipe's seed: the same command draws the same
    configurations (so FIFO and ASHA can be compared on the same trials)."""
    if name == "random":
        from ray.tune.search import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed)
    if name == "optuna":
        try:
            from ray.tune.search.optuna import OptunaSearch
        except ImportError:
            raise ModtrainError("--search optuna needs optuna: pip install 'modtrain[optuna]'") from None
        return OptunaSearch(seed=seed)
    raise ModtrainError(f"unknown search {name!r}; valid: random, optuna")


def _summarize(results, recipe: Recipe, workdir: Workdir, module: str, out: Path, seconds: float,
               settings: dict, allow_untrusted: bool = False) -> dict[str, Any]:
    trials = []
    kept_module = recipe.modules[0] if module == E2E else module
    for result in results:
        frame = result.metrics_dataframe
        best = float(frame["score"].max()) if frame is not None and "score" in frame else None
        metrics = result.metrics or {}
        path = out / "trials" / str(metrics.get("trial_id"))
        # what the trial kept (the epoch its card records), and whether its surrogate trusts it
        card = (read_json(path / "modules" / f"{kept_module}.json")
                if (path / "modules" / f"{kept_module}.json").exists() else None)
        verdict = None if card is None else card_verdict(card, recipe.trust)
        trustworthy = None if card is None else (verdict is None or verdict.trusted)
        trials.append({"trial_id": metrics.get("trial_id"), "config": result.config,
                       "status": "error" if result.error else "done",
                       "error": error_line(result.error) if result.error else None,
                       "epochs": int(metrics.get("training_iteration", 0)), "best_score": best,
                       "kept_accuracy": None if card is None else card["metrics"]["val_accuracy"],
                       "trustworthy": trustworthy, "trust_reason": verdict.reason if verdict else None,
                       "gain": (card or {}).get("surrogate", {}).get("trust", {}).get("gain"),
                       "val_accuracy": metrics.get("val_accuracy"), "val_variance": metrics.get("val_variance"),
                       "seconds": float(metrics.get("time_total_s", 0.0)), "path": str(path)})
    finished = [t for t in trials if t["kept_accuracy"] is not None]
    if not finished:
        raise ModtrainError(f"no trial of the {module} search finished (stopped early or failed); first error: "
                            f"{next((t['error'] for t in trials if t['error']), 'none')}")
    trusted = [t for t in finished if t["trustworthy"]]
    if not trusted and allow_untrusted:  # the best of the untrusted; its "trustworthy" says so
        trusted = finished
    if not trusted:
        first = next(t for t in finished if not t["trustworthy"])
        raise ModtrainError(f"no trial of the {module} search is trusted (trust.criterion = {recipe.trust.criterion}); "
                            f"trial {first['trial_id']}: {first['trust_reason']}. Widen the search or run more trials")
    best = max(trusted, key=lambda t: t["kept_accuracy"])
    overrides = config_overrides(recipe, module, best["config"])
    best_recipe = recipe.with_overrides(overrides)
    write_text(out / "best.toml", f"# best trustworthy of {len(trials)} trials: validation accuracy "
                                  f"{best['kept_accuracy']:.4f}\n"
                                  f"# apply with: --set {' --set '.join(overrides)}\n"
                                  + "\n".join(o.replace("=", " = ", 1) for o in overrides) + "\n")
    best_recipe.write(out)  # out/recipe.toml: the whole recipe with the best configuration
    card = None
    for name in ([*recipe.modules] if module == E2E else [module]):
        source = Path(best["path"]) / "modules"
        if (source / f"{name}.json").exists():
            (out / "best").mkdir(parents=True, exist_ok=True)
            for suffix in (".pt", ".json"):
                shutil.copy(source / f"{name}{suffix}", out / "best" / f"{name}{suffix}")
            card = str(out / "best" / f"{name}.json")
    summary = {"module": module, **settings, "trials": trials, "best": best, "best_card": card,
               "search_seconds": round(seconds, 2), "trial_seconds": round(sum(t["seconds"] for t in trials), 2)}
    write_json(out / "trials.json", summary)
    return summary
