"""How every cost of a modular run grows with the data (issue: scale), on this machine's 2 cores.

The whole nmn-typed pipeline — data generate, features, prepare, every training and cache job,
assemble — at 1×, 4× and 16× the default data (1000 / 200 / 200 images, 10 questions each: 10k
training questions at 1×, 160k at 16×), one process per stage (the `modtrain` command, as a user
runs it), each in a fresh folder. Per stage: wall time, peak resident memory of the stage's
process tree (every process below it, summed, sampled every 50 ms from /proc) and bytes written
(the growth of the folder). The growth exponent of each is the slope of a least-squares line in
log-log (questions → cost).

So that a slope measures the cost of the data and not early stopping's choices, every module
trains exactly ``--epochs`` epochs (patience above it). The clevr-cnn backbone is pretrained once
(a constant cost, reported apart) and copied into every size's folder, so the features stage is
extraction alone. Training runs under ``data.in_memory_bytes`` = ``--budget`` (64 MiB): features
and caches larger than it stream by batches of rows, so the training stages' memory is bounded
by the budget, not by the data.

Each module job's data path (question rows → features / caches → a batch on the device) is also
timed alone, in samples/s, next to the job's measured training rate (samples/s, the card).

    python bench/bench_scale.py --out bench/results/scale.json           # 1×, 4×, 16× (~15 min)
    python bench/bench_scale.py --factors 1,2 --out /tmp/scale.json      # a quick look
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402

from modtrain.data import PreparedData, set_in_memory_bytes  # noqa: E402
from modtrain.job import Job  # noqa: E402
from modtrain.plan import make_plan  # noqa: E402
from modtrain.reaper import descendants  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402

MODTRAIN = str(Path(sys.executable).parent / "modtrain")
BASE = {"images": 1000, "val_images": 200, "test_images": 200, "questions_per_image": 10}


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) if path.exists() else 0


def stage(command: list[str], folder: Path, env: dict | None = None) -> dict:
    """Run one command; its wall time, the peak summed RSS of its process tree and the bytes it added."""
    before = _size(folder)
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=None if env is None else {**os.environ, **env})
    peak = [0]

    def sample() -> None:
        while process.poll() is None:
            peak[0] = max(peak[0], sum(_rss_kib(p) for p in [process.pid, *descendants(process.pid)]))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    output, _ = process.communicate()
    seconds = time.perf_counter() - start
    sampler.join()
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{output[-3000:]}")
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak[0] / 1024, 1),
            "bytes_written": _size(folder) - before}


def data_path_rate(workdir: Workdir, recipe: Recipe, module: str,
                   min_seconds: float = 1.0) -> tuple[float, dict | None]:
    """Samples/s of a module job's data path alone: its training batches, in the order its training
    draws them (uniform, or by windows of chunks read ahead when its features stream: the job key's
    ``order``), loaded onto the device, no model; after one warm-up batch (what is read once per
    job, as training reads it once), whole epochs for at least ``min_seconds``; and that order
    (the job key's, None: uniform)."""
    set_in_memory_bytes(recipe.data.in_memory_bytes)
    job = Job.for_module(workdir, recipe, module, torch.device("cpu"), PreparedData(workdir.data))
    job._setup_data()  # the job's rows, features, caches and wirings, as its training reads them
    job._load("train", job.train_rows[:job.config.batch_size])
    samples, epoch, start = 0, 1, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for rows in job._epoch_batches(epoch):
            job._load("train", rows)
            samples += len(rows)
        epoch += 1
    return samples / (time.perf_counter() - start), job.key.get("order")


def make_data(data: Path, root: Path, images: int, val_images: int, test_images: int,
              backbone: Path | None) -> dict:
    """``data generate`` (no-relate families, depths as they fall) and ``data features``, one stage
    each; a ``backbone`` pretrained before is copied in, so that the features stage is extraction."""
    stages = {"data generate": stage([MODTRAIN, "data", "generate", str(data), "--images", str(images),
                                      "--val-images", str(val_images), "--test-images", str(test_images),
                                      "--families", "no-relate", "--balance-depth", "none"], root)}
    if backbone is not None:
        (data / "features").mkdir(parents=True, exist_ok=True)
        for suffix in (".pt", ".json"):
            shutil.copy(backbone.with_suffix(suffix), data / "features" / f"clevr-cnn{suffix}")
    stages["data features"] = stage([MODTRAIN, "data", "features", str(data), "--device", "cpu"], root)
    return stages


def train_jobs(data: Path, work: Path, root: Path, epochs: int, budget: int, label: str,
               assemble: bool = True) -> tuple[Recipe, dict]:
    """nmn-typed's jobs, one ``modtrain`` process each, every module exactly ``epochs`` epochs (so that
    a cost measures the data, not early stopping) under ``data.in_memory_bytes`` = ``budget``."""
    sets = ["--set", f"train.max_epochs={epochs}", "--set", f"train.patience={epochs + 1}",
            "--set", f"data.in_memory_bytes={budget}", "--set", "train.device='cpu'"]
    for module in ("encoder", "find", "describe", "measure"):
        sets += ["--set", f"modules.{module}.max_epochs={epochs}", "--set", f"modules.{module}.patience={epochs + 1}"]
    common = ["--recipe", "nmn-typed", "--data", str(data), "--workdir", str(work), "--device", "cpu", *sets]
    recipe = Recipe.load("nmn-typed", [s for s in sets if s != "--set"] + [f"data.source='{data}'"])
    stages = {}
    for job in make_plan(recipe).jobs:
        if job.kind == "assemble" and not assemble:
            continue
        command = [MODTRAIN, job.kind, *([job.module] if job.module else []), *common]
        if job.kind == "cache":
            command.append("--allow-untrusted")  # a growth benchmark: the trust check is not what is measured
        stages[job.name] = stage(command, root)
        print(f"{label}: {job.name} {stages[job.name]}", file=sys.stderr)
    return recipe, stages


def run_size(factor: int, root: Path, epochs: int, budget: int, backbone: Path | None) -> dict:
    data, work = root / "data", root / "work"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    counts = {k: v * factor if k != "questions_per_image" else v for k, v in BASE.items()}
    stages = make_data(data, root, counts["images"], counts["val_images"], counts["test_images"], backbone)
    pretrain = stages["data features"] if backbone is None else None
    stages["data prepare"] = stage([MODTRAIN, "data", "prepare", str(data)], root)
    recipe, jobs = train_jobs(data, work, root, epochs, budget, f"{factor}×")
    stages.update(jobs)
    workdir = Workdir(work, data)
    questions = len(PreparedData(data).split("train"))
    return {"factor": factor, "questions": questions, "images": counts, "stages": stages,
            "data_path": data_path_rates(workdir, recipe, budget), "pretrain": pretrain}


def data_path_rates(workdir: Workdir, recipe: Recipe, budget: int, in_memory: int | None = None) -> dict:
    """Per module: the data path's samples/s under the run's budget and under the default one (1 GiB:
    at these sizes every features file and cache is held whole; or ``in_memory``), against the
    job's training rate."""
    from modtrain.card import load_card

    rates = {}
    default = in_memory or recipe.data.__class__().in_memory_bytes
    for module in recipe.modules:
        train_rate = load_card(workdir.modules, module)["timings"]["samples_per_second"]
        row = {"training_samples_per_second": train_rate}
        for label, bytes_ in (("budget", budget), ("default_budget", default)):
            rate, order = data_path_rate(workdir, recipe.with_overrides([f"data.in_memory_bytes={bytes_}"]), module)
            row[f"data_path_samples_per_second ({label})"] = round(rate, 1)
            row[f"ratio ({label})"] = round(rate / train_rate, 2)
            if label == "budget":
                row["order (budget)"] = order or "uniform"
        row["streamed / in memory"] = round(row["data_path_samples_per_second (budget)"]
                                            / row["data_path_samples_per_second (default_budget)"], 3)
        rates[module] = row
    return rates


CLEVR_TRAIN_QUESTIONS = 699_989  # CLEVR v1.0's training split


def projection(result: dict) -> dict:
    """On paper: each stage at CLEVR's size on this machine (the fitted power law through the largest
    size), and, for each training job, the least time per epoch its data path allows (questions /
    the data path's samples/s, default budget, largest size): what a GPU that computed for free
    would still need."""
    largest = result["sizes"][-1]
    scale = CLEVR_TRAIN_QUESTIONS / largest["questions"]
    stages = {}
    for name, stage in largest["stages"].items():
        exponent = result["slopes"][name]["seconds"]
        if name == "data features":
            exponent = result["slopes"][name].get("seconds (without the first size)", exponent)
        exponent = 1.0 if exponent is None or exponent < 1.0 else exponent  # never below linear: work per question
        stages[name] = round(stage["seconds"] * scale ** exponent, 1)
    floor = {m: round(CLEVR_TRAIN_QUESTIONS / r["data_path_samples_per_second (default_budget)"], 2)
             for m, r in largest["data_path"].items()}
    return {"questions": CLEVR_TRAIN_QUESTIONS, "epochs_per_module": result["epochs"],
            "seconds_on_this_machine": stages, "total_hours_on_this_machine": round(sum(stages.values()) / 3600, 2),
            "data_path_seconds_per_epoch_floor": floor,
            "assumptions": "the slopes hold beyond the largest size and sub-linear fits are rounded up to linear; "
                           "the same number of epochs per module; features and caches held in memory for the "
                           "data-path floor: clevr-cnn features of CLEVR's 70k training images take 1.15 GB, so "
                           "data.in_memory_bytes must be raised above the default 1 GiB for it"}


def slope(xs: list[float], ys: list[float]) -> float | None:
    """Least-squares slope of log y on log x (None where a value is not positive)."""
    if len(xs) < 2 or min(ys) <= 0:
        return None
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


def plot(sizes: list[dict], path: Path) -> None:
    from modtrain.reports.plots import pyplot, save_figure

    plt = pyplot()
    figure, axis = plt.subplots(figsize=(8, 5))
    x = [s["questions"] for s in sizes]
    for name in sizes[0]["stages"]:
        axis.loglog(x, [max(s["stages"][name]["seconds"], 1e-2) for s in sizes], marker="o", label=name)
    axis.loglog(x, [sizes[0]["stages"]["data generate"]["seconds"] * q / x[0] for q in x], "k--", label="linear")
    axis.set_xlabel("training questions")
    axis.set_ylabel("wall time (s)")
    axis.set_title("Cost of every stage against the data (log-log)")
    axis.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    figure.tight_layout()
    save_figure(figure, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/scale.json")
    parser.add_argument("--workdir", default="runs/bench-scale")
    parser.add_argument("--factors", default="1,4,16")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--budget", type=int, default=None,
                        help="data.in_memory_bytes for every job (default 64 MiB; 1 GiB with --features resnet-shape)")
    parser.add_argument("--features", choices=("clevr-cnn", "resnet-shape"), default="clevr-cnn",
                        help="resnet-shape: the CLEVR-size data path run alone (--images, over a 1 GiB budget), "
                             "written into --out's 'resnet_shape' (the rest of it kept)")
    parser.add_argument("--images", type=int, default=7000, help="with --features resnet-shape")
    parser.add_argument("--find-memory", action="store_true",
                        help="train find's peak memory at 16x, by training order, written into --out")
    parser.add_argument("--huge-pages", action="store_true",
                        help="with --features resnet-shape: find's streamed data path on the run's folders with "
                             "PyTorch's huge pages off and on (THP_MEM_ALLOC_ENABLE), in turn, each in its own "
                             "process, written into --out's 'resnet_shape'")
    parser.add_argument("--gather-threads", action="store_true",
                        help="with --features resnet-shape: find's data path on the run's folders, streamed and in "
                             "memory, its batches gathered on one torch thread and on two, each in its own process, "
                             "in turn, written into --out's 'resnet_shape'")
    parser.add_argument("--data-path-only", action="store_true",
                        help="measure only the data paths again, on the folders of the run that wrote --out, and "
                             "rewrite its data-path numbers and targets (the stage numbers are kept)")
    args = parser.parse_args()
    if args.data_path_only:
        return remeasure_data_paths(Path(args.out), Path(args.workdir).resolve())
    if args.find_memory:
        out = Path(args.out)
        result = json.loads(out.read_text())
        result.pop("machine", None)
        result["find_memory_16x"] = find_memory(Path(args.workdir).resolve(), result["in_memory_bytes"])
        return write_result(out, result)
    if args.features == "resnet-shape" and (args.huge_pages or args.gather_threads):
        out = Path(args.out)
        result = json.loads(out.read_text())
        result.pop("machine", None)
        name, ab = ("huge_pages", huge_pages_ab) if args.huge_pages else ("gather_threads", gather_threads_ab)
        result["resnet_shape"][name] = ab(Path(args.workdir).resolve() / "resnet-shape", args.budget or 1 << 30)
        return write_result(out, result)
    if args.features == "resnet-shape":
        root = Path(args.workdir).resolve()
        kept = root / "clevr-cnn.pt"
        budget = args.budget or 1 << 30
        run = resnet_shape_run(root / "resnet-shape", args.images, budget, kept if kept.exists() else None)
        out = Path(args.out)
        result = json.loads(out.read_text()) if out.exists() else {"benchmark": "scale"}
        result.pop("machine", None)
        result["resnet_shape"] = run
        values = {**{m: r["streamed / in memory"] for m, r in run["data_path"].items()},
                  **{f"cache {s}": r["streamed / in memory"] for s, r in run["cache_data_path"].items()}}
        result["targets"]["resnet-shape: streamed data path >= 50% of in memory"] = {
            "value": values, "met": all(v >= 0.5 for v in values.values())}
        ratios = {m: r["ratio (budget)"] for m, r in run["data_path"].items()}
        result["targets"]["resnet-shape: streamed data path >= 10x the training rate"] = {
            "value": ratios, "met": all(v >= 10 for v in ratios.values())}
        return write_result(out, result)
    args.budget = args.budget or 64 << 20
    factors = [int(f) for f in args.factors.split(",")]
    root = Path(args.workdir).resolve()
    start = time.perf_counter()
    sizes, backbone = [], None
    for factor in factors:
        sizes.append(run_size(factor, root / f"x{factor}", args.epochs, args.budget, backbone))
        if backbone is None:  # the first size pretrained it: keep it for the others
            kept = root / "clevr-cnn.pt"
            shutil.copy(root / f"x{factor}" / "data" / "features" / "clevr-cnn.pt", kept)
            shutil.copy(root / f"x{factor}" / "data" / "features" / "clevr-cnn.json", kept.with_suffix(".json"))
            backbone = kept
    questions = [s["questions"] for s in sizes]
    names = list(sizes[0]["stages"])
    slopes = {name: {metric: slope(questions, [s["stages"][name][metric] for s in sizes])
                     for metric in ("seconds", "peak_rss_mib", "bytes_written")} for name in names}
    # the first size's features stage pretrained the backbone too: its slope is measured without it
    if len(sizes) > 2:
        slopes["data features"]["seconds (without the first size)"] = slope(
            questions[1:], [s["stages"]["data features"]["seconds"] for s in sizes[1:]])
    training = [n for n in names if n.startswith(("train ", "cache ", "assemble"))]
    peak_training = max(s["stages"][n]["peak_rss_mib"] for s in sizes for n in training)
    targets = {
        "every stage's time grows at most linearly (slope <= 1.1)": {
            "value": {n: None if v["seconds"] is None else round(v["seconds"], 3) for n, v in slopes.items()},
            "met": all(v["seconds"] is not None and v["seconds"] <= 1.1 for n, v in slopes.items()
                       if n != "data features") and
                   (slopes["data features"].get("seconds (without the first size)")
                    or slopes["data features"]["seconds"]) <= 1.1},
        "training memory bounded: peak RSS slope of training jobs <= 0.25": {
            "value": {n: None if slopes[n]["peak_rss_mib"] is None else round(slopes[n]["peak_rss_mib"], 3)
                      for n in training},
            "met": all(slopes[n]["peak_rss_mib"] is not None and slopes[n]["peak_rss_mib"] <= 0.25 for n in training)},
        "data path >= 10x the training rate, every job, every size (under the run's budget)": {
            "value": {f"{s['factor']}x {m}": r["ratio (budget)"] for s in sizes for m, r in s["data_path"].items()},
            "met": all(r["ratio (budget)"] >= 10 for s in sizes for r in s["data_path"].values())},
        STREAMED: streamed_target(sizes),
        "data path >= 10x the training rate, every job, every size (default budget)": {
            "value": {f"{s['factor']}x {m}": r["ratio (default_budget)"]
                      for s in sizes for m, r in s["data_path"].items()},
            "met": all(r["ratio (default_budget)"] >= 10 for s in sizes for r in s["data_path"].values())},
    }
    out = Path(args.out)
    plot(sizes, out.with_suffix(".png"))
    result = {"benchmark": "scale", "recipe": "nmn-typed", "factors": factors, "epochs": args.epochs,
              "in_memory_bytes": args.budget, "wall_seconds": round(time.perf_counter() - start, 1),
              "peak_training_rss_mib": peak_training, "targets": targets, "slopes": slopes, "sizes": sizes,
              "clevr_cnn_pretraining_note": "in the first size's 'data features' stage only"}
    result["projection"] = projection(result)
    if out.exists():  # the ResNet-shape run (--features resnet-shape) is its own measurement: kept
        before = json.loads(out.read_text())
        if "resnet_shape" in before:
            result["resnet_shape"] = before["resnet_shape"]
            result["targets"].update({k: v for k, v in before["targets"].items() if k.startswith("resnet-shape")})
    write_result(out, result)


RESNET_SHAPE = (1024, 14, 14)  # ResNet-101's conv4 features of a 224² image (the NMN papers' CLEVR input)


def resnet_shape_features(data: Path) -> dict:
    """Replace every split's clevr-cnn features by features of ResNet-101's shape, float16: a fixed,
    seeded projection of them (bilinear to 14×14, a random 1×1 map to 1024 channels). Measures the
    data path, not accuracy."""
    import hashlib

    import h5py

    from modtrain.cache import _chunk_rows
    from modtrain.io import atomic_path

    sizes = {}
    for path in sorted((data / "features").glob("*.h5")):
        with h5py.File(path, "r") as f:
            source, attrs = f["features"], dict(f.attrs)
            n, channels = source.shape[0], source.shape[1]
            mix = torch.from_numpy((np.random.default_rng(0).standard_normal((RESNET_SHAPE[0], channels))
                                    / np.sqrt(channels)).astype(np.float32))
            digest = hashlib.sha256()
            row_bytes = int(np.prod(RESNET_SHAPE)) * 2
            with atomic_path(path.with_suffix(".resnet.h5")) as tmp, h5py.File(tmp, "w") as out:
                target = out.create_dataset("features", shape=(n, *RESNET_SHAPE), dtype="float16",
                                            chunks=(_chunk_rows(n, row_bytes), *RESNET_SHAPE), fletcher32=True)
                for start in range(0, n, 256):
                    x = torch.from_numpy(source[start:start + 256]).float()
                    x = torch.nn.functional.interpolate(x, size=RESNET_SHAPE[1:], mode="bilinear", align_corners=False)
                    y = torch.einsum("oc,nchw->nohw", mix, x).numpy().astype(np.float16)
                    target[start:start + len(y)] = y
                    digest.update(y.tobytes())
                out.attrs.update({**attrs, "backbone": "resnet-shape projection",
                                  "backbone_sha256": hashlib.sha256(f"resnet-shape:{attrs.get('backbone_sha256')}"
                                                                    .encode()).hexdigest(),
                                  "features_sha256": digest.hexdigest()})
        path.with_suffix(".resnet.h5").replace(path)
        sizes[path.stem] = path.stat().st_size
    return sizes


def sweep_rate(split, budget: int, batch_size: int = 256, min_seconds: float = 1.0) -> float:
    """Samples/s of a cache job's data path: the split's questions in file order, batch by batch,
    their features read and made float (``cache._write_edge_cache`` reads them so)."""
    set_in_memory_bytes(budget)
    features = split.features()
    features.take(split.image_index[:1])
    samples, start = 0, time.perf_counter()
    while time.perf_counter() - start < min_seconds:
        for begin in range(0, len(split), batch_size):
            torch.from_numpy(features.take(split.image_index[begin:begin + batch_size])).float()
            samples += min(batch_size, len(split) - begin)
    return samples / (time.perf_counter() - start)


def resnet_shape_run(root: Path, images: int, budget: int, backbone: Path | None) -> dict:
    """Issue 30's CLEVR-size run in part: ``images`` training images (10 questions each) with features
    of ResNet-101's shape, over the budget; find, describe and measure's data paths (their training
    order) and the cache jobs' (file order) streamed vs in memory, against one epoch of each
    module's training under the budget."""
    data, work = root / "data", root / "work"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    stages = make_data(data, root, images, 200, 200, backbone)
    start = time.perf_counter()
    files = resnet_shape_features(data)
    stages["resnet-shape projection"] = {"seconds": round(time.perf_counter() - start, 2)}
    stages["data prepare"] = stage([MODTRAIN, "data", "prepare", str(data)], root)
    recipe, jobs = train_jobs(data, work, root, 1, budget, "resnet-shape", assemble=False)
    stages.update(jobs)
    workdir = Workdir(work, data)
    prepared = PreparedData(data)
    in_memory = 64 << 30
    paths = data_path_rates(workdir, recipe, budget, in_memory)
    streamed, held = sweep_rate(prepared.split("train"), budget), sweep_rate(prepared.split("train"), in_memory)
    caches = {"train": {"data_path_samples_per_second (budget)": round(streamed, 1),
                        "data_path_samples_per_second (in memory)": round(held, 1),
                        "streamed / in memory": round(streamed / held, 3)}}
    questions = len(prepared.split("train"))
    floor = {m: round(CLEVR_TRAIN_QUESTIONS / r["data_path_samples_per_second (budget)"], 1) for m, r in paths.items()}
    return {"images": images, "questions": questions, "feature_shape": list(RESNET_SHAPE), "dtype": "float16",
            "feature_bytes": files, "in_memory_bytes": budget, "stages": stages, "data_path": paths,
            "cache_data_path": caches,
            "projection": {"questions": CLEVR_TRAIN_QUESTIONS,
                           "streamed_data_path_seconds_per_epoch": floor,
                           "features_bytes_full_clevr": int(files["train"] / images * 70_000),
                           "note": "per epoch, what the streamed data path alone needs at CLEVR's 700k questions "
                                   "(70k images): the floor a GPU that computed for free would meet"}}


FRESH_RATE_RUN = """
import json, sys
sys.path.insert(0, {bench!r})
from pathlib import Path
import torch
import modtrain.device
from bench_scale import data_path_rate
from modtrain.recipe import Recipe
from modtrain.workdir import Workdir
{preamble}
root = Path({root!r})
recipe = Recipe.load(root / "work" / "recipe.toml").with_overrides(["data.in_memory_bytes={budget}"])
print(json.dumps(data_path_rate(Workdir(root / "work", root / "data"), recipe, "find", min_seconds=10)[0]))
"""


def fresh_rate(root: Path, budget: int, env: dict | None = None, preamble: str = "") -> float:
    """find's data path (samples/s, at least 10 s of whole epochs) on a run's folders under
    ``budget``, in a fresh process (``env`` added to its environment, ``preamble`` run first)."""
    code = FRESH_RATE_RUN.format(bench=str(Path(__file__).parent), root=str(root), budget=budget, preamble=preamble)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, **(env or {})})
    return round(float(done.stdout.strip().splitlines()[-1]), 1)


