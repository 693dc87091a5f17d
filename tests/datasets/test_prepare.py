import json
import shutil

import h5py
import numpy as np
import pytest
from modtrain.datasets.clevr import ClevrFolder
from modtrain.datasets.executor import QUESTION_TYPES, program_depth, question_type, relate_hops
from modtrain.datasets.layouts import program_to_layout
from modtrain.datasets.prepare import NO_ANSWER, PAD, UNK, load_vocab, prepare, tokenize

from modtrain.errors import ModtrainError
from modtrain.io import sha256_json


def test_tokenize():
    assert tokenize("Is the RED cube, left of it; yes?") == [
        "is", "the", "red", "cube", ",", "left", "of", "it", ";", "yes"]


@pytest.fixture(scope="module")
def prepared(tiny_clevr, tmp_path_factory):
    data = tmp_path_factory.mktemp("prepared") / "data"
    shutil.copytree(tiny_clevr, data)
    folder = ClevrFolder(data)
    # an unseen word in val, and a test split released like CLEVR's: no answers, no programs
    val = json.loads(folder.questions_path("val").read_text())
    val["questions"][0]["question"] = "Is there a zeppelin?"
    folder.questions_path("val").write_text(json.dumps(val))
    test = json.loads(folder.questions_path("test").read_text())
    for q in test["questions"]:
        for key in ("answer", "program", "question_family_index"):
            q.pop(key)
    folder.questions_path("test").write_text(json.dumps(test))
    with pytest.warns(UserWarning, match=r"test: \d+ of \d+ questions have no answer"):
        summary = prepare(data)
    return data, summary


def test_vocab_is_built_on_train_only(prepared):
    data, _ = prepared
    vocab = load_vocab(data)
    train = ClevrFolder(data).load_questions("train")
    train_words = {t for q in train for t in tokenize(q.question)}
    assert set(vocab["question_tokens"]) == train_words | {"<NULL>", "<UNK>"}
    assert vocab["question_tokens"]["<NULL>"] == PAD and vocab["question_tokens"]["<UNK>"] == UNK
    assert set(vocab["answers"]) == {q.answer for q in train} | {"<UNK>"}
    assert "red" in vocab["instances"]["find"] and set(vocab["instances"]["measure"]) <= {"exist", "count"}
    with h5py.File(data / "val.h5") as f:
        tokens, length = f["tokens"][0], f["lengths"][0]
    ids = vocab["question_tokens"]
    assert tokens[:length].tolist() == [ids["is"], ids["there"], ids["a"], UNK]
    assert (tokens[length:] == PAD).all()


def test_split_arrays_are_aligned_with_the_questions(prepared):
    data, _ = prepared
    vocab = load_vocab(data)
    folder = ClevrFolder(data)
    questions = folder.load_questions("train")
    with h5py.File(data / "train.h5") as f:
        arrays = {k: f[k][:] for k in f}
        attrs = dict(f.attrs)
        chunks = f["tokens"].chunks
    n = len(questions)
    assert arrays["tokens"].shape[0] == n and arrays["tokens"].dtype == np.int32
    assert chunks[0] == n  # fewer rows than one block: one chunk
    assert arrays["question_index"].tolist() == list(range(n))
    for i, q in enumerate(questions):
        assert vocab["layouts"][arrays["layout"][i]] == str(program_to_layout(q.program))
        assert arrays["depth"][i] == program_depth(q.program)
        assert arrays["length"][i] == len(q.program)
        assert arrays["hops"][i] == relate_hops(q.program)
        assert QUESTION_TYPES[arrays["question_type"][i]] == question_type(q.program)
        assert arrays["image_index"][i] == q.image_index
        assert arrays["answer"][i] == vocab["answers"][q.answer]
        assert arrays["family"][i] == q.question_family_index
    assert attrs["vocab_sha256"] == sha256_json(vocab)
    assert attrs["schema_version"] == 2 and attrs["split"] == "train"
    assert len(attrs["data_fingerprint"]) == 64


def test_unlabelled_questions_are_kept_for_prediction(prepared):
    data, summary = prepared
    with h5py.File(data / "test.h5") as f:
        assert (f["answer"][:] == NO_ANSWER).all()
        assert (f["layout"][:] == -1).all() and (f["depth"][:] == -1).all()
        assert (f["lengths"][:] > 0).all()
    assert summary["splits"]["test"]["unlabelled"] == summary["splits"]["test"]["questions"]


def test_layout_table_holds_layouts_of_every_split(prepared):
    data, _ = prepared
    vocab = load_vocab(data)
    with h5py.File(data / "val.h5") as f:
        val_layouts = set(f["layout"][:].tolist())
    assert max(val_layouts) < len(vocab["layouts"])


def test_features_with_the_wrong_row_count_are_refused(tiny_clevr, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_clevr, data)
    (data / "features").mkdir()
    with h5py.File(data / "features" / "val.h5", "w") as f:
        f.create_dataset("features", data=np.zeros((5, 2, 2, 2), np.float32))
    with pytest.raises(ModtrainError, match=r"features/val.h5: 'features' has 5 rows but the split has 8 images"):
        prepare(data)
    assert not (data / "vocab.json").exists()


def test_image_index_out_of_range_is_refused(tiny_clevr, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_clevr, data)
    path = ClevrFolder(data).questions_path("val")
    raw = json.loads(path.read_text())
    raw["questions"][3]["image_index"] = 8
    path.write_text(json.dumps(raw))
    with pytest.raises(ModtrainError, match=r"CLEVR_val_questions.json: question 3 refers to image 8"):
        prepare(data)


def test_an_empty_questions_list_is_refused_naming_the_file(tiny_clevr, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(tiny_clevr, data)
    path = ClevrFolder(data).questions_path("test")
    path.write_text(json.dumps({"info": {}, "questions": []}))
    with pytest.raises(ModtrainError, match=r"CLEVR_test_questions.json: the questions list is empty"):
        prepare(data)
    assert not (data / "vocab.json").exists()
