"""VQA v1 questions and annotations with the NMN's ``.sps2`` parser layouts.

A ``.sps2`` file has one line per question (in questions-file order) holding one or more
``;``-separated S-expressions from the Stanford-parser pipeline of Andreas et al. (2016),
e.g. ``(is (and car show))``. They become layouts by the original NMN's rules: leaves →
``find``, ``and`` → ``and``, and the root → ``measure`` for yes/no questions and
``describe`` otherwise, its instance being the root word.
"""
from __future__ import annotations

import functools
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from modtrain.datasets.layouts import SCENE

from modtrain.errors import ModtrainError
from modtrain.io import read_json
from modtrain.layout import Layout

SExpr = Union[str, tuple["SExpr", ...]]

# Root words the NMN parser emits for yes/no questions, used when no annotation says so.
YES_NO_HEADS = frozenset({"is"})


def parse_sexpr(text: str) -> SExpr:
    """Parse one S-expression: ``(is (and car show))`` → ``("is", ("and", "car", "show"))``."""
    tokens = re.findall(r"\(|\)|[^\s()]+", text)
    if not tokens:
        raise ValueError("empty S-expression")
    pos = 0

    def read() -> SExpr:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError("unbalanced parentheses")
        token = tokens[pos]
        pos += 1
        if token == ")":
            raise ValueError("unexpected ')'")
        if token != "(":
            return token
        items = []
        while pos < len(tokens) and tokens[pos] != ")":
            items.append(read())
        if pos >= len(tokens):
            raise ValueError("unbalanced parentheses")
        pos += 1
        if not items:
            raise ValueError("empty '()'")
        return tuple(items)

    expr = read()
    if pos != len(tokens):
        raise ValueError(f"text after the expression: {' '.join(tokens[pos:])!r}")
    return expr


def parse_sps2_line(line: str) -> list[SExpr]:
    """All ``;``-separated parses on one ``.sps2`` line, best first."""
    return [parse_sexpr(part) for part in line.strip().split(";") if part.strip()]


def _and_all(parts: list[Layout]) -> Layout:
    result = parts[0]
    for part in parts[1:]:
        result = Layout("and", None, (result, part))
    return result


def _or_all(parts: list[Layout]) -> Layout:
    result = parts[0]
    for part in parts[1:]:
        result = Layout("or", None, (result, part))
    return result


def _attention(expr: SExpr) -> Layout:
    # Leaves are find; ``and`` is and. Another internal word restricts its arguments'
    # attention to itself: ``(color bus)`` → and(find[color], find[bus]).
    if isinstance(expr, str):
        return Layout("find", expr)
    head, args = expr[0], [_attention(a) for a in expr[1:]]
    if not isinstance(head, str):
        raise ValueError("an expression must start with a word")
    if head in ("and", "or"):  # the parser emits only and; modtrain's generator also writes or
        if not args:
            raise ValueError(f"{head!r} without arguments")
        return _and_all(args) if head == "and" else _or_all(args)
    return _and_all([Layout("find", head), *args]) if args else Layout("find", head)


def parse_to_layout(expr: SExpr, yes_no: bool | None = None) -> Layout:
    """The NMN layout of a parse; ``yes_no`` None means: decide by the root word."""
    if isinstance(expr, str):
        head, args = expr, []
    else:
        head, args = expr[0], list(expr[1:])
        if not isinstance(head, str):
            raise ValueError("an expression must start with a word")
    if yes_no is None:
        yes_no = head in YES_NO_HEADS
    attention = _and_all([_attention(a) for a in args]) if args else SCENE  # (what): the whole scene
    return Layout("measure" if yes_no else "describe", head, (attention,))


# The official VQA evaluation's answer processing and accuracy, re-implemented: vqaEval.py of the
# VQA team (github.com/GT-Vision-Lab/VQA) at its commit a013f00 ("Fixed processing answers bug",
# 2021). Its tables are data, in one place: vqa_eval_tables.json.
VQA_EVAL_TABLES = Path(__file__).with_name("vqa_eval_tables.json")


def _load_tables(path: Path) -> dict:
    try:
        tables = json.loads(path.read_text(encoding="utf-8"))
        if not all(key in tables for key in ("articles", "numbers", "punctuation", "contractions")):
            raise ValueError
    except (OSError, ValueError):
        raise ModtrainError(f"{path}: missing or not the VQA evaluation tables (a JSON object with articles, numbers, "
                            f"punctuation and contractions); reinstall modtrain") from None
    return tables


@functools.cache
def _tables() -> dict:
    """The tables, read once when first needed (nothing is read at import)."""
    tables = _load_tables(VQA_EVAL_TABLES)
    return {"articles": frozenset(tables["articles"]), "numbers": dict(tables["numbers"]),
            "contractions": dict(tables["contractions"]), "punctuation": tuple(tables["punctuation"])}


