"""Virtual datasets: one HDF5 cache per producing module and split (paper §5.4).

``caches/encoder/{split}.h5`` holds the prior logits per question; ``caches/find/{split}.h5``
the attention at the root module's input (after and/or) and the attended vector, so that
describe and measure train from caches alone, without image features or find. Rows are
aligned with ``data/{split}.h5``; chunks are blocks of rows; files are written to a temp
file and moved into place; attrs record the producer's weights hash and the data
fingerprint, and a consumer refuses a cache whose producer has changed since.
"""
from __future__ import annotations

import datetime
from pathlib import Path

import h5py
import numpy as np
import torch

from modtrain.card import load_module, weights_sha256
from modtrain.data import H5Rows, PreparedData
from modtrain.errors import ModtrainError
from modtrain.execute import Executor
from modtrain.io import atomic_path
from modtrain.progress import progress
from modtrain.types import attend, get_interface
from modtrain.workdir import Workdir

SCHEMA_VERSION = 1
CHUNK_BYTES = 1 << 20
PRODUCERS = ("encoder", "find")


def _chunk_rows(n: int, row_bytes: int) -> int:
    return max(1, min(n, CHUNK_BYTES // max(1, row_bytes)))


def write_cache(path: Path, producer: str, producer_sha256: str, fingerprint: str, n: int,
                columns: dict[str, tuple[tuple[int, ...], str]], blocks) -> None:
    """Write ``columns`` (name → (row shape, dtype)) from ``blocks`` of (start, {name: array})."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        datasets = {}
        for name, (shape, dtype) in columns.items():
            row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            datasets[name] = f.create_dataset(name, shape=(n, *shape), dtype=dtype,
                                              chunks=(_chunk_rows(n, row_bytes), *shape) if n else None)
        for start, values in blocks:
            for name, array in values.items():
                datasets[name][start:start + len(array)] = array
        f.attrs.update({"schema_version": SCHEMA_VERSION, "producer": producer,
                        "producer_sha256": producer_sha256, "data_fingerprint": fingerprint,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


def cache_status(workdir: Workdir, producer: str, split: str, fingerprint: str) -> str | None:
    """None if the cache is usable, else why not (missing, stale, other data)."""
    path = workdir.cache(producer, split)
    if not path.exists():
        return f"cache {path} not found; run 'modtrain cache {producer}'"
    current = weights_sha256(workdir.modules, producer)
    with h5py.File(path, "r") as f:
        attrs = dict(f.attrs)
    if attrs.get("schema_version") != SCHEMA_VERSION:
        return f"cache {path} has schema {attrs.get('schema_version')}, expected {SCHEMA_VERSION}; run 'modtrain cache {producer}'"
    if attrs.get("producer_sha256") != current:
        return (f"stale cache {path}: written by {producer} {str(attrs.get('producer_sha256'))[:12]}, but "
                f"{workdir.modules / producer}.pt is now {str(current)[:12]}; run 'modtrain cache {producer}'")
    if attrs.get("data_fingerprint") != fingerprint:
        return f"stale cache {path}: written for other data; run 'modtrain cache {producer}'"
    return None


def open_cache(workdir: Workdir, producer: str, split: str, fingerprint: str, column: str) -> H5Rows:
    """A column of a fresh cache, or a clear error saying how to refresh it."""
    problem = cache_status(workdir, producer, split, fingerprint)
    if problem:
        raise ModtrainError(problem)
    return H5Rows(workdir.cache(producer, split), column)


def cache_encoder(workdir: Workdir, data: PreparedData, device: torch.device, batch_size: int = 512) -> None:
    """Prior logits of every question of every split."""
    encoder, card = load_module(workdir.modules, "encoder", device)
    sha = card["weights_sha256"]
    answers = data.dims()["answers"]
    def blocks(split):
        with progress(range(0, len(split), batch_size), label=f"cache encoder {split.name}") as bar:
            for start in bar:
                rows = slice(start, start + batch_size)
                with torch.no_grad():
                    prior = encoder(torch.from_numpy(split.tokens[rows]).long().to(device),
                                    torch.from_numpy(split.lengths[rows]).long())
                yield start, {"prior_logits": prior.float().cpu().numpy()}

    for split_name in data.splits():
        split = data.split(split_name)
        write_cache(workdir.cache("encoder", split_name), "encoder", sha, split.fingerprint, len(split),
                    {"prior_logits": ((answers,), "float32")}, blocks(split))


def cache_find(workdir: Workdir, data: PreparedData, device: torch.device, batch_size: int = 256) -> None:
    """Per question: the attention at the root module's input and the attended vector."""
    find, card = load_module(workdir.modules, "find", device)
    interface = get_interface(card["interface"])
    mode = card["hyperparameters"]["attention"]
    executor = Executor({"find": find}, interface, mode)
    sha = card["weights_sha256"]
    dims = data.dims()
    def blocks(split, valid):
        features = split.features()
        n = len(split)
        with progress(range(0, n, batch_size), label=f"cache find {split.name}") as bar:
            for start in bar:
                stop = min(n, start + batch_size)
                attention = np.zeros((stop - start, dims["height"], dims["width"]), np.float32)
                attended = np.zeros((stop - start, dims["features"]), np.float32)
                rows = np.flatnonzero(valid[start:stop]) + start
                if len(rows):
                    feats = torch.from_numpy(features.take(split.image_index[rows])).float().to(device)
                    layouts = [data.root_input(i) for i in split.layout[rows]]
                    with torch.no_grad():
                        att = executor.run(layouts, feats)
                        vec = attend(feats, att, mode)
                    attention[rows - start] = att.cpu().numpy()
                    attended[rows - start] = vec.cpu().numpy()
                yield start, {"attention": attention, "attended": attended, "valid": valid[start:stop]}

    for split_name in data.splits():
        split = data.split(split_name)
        root_modules, _ = data.roots(split)
        valid = np.isin(root_modules, ("describe", "measure"))
        write_cache(workdir.cache("find", split_name), "find", sha, split.fingerprint, len(split),
                    {"attention": ((dims["height"], dims["width"]), "float32"),
                     "attended": ((dims["features"],), "float32"), "valid": ((), "bool")}, blocks(split, valid))


def write_caches(workdir: Workdir, producer: str, data: PreparedData, device: torch.device) -> None:
    """``modtrain cache PRODUCER`` for every split."""
    writers = {"encoder": cache_encoder, "find": cache_find}
    if producer not in writers:
        raise ModtrainError(f"no virtual dataset for module {producer!r}; valid: {', '.join(writers)}")
    writers[producer](workdir, data, device)
