import json

import pytest
from modtrain.datasets.clevr import (
    ClevrFolder,
    Question,
    compact_program,
    load_questions,
    load_scenes,
    write_questions,
)

from modtrain.errors import ModtrainError

RELEASED_QUESTION_KEYS = {"image_index", "program", "question_index", "image_filename",
                          "question_family_index", "split", "answer", "question"}


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def test_reader_accepts_generator_keys_and_raw_answers(tmp_path):
    raw = {"info": {}, "questions": [
        {"image_index": 0, "question": "Is there a cube?", "answer": True,
         "program": [{"type": "scene", "inputs": [], "side_inputs": []},
                     {"type": "filter_shape", "inputs": [0], "side_inputs": ["cube"]},
                     {"type": "exist", "inputs": [1], "side_inputs": []}]},
        {"image_index": 1, "question": "How many cubes?", "answer": 3,
         "program": [{"function": "scene", "inputs": [], "value_inputs": []},
                     {"function": "filter_shape", "inputs": [0], "value_inputs": ["cube"]},
                     {"function": "count", "inputs": [1]}]},
    ]}
    questions = load_questions(_write(tmp_path / "CLEVR_val_questions.json", raw))
    assert [q.answer for q in questions] == ["yes", "3"]
    assert questions[0].program[1].function == "filter_shape"
    assert questions[0].program[1].value_inputs == ["cube"]
    assert questions[1].program[2].value_inputs == []
    assert questions[0].split == "val" and questions[1].question_index == 1
    assert questions[0].image_filename == "CLEVR_val_000000.png"


def test_reader_accepts_test_questions_without_answer_or_program(tmp_path):
    raw = {"info": {}, "questions": [{"image_index": 4, "question": "What is it?", "question_index": 7,
                                       "split": "test", "image_filename": "CLEVR_test_000004.png"}]}
    (q,) = load_questions(_write(tmp_path / "CLEVR_test_questions.json", raw))
    assert q.answer is None and q.program is None and q.question_index == 7


def test_reader_accepts_relations_key(tmp_path):
    objects = [{"color": "red", "shape": "cube", "size": "large", "material": "metal"},
               {"color": "blue", "shape": "sphere", "size": "small", "material": "rubber"}]
    rel = {"left": [[1], []], "right": [[], [0]], "front": [[], []], "behind": [[], []]}
    raw = {"info": {}, "scenes": [{"image_index": 0, "objects": objects, "relations": rel}]}
    (scene,) = load_scenes(_write(tmp_path / "CLEVR_train_scenes.json", raw))
    assert scene.relationships["left"] == [[1], []]


def test_writer_emits_exactly_the_released_format(tmp_path):
    labelled = Question(0, "train", 2, "CLEVR_train_000002.png", "How many cubes are there?",
                        compact_program(("scene",), ("filter_shape", [0], ["cube"]), ("count", [1])), "3", 7)
    unlabelled = Question(1, "train", 3, "CLEVR_train_000003.png", "What is it?")
    path = tmp_path / "CLEVR_train_questions.json"
    write_questions(path, "train", [labelled, unlabelled], date="2/14/2017")
    data = json.loads(path.read_text())
    assert set(data) == {"info", "questions"}
    assert data["info"] == {"split": "train", "license": "Creative Commons Attribution (CC BY 4.0)",
                            "version": "1.0", "date": "2/14/2017"}
    first, second = data["questions"]
    assert set(first) == RELEASED_QUESTION_KEYS
    assert first["answer"] == "3" and first["question_family_index"] == 7
    assert all(set(node) == {"inputs", "function", "value_inputs"} for node in first["program"])
    assert first["program"][0]["value_inputs"] == [] and first["program"][1]["value_inputs"] == ["cube"]
    # unlabelled questions carry no answer, program or family, as CLEVR's test split
    assert set(second) == RELEASED_QUESTION_KEYS - {"answer", "program", "question_family_index"}


