"""Virtual datasets: one HDF5 cache per producing module and split (paper §5.4).

A producer's output is cached where a module trained after it reads it. In a layout, every
edge into a node whose subtree holds a module trained later carries the output of a frozen
subtree; that value is stored in the cache of the subtree's last-trained module (its
*owner*, ``Plan.owner``), keyed by (question row, pre-order index of the subtree's root).
So ``caches/find/{split}.h5`` holds find's attention where describe, measure, relate or an
``and`` with a relate reads it, ``caches/relate/`` the attention of subtrees that end in
relate, ``caches/describe/`` describe's answers where compare reads them. Attention values
also keep their attended vector, so a module that reads one never touches the features.
The prior producer (the encoder) is cached once per question.

Files are written to a temp file and moved into place; chunks are blocks of rows; attrs
record every producer's weights hash, the data fingerprint and the plan's training order
(which decides which edges are stored), and a consumer refuses a cache that no longer
matches, naming the file and the command that refreshes it.
"""
from __future__ import annotations

import datetime
import json
import logging
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch

from modtrain.card import load_module, weights_sha256
from modtrain.data import H5Rows, PreparedData
from modtrain.errors import ModtrainError
from modtrain.execute import Executor
from modtrain.io import atomic_path
from modtrain.layout import Layout
from modtrain.plan import Plan
from modtrain.progress import progress
from modtrain.registry import parameter_free_names, reads_features, run_prior
from modtrain.trust import TrustSection, card_verdict
from modtrain.types import Prior, attend, get_interface
from modtrain.workdir import Workdir

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2
CHUNK_BYTES = 1 << 20
NODE_BITS = 16  # an edge's key: row << NODE_BITS | node (layouts have far fewer than 65536 nodes)


