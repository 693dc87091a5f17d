"""``modtrain data prepare``: questions → vocabularies and ``{split}.h5`` arrays.

Vocabularies (question tokens, answers, module instances) are built on train only and
saved in ``vocab.json``; unknown words become ``<UNK>``. The layout table holds every
distinct layout of every split, since layouts unseen in training are what compositional
generalization is tested on. Each ``{split}.h5`` row is aligned with the questions file.
"""
from __future__ import annotations

import logging
import re
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import h5py
import numpy as np
from modtrain.datasets.clevr import Question
from modtrain.datasets.executor import QUESTION_TYPES, program_depth, question_type, relate_hops
from modtrain.datasets.features import features_path, validate_features
from modtrain.datasets.layouts import program_to_layout

from modtrain.errors import ModtrainError
from modtrain.io import atomic_path, read_json, sha256_file, sha256_json, write_json

log = logging.getLogger(__name__)
# 2: CLEVR's scene becomes the learned find[*all*] in layouts (1: a constant all-ones map)
SCHEMA_VERSION = 2
SPECIAL_TOKENS = ("<NULL>", "<UNK>")
PAD, UNK = 0, 1
UNK_ANSWER = "<UNK>"
NO_ANSWER = -1  # unlabelled question: usable for prediction, skipped for accuracy
CHUNK_ROWS = 1024
_KEEP = re.compile(r"[;,]")
_DROP = re.compile(r"[?.!]")


def tokenize(text: str) -> list[str]:
    """Lower-case words; ``;`` and ``,`` are tokens, ``?``, ``.`` and ``!`` are dropped."""
    text = _DROP.sub(" ", _KEEP.sub(lambda m: f" {m.group(0)} ", text.lower()))
    return text.split()


def build_vocab(train: list[Question]) -> dict:
    """Token, answer and module-instance vocabularies from the training questions."""
    instances: dict[str, set[str]] = defaultdict(set)
    for q in train:
        if q.program is not None:
            for module, instance in program_to_layout(q.program).instances():
                instances[module].add(instance)
    return make_vocab(Counter(t for q in train for t in tokenize(q.question)),
                      sorted({q.answer for q in train if q.answer is not None}), instances, QUESTION_TYPES)


def make_vocab(tokens: Counter, answers: list[str], instances: dict[str, set[str]], question_types) -> dict:
    """vocab.json's tables: tokens (after the special ones), answers (after ``<UNK>``), each module's
    instances, the names of the question types; the layouts are filled in as splits are encoded."""
    return {
        "schema_version": SCHEMA_VERSION,
        "question_tokens": {t: i for i, t in enumerate([*SPECIAL_TOKENS, *sorted(tokens)])},
        "answers": {a: i for i, a in enumerate([UNK_ANSWER, *answers])},
        "instances": {m: sorted(v) for m, v in sorted(instances.items())},
        "question_types": list(question_types),
        "layouts": [],
    }


def question_arrays(texts: list[str], vocab: dict) -> dict[str, np.ndarray]:
    """The arrays every prepared split has, from its question texts: tokens (padded) and lengths
    encoded, the others unknown (−1) until a format's encoder fills them in."""
    n = len(texts)
    token_ids = vocab["question_tokens"]
    encoded = [[token_ids.get(t, UNK) for t in tokenize(text)] for text in texts]
    arrays = {
        "tokens": np.full((n, max(1, max((len(e) for e in encoded), default=1))), PAD, np.int32),
        "lengths": np.array([len(e) for e in encoded], np.int32),
        "answer": np.full(n, NO_ANSWER, np.int32),
        "layout": np.full(n, -1, np.int32),
        "question_type": np.full(n, -1, np.int8),
        "depth": np.full(n, -1, np.int16),
        "length": np.full(n, -1, np.int16),
        "hops": np.full(n, -1, np.int16),
        "family": np.full(n, -1, np.int16),
    }
    for i, ids in enumerate(encoded):
        arrays["tokens"][i, :len(ids)] = ids
    return arrays


def encode_split(questions: list[Question], vocab: dict, layout_ids: dict[str, int]) -> dict[str, np.ndarray]:
    """Arrays of one split; new layouts are appended to ``layout_ids``."""
    answer_ids = vocab["answers"]
    arrays = question_arrays([q.question for q in questions], vocab)
    arrays["image_index"] = np.array([q.image_index for q in questions], np.int32)
    arrays["question_index"] = np.array([q.question_index for q in questions], np.int32)
    for i, q in enumerate(questions):
        if q.answer is not None:
            arrays["answer"][i] = answer_ids.get(q.answer, answer_ids[UNK_ANSWER])
        if q.question_family_index is not None:
            arrays["family"][i] = q.question_family_index
        if q.program is not None:
            layout = str(program_to_layout(q.program))
            arrays["layout"][i] = layout_ids.setdefault(layout, len(layout_ids))
            arrays["question_type"][i] = QUESTION_TYPES.index(question_type(q.program))
            arrays["depth"][i] = program_depth(q.program)
            arrays["length"][i] = len(q.program)
            arrays["hops"][i] = relate_hops(q.program)
    return arrays