def huge_pages_ab(root: Path, budget: int, rounds: int = 3) -> dict:
    """find's streamed data path (samples/s) on the ResNet-shape run's folders with PyTorch's huge
    pages for large tensors off and on (``THP_MEM_ALLOC_ENABLE``, which modtrain turns on), each
    measurement in a fresh process, off and on in turn, ``rounds`` times."""
    rates: dict[str, list[float]] = {"off": [], "on": []}
    for _ in range(rounds):
        for label, value in (("off", "0"), ("on", "1")):
            rates[label].append(fresh_rate(root, budget, {"THP_MEM_ALLOC_ENABLE": value}))
    return {"find_data_path_samples_per_second": rates, "rounds": rounds, "in_memory_bytes": budget,
            "on / off (means)": round(sum(rates["on"]) / sum(rates["off"]), 2)}


GATHERS = {  # how find's batches are gathered: modtrain's choice for each case, and the other one
    "streamed, gather on one thread (modtrain)": (False, ""),
    "streamed, gather on torch's two threads": (False, "import contextlib\n"
                                                       "modtrain.device.one_thread = contextlib.nullcontext"),
    "in memory, two threads (modtrain)": (True, ""),
    "in memory, one thread": (True, "torch.set_num_threads(1)"),
}


def gather_threads_ab(root: Path, budget: int, rounds: int = 2) -> dict:
    """find's data path (samples/s) on the ResNet-shape run's folders, streamed under ``budget`` and
    held in memory, with its batches gathered on one torch thread and on two: each case in a fresh
    process, the four in turn, ``rounds`` times (why a streamed source's gather runs on one thread)."""
    rates: dict[str, list[float]] = {label: [] for label in GATHERS}
    for _ in range(rounds):
        for label, (held, preamble) in GATHERS.items():
            rates[label].append(fresh_rate(root, 64 << 30 if held else budget, preamble=preamble))
    means = {label: sum(values) / len(values) for label, values in rates.items()}
    labels = list(GATHERS)
    return {"find_data_path_samples_per_second": rates, "rounds": rounds, "in_memory_bytes": budget,
            "streamed: one thread / two (means)": round(means[labels[0]] / means[labels[1]], 2),
            "in memory: two threads / one (means)": round(means[labels[2]] / means[labels[3]], 2)}


