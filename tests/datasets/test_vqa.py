from pathlib import Path

import pytest

from modtrain.datasets.vqa import (
    load_vqa, normalize_vqa_answer, parse_sexpr, parse_sps2_line, parse_to_layout, vqa_accuracy,
)
from modtrain.errors import ModtrainError

FIXTURES = Path(__file__).parent.parent / "fixtures" / "vqa"
QUESTIONS = FIXTURES / "OpenEnded_mscoco_tiny_questions.json"
ANNOTATIONS = FIXTURES / "mscoco_tiny_annotations.json"
SPS2 = FIXTURES / "tiny.sps2"


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
    assert vqa_accuracy("red", bus) == 1.0          # red, Red, red. → 3 agree
    assert vqa_accuracy("maroon", bus) == pytest.approx(2 / 3)
    assert vqa_accuracy("burgundy", bus) == pytest.approx(1 / 3)
    assert vqa_accuracy("blue", bus) == 0.0
    assert vqa_accuracy("couch", dog) == 1.0
    assert vqa_accuracy("on couch", dog) == 1.0     # "on the couch" normalizes to "on couch"
    assert vqa_accuracy("two", count) == 1.0
    assert normalize_vqa_answer("  The Red, Bus. ") == "red bus"
    assert normalize_vqa_answer("3.5") == "3.5"


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
