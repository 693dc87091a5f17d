"""Prepared data as modules see it: question arrays, the layout table, features.

Question arrays are small and loaded whole; features and caches are read in sorted
batches through ``H5Rows``, which opens its file lazily so that each DataLoader worker
gets its own handle (h5py handles cannot be pickled).

A training epoch's order: uniform when the data is held in memory; when the training split's
features are over the budget (``data.in_memory_bytes``) and so stream, batches are drawn from
windows of HDF5 chunks (``window_batches``), each window's rows read whole once, the next one
read ahead in a thread (``ReadAhead``). docs/formats.md says how far from uniform that is.
"""
from __future__ import annotations

import json
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property, partial
from pathlib import Path
from typing import Any, Callable

import h5py
import numpy as np

from modtrain.errors import ModtrainError
from modtrain.io import read_json, read_rows, sha256_json
from modtrain.layout import Layout, parse_layout

IN_MEMORY_BYTES = 1 << 30  # the default budget: a whole dataset smaller than this is read into memory
_budget = {"bytes": IN_MEMORY_BYTES}


def set_in_memory_bytes(budget: int) -> None:
    """The process's memory budget per features or cache dataset (the recipe's ``data.in_memory_bytes``,
    set by every job): one no larger is read whole on first use, a larger one is streamed by
    batches of rows (``read_rows``) and never held whole. One process runs one job at a time."""
    _budget["bytes"] = int(budget)


def in_memory_bytes() -> int:
    return _budget["bytes"]


class KeptBuffers:
    """Up to ``keep`` buffers, handed out again and again. ``get(shape)`` returns a view of a kept
    buffer that ``free(buffers, i)`` says nothing else refers to and that is large enough; else it
    keeps a new one (``make(shape)``) while fewer than ``keep`` are kept, or one in place of a free
    one too small; and returns None where every kept buffer is in use. The view it returns refers
    to its buffer before another thread can pick: while the caller holds it, the buffer is in use."""

    def __init__(self, keep: int, make: Callable, free: Callable[[list, int], bool]):
        self.keep, self.make, self.free = keep, make, free
        self.buffers: list = []
        self._lock = threading.Lock()

    def get(self, shape: tuple[int, ...]):
        with self._lock:
            buffers = self.buffers
            free = [i for i in range(len(buffers)) if self.free(buffers, i)]
            for i in free:
                if tuple(buffers[i].shape[1:]) == tuple(shape[1:]) and buffers[i].shape[0] >= shape[0]:
                    return buffers[i][:shape[0]]
            if len(buffers) < self.keep:
                buffers.append(self.make(shape))
                return buffers[-1][:shape[0]]
            if free:  # too small, or of another shape: a new one takes its place
                buffers[free[0]] = self.make(shape)
                return buffers[free[0]][:shape[0]]
            return None

    def clear(self) -> None:
        with self._lock:
            self.buffers = []


def _references(arrays: list, i: int) -> int:
    return sys.getrefcount(arrays[i])


def _unreferenced(arrays: list, i: int) -> bool:
    """Whether only the list refers to its i-th array (every numpy view of an array refers to it)."""
    return _references(arrays, i) == _ALONE


_ALONE = _references([np.empty(1)], 0)  # what _references says of an array only its list holds