_COMMA_IN_NUMBER = re.compile(r"\d,\d")
# The official pattern is "(?!<=\d)(\.)(?!\d)": its "(?!<=" is a lookahead, not the lookbehind it
# looks like, and never fails before a period; so: a period not starting a decimal part (5. → 5, 3.5 stays).
_PERIOD = re.compile(r"\.(?!\d)")
# The official call is periodStrip.sub("", text, re.UNICODE): the flag lands on sub's count
# argument (re.UNICODE == 32), so only the first 32 such periods go.
_PERIODS_REMOVED = int(re.UNICODE)


def _whitespace(text: str) -> str:
    # Applied to every answer, human or predicted, before anything else (newlines and tabs → spaces).
    return text.replace("\n", " ").replace("\t", " ").strip()


@functools.lru_cache(maxsize=1 << 16)
def _punctuation(text: str) -> str:
    # A mark touching a space in the text as given, or any mark when the text has a number with a
    # thousands comma, is dropped; another mark becomes a space (t-shirt → t shirt).
    out = text
    for mark in _tables()["punctuation"]:
        glued = (mark + " " in text or " " + mark in text) or _COMMA_IN_NUMBER.search(text) is not None
        out = out.replace(mark, "" if glued else " ")
    return _PERIOD.sub("", out, count=_PERIODS_REMOVED)


@functools.lru_cache(maxsize=1 << 16)
def _digits_and_articles(text: str) -> str:
    # The official order: lower case, number words → digits, articles dropped, then contractions
    # restored word by word (on lower-cased words, so the table's keys with capitals never apply).
    tables = _tables()
    words = [tables["numbers"].get(w, w) for w in text.lower().split()]
    return " ".join(tables["contractions"].get(w, w) for w in words if w not in tables["articles"])


@functools.lru_cache(maxsize=1 << 16)  # answers repeat: each distinct one is processed once
def normalize_vqa_answer(answer: str) -> str:
    """VQA's full answer processing: whitespace, punctuation, lower case, number words to digits, no
    articles, contractions restored (``The Red, Bus.`` → ``red bus``; ``two`` → ``2``; ``dont`` →
    ``don't``). ``vqa_accuracy`` applies it only where the official evaluation does."""
    return _digits_and_articles(_punctuation(_whitespace(answer)))


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """The official VQA accuracy of one prediction against its (10) human answers: for each human
    left out in turn, min(#other humans who gave the prediction / 3, 1), averaged.

    As the official evaluation does since 2021: newlines, tabs and outer spaces go from every answer;
    then, only if the humans' answers still differ, every human answer and the prediction are fully
    processed (``normalize_vqa_answer``). Unanimous humans are matched as they are: ``Red`` against
    ten ``red`` scores 0, while ``1`` against humans mixing ``one`` and ``1`` matches them all."""
    if not answers:
        raise ValueError("VQA accuracy needs at least one human answer")
    prediction, humans = _whitespace(prediction), [_whitespace(a) for a in answers]
    if len(set(humans)) > 1:
        prediction, humans = normalize_vqa_answer(prediction), [normalize_vqa_answer(a) for a in humans]
    matches = sum(h == prediction for h in humans)
    # Leaving out a matching human leaves matches − 1 others, another leaves all. (The official script
    # leaves out every answer record equal to the left-out one; VQA's records differ by answer_id.)
    # Summed in the humans' order, as the official script does, so that the floats are the same.
    return sum(min(1, (matches - (h == prediction)) / 3) for h in humans) / len(humans)


def vqa_scores(predictions: list[str], answers: np.ndarray) -> np.ndarray:
    """VQA accuracy of each prediction against its row of human answers (as prepare stores them:
    bytes or str, "" padding the rows of questions with fewer answers)."""
    out = np.zeros(len(predictions))
    for i, (prediction, row) in enumerate(zip(predictions, answers)):
        humans = [a.decode() if isinstance(a, bytes) else a for a in row]
        humans = [a for a in humans if a]
        out[i] = vqa_accuracy(prediction, humans) if humans else 0.0
    return out


@dataclass
class VQAQuestion:
    """A VQA v1 question with its parses and, where annotated, its answers. ``layout`` is None
    when its parse is missing or unparseable (``problem`` says why): the encoder answers it alone."""

    question_id: int
    image_id: int
    question: str
    parses: list[SExpr]
    layout: Layout | None
    answer: str | None = None
    answers: list[str] | None = None
    answer_type: str | None = None
    problem: str | None = None


def _records(path: Path, kind: str, what: str) -> list:
    raw = read_json(path, what)
    records = raw.get(kind) if isinstance(raw, dict) else None
    if not isinstance(records, list):
        raise ModtrainError(f"{path}: expected an object with a {kind!r} list (the VQA v1 format)")
    return records


