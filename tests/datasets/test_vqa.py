import json
import shutil
import tomllib
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
from modtrain.datasets.features import validate_features
from modtrain.datasets.prepare import prepare
from modtrain.datasets.vqa import (
    VQA_EVAL_TABLES,
    VQAFolder,
    _load_tables,
    load_vqa,
    normalize_vqa_answer,
    parse_sexpr,
    parse_sps2_line,
    parse_to_layout,
    vqa_accuracy,
    vqa_scores,
)
from modtrain.datasets.vqa_prepare import encode_vqa

from modtrain.data import PreparedData
from modtrain.errors import ModtrainError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vqa"
QUESTIONS = FIXTURES / "OpenEnded_mscoco_tiny_questions.json"
ANNOTATIONS = FIXTURES / "mscoco_tiny_annotations.json"
SPS2 = FIXTURES / "tiny.sps2"
FIXTURE20 = Path(__file__).parent.parent / "fixtures" / "vqa20"


def test_parse_sexpr():
    assert parse_sexpr("(is (and car show))") == ("is", ("and", "car", "show"))
    assert parse_sexpr("dog") == "dog"
    assert parse_sps2_line("(color bus);(what (color bus))\n") == [("color", "bus"), ("what", ("color", "bus"))]
    for bad in ["(is (and car show)", "(is))", "()", "(a) b"]:
        with pytest.raises(ValueError):
            parse_sexpr(bad)


def test_layout_rules_of_the_original_nmn():
    # leaves → find, and → and, yes/no → measure at the root, others → describe
    assert str(parse_to_layout(parse_sexpr("(is (and car show))"))) == "measure[is](and(find[car],find[show]))"
    assert str(parse_to_layout(parse_sexpr("(color bus)"))) == "describe[color](find[bus])"
    assert str(parse_to_layout(parse_sexpr("(what (and cat (and dog bird)))"))) == \
        "describe[what](and(find[cat],and(find[dog],find[bird])))"
    # the annotation's answer type overrides the root word
    assert str(parse_to_layout(parse_sexpr("(color bus)"), yes_no=True)) == "measure[color](find[bus])"


def test_load_vqa_joins_questions_parses_and_annotations():
    questions = load_vqa(QUESTIONS, SPS2, ANNOTATIONS)
    assert [str(q.layout) for q in questions] == [
        "measure[is](and(find[car],find[show]))",
        "describe[color](find[bus])",
        "describe[where](find[dog])",
        "describe[how_many](find[dog])",
    ]
    assert len(questions[1].parses) == 2
    assert questions[0].answer == "yes" and questions[0].answer_type == "yes/no"
    assert len(questions[2].answers) == 10
    unannotated = load_vqa(QUESTIONS, SPS2)
    assert unannotated[0].answers is None and str(unannotated[0].layout).startswith("measure[is]")


def test_vqa_accuracy():
    questions = load_vqa(QUESTIONS, SPS2, ANNOTATIONS)
    bus, dog, count = questions[1].answers, questions[2].answers, questions[3].answers
    # the humans disagree, so every answer is processed (Red and red. → red), and each human is left
    # out in turn: 3 matches → (3·2/3 + 7·1) / 10. Values as the official evaluation scores them.
    assert vqa_accuracy("red", bus) == pytest.approx(0.9)
    assert vqa_accuracy("maroon", bus) == pytest.approx(0.6)      # 2 of 10: (2·1/3 + 8·2/3) / 10
    assert vqa_accuracy("burgundy", bus) == pytest.approx(0.3)
    assert vqa_accuracy("blue", bus) == 0.0
    assert vqa_accuracy("couch", dog) == pytest.approx(0.9)
    assert vqa_accuracy("two", count) == 1.0        # two → 2, and the human's two → 2 too (8 humans)
    assert normalize_vqa_answer("  The Red, Bus. ") == "red bus"
    assert normalize_vqa_answer("3.5") == "3.5"
    assert normalize_vqa_answer("t-shirt") == "t shirt" and normalize_vqa_answer("1,000") == "1000"
    with pytest.raises(ValueError, match="at least one human answer"):
        vqa_accuracy("red", [])


ONES = ["one", "one", "2", "1", "2", "one", "one", "one", "1", "1"]


