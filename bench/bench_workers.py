"""Image workers: ``data generate`` (drawing and saving images) and ``data features`` (decoding them
while the backbone computes), with one worker per other core against none.

    python bench/bench_workers.py --out bench/results/workers.json
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import h5py

sys.path.insert(0, str(Path(__file__).parent))
from common import write_result  # noqa: E402
from modtrain.datasets.features import features_command  # noqa: E402
from modtrain.datasets.generate import generate  # noqa: E402

from modtrain.io import default_workers  # noqa: E402


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted((folder / "images" / "train").iterdir()):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results/workers.json")
    parser.add_argument("--images", type=int, default=3000)
    args = parser.parse_args()
    workers = default_workers()
    root = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    result: dict = {"benchmark": "workers", "images": args.images, "workers": workers}
    try:
        seconds, digests = {}, {}
        for label, n in (("none", 0), ("workers", workers)):
            folder = root / f"generate-{label}"
            start = time.perf_counter()
            generate(folder, {"train": args.images}, 10, "no-relate", workers=n)
            seconds[label] = round(time.perf_counter() - start, 2)
            digests[label] = _digest(folder)
        result["generate"] = {"seconds": seconds, "speedup": round(seconds["none"] / seconds["workers"], 2),
                              "same_images": digests["none"] == digests["workers"]}
        folder = root / "generate-none"
        features_command(folder, "clevr-cnn", pretrain_images=200, pretrain_epochs=1, workers=0)  # pretrain once
        seconds, values = {}, {}
        for label, n in (("none", 0), ("workers", workers)):
            start = time.perf_counter()
            features_command(folder, "clevr-cnn", pretrain_images=200, pretrain_epochs=1, workers=n)
            seconds[label] = round(time.perf_counter() - start, 2)
            with h5py.File(folder / "features" / "train.h5") as f:
                values[label] = f.attrs["features_sha256"]
        result["features"] = {"seconds": seconds, "speedup": round(seconds["none"] / seconds["workers"], 2),
                              "same_features": values["none"] == values["workers"],
                              "images_per_second": {k: round(args.images / v, 1) for k, v in seconds.items()}}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    write_result(args.out, result)


if __name__ == "__main__":
    main()