def load_vqa(questions_path: str | Path, sps2_path: str | Path,
             annotations_path: str | Path | None = None, strict: bool = True) -> list[VQAQuestion]:
    """VQA v1 questions (and annotations, if given) joined with their ``.sps2`` parses. With
    ``strict`` a missing or bad parse is an error naming its line; otherwise the question keeps
    no layout and says why in ``problem`` (``VQAFolder`` warns and counts)."""
    questions_path, sps2_path = Path(questions_path), Path(sps2_path)
    records = _records(questions_path, "questions", "VQA questions file")
    if not sps2_path.is_file():
        raise ModtrainError(f"parse file not found: {sps2_path} (one line of NMN parses per question of "
                            f"{questions_path.name}, in order)")
    lines = sps2_path.read_text(encoding="utf-8").splitlines()
    if len(lines) != len(records):
        raise ModtrainError(
            f"{sps2_path} has {len(lines)} lines but {questions_path} has {len(records)} "
            f"questions; the parse file needs one line per question, in the same order"
        )
    annotations: dict[int, dict] = {}
    if annotations_path is not None:
        for j, a in enumerate(_records(Path(annotations_path), "annotations", "VQA annotations file")):
            missing = [k for k in ("question_id", "answers", "multiple_choice_answer") if k not in a]
            if missing:
                raise ModtrainError(f"{annotations_path}: annotation {j} lacks {missing[0]!r}")
            if a["question_id"] in annotations:
                raise ModtrainError(f"{annotations_path}: annotation {j} repeats question_id {a['question_id']}; "
                                    f"each question has one annotation")
            if not a["answers"]:
                raise ModtrainError(f"{annotations_path}: annotation {j} (question_id {a['question_id']}) has no "
                                    f"answers; VQA annotations list the human answers (ten in a VQA release)")
            annotations[a["question_id"]] = a
    out = []
    seen: dict[int, int] = {}
    for i, (record, line) in enumerate(zip(records, lines)):
        for key in ("question_id", "image_id", "question"):
            if key not in record:
                raise ModtrainError(f"{questions_path}: question {i} lacks {key!r}")
        if record["question_id"] in seen:
            raise ModtrainError(f"{questions_path}: question {i} repeats question_id {record['question_id']} "
                                f"(question {seen[record['question_id']]}); question ids are unique in a VQA file")
        seen[record["question_id"]] = i
        annotation = annotations.get(record["question_id"])
        if annotations_path is not None and annotation is None:
            raise ModtrainError(
                f"{annotations_path}: no annotation for question_id {record['question_id']} "
                f"(question {i} of {questions_path})"
            )
        answer_type = annotation.get("answer_type") if annotation else None
        yes_no = None if answer_type is None else answer_type == "yes/no"
        parses, layout, problem = [], None, None
        try:
            parses = parse_sps2_line(line)
            if not parses:
                raise ValueError("no parse on the line")
            layout = parse_to_layout(parses[0], yes_no)
        except ValueError as e:
            if strict:
                raise ModtrainError(f"{sps2_path}: line {i + 1}: {e}: {line.strip()!r}") from None
            problem = f"{sps2_path.name} line {i + 1}: {e}" + (f": {line.strip()!r}" if line.strip() else "")
        out.append(VQAQuestion(
            question_id=record["question_id"],
            image_id=record["image_id"],
            question=record["question"],
            parses=parses,
            layout=layout,
            answer=annotation.get("multiple_choice_answer") if annotation else None,
            answers=[a["answer"] for a in annotation["answers"]] if annotation else None,
            answer_type=answer_type,
            problem=problem,
        ))
    return out


QUESTIONS_FILE = re.compile(r"OpenEnded_(?P<source>.+)_(?P<split>[^_]+)_questions\.json")
IMAGE_FILE = re.compile(r"_(\d+)\.(?:jpg|jpeg|png)$", re.IGNORECASE)
ANSWER_TYPES = ("yes/no", "number", "other")
SHOWN_PROBLEMS = 5  # parse problems named one by one per split; the rest are counted