@pytest.mark.parametrize("prediction, humans, official", [
    ("1", ONES, 1.0),                          # issue 31: disagreeing humans are processed too (one → 1)
    ("Red", ["red"] * 10, 0.0),                # unanimous humans: nothing is processed, the prediction neither
    ("red", ["red"] * 9 + [" red\n"], 1.0),    # ... after the whitespace, which goes from every answer first
    ("2", ["two"] * 10, 0.0),
    ("its", ["its"] * 8 + ["it is", "its."], 1.0),                          # its is no contraction officially
    ("oclock", ["o'clock"] * 7 + ["3 o'clock", "noon", "3"], 1.0),         # oclock → o'clock
    ("oclock", ["o'clock"] * 10, 0.0),                                      # unanimous: not processed
    ("yall", ["y'all"] * 5 + ["yall"] * 3 + ["you", "people"], 1.0),      # yall → y'all
    ("dont know", ["don't know"] * 2 + ["dont know"] * 4 + ["no"] * 4, 1.0),
    ("Dont", ["don't", "don't", "dont"] + ["no"] * 7, 0.9),                 # 3 humans: (3·2/3 + 7) / 10
    ("Im", ["i'm"] * 5 + ["im"] * 3 + ["me"] * 2, 0.9),   # lower-cased first: the table's Im key never applies
    ("yes" + "." * 32, ["yes"] * 9 + ["no"], 1.0),
    ("yes" + "." * 33, ["yes"] * 9 + ["no"], 0.0),        # only 32 periods go (re.UNICODE lands on sub's count)
    ("blue", ["blue", "blue", "green"], 4 / 9),          # three humans: (1/3 + 1/3 + 2/3) / 3
])
def test_official_rules_named_in_the_issues(prediction, humans, official):
    """Scores the official evaluation gives (its outputs for these cases are in vqa20/expected.json)."""
    assert vqa_accuracy(prediction, humans) == pytest.approx(official)


def test_normalization_tables_are_the_official_ones():
    """One place, as data: vqaEval.py's tables, shipped with the package."""
    tables = json.loads(VQA_EVAL_TABLES.read_text())
    assert len(tables["contractions"]) == 120 and len(tables["punctuation"]) == 21
    assert tables["articles"] == ["a", "an", "the"] and tables["numbers"]["none"] == "0"
    assert {"its", "im"}.isdisjoint(tables["contractions"]) and tables["contractions"]["Im"] == "I'm"
    assert [normalize_vqa_answer(a) for a in ("oclock", "Yall", "dont", "Im", "its", "somebody'd")] == \
        ["o'clock", "y'all", "don't", "im", "its", "somebodyd"]  # somebody'd → somebodyd: the official table's
    assert normalize_vqa_answer("An Apple, a Pear") == "apple pear"  # "," touches a space: dropped
    assert normalize_vqa_answer("the one") == "1" and normalize_vqa_answer("a. b") == "b"  # a. → a → dropped
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert VQA_EVAL_TABLES.name in pyproject["tool"]["setuptools"]["package-data"]["modtrain.datasets"]


def test_unreadable_tables_name_the_file(tmp_path):
    bad = tmp_path / "vqa_eval_tables.json"
    bad.write_text('{"articles": []}')
    with pytest.raises(ModtrainError, match=r"vqa_eval_tables.json: missing or not the VQA evaluation tables"):
        _load_tables(bad)
    with pytest.raises(ModtrainError, match=r"missing.json: missing or not"):
        _load_tables(tmp_path / "missing.json")


