"""Data pipeline benchmark: the default dataset's wall times per step, feature extraction
images/s, and batched ``{split}.h5`` reads rows/s.

    python bench/bench_data.py --out bench/results/data.json
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from modtrain.datasets.clevr import ClevrFolder
from modtrain.datasets.features import (
    CLEVR_CNN_MEAN,
    CLEVR_CNN_STD,
    Backbone,
    ClevrCNN,
    extract_features,
    features_command,
)
from modtrain.datasets.generate import generate
from modtrain.datasets.info import data_info
from modtrain.datasets.prepare import prepare

from modtrain.io import read_rows


def timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return time.perf_counter() - start, out


def bench_reads(path: Path, batch_size: int, batches: int, seed: int = 0) -> dict:
    """Rows/s reading every array of a split in sorted random batches and sequential blocks."""
    rng = np.random.default_rng(seed)
    with h5py.File(path) as f:
        names = list(f)
        n = f[names[0]].shape[0]
        start = time.perf_counter()
        for _ in range(batches):
            rows = np.sort(rng.choice(n, size=min(batch_size, n), replace=False))
            for name in names:
                f[name][rows]
        fancy_rate = batches * min(batch_size, n) / (time.perf_counter() - start)
        rng = np.random.default_rng(seed)
        start = time.perf_counter()
        for _ in range(batches):
            rows = np.sort(rng.choice(n, size=min(batch_size, n), replace=False))
            for name in names:
                read_rows(f[name], rows)
        chunked_rate = batches * min(batch_size, n) / (time.perf_counter() - start)
        start = time.perf_counter()
        read = 0
        for begin in range(0, n, batch_size):
            for name in names:
                f[name][begin:begin + batch_size]
            read += min(batch_size, n - begin)
        sequential_rate = read / (time.perf_counter() - start)
        start = time.perf_counter()
        arrays = {name: f[name][:] for name in names}
        whole_rate = n / (time.perf_counter() - start)
    return {"rows": n, "batch_size": batch_size, "random_batches_h5py_fancy_rows_per_s": round(fancy_rate),
            "random_batches_read_rows_rows_per_s": round(chunked_rate),
            "sequential_rows_per_s": round(sequential_rate), "whole_split_load_rows_per_s": round(whole_rate),
            "arrays": len(arrays)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/data.json")
    parser.add_argument("--images", type=int, default=1000, help="training images (the default dataset)")
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        steps = {}
        steps["generate_s"], _ = timed(generate, data, {"train": args.images, "val": args.images // 5,
                                                        "test": args.images // 5}, 10, "all", 0, 64,
                                                balance_depth="3-12")  # as 'modtrain data generate' does
        steps["features_s"], _ = timed(features_command, data, device="cpu")
        steps["prepare_s"], _ = timed(prepare, data)
        steps["info_s"], _ = timed(data_info, data)
        steps["total_s"] = sum(steps.values())
        folder = ClevrFolder(data)
        paths = [folder.image_path("train", i) for i in range(folder.num_images("train"))]
        backbone = Backbone("clevr-cnn", ClevrCNN().eval(), 64, CLEVR_CNN_MEAN, CLEVR_CNN_STD, "")
        seconds, _ = timed(extract_features, paths, backbone, Path(tmp) / "bench.h5", batch_size=64)
        extraction = {"images": len(paths), "image_size": 64, "images_per_s": round(len(paths) / seconds, 1)}
        reads = bench_reads(data / "train.h5", batch_size=128, batches=200)
        feature_reads = bench_reads(data / "features" / "train.h5", batch_size=64, batches=100)
    write_result(args.out, {"benchmark": "data", "default_dataset_steps": {k: round(v, 2) for k, v in steps.items()},
                            "feature_extraction": extraction, "split_h5_reads": reads,
                            "features_h5_reads": feature_reads})


if __name__ == "__main__":
    main()