class VQAFolder:
    """A VQA v1 folder: per split, ``OpenEnded_{source}_{split}_questions.json`` (in the folder or in
    ``Questions/``), ``{source}_{split}_annotations.json`` (or in ``Annotations/``; absent for test
    splits), the NMN's ``{split}.sps2`` parses (beside the questions or in ``Parses/``) and the images
    in ``Images/{split}/`` (or ``images/{split}/``, ``{split}/``), any name ending in ``_{image_id}``.

    VQA image ids are not 0..N−1: a split's image rows (its features' rows) are its questions'
    distinct image ids in increasing order, which prepare keeps beside each question."""

    kind = "vqa"

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise ModtrainError(f"data folder not found: {self.root}")
        self._questions: dict[str, tuple[str, Path]] = {}
        for path in sorted([*self.root.glob("*_questions.json"), *self.root.glob("*/*_questions.json")]):
            m = QUESTIONS_FILE.fullmatch(path.name)
            if m:
                self._questions.setdefault(m["split"], (m["source"], path))
        if not self._questions:
            raise ModtrainError(f"{self.root}: no OpenEnded_{{source}}_{{split}}_questions.json found (in the folder "
                                f"or Questions/); is this a VQA v1 folder? (make one with 'modtrain data generate "
                                f"{self.root} --format vqa')")
        self._image_ids: dict[str, np.ndarray] = {}

    def splits(self) -> list[str]:
        """Splits with a questions file: training ones first, then validation, then the rest."""
        return sorted(self._questions,
                      key=lambda s: (0 if s.startswith("train") else 1 if s.startswith("val") else 2, s))

    def _split(self, split: str) -> tuple[str, Path]:
        if split not in self._questions:
            raise ModtrainError(f"{self.root}: no VQA split {split!r}; its splits: {', '.join(self.splits())}")
        return self._questions[split]

    def questions_path(self, split: str) -> Path:
        return self._split(split)[1]

    def _first(self, names: list[Path]) -> Path | None:
        return next((p for p in names if p.is_file()), None)

    def annotations_path(self, split: str) -> Path | None:
        name = f"{self._split(split)[0]}_{split}_annotations.json"
        return self._first([self.root / name, self.root / "Annotations" / name,
                            self.questions_path(split).parent / name])

    def parses_path(self, split: str) -> Path:
        name = f"{split}.sps2"
        places = [self.questions_path(split).parent / name, self.root / name, self.root / "Parses" / name]
        found = self._first(places)
        if found is None:
            raise ModtrainError(f"{self.root}: no NMN parse file {name} for split {split!r} (looked in "
                                f"{', '.join(str(p.parent) for p in places)}); it holds one line of "
                                f"';'-separated parses per question, e.g. '(is (and car show))'")
        return found

    def source_files(self, split: str) -> list[Path]:
        """The files a prepared split is made from (their hashes say whether it is up to date)."""
        return [p for p in (self.questions_path(split), self.annotations_path(split), self.parses_path(split)) if p]

    def image_dir(self, split: str) -> Path:
        places = [self.root / "Images" / split, self.root / "images" / split, self.root / split]
        return next((p for p in places if p.is_dir()), places[0])

    def image_ids(self, split: str) -> np.ndarray:
        """The split's image ids in row order: its questions' distinct image ids, increasing."""
        if split not in self._image_ids:
            records = _records(self.questions_path(split), "questions", "VQA questions file")
            try:
                ids = np.unique(np.array([r["image_id"] for r in records], np.int64))
            except (KeyError, TypeError, ValueError):
                bad = next(i for i, r in enumerate(records)
                           if not isinstance(r, dict) or not isinstance(r.get("image_id"), int))
                raise ModtrainError(f"{self.questions_path(split)}: question {bad} has no integer 'image_id'") from None
            self._image_ids[split] = ids
        return self._image_ids[split]

    def num_images(self, split: str) -> int:
        return len(self.image_ids(split))

    def image_paths(self, split: str) -> list[Path]:
        """The image file of every row, found by the id its name ends with."""
        directory = self.image_dir(split)
        if not directory.is_dir():
            raise ModtrainError(f"image folder not found: {directory} (VQA images go in Images/{split}/)")
        by_id = {}
        for path in directory.iterdir():
            m = IMAGE_FILE.search(path.name)
            if m:
                by_id[int(m.group(1))] = path
        paths = []
        for image_id in self.image_ids(split).tolist():
            if image_id not in by_id:
                raise ModtrainError(f"{directory}: no image for image_id {image_id} (asked about in "
                                    f"{self.questions_path(split).name}); expected a file named like "
                                    f"COCO_{split}_{image_id:012d}.jpg")
            paths.append(by_id[image_id])
        return paths

    def load_questions(self, split: str) -> list[VQAQuestion]:
        """The split's questions with parses and annotations. A question whose parse is missing or
        unparseable keeps no layout (the encoder answers it): a warning names the first few by id
        and counts them all."""
        questions = load_vqa(self.questions_path(split), self.parses_path(split), self.annotations_path(split),
                             strict=False)
        problems = [q for q in questions if q.problem is not None]
        if problems:
            named = "; ".join(f"question_id {q.question_id} ({q.problem})" for q in problems[:SHOWN_PROBLEMS])
            more = f"; and {len(problems) - SHOWN_PROBLEMS} more" if len(problems) > SHOWN_PROBLEMS else ""
            warnings.warn(f"{split}: {len(problems)} of {len(questions)} questions have no usable parse and are "
                          f"answered by the encoder alone: {named}{more}", stacklevel=2)
        return questions
