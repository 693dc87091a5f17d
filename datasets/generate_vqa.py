"""``modtrain data generate --format vqa``: the procedural dataset written as a VQA v1 folder.

The scenes and questions are the same as the CLEVR format's for the same seed; only the files
differ: questions and annotations in VQA v1 JSON, ten simulated human answers per question, and
the NMN ``.sps2`` parse of each question derived from its program, so that the whole VQA path
(prepare, features, training, VQA accuracy) runs on this machine. The parses exist for the
families of the original NMN's modules (no relate, same or compare: ``--families no-relate``).

Simulated annotators: each gives the true answer with probability 0.9, in one of the forms VQA's
released (lower-cased) answers take ("2" or "two", now and then a trailing period), and otherwise
another answer of the same type (a neighbouring count, another colour, the other of yes/no), so
that VQA accuracy and its answer processing are exercised as on real annotations.
``multiple_choice_answer`` is the most common processed answer.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
from modtrain.datasets.clevr import ATTRIBUTES, Question
from modtrain.datasets.layouts import SCENE_INSTANCE, program_to_layout
from modtrain.datasets.vqa import normalize_vqa_answer

from modtrain.errors import ModtrainError
from modtrain.io import write_json, write_text
from modtrain.layout import Layout

ANNOTATORS = 10
AGREEMENT = 0.9
SOURCE = "modtrain"
SCENE_WORD = "object"
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_ROOTS = {"exist": "is", "count": "how_many"}


def _attention_sexpr(layout: Layout) -> str:
    if layout.module == "find":
        return SCENE_WORD if layout.instance == SCENE_INSTANCE else layout.instance
    if layout.module in ("and", "or"):
        return f"({layout.module} {' '.join(_attention_sexpr(c) for c in layout.children)})"
    raise ValueError(f"{layout.module} has no NMN parse")


def program_sexpr(program) -> str:
    """The NMN parse of a no-relate program: ``query_color(unique(filter_shape[cube](scene)))`` →
    ``(color cube)``; exist → ``(is ...)``, count → ``(how_many ...)``, the whole scene → ``object``."""
    layout = program_to_layout(program)
    root = _ROOTS.get(layout.instance, layout.instance) if layout.module == "measure" else layout.instance
    if layout.module not in ("describe", "measure") or len(layout.children) != 1:
        raise ValueError(f"root {layout.module} has no NMN parse")
    return f"({root} {_attention_sexpr(layout.children[0])})"


def answer_type(program) -> str:
    root = program[-1].function
    return "yes/no" if root == "exist" else "number" if root == "count" else "other"


def _surface(rng: np.random.Generator, answer: str) -> str:
    if answer.isdigit() and int(answer) < len(_NUMBER_WORDS) and rng.random() < 0.2:
        return _NUMBER_WORDS[int(answer)]  # the official evaluation never credits it: VQA's own noise
    return answer + "." if rng.random() < 0.1 else answer


def _other(rng: np.random.Generator, answer: str, kind: str) -> str:
    if kind == "yes/no":
        return "no" if answer == "yes" else "yes"
    if kind == "number":
        return str(max(0, int(answer) + int(rng.choice([-1, 1]))))
    values = next((v for v in ATTRIBUTES.values() if answer in v), (answer,))
    others = [v for v in values if v != answer]
    return str(rng.choice(others)) if others else answer


def human_answers(rng: np.random.Generator, answer: str, kind: str) -> list[str]:
    """Ten simulated annotators' answers to a question whose true answer is ``answer``."""
    return [_surface(rng, answer) if rng.random() < AGREEMENT else _other(rng, answer, kind)
            for _ in range(ANNOTATORS)]


def image_id(split_code: int, index: int) -> int:
    """VQA-like image ids: neither from 0 nor contiguous, so that the id ↔ row map is exercised."""
    return 1_000_000 * split_code + 3 * index + 1


def write_vqa_split(staging: Path, split: str, split_code: int, questions: list[Question],
                    rng: np.random.Generator, family_names: dict[int, str]) -> None:
    """Move the split's rendered images to ``Images/{split}`` under VQA names and write its
    questions, annotations and parses into ``staging``."""
    source_dir, image_dir = staging / "images" / split, staging / "Images" / split
    image_dir.mkdir(parents=True, exist_ok=True)
    for path in sorted(source_dir.iterdir()):
        index = int(path.stem.rsplit("_", 1)[1])
        path.replace(image_dir / f"MODTRAIN_{split}_{image_id(split_code, index):012d}.png")
    source_dir.rmdir()
    records, annotations, parses = [], [], []
    per_image: Counter = Counter()
    for q in questions:
        try:
            parse = program_sexpr(q.program)
        except ValueError as e:
            raise ModtrainError(f"--format vqa: family {family_names.get(q.question_family_index)!r} asks questions "
                                f"NMN parses cannot express ({e}); use --families no-relate") from None
        iid = image_id(split_code, q.image_index)
        qid = iid * 1000 + per_image[iid]
        per_image[iid] += 1
        kind = answer_type(q.program)
        humans = human_answers(rng, q.answer, kind)
        counts = Counter(normalize_vqa_answer(h) for h in humans)
        best = max(counts.values())
        common = q.answer if counts[q.answer] == best else sorted(a for a, c in counts.items() if c == best)[0]
        records.append({"image_id": iid, "question": q.question, "question_id": qid})
        annotations.append({
            "question_id": qid, "image_id": iid, "question_type": " ".join(q.question.lower().split()[:2]),
            "answer_type": kind, "multiple_choice_answer": common,
            "answers": [{"answer": h, "answer_confidence": "yes", "answer_id": k + 1} for k, h in enumerate(humans)],
        })
        parses.append(parse)
    info = {"description": "modtrain procedural dataset in the VQA v1 format", "version": "1.0"}
    write_json(staging / "Questions" / f"OpenEnded_{SOURCE}_{split}_questions.json",
               {"info": info, "task_type": "Open-Ended", "data_type": SOURCE, "data_subtype": split,
                "questions": records}, indent=None)
    write_json(staging / "Annotations" / f"{SOURCE}_{split}_annotations.json",
               {"info": info, "data_type": SOURCE, "data_subtype": split, "annotations": annotations}, indent=None)
    write_text(staging / "Parses" / f"{split}.sps2", "".join(p + "\n" for p in parses))


def vqa_files(split: str) -> list[str]:
    """The files of one split, relative to the folder; the questions file (which marks a split
    as present) last."""
    return [f"Images/{split}", f"Annotations/{SOURCE}_{split}_annotations.json", f"Parses/{split}.sps2",
            f"Questions/OpenEnded_{SOURCE}_{split}_questions.json"]