@pytest.mark.parametrize("split", ["train2014", "val2014"])
def test_vqa_accuracy_equals_the_official_evaluation_question_by_question(split):
    """expected.json holds the official evaluation's own outputs (percent, 2 decimals) on this folder:
    train2014, twenty tricky questions; val2014, a case per official rule."""
    folder = VQAFolder(FIXTURE20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # train2014 has two unparseable questions: irrelevant here
        questions = folder.load_questions(split)
    expected = json.loads((FIXTURE20 / "expected.json").read_text())["splits"][split]
    by_id = expected["by_question_id"]
    assert sorted(by_id) == sorted(str(q.question_id) for q in questions)
    got = {q.question_id: vqa_accuracy(by_id[str(q.question_id)]["prediction"], q.answers) for q in questions}
    assert {str(i): round(100 * a, 2) for i, a in got.items()} == {i: c["official"] for i, c in by_id.items()}
    assert round(100 * float(np.mean(list(got.values()))), 2) == expected["overall"]
    for kind, official in expected["per_answer_type"].items():
        assert round(100 * float(np.mean([got[q.question_id] for q in questions
                                          if q.answer_type == kind])), 2) == official
    # vqa_scores (what assemble calls) on the answers as prepare stores them: the same values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        arrays = encode_vqa(folder, [split], split, 1000, 1)[1][split]
    scores = vqa_scores([by_id[str(int(q))]["prediction"] for q in arrays["question_index"]],
                        arrays["vqa_answers"].astype(object))
    assert scores.tolist() == [got[int(q)] for q in arrays["question_index"]]


def test_prepare_a_vqa_folder(tmp_path):
    """Parses with and, a missing and an unparseable parse, answers outside the set, rare words."""
    data = tmp_path / "vqa"
    shutil.copytree(FIXTURE20, data)
    with pytest.warns(UserWarning, match=r"2 of 20 questions have no usable parse.*question_id 4587730 "
                                         r"\(train2014.sps2 line 7: no parse on the line\).*question_id 4587871 "
                                         r"\(train2014.sps2 line 12: unbalanced parentheses"):
        summary = prepare(data, answers=4, min_instance_count=2)
    s = summary["splits"]["train2014"]
    vocab = json.loads((data / "vocab.json").read_text())
    # the answer set: the 4 most frequent multiple-choice answers, ties by name
    assert list(vocab["answers"]) == ["<UNK>", "3", "black and white", "blue", "sofa"]  # 3 ×3, blue ×3, then 2 each
    assert s["no_parse"] == 2 and s["images"] == 10
    with h5py.File(data / "train2014.h5") as f:
        answer, layout, image_index = f["answer"][()], f["layout"][()], f["image_index"][()]
        image_id, qid = f["image_id"][()], f["question_index"][()]
    mca = [a["multiple_choice_answer"] for a in json.loads(
        (data / "Annotations" / "mscoco_train2014_annotations.json").read_text())["annotations"]]
    outside = [a not in vocab["answers"] for a in mca]
    assert s["answer_outside_set"] == sum(outside) == int((answer == 0).sum())
    # outside the set: evaluated (labelled), never trained on
    split = PreparedData(data).split("train2014")
    assert (split.trainable() == ~np.array(outside)).all() and (answer >= 0).all()
    layouts = [None if i < 0 else vocab["layouts"][i] for i in layout]
    assert layouts[6] is None and layouts[11] is None                 # missing and unparseable parse
    assert layouts[3] == "describe[where](and(find[cat],find[sit]))"  # cat ×2, sit ×2: kept
    assert layouts[0] == "measure[is](find[cat])"                     # cat ×3, is ×2
    assert layouts[5] == "describe[color](find[<UNK>])"               # bus: once
    assert "<UNK>" in vocab["instances"]["find"] and "bus" not in vocab["instances"]["find"]
    assert s["unknown_word"] == sum("<UNK>" in (t or "") for t in layouts)
    # VQA ids kept; image rows are the distinct image ids in increasing order
    assert (qid == [q["question_id"] for q in json.loads(
        (data / "Questions" / "OpenEnded_mscoco_train2014_questions.json").read_text())["questions"]]).all()
    assert (image_id == 458752 + 7 * image_index).all() and image_index.max() == 9


def test_features_of_another_question_set_are_refused(tmp_path):
    path = tmp_path / "train.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=np.zeros((3, 2, 2, 2), np.float32))
        f.create_dataset("image_ids", data=np.array([5, 9, 12]))
    assert validate_features(path, 3, np.array([5, 9, 12]))[0] == 3
    with pytest.raises(ModtrainError, match="row 1 holds image_id 9, but the split's row 1 is image_id 10"):
        validate_features(path, 3, np.array([5, 10, 12]))


def test_line_count_mismatch_is_refused(tmp_path):
    short = tmp_path / "short.sps2"
    short.write_text("(is dog)\n")
    with pytest.raises(ModtrainError, match="has 1 lines but .* has 4 questions"):
        load_vqa(QUESTIONS, short)


def test_bad_parse_names_the_line(tmp_path):
    bad = tmp_path / "bad.sps2"
    bad.write_text("(is dog)\n(what (color bus)\n(a b)\n(c d)\n")
    with pytest.raises(ModtrainError, match=r"bad.sps2: line 2: unbalanced parentheses"):
        load_vqa(QUESTIONS, bad)