class H5Rows:
    """Rows of one HDF5 dataset; ``take`` returns rows in the order asked for."""

    def __init__(self, path: str | Path, name: str, in_memory_bytes: int | None = None, fix: str = ""):
        """``fix``: the command that rebuilds the file, named in the error if it is corrupt;
        ``in_memory_bytes``: None for the process's budget (``set_in_memory_bytes``)."""
        self.path, self.name, self.in_memory_bytes, self.fix = Path(path), name, in_memory_bytes, fix
        self._file = None
        self._pid = None
        self._array = None
        self._held = []  # [(sorted rows, their values)]: the windows ``hold`` set, served without a read
        self._position = None  # file row → its place in the first held window, −1 where not held
        self._windows: KeptBuffers | None = None  # the arrays ``read`` fills, kept for the next windows
        if not self.path.exists():
            raise ModtrainError(f"file not found: {self.path}")
        try:
            with h5py.File(self.path, "r") as f:
                if name not in f:
                    raise ModtrainError(f"{self.path}: no dataset {name!r} (found: {', '.join(f) or 'nothing'})")
                self.shape, self.dtype = f[name].shape, f[name].dtype
                # rows per HDF5 chunk: what one read from disk brings in at least
                self.chunk_rows = f[name].chunks[0] if f[name].chunks else max(1, self.shape[0])
        except OSError as e:
            raise ModtrainError(f"{self.path} cannot be read ({str(e).splitlines()[0]}): corrupt or truncated"
                                f"{'; ' + self.fix if self.fix else ''}") from None

    def __len__(self) -> int:
        return self.shape[0]

    @cached_property
    def nbytes(self) -> int:  # asked per batch (``streams``): the shape does not change
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize

    def streams(self) -> bool:
        """Whether it is over the budget: read by batches of rows, never whole."""
        if self._array is not None:
            return False
        return self.nbytes > (self.in_memory_bytes if self.in_memory_bytes is not None else _budget["bytes"])

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None, "_array": None, "_held": [], "_position": None,
                "_windows": None}

    def _dataset(self):
        if self._file is None or self._pid != os.getpid():
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.name]

    def resident(self, rows: np.ndarray) -> tuple[list[np.ndarray], np.ndarray, np.ndarray] | None:
        """(arrays, which, positions): the batch's row j is ``arrays[which[j]][positions[j]]`` (which:
        None where there is one array), where
        all of its rows are in memory: the dataset held whole (read whole here if under the
        budget) or the windows ``hold`` set (a batch may straddle two); None where a read from disk
        is needed (``take`` does it)."""
        rows = np.asarray(rows, dtype=np.int64)
        if self._array is not None:  # held whole: no HDF5 call at all on the hot path
            return [self._array], None, rows
        if self._held and len(rows):
            at = self._position[rows]
            if (at >= 0).all():  # the whole batch in the first window: one gather
                return [self._held[0][1]], None, at
            which = np.full(len(rows), -1, np.int64)
            for k, (held_rows, _) in enumerate(self._held):  # a batch that straddles two windows
                if not len(held_rows):
                    continue
                place = np.minimum(np.searchsorted(held_rows, rows), len(held_rows) - 1)
                hit = (held_rows[place] == rows) & (which < 0)
                which[hit], at[hit] = k, place[hit]
            return ([values for _, values in self._held], which, at) if (which >= 0).all() else None
        if not self._held and not self.streams():
            self._array = self._read(None)
            return [self._array], None, rows
        return None

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        found = self.resident(rows)
        if found is None:
            unique, inverse = np.unique(rows, return_inverse=True)
            return self._read(unique)[inverse]
        arrays, which, at = found
        if which is None:
            return np.take(arrays[0], at, axis=0)  # numpy's take: half the time of an index here
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        for k, values in enumerate(arrays):
            mine = which == k
            out[mine] = values[at[mine]]
        return out

    def read(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The given rows read from disk (each touched chunk once), sorted and unique, with their
        values: what ``hold`` takes. Safe in another thread (h5py serializes its calls).

        The values are written into a buffer kept from an earlier ``read`` once nothing refers to
        it any more (no window held, no view of it alive): a window is hundreds of MB for ResNet
        features, and a new one each time made the kernel fault in its pages (~5× the read of a
        window of 1024 × 14 × 14 float16 rows on this machine)."""
        unique = np.unique(np.asarray(rows, dtype=np.int64))
        if self._windows is None:
            self._windows = KeptBuffers(self.WINDOW_BUFFERS, partial(np.empty, dtype=self.dtype), _unreferenced)
        # None where every kept array is in use: read_rows makes a new one, not kept
        return unique, self._read(unique, self._windows.get((len(unique), *self.shape[1:])))

    WINDOW_BUFFERS = 3  # the window in use, the next one, and the one being read

    def release_windows(self) -> None:
        """Let go of the arrays kept for windows (at the end of an epoch: validation and what
        follows do not need them)."""
        if self._windows is not None:
            self._windows.clear()

    def hold(self, windows: list[tuple[np.ndarray, np.ndarray]]) -> None:
        """Serve ``take``s of these rows from memory (each window: the rows and values ``read``
        returned); a batch with a row outside them is read from disk as before. []: hold nothing."""
        if self._held:
            self._position[self._held[0][0]] = -1
        self._held = list(windows)
        if self._held:  # each row's place in the first window (−1: not in it)
            if self._position is None:
                self._position = np.full(self.shape[0], -1, np.int64)
            self._position[self._held[0][0]] = np.arange(len(self._held[0][0]))

    def _read(self, rows: np.ndarray | None, out: np.ndarray | None = None) -> np.ndarray:
        try:
            dataset = self._dataset()
            return dataset[()] if rows is None else read_rows(dataset, rows, out)
        except OSError as e:  # a chunk whose checksum fails, a truncated file
            raise ModtrainError(f"{self.path} cannot be read ({str(e).splitlines()[0]}): corrupt or truncated"
                                f"{'; ' + self.fix if self.fix else ''}") from None


def features_identity(path: Path) -> dict | None:
    """What identifies a features file without reading it: its backbone's weights hash and the
    hash of its values that ``data features`` records (for a file from elsewhere, without one,
    its size and modification time), or None where there is no such file."""
    if not path.exists():
        return None
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: f.attrs.get(k) for k in ("backbone_sha256", "features_sha256")}
    except OSError as e:
        raise ModtrainError(f"{path}: not a readable HDF5 file ({e}); run 'modtrain data features "
                            f"{path.parent.parent}' to extract it again") from None
    identity = {k: None if v is None else str(v) for k, v in attrs.items()}
    if identity["features_sha256"] is None:
        stat = path.stat()
        identity.update(size=stat.st_size, mtime_ns=stat.st_mtime_ns)
    return identity


@dataclass
class SplitData:
    """One prepared split: every array of ``{split}.h5`` in memory, and its attrs."""

    name: str
    arrays: dict[str, np.ndarray]
    attrs: dict
    features_path: Path
    features_identity: dict | None = None

    def __len__(self) -> int:
        return len(self.arrays["answer"])

    def __getattr__(self, key):
        arrays = self.__dict__.get("arrays", {})
        if key in arrays:
            return arrays[key]
        raise AttributeError(key)

    def trainable(self, max_depth: int | None = None) -> np.ndarray:
        """Which questions a job may train or stop on: labelled with an answer of the answer set (not
        ``<UNK>``, id 0: a VQA answer outside the set, a CLEVR answer never seen in training) and, with
        ``max_depth``, of program depth ≤ it (questions without a program have depth −1 and stay)."""
        keep = self.arrays["answer"] > 0
        if max_depth is not None:
            keep &= self.arrays["depth"] <= max_depth
        return keep

    @property
    def fingerprint(self) -> str:
        """The questions and vocabulary (prepare's fingerprint) and the features they are asked about."""
        return sha256_json([str(self.attrs["data_fingerprint"]), self.features_identity])

    def features(self) -> H5Rows:
        """The split's image features, checked to cover every image its questions refer to."""
        fix = f"run 'modtrain data features {self.features_path.parent.parent}'"
        if not self.features_path.exists():
            raise ModtrainError(f"{self.features_path} not found; {fix}")
        rows = H5Rows(self.features_path, "features", fix=fix)
        needed = int(self.arrays["image_index"].max()) + 1 if len(self) else 0
        if len(rows) < needed:
            raise ModtrainError(f"{self.features_path} has {len(rows)} rows, but questions of split {self.name!r} "
                                f"refer to image {needed - 1}; the features are not this split's ({fix})")
        return rows


def folder_splits(root: str | Path, format: str | None = None) -> list[str]:
    """The split names of a data folder, training splits first: those of its questions files (a
    CLEVR v1.0 or VQA v1 folder, ``format`` or detected), else its prepared ``{split}.h5``."""
    from modtrain.datasets.folders import open_folder

    root = Path(root)
    if not root.is_dir():
        raise ModtrainError(f"data folder not found: {root}")
    try:
        return open_folder(root, format).splits()
    except ModtrainError:
        if not (root / "vocab.json").exists():
            raise
        return PreparedData.split_names(root)


class PreparedData:
    """A data folder after ``modtrain data prepare``: vocabulary, layouts, splits."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.vocab = read_json(self.root / "vocab.json", "vocabulary (run 'modtrain data prepare')")
        self.vocab_sha256 = sha256_json(self.vocab)
        self.layouts: list[Layout] = [parse_layout(text) for text in self.vocab["layouts"]]
        self.answers: list[str] = sorted(self.vocab["answers"], key=self.vocab["answers"].get)
        self._splits: dict[str, SplitData] = {}
        self._dims: dict[str, Any] | None = None  # dims(), read once
        self.features = {p.stem: features_identity(p) for p in sorted((self.root / "features").glob("*.h5"))}
        backbones = {name: f["backbone_sha256"] for name, f in self.features.items() if f and f["backbone_sha256"]}
        first = next(iter(backbones), None)
        other = next((n for n in backbones if backbones[n] != backbones[first]), None)
        if other is not None:
            raise ModtrainError(f"{self.root / 'features'}: {first}.h5 was extracted by backbone "
                                f"{backbones[first][:12]} but {other}.h5 by {backbones[other][:12]}; every split "
                                f"must come from one backbone: run 'modtrain data features {self.root}'")

    def splits(self) -> list[str]:
        return self.split_names(self.root)

    @staticmethod
    def split_names(root: Path) -> list[str]:
        """The prepared splits in a folder (its ``{split}.h5``), train first, then val, then the rest."""
        names = [p.stem for p in sorted(Path(root).glob("*.h5"))]
        order = {"train": 0, "val": 1}
        return sorted(names, key=lambda s: (order.get(s, 2), s))

    def split(self, name: str) -> SplitData:
        if name not in self._splits:
            path = self.root / f"{name}.h5"
            if not path.exists():
                try:
                    known = folder_splits(self.root)
                except ModtrainError:
                    known = self.splits()
                if name not in known:  # no such split at all: preparing would not make one
                    from modtrain.recipe import SPLIT_KEYS

                    raise ModtrainError(f"{self.root} has no split {name!r}; its splits: {', '.join(known) or 'none'}; "
                                        f"choose with {SPLIT_KEYS} (or assemble --split)")
                raise ModtrainError(f"{path} not found; run 'modtrain data prepare {self.root}' "
                                    f"(prepared splits: {', '.join(self.splits()) or 'none'})")
            with h5py.File(path, "r") as f:
                arrays = {k: f[k][()] for k in f}
                attrs = dict(f.attrs)
            if attrs.get("vocab_sha256") != self.vocab_sha256:
                raise ModtrainError(f"{path} was prepared with another vocab.json; "
                                    f"run 'modtrain data prepare {self.root}' again")
            from modtrain.datasets.prepare import SCHEMA_VERSION

            if attrs.get("schema_version") != SCHEMA_VERSION:
                raise ModtrainError(f"{path} was prepared by an older modtrain (schema {attrs.get('schema_version')}, "
                                    f"now {SCHEMA_VERSION}: layouts changed); "
                                    f"run 'modtrain data prepare {self.root}' again")
            self._splits[name] = SplitData(name, arrays, attrs, self.root / "features" / f"{name}.h5",
                                           self.features.get(name))
        return self._splits[name]

    def fingerprint(self, train: str = "train", val: str = "val") -> str:
        """One hash for the data a module trains and validates on."""
        return sha256_json([self.split(s).fingerprint for s in (train, val)])

    def dims(self) -> dict[str, Any]:
        """Dimensions modules are built with: features C, height, width, answers, tokens;
        ``attribute_channels``, which channels serve which attribute where the features say so
        (clevr-cnn --pretrain-split; else None); ``attribute_tokens``, the question tokens that
        name each attribute's values. Read once (every job asks several times)."""
        if self._dims is None:
            split = self.split(self.splits()[0])
            shape = split.features().shape
            with h5py.File(split.features_path, "r") as f:
                groups = f.attrs.get("attribute_channels")
            self._dims = {"features": shape[1], "height": shape[2], "width": shape[3],
                          "answers": len(self.vocab["answers"]), "tokens": len(self.vocab["question_tokens"]),
                          "attribute_channels": json.loads(groups) if groups is not None else None,
                          "attribute_tokens": self.attribute_tokens()}
        return dict(self._dims)

    def attribute_tokens(self) -> dict[str, list[int]]:
        """Per attribute, the ids of the question tokens that name one of its values (``cubes`` and
        ``blocks`` name a shape): what an encoder blind to attribute values reads as one word."""
        from modtrain.datasets.families import value_words

        words = value_words()
        groups: dict[str, list[int]] = {}
        for word, i in sorted(self.vocab["question_tokens"].items(), key=lambda item: item[1]):
            if word in words:
                groups.setdefault(words[word], []).append(int(i))
        return groups


def shuffled_batches(rows: np.ndarray, batch_size: int, seed: int | None, epoch: int = 0) -> list[np.ndarray]:
    """Rows cut into batches; reshuffled every epoch from (seed, epoch) when ``seed`` is given."""
    rows = np.asarray(rows)
    if seed is not None:
        rows = np.random.default_rng([seed, epoch]).permutation(rows)
    return [rows[i:i + batch_size] for i in range(0, len(rows), batch_size)]


def sample_order(settings, data: "PreparedData") -> dict | None:
    """The training order a recipe's ``[data]`` settings give on this data: None for uniform, else
    the window order's number of chunks (``window_batches``): ``shuffle_window``, or as many
    chunks of the training features as fill a quarter of ``in_memory_bytes`` (two windows are held
    at a time: the one training, the one read ahead). Part of every job key."""
    if settings.shuffle == "uniform":
        return None
    path = data.split(settings.train_split).features_path
    features = H5Rows(path, "features") if path.exists() else None
    if settings.shuffle == "auto" and (features is None or features.nbytes <= settings.in_memory_bytes):
        return None
    window = settings.shuffle_window
    if window is None:
        chunk_bytes = features.nbytes // max(1, len(features)) * features.chunk_rows if features else 1 << 20
        window = max(1, settings.in_memory_bytes // 4 // max(1, chunk_bytes))
    return {"window_chunks": int(window)}


Unit = tuple[list[np.ndarray], np.ndarray]  # batches, and the rows of the window they are drawn from


def window_batches(rows: np.ndarray, blocks: np.ndarray, batch_size: int, seed: int, epoch: int,
                   window: int) -> list[Unit]:
    """An epoch's batches for streamed data, grouped by the window they are drawn from.

    ``blocks[i]``: the storage chunk row ``rows[i]`` reads. The chunks are shuffled (from seed
    and epoch); every ``window`` consecutive chunks of that order form a window, whose rows are
    shuffled among themselves and cut into batches, windows one after the other (a batch that
    straddles two windows belongs to the first). Returns (batches, the window's rows) per window:
    reading a window is one pass over its chunks."""
    rows, blocks = np.asarray(rows), np.asarray(blocks)
    if len(rows) == 0:
        return []
    rng = np.random.default_rng([seed, epoch])
    # each row's chunk as its rank among the chunks present (np.unique's, without a sort: this runs
    # every epoch, and for describe at 16× it was about a sixth of the epoch's data path)
    present = np.zeros(int(blocks.max()) + 2, bool)
    present[blocks + 1] = True  # −1 (a row that reads nothing) is a chunk of its own, first
    count = int(present.sum())
    position = (np.cumsum(present) - 1)[blocks + 1]
    rank = np.empty(count, np.int64)
    rank[rng.permutation(count)] = np.arange(count)
    of_window = rank[position] // max(1, window)
    shuffled = rng.permutation(len(rows))  # then grouped by window, keeping the shuffle inside each
    keys = of_window[shuffled]  # a stable sort of 16-bit keys is a radix sort: same order, faster
    order = shuffled[np.argsort(keys.astype(np.uint16) if keys.max() < 1 << 16 else keys, kind="stable")]
    stream, windows = rows[order], of_window[order]
    bounds = np.searchsorted(windows, np.arange(windows[-1] + 2))
    units: list[Unit] = []
    for start in range(0, len(stream), batch_size):
        if not units or windows[start] != windows[start - batch_size]:
            w = windows[start]
            units.append(([], stream[bounds[w]:bounds[w + 1]]))
        units[-1][0].append(stream[start:start + batch_size])
    return units


class ReadAhead:
    """Batches of units read ahead: while the batches of one window are used, a thread reads the
    next window's rows of every streamed source (``reads(rows)`` → [(source, rows)]) and each
    source holds them in memory; a batch that straddles two windows is served from both. With
    ``reads`` None (nothing streams) it just yields the batches."""

    def __init__(self, units: list[Unit], reads, on_end: Callable[[], None] | None = None):
        """``on_end``: called when the batches end (all used, or the loop left): what the epoch kept
        for its batches can go."""
        self.units, self.reads, self.on_end = units, reads, on_end
        self._read_from: set = set()  # the sources read: their window arrays go at the end

    def __len__(self) -> int:
        return sum(len(batches) for batches, _ in self.units)

    def _fetch(self, unit: Unit):
        reads = self.reads(unit[1])
        self._read_from.update(source for source, _ in reads)
        return [(source, source.read(rows)) for source, rows in reads]

    def __iter__(self):
        try:
            yield from self._batches()
        finally:
            for source in self._read_from:
                source.release_windows()
            if self.on_end is not None:
                self.on_end()

    def _batches(self):
        if self.reads is None:
            for batches, _ in self.units:
                yield from batches
            return
        current = []  # [(source, its window)] of the unit being used
        with ThreadPoolExecutor(1, thread_name_prefix="read-ahead") as pool:
            coming = pool.submit(self._fetch, self.units[0]) if self.units else None
            try:
                for i, (batches, _) in enumerate(self.units):
                    current = coming.result()
                    coming = pool.submit(self._fetch, self.units[i + 1]) if i + 1 < len(self.units) else None
                    for source, window in current:
                        source.hold([window])
                    yield from batches[:-1]
                    if coming is not None:  # the last batch may reach into the next window (same sources)
                        for (source, window), (_, following) in zip(current, coming.result()):
                            source.hold([window, following])
                    yield batches[-1]
            finally:
                if coming is not None:
                    coming.cancel()
                for source, _ in current:
                    source.hold([])
