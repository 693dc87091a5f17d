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
from typing import Callable

import h5py
import torch

from modtrain.assemble import assemble
from modtrain.cache import cache_status, write_caches
from modtrain.data import PreparedData
from modtrain.errors import ModtrainError
from modtrain.io import read_json, sha256_file, write_json
from modtrain.plan import make_plan
from modtrain.recipe import Recipe
from modtrain.train import is_up_to_date, train_module
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)


def _generated_matches(data_dir: Path, recipe: Recipe) -> bool:
    from modtrain.datasets.families import select_families

    summary_path = data_dir / "generate.json"
    if not summary_path.exists():
        return False
    summary = read_json(summary_path)
    d = recipe.data
    wanted = {"train": d["images"], "val": d["val_images"], "test": d["test_images"]}
    return (summary.get("seed") == d["seed"] and summary.get("image_size") == d["image_size"]
            and summary.get("questions_per_image") == d["questions_per_image"]
            and summary.get("families") == [f.name for f in select_families(d["families"])]
            and {s: v["images"] for s, v in summary.get("splits", {}).items()} == {s: n for s, n in wanted.items() if n > 0})


def _prepared_matches(data_dir: Path) -> bool:
    from modtrain.datasets.clevr import ClevrFolder

    if not (data_dir / "vocab.json").exists():
        return False
    folder = ClevrFolder(data_dir)
    for split in folder.splits():
        path = data_dir / f"{split}.h5"
        if not path.exists():
            return False
        with h5py.File(path, "r") as f:
            if f.attrs.get("questions_sha256") != sha256_file(folder.questions_path(split)):
                return False
    return True


def ensure_data(recipe: Recipe, workdir: Workdir, device: torch.device, say: Callable[[str], None]) -> PreparedData:
    """Generate (if the recipe says so), extract features and prepare, each only when needed."""
    from modtrain.datasets.clevr import ClevrFolder
    from modtrain.datasets.features import clevr_cnn_config, features_command, features_path, validate_features
    from modtrain.datasets.generate import generate
    from modtrain.datasets.prepare import prepare

    d = recipe.data
    root = workdir.data
    if d["source"] == "generate":
        if _generated_matches(root, recipe):
            say(f"data: {root} is up to date")
        else:
            say(f"data: generating {root}")
            shutil.rmtree(root / "features", ignore_errors=True)  # made from the old images
            generate(root, {"train": d["images"], "val": d["val_images"], "test": d["test_images"]},
                     d["questions_per_image"], d["families"], d["seed"], d["image_size"], force=True)
    folder = ClevrFolder(root)
    missing = []
    if d["source"] == "generate" and d["backbone"] == "clevr-cnn":
        wanted = clevr_cnn_config(d["image_size"], d["seed"], **recipe.pretrain_options())
        card = root / "features" / "clevr-cnn.json"
        if not card.exists() or read_json(card).get("config") != wanted:
            missing = folder.splits()
    for split in [s for s in folder.splits() if s not in missing]:
        try:
            validate_features(features_path(root, split), folder.num_images(split))
        except ModtrainError:
            missing.append(split)
    if missing:
        say(f"data: features for {', '.join(missing)}")
        features_command(root, d["backbone"], device=device, seed=d["seed"], splits=missing,
                         **recipe.pretrain_options())
    if not _prepared_matches(root):
        say("data: preparing questions")
        prepare(root)
    return PreparedData(root)


JOB_TIMES = "jobs.json"


def record_job_time(workdir: Workdir, job: str, seconds: float) -> None:
    """Keep each job's last wall time in ``reports/jobs.json`` (what ``report compare`` reads)."""
    path = workdir.reports / JOB_TIMES
    times = read_json(path) if path.exists() else {}
    times[job] = round(seconds, 3)
    write_json(path, times)


def _timed(workdir: Workdir, job: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    record_job_time(workdir, job, time.perf_counter() - start)
    return out


def _say_trained(say, job: str, card: dict) -> None:
    m = card["metrics"]
    say(f"{job}: val accuracy {m['val_accuracy']:.1%} (epoch {m['best_epoch']} of {m['epochs']}, "
        f"{card['timings']['train_seconds']:.0f}s)")


def run_pipeline(recipe: Recipe, workdir: Workdir, device: torch.device,
                 say: Callable[[str], None] = log.info) -> dict:
    """The whole modular training of a recipe; returns the assembler's report."""
    workdir.root.mkdir(parents=True, exist_ok=True)
    recipe.write(workdir.root)
    data = ensure_data(recipe, workdir, device, say)
    plan = make_plan(recipe)
    report = None
    for level in plan.levels():
        for job in level:
            if job.kind == "train":
                if is_up_to_date(recipe, job.module, data, workdir):
                    say(f"{job.name}: up to date")
                    continue
                say(f"{job.name} ...")
                _say_trained(say, job.name, _timed(workdir, job.name, train_module, workdir, recipe, job.module,
                                                   device, data))
            elif job.kind == "cache":
                if all(cache_status(workdir, job.module, s, data.split(s).fingerprint) is None for s in data.splits()):
                    say(f"{job.name}: up to date")
                    continue
                say(f"{job.name} ...")
                _timed(workdir, job.name, write_caches, workdir, job.module, data, device)
            else:
                say("assemble ...")
                report = assemble(workdir, recipe, device, data=data)
    return report


def run_end_to_end(recipe: Recipe, workdir: Workdir, device: torch.device,
                   say: Callable[[str], None] = log.info) -> dict:
    """``modtrain e2e``: data, the joint training (unless up to date), assembly."""
    from modtrain.e2e import JOB, e2e_up_to_date, train_end_to_end

    workdir.root.mkdir(parents=True, exist_ok=True)
    recipe.write(workdir.root)
    data = ensure_data(recipe, workdir, device, say)
    if e2e_up_to_date(recipe, data, workdir):
        say(f"train {JOB}: up to date")
    else:
        say(f"train {JOB} ...")
        _say_trained(say, f"train {JOB}", _timed(workdir, f"train {JOB}", train_end_to_end, workdir, recipe, device, data))
    say("assemble ...")
    return assemble(workdir, recipe, device, data=data)