def write_split(path: Path, arrays: dict[str, np.ndarray], attrs: dict) -> None:
    """One ``{split}.h5``, chunked by blocks of rows, written atomically."""
    n = len(arrays["answer"])
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        for name, array in arrays.items():
            chunks = (max(1, min(n, CHUNK_ROWS)), *array.shape[1:]) if n else None
            f.create_dataset(name, data=array, chunks=chunks,  # (HDF5 filters cannot check variable-length strings)
                             fletcher32=chunks is not None and array.dtype.kind != "O")
        for key, value in attrs.items():
            f.attrs[key] = value


def prepare(data_dir: str | Path, out_dir: str | Path | None = None, vocab_split: str | None = None,
            answers: int = 1000, min_instance_count: int = 3, format: str | None = None) -> dict:
    """Write ``vocab.json`` and ``{split}.h5`` for every split of a CLEVR or VQA folder (detected);
    returns a summary, also written to ``prepare.json``. The vocabularies are built on ``vocab_split``
    (default: the first split whose name starts with train). VQA only: the answer set is the
    ``answers`` most frequent training answers, and a module instance (a parse word) seen fewer than
    ``min_instance_count`` times in training becomes ``<UNK>``. ``format``: clevr or vqa (None: detected)."""
    from modtrain.datasets.folders import open_folder

    folder = open_folder(data_dir, format)
    out = Path(out_dir) if out_dir is not None else folder.root
    splits = folder.splits()
    if vocab_split is not None and vocab_split not in splits:
        raise ModtrainError(f"--vocab-split {vocab_split!r}: {folder.root} has no such split; its splits: "
                            f"{', '.join(splits)}")
    train_split = vocab_split or next((s for s in splits if s.startswith("train")), None)
    if train_split is None:
        raise ModtrainError(
            f"{folder.root}: no training split "
            f"(e.g. {folder.questions_path(splits[0]).name.replace(splits[0], 'train')}); "
            f"vocabularies are built on the training split only (name another with --vocab-split)"
        )
    num_images = {s: _num_images(folder, s) for s in splits}  # a features file must agree with the images
    if folder.kind == "vqa":
        from modtrain.datasets.vqa_prepare import encode_vqa

        vocab, encoded, counts = encode_vqa(folder, splits, train_split, answers, min_instance_count)
    else:
        questions = {s: folder.load_questions(s) for s in splits}
        for split, qs in questions.items():
            check_not_empty(folder, split, len(qs))
            folder.check_image_indices(split, qs, num_images[split])
        vocab = build_vocab(questions[train_split])
        layout_ids: dict[str, int] = {}
        encoded = {s: encode_split(questions[s], vocab, layout_ids) for s in splits}
        vocab["layouts"] = list(layout_ids)
        counts = {}
    write_json(out / "vocab.json", vocab)
    vocab_hash = sha256_json(vocab)
    summary = {"format": folder.kind, "vocab": {"split": train_split, "question_tokens": len(vocab["question_tokens"]),
                                                "answers": len(vocab["answers"]), "layouts": len(vocab["layouts"])},
               "splits": {}}
    for split in splits:
        arrays = encoded[split]
        unlabelled = int((arrays["answer"] == NO_ANSWER).sum())
        if unlabelled:
            warnings.warn(f"{split}: {unlabelled} of {len(arrays['answer'])} questions have no answer; "
                          f"usable for prediction, skipped for accuracy", stacklevel=2)
        sources_hash = sources_sha256(folder, split)
        write_split(out / f"{split}.h5", arrays, {
            "schema_version": SCHEMA_VERSION, "split": split, "vocab_sha256": vocab_hash,
            "questions_sha256": sources_hash,
            "data_fingerprint": sha256_json([vocab_hash, sources_hash]),
        })
        summary["splits"][split] = {"questions": len(arrays["answer"]), "unlabelled": unlabelled,
                                    "max_tokens": int(arrays["tokens"].shape[1]), **counts.get(split, {})}
    write_json(out / "prepare.json", summary)
    return summary


def sources_sha256(folder, split: str) -> str:
    """One hash of the files a split is prepared from (a CLEVR split: its questions file's hash)."""
    files = folder.source_files(split)
    hashes = [sha256_file(p) for p in files]
    return hashes[0] if len(hashes) == 1 else sha256_json([[p.name, h] for p, h in zip(files, hashes)])


def check_not_empty(folder, split: str, n: int) -> None:
    if not n:
        raise ModtrainError(f"{folder.questions_path(split)}: the questions list is empty; every split needs "
                            f"at least one question (or remove the file)")


def _num_images(folder, split: str) -> int:
    """Images of a split; a features file must agree with the image folder (a VQA split: with its
    questions' image ids) when both exist."""
    path = features_path(folder.root, split)
    known = folder.kind == "vqa" or folder.image_dir(split).is_dir()
    if path.exists():
        return validate_features(path, folder.num_images(split) if known else None,
                                 folder.image_ids(split) if folder.kind == "vqa" else None)[0]
    return folder.num_images(split)


def load_vocab(data_dir: str | Path) -> dict:
    """The ``vocab.json`` written by prepare."""
    path = Path(data_dir) / "vocab.json"
    if not path.exists():
        raise ModtrainError(f"{path} not found; run 'modtrain data prepare {data_dir}' first")
    return read_json(path, "vocabulary")
