"""``modtrain run``: data → plan → train/cache jobs → assemble, skipping what is up to date.

Every step checks whether its outputs are current (data parameters, module cards' job keys,
cache producer hashes) and skips itself if so; an interrupted run resumes where it stopped,
and a module's own training resumes from its last epoch checkpoint.
"""
from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any, Callable

import h5py
import torch

from modtrain.assemble import assemble
from modtrain.cache import caches_up_to_date, check_trusted, write_caches
from modtrain.card import load_card
from modtrain.data import PreparedData, set_in_memory_bytes
from modtrain.e2e import JOB as E2E
from modtrain.e2e import e2e_up_to_date, train_end_to_end
from modtrain.errors import ModtrainError
from modtrain.io import read_json, write_json
from modtrain.job import is_up_to_date, train_module
from modtrain.plan import Job, Plan, make_plan
from modtrain.recipe import Recipe
from modtrain.reuse import ensure_imports, frozen_import
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)


def _generated_matches(data_dir: Path, recipe: Recipe) -> bool:
    from modtrain.datasets.families import select_families

    summary_path = data_dir / "generate.json"
    if not summary_path.exists():
        return False
    summary = read_json(summary_path)
    d = recipe.data
    wanted = {"train": d.images, "val": d.val_images, "test": d.test_images}
    return (summary.get("seed") == d.seed and summary.get("image_size") == d.image_size
            and summary.get("questions_per_image") == d.questions_per_image
            and summary.get("families") == [f.name for f in select_families(d.families)]
            and summary.get("balance_depth") == _depth_range_text(d.balance_depth)
            and summary.get("format", "clevr") == generated_format(recipe)
            and {s: v["images"] for s, v in summary.get("splits", {}).items()}
            == {s: n for s, n in wanted.items() if n > 0})


def _depth_range_text(text: str | None) -> str | None:
    from modtrain.datasets.generate import parse_depth_range

    depth_range = parse_depth_range(text)
    return None if depth_range is None else f"{depth_range[0]}-{depth_range[1]}"


def generated_format(recipe: Recipe) -> str:
    """The format generated data is written in: the recipe's, CLEVR by default."""
    return "clevr" if recipe.data.format == "auto" else recipe.data.format


def prepare_options(recipe: Recipe, folder) -> dict:
    """The recipe's settings that shape a prepared VQA folder (none for CLEVR)."""
    d = recipe.data
    return {"answers": d.answers, "min_instance_count": d.min_instance_count} if folder.kind == "vqa" else {}


def _prepared_matches(data_dir: Path, folder, options: dict) -> bool:
    from modtrain.datasets.prepare import SCHEMA_VERSION, sources_sha256

    if not (data_dir / "vocab.json").exists():
        return False
    if read_json(data_dir / "vocab.json").get("options", {}) != options:
        return False
    for split in folder.splits():
        path = data_dir / f"{split}.h5"
        if not path.exists():
            return False
        with h5py.File(path, "r") as f:
            if (f.attrs.get("questions_sha256") != sources_sha256(folder, split)
                    or f.attrs.get("schema_version") != SCHEMA_VERSION):
                return False
    return True


def _missing_features(recipe: Recipe, root: Path, folder) -> list[str]:
    """The splits whose features must be extracted (again): missing, not the images', or from a
    clevr-cnn pretrained with other settings than the recipe's."""
    from modtrain.datasets.features import clevr_cnn_config, features_path, validate_features

    d = recipe.data
    missing = []
    if d.source == "generate" and d.backbone == "clevr-cnn":
        wanted = clevr_cnn_config(d.image_size, d.seed, **recipe.pretrain_options())
        card = root / "features" / "clevr-cnn.json"
        if not card.exists() or read_json(card).get("config") != wanted:
            missing = folder.splits()
    for split in [s for s in folder.splits() if s not in missing]:
        path = features_path(root, split)
        try:
            validate_features(path, folder.num_images(split),
                              folder.image_ids(split) if folder.kind == "vqa" else None)
        except ModtrainError as e:
            if d.source != "generate" and (path.exists() or path.is_symlink()):
                # a folder of the user's: its files (and its backbone) are never rebuilt behind its back
                raise ModtrainError(f"{e}. The features of split {split!r} do not fit the folder: extract them "
                                    f"again with 'modtrain data features {root} --retrain' (or replace the file); "
                                    f"nothing was changed") from None
            missing.append(split)
    return missing


