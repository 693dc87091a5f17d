"""``modtrain data prepare`` on a VQA v1 folder: questions, parses and annotations → the arrays
every other command reads (the same ``{split}.h5`` and ``vocab.json`` as a CLEVR folder).

- Answers: the N most frequent training answers (``multiple_choice_answer``; N = 1000 as in the
  reference NMN code). A question whose answer is outside the set keeps the ``<UNK>`` answer: it
  counts in every accuracy (VQA accuracy can still credit it), never in training.
- Layouts: from the first parse of each question by the original NMN's rules (``vqa.py``). Module
  instances are the parse's words; one seen fewer than ``min_instance_count`` times in training
  becomes ``<UNK>``, so the open vocabulary of VQA keeps a trainable instance for rare words.
- Question types are the VQA answer types (yes/no, number, other); depth is the layout's depth.
- Rows: ``image_index`` is the row of the question's image in the split's features
  (``VQAFolder.image_ids``), ``image_id`` and ``question_index`` (= question_id) keep VQA's ids,
  and ``vqa_answers`` the ten human answers for VQA accuracy.
"""
from __future__ import annotations

from collections import Counter, defaultdict

import h5py
import numpy as np
from modtrain.datasets.prepare import UNK_ANSWER, check_not_empty, make_vocab, question_arrays, tokenize
from modtrain.datasets.vqa import ANSWER_TYPES, VQAFolder, VQAQuestion

from modtrain.errors import ModtrainError
from modtrain.layout import Layout

UNK_INSTANCE = "<UNK>"


def _with_known_instances(layout: Layout, known: set[tuple[str, str]]) -> Layout:
    instance = layout.instance
    if instance is not None and (layout.module, instance) not in known:
        instance = UNK_INSTANCE
    return Layout(layout.module, instance, tuple(_with_known_instances(c, known) for c in layout.children))


def encode_vqa(folder: VQAFolder, splits: list[str], train_split: str, answers: int,
               min_instance_count: int) -> tuple[dict, dict[str, dict[str, np.ndarray]], dict[str, dict[str, int]]]:
    """The vocabulary, every split's arrays and, per split, what was counted (no parse, answer
    outside the set, a rare word's ``<UNK>`` instance)."""
    if answers < 1:
        raise ModtrainError(f"--answers {answers}: the answer set needs at least 1 answer (the reference code: 1000)")
    if min_instance_count < 1:
        raise ModtrainError(f"--min-instance-count {min_instance_count}: must be at least 1")
    questions = {s: folder.load_questions(s) for s in splits}
    for split, qs in questions.items():
        check_not_empty(folder, split, len(qs))
    train = questions[train_split]
    answer_counts = Counter(q.answer for q in train if q.answer is not None)
    if not answer_counts:
        raise ModtrainError(f"{folder.questions_path(train_split)}: no training question is annotated; the answer "
                            f"set is built from the training split's annotations ({train_split})")
    top = sorted(answer_counts, key=lambda a: (-answer_counts[a], a))[:answers]
    word_counts = Counter(i for q in train if q.layout is not None for i in q.layout.instances())
    known = {i for i, c in word_counts.items() if c >= min_instance_count}
    layouts = {s: [None if q.layout is None else _with_known_instances(q.layout, known) for q in qs]
               for s, qs in questions.items()}
    instances: dict[str, set[str]] = defaultdict(set)
    for layout in layouts[train_split]:
        for module, instance in ([] if layout is None else layout.instances()):
            instances[module].add(instance)
    vocab = make_vocab(Counter(t for q in train for t in tokenize(q.question)), sorted(top), instances, ANSWER_TYPES)
    vocab["format"] = "vqa"
    vocab["options"] = {"answers": answers, "min_instance_count": min_instance_count}
    layout_ids: dict[str, int] = {}
    encoded, counts = {}, {}
    for split in splits:
        encoded[split] = _encode(questions[split], layouts[split], folder.image_ids(split), vocab, layout_ids)
        answer = encoded[split]["answer"]
        counts[split] = {
            "no_parse": sum(q.layout is None for q in questions[split]),
            "answer_outside_set": int((answer == vocab["answers"][UNK_ANSWER]).sum()),
            "unknown_word": sum(layout is not None and any(i == UNK_INSTANCE for _, i in layout.instances())
                                for layout in layouts[split]),
            "images": folder.num_images(split),
        }
    vocab["layouts"] = list(layout_ids)
    return vocab, encoded, counts


def _encode(questions: list[VQAQuestion], layouts: list[Layout | None], image_ids: np.ndarray, vocab: dict,
            layout_ids: dict[str, int]) -> dict[str, np.ndarray]:
    n = len(questions)
    answer_ids = vocab["answers"]
    n_answers = max((len(q.answers) for q in questions if q.answers), default=1)
    arrays = question_arrays([q.question for q in questions], vocab)
    arrays.update({
        "image_index": np.searchsorted(image_ids, np.array([q.image_id for q in questions], np.int64)).astype(np.int32),
        "image_id": np.array([q.image_id for q in questions], np.int64),
        "question_index": np.array([q.question_id for q in questions], np.int64),
        "hops": np.zeros(n, np.int16),
        "vqa_answers": np.full((n, n_answers), "", dtype=object),
    })
    for i, (q, layout) in enumerate(zip(questions, layouts)):
        if q.answer is not None:
            arrays["answer"][i] = answer_ids.get(q.answer, answer_ids[UNK_ANSWER])
            arrays["vqa_answers"][i, :len(q.answers)] = q.answers
        if q.answer_type in ANSWER_TYPES:
            arrays["question_type"][i] = ANSWER_TYPES.index(q.answer_type)
        if layout is not None:
            arrays["layout"][i] = layout_ids.setdefault(str(layout), len(layout_ids))
            arrays["depth"][i] = layout.depth
            arrays["length"][i] = layout.size
    arrays["vqa_answers"] = arrays["vqa_answers"].astype(h5py.string_dtype())
    return arrays
