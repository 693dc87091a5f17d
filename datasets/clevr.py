"""CLEVR v1.0 folders: read them tolerantly, write them exactly as released.

A CLEVR folder holds ``images/{split}/CLEVR_{split}_NNNNNN.png``,
``scenes/CLEVR_{split}_scenes.json`` and ``questions/CLEVR_{split}_questions.json``.
The reader accepts the variants found in the wild (the generator's raw ``type`` and
``side_inputs`` keys, raw bool/int answers, ``relations`` for ``relationships``, test
questions without answer or program); the writer emits only the released schema.
"""
from __future__ import annotations

import datetime
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modtrain.errors import ModtrainError
from modtrain.io import read_json, write_json

COLORS = ("gray", "red", "blue", "green", "brown", "purple", "cyan", "yellow")
SHAPES = ("cube", "sphere", "cylinder")
SIZES = ("small", "large")
MATERIALS = ("rubber", "metal")
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "color": COLORS,
    "shape": SHAPES,
    "size": SIZES,
    "material": MATERIALS,
}
RELATIONS = ("left", "right", "front", "behind")
LICENSE = "Creative Commons Attribution (CC BY 4.0)"

# Every CLEVR v1.0 function: (number of inputs, number of value inputs).
FUNCTIONS: dict[str, tuple[int, int]] = {
    "scene": (0, 0),
    "unique": (1, 0),
    "relate": (1, 1),
    "union": (2, 0),
    "intersect": (2, 0),
    "count": (1, 0),
    "exist": (1, 0),
    "equal_integer": (2, 0),
    "less_than": (2, 0),
    "greater_than": (2, 0),
    **{f"filter_{a}": (1, 1) for a in ATTRIBUTES},
    **{f"same_{a}": (1, 0) for a in ATTRIBUTES},
    **{f"query_{a}": (1, 0) for a in ATTRIBUTES},
    **{f"equal_{a}": (2, 0) for a in ATTRIBUTES},
}


@dataclass
class ProgramNode:
    """One step of a CLEVR functional program; ``inputs`` index earlier steps."""

    function: str
    inputs: list[int] = field(default_factory=list)
    value_inputs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"inputs": list(self.inputs), "function": self.function,
                "value_inputs": list(self.value_inputs)}


@dataclass
class Question:
    """A question; ``program`` and ``answer`` are None for unlabelled (test) questions."""

    question_index: int
    split: str
    image_index: int
    image_filename: str
    question: str
    program: list[ProgramNode] | None = None
    answer: str | None = None
    question_family_index: int | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"image_index": self.image_index}
        if self.program is not None:
            record["program"] = [node.to_json() for node in self.program]
        record["question_index"] = self.question_index
        record["image_filename"] = self.image_filename
        if self.question_family_index is not None:
            record["question_family_index"] = self.question_family_index
        record["split"] = self.split
        if self.answer is not None:
            record["answer"] = self.answer
        record["question"] = self.question
        return record


@dataclass
class Scene:
    """One image's objects and their pairwise relations.

    ``relationships[r][i]`` lists the objects that stand in relation ``r`` to object i
    (e.g. ``relationships["left"][i]``: the objects left of object i), as in CLEVR.
    """

    split: str
    image_index: int
    image_filename: str
    objects: list[dict[str, Any]]
    relationships: dict[str, list[list[int]]]
    directions: dict[str, list[float]] | None = None

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "split": self.split,
            "image_index": self.image_index,
            "image_filename": self.image_filename,
            "objects": self.objects,
            "relationships": self.relationships,
        }
        if self.directions is not None:
            record["directions"] = self.directions
        return record


def compact_program(*nodes: tuple) -> list[ProgramNode]:
    """Programs written by hand: ``compact_program(("scene",), ("filter_color", [0], ["red"]), ("count", [1]))``."""
    out = []
    for node in nodes:
        function, inputs, values = (list(node) + [[], []])[:3]
        out.append(ProgramNode(function, list(inputs), list(values)))
    return out


def image_filename(split: str, index: int) -> str:
    """CLEVR's image name: ``CLEVR_{split}_{index:06d}.png``."""
    return f"CLEVR_{split}_{index:06d}.png"