def data_steps(recipe: Recipe, workdir: Workdir) -> list[str]:
    """What ``ensure_data`` would do now, doing none of it (``modtrain status``, ``run --dry-run``):
    e.g. ``["generate data/", "features", "prepare"]``; empty when the data is up to date."""
    from modtrain.datasets.folders import open_folder

    d = recipe.data
    root = workdir.data
    if d.source == "generate" and not _generated_matches(root, recipe):
        return [f"generate {root}", "features", "prepare"]
    folder = open_folder(root, None if d.format == "auto" else d.format)
    steps = []
    missing = _missing_features(recipe, root, folder)
    if missing:
        steps.append(f"features for {', '.join(missing)}")
    if not _prepared_matches(root, folder, prepare_options(recipe, folder)):
        steps.append("prepare")
    return steps


def ensure_data(recipe: Recipe, workdir: Workdir, device: torch.device, say: Callable[[str], None]) -> PreparedData:
    """Generate (if the recipe says so), extract features and prepare, each only when needed. The
    recipe's split names are resolved against the data first: an ambiguous or missing one stops
    here, before anything is written."""
    from modtrain.datasets.features import features_command
    from modtrain.datasets.folders import open_folder
    from modtrain.datasets.generate import generate
    from modtrain.datasets.prepare import prepare
    from modtrain.datasets.scenes import cogent_condition

    recipe = recipe.resolved()
    d = recipe.data
    root = workdir.data
    if d.source == "generate":
        if _generated_matches(root, recipe):
            say(f"data: {root} is up to date")
        else:
            say(f"data: generating {root}")
            shutil.rmtree(root / "features", ignore_errors=True)  # made from the old images
            generate(root, {"train": d.images, "val": d.val_images, "test": d.test_images},
                     d.questions_per_image, d.families, d.seed, d.image_size, force=True,
                     balance_depth=d.balance_depth, format=generated_format(recipe))
    folder = open_folder(root, None if d.format == "auto" else d.format)
    missing = _missing_features(recipe, root, folder)
    if missing:
        say(f"data: features for {', '.join(missing)}")
        # a CLEVR-CoGenT folder: clevr-cnn sees only the training split's condition
        features_command(root, d.backbone, device=device, seed=d.seed, splits=missing,
                         pretrain_combos=cogent_condition(d.train_split) or "none", **recipe.pretrain_options())
    options = prepare_options(recipe, folder)
    if not _prepared_matches(root, folder, options):
        say("data: preparing questions")
        prepare(root, format=folder.kind, **options)
    return PreparedData(root)


JOB_TIMES = "jobs.json"


def record_job_time(workdir: Workdir, job: str, seconds: float, placement: dict | None = None) -> None:
    """Keep each job's last wall time in ``reports/jobs.json`` (what ``report compare`` reads) and,
    for a job that ran on Ray, where it ran (node, GPU ids, device, start and end) under ``placement``."""
    path = workdir.reports / JOB_TIMES
    times = read_json(path) if path.exists() else {}
    times[job] = round(seconds, 3)
    if placement is not None:
        times.setdefault("placement", {})[job] = placement
    write_json(path, times)


def job_times(workdir: Workdir) -> dict[str, float]:
    """Each job's last wall time from ``reports/jobs.json`` (its placement left out)."""
    path = workdir.reports / JOB_TIMES
    times = read_json(path) if path.exists() else {}
    return {job: seconds for job, seconds in times.items() if isinstance(seconds, (int, float))}