def _chunk_rows(n: int, row_bytes: int) -> int:
    return max(1, min(n, CHUNK_BYTES // max(1, row_bytes)))


def write_cache(path: Path, attrs: dict, n: int, columns: dict[str, tuple[tuple[int, ...], str]], blocks) -> None:
    """Write ``columns`` (name → (row shape, dtype)) of ``n`` rows from ``blocks`` of (start, {name: array})."""
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        datasets = {}
        for name, (shape, dtype) in columns.items():
            row_bytes = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            datasets[name] = f.create_dataset(name, shape=(n, *shape), dtype=dtype,
                                              chunks=(_chunk_rows(n, row_bytes), *shape) if n else None,
                                              fletcher32=bool(n))  # chunk checksums: corruption is detected
        for start, values in blocks:
            for name, array in values.items():
                datasets[name][start:start + len(array)] = array
        f.attrs.update({**attrs, "schema_version": SCHEMA_VERSION,
                        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})


# -- which edges a producer's cache holds ---------------------------------------------------------

def parametric_modules(layout: Layout) -> frozenset[str]:
    """The modules with parameters in a layout (the ones that are trained)."""
    free = set(parameter_free_names())
    return frozenset(n.module for n in layout.nodes() if n.module not in free)


def cached_edges(layout: Layout, plan: Plan, producer: str) -> list[tuple[int, Layout]]:
    """(pre-order index, subtree) of every frozen subtree whose output ``producer``'s cache holds:
    its last-trained module is ``producer`` and a module trained later reads it."""
    known = {m.name for m in plan.modules}
    if not parametric_modules(layout) <= known:
        return []  # a module the recipe lacks: no job trains on this question
    stage = plan.module(producer).stage
    edges = []
    index = 0

    def visit(node: Layout) -> None:
        nonlocal index
        for child in node.children:
            index += 1
            position = index
            modules = parametric_modules(child)
            if modules and plan.owner(modules) == producer and any(
                    plan.module(m).stage > stage for m in parametric_modules(node)):
                edges.append((position, child))
            visit(child)

    visit(layout)
    return edges


def edge_keys(rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    return (np.asarray(rows, np.int64) << NODE_BITS) | np.asarray(nodes, np.int64)


# -- status ---------------------------------------------------------------------------------------

def _producers(plan: Plan, producer: str) -> list[str]:
    """The producer and every trained module its cached values are computed with."""
    return [*plan.module(producer).consumes, producer]


def _expected_attrs(workdir: Workdir, plan: Plan, producer: str, fingerprint: str) -> dict:
    return {"producer": producer, "producer_sha256": weights_sha256(workdir.modules, producer),
            "producers": json.dumps({p: weights_sha256(workdir.modules, p) for p in _producers(plan, producer)},
                                    sort_keys=True),
            "stages": json.dumps({m.name: m.stage for m in plan.modules}, sort_keys=True),
            "data_fingerprint": fingerprint}


def cache_status(workdir: Workdir, plan: Plan, producer: str, split: str, fingerprint: str,
                 verify: bool = False) -> str | None:
    """None if the cache is usable, else why not (missing, stale, other data or plan, corrupt;
    ``verify`` reads every chunk against its checksum)."""
    path = workdir.cache(producer, split)
    fix = f"run 'modtrain cache {producer}'"
    if not path.exists():
        return f"cache {path} not found; {fix}"
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if verify:
                for dataset in f.values():
                    _read_every_chunk(dataset)
    except OSError as e:
        return f"cache {path} cannot be read ({str(e).splitlines()[0]}): corrupt or truncated; {fix}"
    if attrs.get("schema_version") != SCHEMA_VERSION:
        return f"cache {path} has schema {attrs.get('schema_version')}, expected {SCHEMA_VERSION}; {fix}"
    wanted = _expected_attrs(workdir, plan, producer, fingerprint)
    if attrs.get("producer_sha256") != wanted["producer_sha256"]:
        return (f"stale cache {path}: written by {producer} {str(attrs.get('producer_sha256'))[:12]}, but "
                f"{workdir.modules / producer}.pt is now {str(wanted['producer_sha256'])[:12]}; {fix}")
    if attrs.get("producers") != wanted["producers"]:
        then, now = json.loads(attrs.get("producers") or "{}"), json.loads(wanted["producers"])
        changed = next((p for p in now if then.get(p) != now[p]), "?")
        return (f"stale cache {path}: computed with {changed} {str(then.get(changed))[:12]}, but "
                f"{workdir.modules / changed}.pt is now {str(now.get(changed))[:12]}; {fix}")
    if attrs.get("data_fingerprint") != fingerprint:
        return f"stale cache {path}: written for other data; {fix}"
    if attrs.get("stages") != wanted["stages"]:
        return (f"stale cache {path}: written for a plan with other modules ({attrs.get('stages')}, now "
                f"{wanted['stages']}); {fix}")
    return None


def _read_every_chunk(dataset) -> None:
    """Read a dataset chunk by chunk, so that h5py checks every chunk's fletcher32 checksum."""
    step = dataset.chunks[0] if dataset.chunks else max(1, len(dataset))
    for start in range(0, len(dataset), step):
        dataset[start:start + step]


def caches_up_to_date(workdir: Workdir, plan: Plan, producer: str, data: PreparedData) -> bool:
    """Whether ``producer``'s cache of every split is usable, every chunk checked; a corrupt one
    is said once (it is then rebuilt)."""
    for split in data.splits():
        problem = cache_status(workdir, plan, producer, split, data.split(split).fingerprint, verify=True)
        if problem is not None:
            if "corrupt" in problem:
                log.warning("%s", problem)
            return False
    return True


def _checked(workdir: Workdir, plan: Plan, producer: str, split: str, fingerprint: str) -> Path:
    problem = cache_status(workdir, plan, producer, split, fingerprint)
    if problem:
        raise ModtrainError(problem)
    return workdir.cache(producer, split)


def open_cache(workdir: Workdir, plan: Plan, producer: str, split: str, fingerprint: str,
               column: str = "value") -> H5Rows:
    """A per-question column of a fresh cache (the prior's), or a clear error saying how to refresh it."""
    return H5Rows(_checked(workdir, plan, producer, split, fingerprint), column, fix=f"run 'modtrain cache {producer}'")


class EdgeCache:
    """A fresh producer cache of one split: values keyed by (question row, node)."""

    def __init__(self, workdir: Workdir, plan: Plan, producer: str, split: str, fingerprint: str):
        self.path = _checked(workdir, plan, producer, split, fingerprint)
        self.producer = producer
        try:
            with h5py.File(self.path, "r") as f:
                self.keys = edge_keys(f["row"][()], f["node"][()])
        except OSError as e:
            raise ModtrainError(f"cache {self.path} cannot be read ({str(e).splitlines()[0]}): corrupt or truncated; "
                                f"run 'modtrain cache {producer}'") from None
        self._columns: dict[str, H5Rows] = {}

    def lookup(self, rows: np.ndarray, nodes: np.ndarray) -> np.ndarray:
        """Edge index of every (row, node); an error naming the first one the cache lacks."""
        wanted = edge_keys(rows, nodes)
        index = np.searchsorted(self.keys, wanted).clip(0, max(0, len(self.keys) - 1))
        found = len(self.keys) > 0 and self.keys[index] == wanted
        missing = np.flatnonzero(~found) if len(self.keys) else np.arange(len(wanted))
        if len(missing):
            k = missing[0]
            raise ModtrainError(f"cache {self.path} holds no value for question row {int(np.asarray(rows)[k])}, "
                                f"node {int(np.asarray(nodes)[k])}; run 'modtrain cache {self.producer}'")
        return index

    def column(self, name: str) -> H5Rows:
        if name not in self._columns:
            self._columns[name] = H5Rows(self.path, name, fix=f"run 'modtrain cache {self.producer}'")
        return self._columns[name]


# -- writing --------------------------------------------------------------------------------------

def attention_mode(hparams: dict[str, dict]) -> str:
    """How attention becomes an attended vector (paper §5.5), from the first module that says so."""
    return next((h["attention"] for h in hparams.values() if "attention" in h), "weighted")


def check_trusted(card: dict[str, Any], card_file: Path, settings: TrustSection) -> None:
    """Refuse a module its surrogate does not trust (``modtrain.trust``), naming the criterion, by how
    much it failed, and how to go on."""
    verdict = card_verdict(card, settings)
    if verdict is not None and not verdict.trusted:
        raise ModtrainError(
            f"{card_file}: {card['name']} is not trusted: {verdict.reason} (trust.criterion = {verdict.criterion}), "
            f"so it is not cached or used. Search it ('modtrain tune {card['name']}') or pass --allow-untrusted "
            f"to use it anyway")


def write_caches(workdir: Workdir, plan: Plan, producer: str, data: PreparedData, device: torch.device,
                 batch_size: int = 256, allow_untrusted: bool = False,
                 trust: TrustSection = TrustSection()) -> None:
    """``modtrain cache PRODUCER``: its virtual dataset, every split (refused for a module its
    surrogate does not trust under ``trust``, unless ``allow_untrusted``)."""
    names = _producers(plan, producer)  # an unknown producer: an error naming the recipe's modules
    modules, cards = {}, {}
    for name in names:
        modules[name], cards[name] = load_module(workdir.modules, name, device)
    if not allow_untrusted:
        check_trusted(cards[producer], workdir.modules / f"{producer}.json", trust)
    interface = get_interface(cards[producer]["interface"])
    _, output = modules[producer].signature()
    for split_name in data.splits():
        split = data.split(split_name)
        attrs = _expected_attrs(workdir, plan, producer, split.fingerprint)
        path = workdir.cache(producer, split_name)
        if output is Prior:
            _write_question_cache(path, attrs, modules[producer], split, batch_size, device)
        else:
            mode = attention_mode({n: c["hyperparameters"] for n, c in cards.items()})
            _write_edge_cache(path, attrs, plan, producer, Executor(modules, interface, mode), data, split,
                              batch_size, device)


def _write_question_cache(path: Path, attrs: dict, module, split, batch_size: int, device: torch.device) -> None:
    """One value per question, computed from its tokens (the encoder's prior; FiLM's reads the image too)."""
    features = split.features() if reads_features(module) else None

    def blocks():
        with progress(range(0, len(split), batch_size), label=f"cache {module.name} {split.name}") as bar:
            for start in bar:
                rows = slice(start, start + batch_size)
                image = (torch.from_numpy(features.take(split.image_index[rows])).to(device).float()
                         if features is not None else None)
                with torch.no_grad():
                    value = run_prior(module, torch.from_numpy(split.tokens[rows]).long().to(device),
                                      torch.from_numpy(split.lengths[rows]).long(), image)
                yield start, {"value": value.float().cpu().numpy()}

    answers = module.dims["answers"]
    write_cache(path, attrs, len(split), {"value": ((answers,), "float32")}, blocks())


def _write_edge_cache(path: Path, attrs: dict, plan: Plan, producer: str, executor: Executor, data: PreparedData,
                      split, batch_size: int, device: torch.device) -> None:
    """The output of every frozen subtree the producer's cache holds, by (row, node)."""
    per_layout = {}
    rows, nodes, subtrees = [], [], []
    for row, layout_id in enumerate(split.layout):
        if layout_id < 0:
            continue
        if layout_id not in per_layout:
            per_layout[layout_id] = cached_edges(data.layouts[layout_id], plan, producer)
        for node, subtree in per_layout[layout_id]:
            rows.append(row)
            nodes.append(node)
            subtrees.append(subtree)
    rows, nodes = np.array(rows, np.int64), np.array(nodes, np.int64)
    order = np.argsort(edge_keys(rows, nodes), kind="stable")
    rows, nodes, subtrees = rows[order], nodes[order], [subtrees[i] for i in order]
    dims = data.dims()
    _, output = executor.modules[producer].signature()
    attention = output is executor.interface.attention
    shape = (dims["height"], dims["width"]) if attention else (dims["answers"],)
    columns = {"row": ((), "int32"), "node": ((), "int16"), "value": (shape, "float32")}
    if attention:
        columns["attended"] = ((dims["features"],), "float32")
    features = split.features() if len(rows) else None

    def blocks():
        with progress(range(0, len(rows), batch_size), label=f"cache {producer} {split.name}") as bar:
            for start in bar:
                stop = min(len(rows), start + batch_size)
                feats = torch.from_numpy(features.take(split.image_index[rows[start:stop]])).to(device).float()
                with torch.no_grad():
                    value = executor.run(subtrees[start:stop], feats)
                block = {"row": rows[start:stop], "node": nodes[start:stop], "value": value.float().cpu().numpy()}
                if attention:
                    block["attended"] = attend(feats, value, executor.attention_mode).float().cpu().numpy()
                yield start, block

    write_cache(path, attrs, len(rows), columns, blocks())