def normalize_answer(answer: Any) -> str:
    """Answers as released: "yes"/"no" for booleans, decimal strings for integers."""
    if isinstance(answer, bool):
        return "yes" if answer else "no"
    if isinstance(answer, int):
        return str(answer)
    if isinstance(answer, str):
        return answer
    raise ValueError(f"answer {answer!r} is neither a string, a boolean nor an integer")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_program(raw: Any, where: str) -> list[ProgramNode]:
    """Program nodes from JSON, accepting ``function``/``type`` and ``value_inputs``/``side_inputs``."""
    if not isinstance(raw, list) or not raw:
        raise ModtrainError(f"{where}: 'program' must be a non-empty list of nodes")
    nodes = []
    for i, node in enumerate(raw):
        if not isinstance(node, dict):
            raise ModtrainError(f"{where}: program node {i} is not an object")
        function = node.get("function", node.get("type"))
        if function is None:
            raise ModtrainError(f"{where}: program node {i} has neither 'function' nor 'type'")
        if function not in FUNCTIONS:
            raise ModtrainError(
                f"{where}: program node {i} has unknown function {function!r}; "
                f"valid: {', '.join(sorted(FUNCTIONS))}"
            )
        values = node.get("value_inputs", node.get("side_inputs", []))
        inputs = node.get("inputs", [])
        if not isinstance(inputs, list) or not all(_is_int(j) for j in inputs):
            raise ModtrainError(f"{where}: program node {i} ({function}) has inputs {inputs!r}; expected a list of "
                                f"indices of earlier nodes, e.g. [0]")
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise ModtrainError(f"{where}: program node {i} ({function}) has value_inputs {values!r}; expected a "
                                f"list of strings, e.g. [\"red\"]")
        n_inputs, n_values = FUNCTIONS[function]
        if len(inputs) != n_inputs or len(values) != n_values:
            raise ModtrainError(
                f"{where}: program node {i} ({function}) has {len(inputs)} inputs and "
                f"{len(values)} value inputs; it takes {n_inputs} and {n_values}"
            )
        for j in inputs:
            if not 0 <= j < i:
                raise ModtrainError(
                    f"{where}: program node {i} ({function}) has input {j!r}; inputs must "
                    f"index earlier nodes (0..{i - 1})"
                )
        nodes.append(ProgramNode(function, list(inputs), list(values)))
    return nodes


def parse_question(raw: Any, where: str, default_split: str) -> Question:
    """One question record, tolerant of the variants in the wild."""
    if not isinstance(raw, dict):
        raise ModtrainError(f"{where}: not a JSON object")
    for key in ("image_index", "question"):
        if key not in raw:
            raise ModtrainError(f"{where}: missing key {key!r}")
    split = raw.get("split", default_split)
    image_index = raw["image_index"]
    if not _is_int(image_index) or image_index < 0:
        raise ModtrainError(f"{where}: image_index {image_index!r} is not a non-negative integer")
    question_index = raw.get("question_index", -1)
    if not _is_int(question_index):
        raise ModtrainError(f"{where}: question_index {question_index!r} is not an integer")
    if not isinstance(raw["question"], str):
        raise ModtrainError(f"{where}: question {raw['question']!r} is not a string")
    program = parse_program(raw["program"], where) if raw.get("program") is not None else None
    answer = raw.get("answer")
    if answer is not None:
        try:
            answer = normalize_answer(answer)
        except ValueError as e:
            raise ModtrainError(f"{where}: {e}") from None
    return Question(
        question_index=question_index,
        split=split,
        image_index=image_index,
        image_filename=raw.get("image_filename", image_filename(split, image_index)),
        question=raw["question"],
        program=program,
        answer=answer,
        question_family_index=raw.get("question_family_index"),
    )


def parse_scene(raw: Any, where: str, default_split: str) -> Scene:
    """One scene record, accepting ``relationships`` or ``relations``."""
    if not isinstance(raw, dict):
        raise ModtrainError(f"{where}: not a JSON object")
    if "objects" not in raw:
        raise ModtrainError(f"{where}: missing key 'objects'")
    objects = raw["objects"]
    for j, obj in enumerate(objects):
        missing = [a for a in ATTRIBUTES if a not in obj]
        if missing:
            raise ModtrainError(f"{where}: object {j} lacks {', '.join(missing)}")
    relationships = raw.get("relationships", raw.get("relations"))
    if relationships is None:
        raise ModtrainError(f"{where}: missing key 'relationships' (or 'relations')")
    for rel in RELATIONS:
        if rel not in relationships:
            raise ModtrainError(
                f"{where}: relationships lack {rel!r}; expected {', '.join(RELATIONS)}"
            )
        if len(relationships[rel]) != len(objects):
            raise ModtrainError(
                f"{where}: relationships[{rel!r}] has {len(relationships[rel])} rows for "
                f"{len(objects)} objects"
            )
    split = raw.get("split", default_split)
    index = raw.get("image_index")
    if not isinstance(index, int):
        raise ModtrainError(f"{where}: image_index {index!r} is not an integer")
    return Scene(
        split=split,
        image_index=index,
        image_filename=raw.get("image_filename", image_filename(split, index)),
        objects=objects,
        relationships={rel: [list(r) for r in relationships[rel]] for rel in RELATIONS},
        directions=raw.get("directions"),
    )


def _records(path: Path, kind: str, split: str | None) -> tuple[list, str]:
    """The ``kind`` list of a CLEVR JSON file (questions or scenes) and the file's split."""
    data = read_json(path, f"{kind} file")
    records = data.get(kind) if isinstance(data, dict) else None
    if not isinstance(records, list):
        raise ModtrainError(f"{path}: expected an object with a '{kind}' list")
    return records, split or _split_from_name(path.name, kind)