def run_job(job: Job, recipe: Recipe, plan: Plan, workdir: Workdir, data: PreparedData, device: torch.device,
            say: Callable[[str], None] = log.info, allow_untrusted: bool = False) -> dict[str, Any]:
    """One job of the plan, unless its result is up to date — the one path for in-process and
    Ray runs. Returns ``{"job", "skipped"}`` and, when it ran, ``seconds`` and the card or report.
    A module its surrogate does not trust stops the run before it is cached, unless ``allow_untrusted``."""
    start = time.perf_counter()
    set_in_memory_bytes(recipe.data.in_memory_bytes)
    if job.kind == "train":
        record = frozen_import(workdir, job.module)
        if record is not None:
            return {"job": job.name, "skipped": True, "imported": record["from"]}
        if is_up_to_date(recipe, job.module, data, workdir):
            return {"job": job.name, "skipped": True}
        say(f"{job.name} ...")
        card = train_module(workdir, recipe, job.module, device, data)
        return {"job": job.name, "skipped": False, "seconds": time.perf_counter() - start, "card": card}
    if job.kind == "cache":
        if not allow_untrusted:  # before the up-to-date check: an untrusted module is never used silently
            check_trusted(load_card(workdir.modules, job.module), workdir.modules / f"{job.module}.json", recipe.trust)
        if caches_up_to_date(workdir, plan, job.module, data):
            return {"job": job.name, "skipped": True}
        say(f"{job.name} ...")
        write_caches(workdir, plan, job.module, data, device, allow_untrusted=allow_untrusted, trust=recipe.trust)
        return {"job": job.name, "skipped": False, "seconds": time.perf_counter() - start}
    say(f"{job.name} ...")
    report = assemble(workdir, recipe, device, data=data)
    return {"job": job.name, "skipped": False, "seconds": time.perf_counter() - start, "report": report}


def describe_result(result: dict[str, Any]) -> str:
    """One line on a finished job: skipped, imported, or its time and validation accuracy."""
    if "imported" in result:
        return f"{result['job']}: imported from {result['imported']} (frozen, never trained here)"
    if result["skipped"]:
        return f"{result['job']}: up to date"
    line = f"{result['job']}: done in {result['seconds']:.1f}s"
    if "card" in result:
        m = result["card"]["metrics"]
        line += f", val accuracy {m['val_accuracy']:.1%} (epoch {m['best_epoch']} of {m['epochs']})"
    return line


def prepare_run(recipe: Recipe, workdir: Workdir, device: torch.device, say: Callable[[str], None],
                grow_from: str | Path | None = None, grow_only: list[str] | None = None) -> PreparedData:
    """What every run does before its jobs: write the recipe, make the data current, and import
    the modules the recipe (``[modules.NAME] from``) or ``run --from W`` brings (``modtrain.reuse``)."""
    recipe.write(workdir.root)
    data = ensure_data(recipe, workdir, device, say)
    ensure_imports(recipe, workdir, data, say, grow_from, grow_only)
    return data


def run_pipeline(recipe: Recipe, workdir: Workdir, device: torch.device,
                 say: Callable[[str], None] = log.info, allow_untrusted: bool = False,
                 grow_from: str | Path | None = None, grow_only: list[str] | None = None) -> dict:
    """The whole modular training of a recipe; returns the assembler's report. ``grow_from``: a
    workdir whose trained modules (those of ``grow_only``) are imported first, frozen."""
    recipe = recipe.resolved()  # the split names, before anything is written
    with workdir.lock():
        data = prepare_run(recipe, workdir, device, say, grow_from, grow_only)
        plan = make_plan(recipe)
        report = None
        for job in plan.jobs:  # sorted by level: every job after the ones it needs
            result = run_job(job, recipe, plan, workdir, data, device, say, allow_untrusted)
            if job.kind != "assemble":
                say(describe_result(result))
            if not result["skipped"] and job.kind != "assemble":
                record_job_time(workdir, job.name, result["seconds"])
            report = result.get("report", report)
        return report


def run_end_to_end(recipe: Recipe, workdir: Workdir, device: torch.device,
                   say: Callable[[str], None] = log.info) -> dict:
    """``modtrain e2e``: data, the joint training (unless up to date), assembly."""
    recipe = recipe.resolved()  # the split names, before anything is written
    with workdir.lock():
        recipe.write(workdir.root)
        data = ensure_data(recipe, workdir, device, say)
        if e2e_up_to_date(recipe, data, workdir):
            say(f"train {E2E}: up to date")
        else:
            say(f"train {E2E} ...")
            start = time.perf_counter()
            card = train_end_to_end(workdir, recipe, device, data)
            seconds = time.perf_counter() - start
            record_job_time(workdir, f"train {E2E}", seconds)
            say(describe_result({"job": f"train {E2E}", "skipped": False, "seconds": seconds, "card": card}))
        say("assemble ...")
        return assemble(workdir, recipe, device, data=data)