def find_memory(root: Path, budget: int) -> dict:
    """Where train find's peak memory at 16× comes from: one epoch of it, on a copy of the 16× run,
    in the uniform order, in the window order, in the window order with one malloc arena
    (``MALLOC_ARENA_MAX=1``: the read-ahead thread then allocates in the main one's) and with a
    window of 2 chunks instead of 16."""
    folder = root / "x16"
    copy = root / "find-memory"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(folder / "work", copy)
    sets = ["--set", "modules.find.max_epochs=1", "--set", "modules.find.patience=2", "--set",
            f"data.in_memory_bytes={budget}", "--set", "train.device='cpu'"]
    variants = {"uniform order": (["--set", "data.shuffle='uniform'"], None),
                "window order (16 chunks)": ([], None),
                "window order, MALLOC_ARENA_MAX=1": ([], {"MALLOC_ARENA_MAX": "1"}),
                "window order (2 chunks)": (["--set", "data.shuffle_window=2"], None)}
    out = {}
    for name, (extra, env) in variants.items():
        (copy / "modules" / "find.json").unlink(missing_ok=True)
        shutil.copy(folder / "work" / "recipe.toml", copy / "recipe.toml")  # a run records its --set there
        out[name] = stage([MODTRAIN, "train", "find", "--recipe", str(copy / "recipe.toml"), "--data",
                           str(folder / "data"), "--workdir", str(copy), "--device", "cpu", *sets, *extra], copy, env)
        print(f"find memory: {name} {out[name]}", file=sys.stderr)
    shutil.rmtree(copy, ignore_errors=True)
    return {"epochs": 1, "in_memory_bytes": budget, "train_find": out}


