"""VQA v1 questions and annotations with the NMN's ``.sps2`` parser layouts.

A ``.sps2`` file has one line per question (in questions-file order) holding one or more
``;``-separated S-expressions from the Stanford-parser pipeline of Andreas et al. (2016),
e.g. ``(is (and car show))``. They become layouts by the original NMN's rules: leaves →
``find``, ``and`` → ``and``, and the root → ``measure`` for yes/no questions and
``describe`` otherwise, its instance being the root word.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Union

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


def _attention(expr: SExpr) -> Layout:
    # Leaves are find; ``and`` is and. Another internal word restricts its arguments'
    # attention to itself: ``(color bus)`` → and(find[color], find[bus]).
    if isinstance(expr, str):
        return Layout("find", expr)
    head, args = expr[0], [_attention(a) for a in expr[1:]]
    if not isinstance(head, str):
        raise ValueError("an expression must start with a word")
    if head == "and":
        if not args:
            raise ValueError("'and' without arguments")
        return _and_all(args)
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
    attention = _and_all([_attention(a) for a in args]) if args else Layout("scene")
    return Layout("measure" if yes_no else "describe", head, (attention,))


_ARTICLES = {"a", "an", "the"}
_NUMBERS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4",
            "five": "5", "six": "6", "seven": "7", "eight": "8", "nine": "9", "ten": "10"}


def normalize_vqa_answer(answer: str) -> str:
    """Lower-case, drop punctuation and articles, number words to digits (as VQA's eval)."""
    text = answer.lower().replace("\n", " ").replace("\t", " ").strip()
    text = re.sub(r"(?<=\d),(?=\d)", "", text)           # 1,000 → 1000
    text = re.sub(r"(?<!\d)\.(?!\d)", "", text)          # keep decimal points
    text = re.sub(r"[;/\[\]\"{}()=+\\_\-><@`,?!*#%^&$~|:]", " ", text)
    words = [_NUMBERS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA accuracy: min(#annotators who gave the prediction / 3, 1)."""
    predicted = normalize_vqa_answer(prediction)
    agreeing = sum(normalize_vqa_answer(a) == predicted for a in answers)
    return min(agreeing / 3.0, 1.0)


@dataclass
class VQAQuestion:
    """A VQA v1 question with its parses and, where annotated, its answers."""

    question_id: int
    image_id: int
    question: str
    parses: list[SExpr]
    layout: Layout
    answer: str | None = None
    answers: list[str] | None = None
    answer_type: str | None = None


def load_vqa(questions_path: str | Path, sps2_path: str | Path,
             annotations_path: str | Path | None = None) -> list[VQAQuestion]:
    """VQA v1 questions (and annotations, if given) joined with their ``.sps2`` parses."""
    questions_path, sps2_path = Path(questions_path), Path(sps2_path)
    raw = read_json(questions_path, "VQA questions file")
    records = raw.get("questions") if isinstance(raw, dict) else None
    if not isinstance(records, list):
        raise ModtrainError(f"{questions_path}: expected an object with a 'questions' list")
    if not sps2_path.is_file():
        raise ModtrainError(f"parse file not found: {sps2_path}")
    lines = sps2_path.read_text(encoding="utf-8").splitlines()
    if len(lines) != len(records):
        raise ModtrainError(
            f"{sps2_path} has {len(lines)} lines but {questions_path} has {len(records)} "
            f"questions; the parse file needs one line per question, in the same order"
        )
    annotations: dict[int, dict] = {}
    if annotations_path is not None:
        ann = read_json(annotations_path, "VQA annotations file")
        if not isinstance(ann, dict) or not isinstance(ann.get("annotations"), list):
            raise ModtrainError(f"{annotations_path}: expected an object with an 'annotations' list")
        annotations = {a["question_id"]: a for a in ann["annotations"]}
    out = []
    for i, (record, line) in enumerate(zip(records, lines)):
        for key in ("question_id", "image_id", "question"):
            if key not in record:
                raise ModtrainError(f"{questions_path}: question {i} lacks {key!r}")
        try:
            parses = parse_sps2_line(line)
            if not parses:
                raise ValueError("no parse on the line")
        except ValueError as e:
            raise ModtrainError(f"{sps2_path}: line {i + 1}: {e}: {line.strip()!r}") from None
        annotation = annotations.get(record["question_id"])
        if annotations_path is not None and annotation is None:
            raise ModtrainError(
                f"{annotations_path}: no annotation for question_id {record['question_id']} "
                f"(question {i} of {questions_path})"
            )
        answer_type = annotation.get("answer_type") if annotation else None
        yes_no = None if answer_type is None else answer_type == "yes/no"
        try:
            layout = parse_to_layout(parses[0], yes_no)
        except ValueError as e:
            raise ModtrainError(f"{sps2_path}: line {i + 1}: {e}") from None
        out.append(VQAQuestion(
            question_id=record["question_id"],
            image_id=record["image_id"],
            question=record["question"],
            parses=parses,
            layout=layout,
            answer=annotation.get("multiple_choice_answer") if annotation else None,
            answers=[a["answer"] for a in annotation["answers"]] if annotation else None,
            answer_type=answer_type,
        ))
    return out