def load_questions(path: str | Path, split: str | None = None) -> list[Question]:
    """All questions of a CLEVR questions file, in file order."""
    path = Path(path)
    records, split = _records(path, "questions", split)
    questions = []
    for i, raw in enumerate(records):
        q = parse_question(raw, f"{path}: question {i}", split)
        if q.question_index < 0:
            q.question_index = i
        questions.append(q)
    return questions


def load_scenes(path: str | Path, split: str | None = None) -> list[Scene]:
    """All scenes of a CLEVR scenes file, indexed by image index."""
    path = Path(path)
    records, split = _records(path, "scenes", split)
    scenes = [parse_scene(raw, f"{path}: scene {i}", split) for i, raw in enumerate(records)]
    for i, scene in enumerate(scenes):
        if scene.image_index != i:
            raise ModtrainError(
                f"{path}: scene {i} has image_index {scene.image_index}; scenes must be "
                f"stored in image order"
            )
    return scenes


def info_block(split: str, date: str | None = None) -> dict[str, str]:
    """The released ``info`` block."""
    date = date or datetime.date.today().strftime("%-m/%-d/%Y")
    return {"split": split, "license": LICENSE, "version": "1.0", "date": date}


def write_questions(path: str | Path, split: str, questions: list[Question], date: str | None = None) -> None:
    """Write a questions file in exactly the released CLEVR v1.0 format (atomically)."""
    write_json(path, {"info": info_block(split, date),
                      "questions": [q.to_json() for q in questions]}, indent=None)


def write_scenes(path: str | Path, split: str, scenes: list[Scene], date: str | None = None) -> None:
    """Write a scenes file in exactly the released CLEVR v1.0 format (atomically)."""
    write_json(path, {"info": info_block(split, date),
                      "scenes": [s.to_json() for s in scenes]}, indent=None)


def _split_from_name(name: str, kind: str) -> str:
    m = re.fullmatch(rf"CLEVR_(.+)_{kind}\.json", name)
    return m.group(1) if m else "unknown"


class ClevrFolder:
    """A CLEVR v1.0 folder on disk (a real CLEVR or one written by ``data generate``)."""

    kind = "clevr"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ModtrainError(f"data folder not found: {self.root}")

    def questions_path(self, split: str) -> Path:
        return self.root / "questions" / f"CLEVR_{split}_questions.json"

    def scenes_path(self, split: str) -> Path:
        return self.root / "scenes" / f"CLEVR_{split}_scenes.json"

    def image_dir(self, split: str) -> Path:
        return self.root / "images" / split

    def image_path(self, split: str, index: int) -> Path:
        return self.image_dir(split) / image_filename(split, index)

    def splits(self) -> list[str]:
        """Splits that have a questions file, train first, then val, then the rest."""
        found = [_split_from_name(p.name, "questions")
                 for p in sorted((self.root / "questions").glob("CLEVR_*_questions.json"))]
        if not found:
            raise ModtrainError(
                f"{self.root}: no questions/CLEVR_{{split}}_questions.json found; is this a "
                f"CLEVR v1.0 folder? (make one with 'modtrain data generate {self.root}')"
            )
        order = {"train": 0, "val": 1}
        return sorted(found, key=lambda s: (order.get(s.rstrip("AB"), 2), s))

    def num_images(self, split: str) -> int:
        """Images of a split: the PNG files in ``images/{split}``."""
        directory = self.image_dir(split)
        if not directory.is_dir():
            raise ModtrainError(f"image folder not found: {directory}")
        return sum(1 for _ in directory.glob(f"CLEVR_{split}_*.png"))

    def image_paths(self, split: str) -> list[Path]:
        """The image file of every row: CLEVR images are numbered 0..N−1."""
        n = self.num_images(split)
        paths = [self.image_path(split, i) for i in range(n)]
        missing = next((p for p in paths if not p.is_file()), None)
        if missing is not None:
            raise ModtrainError(f"{self.image_dir(split)} has {n} images but {missing.name} is missing; "
                                f"images must be numbered 0..{n - 1}")
        return paths

    def source_files(self, split: str) -> list[Path]:
        """The files a prepared split is made from (their hashes say whether it is up to date)."""
        return [self.questions_path(split)]

    def load_questions(self, split: str) -> list[Question]:
        return load_questions(self.questions_path(split), split)

    def load_scenes(self, split: str) -> list[Scene] | None:
        """Scenes of a split, or None where the split ships without them (CLEVR test)."""
        path = self.scenes_path(split)
        return load_scenes(path, split) if path.exists() else None

    def check_image_indices(self, split: str, questions: list[Question], num_images: int) -> None:
        """Stop at the first question whose image index is out of range."""
        for q in questions:
            if q.image_index >= num_images:
                raise ModtrainError(
                    f"{self.questions_path(split)}: question {q.question_index} refers to "
                    f"image {q.image_index}, but split {split!r} has {num_images} images "
                    f"(valid: 0..{num_images - 1})"
                )