STREAMED = "streamed data path >= 50% of in memory, every job, largest size"


def streamed_target(sizes: list[dict]) -> dict:
    rows = sizes[-1]["data_path"]
    return {"value": {m: r["streamed / in memory"] for m, r in rows.items()},
            "met": all(r["streamed / in memory"] >= 0.5 for r in rows.values())}


def remeasure_data_paths(out: Path, root: Path) -> None:
    result = json.loads(out.read_text())
    result.pop("machine", None)
    for size in result["sizes"]:
        folder = root / f"x{size['factor']}"
        workdir = Workdir(folder / "work", folder / "data")
        recipe = Recipe.load(folder / "work" / "recipe.toml")
        size["data_path"] = data_path_rates(workdir, recipe, result["in_memory_bytes"])
    sizes = result["sizes"]
    for label in ("budget", "default_budget"):
        name = next(k for k in result["targets"]
                    if k.startswith("data path") and ("default" in k) == (label != "budget"))
        values = {f"{s['factor']}x {m}": r[f"ratio ({label})"] for s in sizes for m, r in s["data_path"].items()}
        result["targets"][name] = {"value": values, "met": all(v >= 10 for v in values.values())}
    result["targets"][STREAMED] = streamed_target(sizes)
    result["data_path_note"] = "data paths measured again on the run's folders by --data-path-only"
    result["projection"] = projection(result)
    write_result(out, result)


if __name__ == "__main__":
    main()