def test_generator_writer_reader_round_trip(tiny_clevr):
    folder = ClevrFolder(tiny_clevr)
    assert folder.splits() == ["train", "val", "test"]
    questions = folder.load_questions("train")
    scenes = folder.load_scenes("train")
    assert len(scenes) == 30 == folder.num_images("train")
    assert len(questions) > 100
    from modtrain.datasets.executor import execute
    for q in questions:
        assert isinstance(q.answer, str)
        assert execute(q.program, scenes[q.image_index]) == q.answer
        assert q.image_filename == f"CLEVR_train_{q.image_index:06d}.png"
    # the written file has only released keys
    raw = json.loads(folder.questions_path("train").read_text())
    assert all(set(q) == RELEASED_QUESTION_KEYS for q in raw["questions"])
    assert [q["question_index"] for q in raw["questions"]] == list(range(len(questions)))


def test_missing_file_names_it(tmp_path):
    with pytest.raises(ModtrainError, match="questions file not found: .*CLEVR_x_questions.json"):
        load_questions(tmp_path / "CLEVR_x_questions.json")


def test_malformed_json_names_file_line_and_column(tmp_path):
    path = tmp_path / "CLEVR_train_questions.json"
    path.write_text('{"questions": [\n  {"image_index": 0,,}\n]}')
    with pytest.raises(ModtrainError, match=r"CLEVR_train_questions.json: malformed JSON at line 2, column 21"):
        load_questions(path)


def test_unknown_function_names_file_question_and_valid_ones(tmp_path):
    raw = {"questions": [{"image_index": 0, "question": "?", "answer": "yes", "program": [
        {"function": "scene", "inputs": [], "value_inputs": []}]},
        {"image_index": 0, "question": "?", "answer": "yes", "program": [
        {"function": "scene", "inputs": [], "value_inputs": []},
        {"function": "teleport", "inputs": [0], "value_inputs": []}]}]}
    path = _write(tmp_path / "CLEVR_train_questions.json", raw)
    with pytest.raises(ModtrainError, match=r"question 1: program node 1 has unknown function 'teleport'; "
                                            r"valid: .*filter_color"):
        load_questions(path)


def test_bad_arity_and_forward_inputs_are_refused(tmp_path):
    for node, why in [({"function": "count", "inputs": [], "value_inputs": []}, "takes 1 and 0"),
                      ({"function": "count", "inputs": [1], "value_inputs": []}, "earlier nodes")]:
        raw = {"questions": [{"image_index": 0, "question": "?", "program": [
            {"function": "scene", "inputs": [], "value_inputs": []}, node]}]}
        with pytest.raises(ModtrainError, match=why):
            load_questions(_write(tmp_path / "CLEVR_train_questions.json", raw))


def test_image_index_out_of_range_is_named(tiny_clevr):
    folder = ClevrFolder(tiny_clevr)
    questions = folder.load_questions("val")
    questions[0].image_index = 99
    with pytest.raises(ModtrainError, match=r"question 0 refers to image 99, but split 'val' has 8 images "
                                            r"\(valid: 0..7\)"):
        folder.check_image_indices("val", questions, folder.num_images("val"))


def test_folder_without_questions_says_how_to_make_one(tmp_path):
    with pytest.raises(ModtrainError, match="modtrain data generate"):
        ClevrFolder(tmp_path).splits()


SCENE_NODE = {"function": "scene", "inputs": [], "value_inputs": []}


@pytest.mark.parametrize("question, message", [
    ({"question_index": "abc"}, r"question 0: question_index 'abc' is not an integer"),
    ({"image_index": True}, r"question 0: image_index True is not a non-negative integer"),
    ({"question": 7}, r"question 0: question 7 is not a string"),
    ({"program": [SCENE_NODE, {"function": "count", "inputs": 0, "value_inputs": []}]},
     r"program node 1 \(count\) has inputs 0; expected a list of indices of earlier nodes"),
    ({"program": [SCENE_NODE, {"function": "filter_color", "inputs": [0], "value_inputs": [None]}]},
     r"program node 1 \(filter_color\) has value_inputs \[None\]; expected a list of strings"),
])
def test_badly_typed_question_fields_are_one_clear_error(tmp_path, question, message):
    raw = {"questions": [{"image_index": 0, "question": "How many?", "program": [SCENE_NODE], **question}]}
    path = _write(tmp_path / "CLEVR_train_questions.json", raw)
    with pytest.raises(ModtrainError, match=message):
        load_questions(path)
