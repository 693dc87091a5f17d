"""VQA from the command line: generated VQA folders, prepare, the whole pipeline, VQA accuracy."""
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from modtrain.datasets.generate import generate
from modtrain.datasets.prepare import prepare
from modtrain.datasets.vqa import vqa_accuracy

from modtrain.cli import main
from modtrain.errors import ModtrainError
from modtrain.layout import parse_layout
from modtrain.recipe import Recipe
from modtrain.workdir import Workdir


def _vqa_layout(clevr: str) -> str:
    """The NMN-parse layout of a CLEVR layout: exist → measure[is], count → describe[how_many],
    the whole scene → find[object]."""
    return (clevr.replace("measure[exist]", "measure[is]").replace("measure[count]", "describe[how_many]")
            .replace("find[*all*]", "find[object]"))


def test_generate_vqa_round_trips_through_prepare(tmp_path):
    clevr, vqa = tmp_path / "clevr", tmp_path / "vqa"
    for root, fmt in ((clevr, "clevr"), (vqa, "vqa")):
        generate(root, {"train": 12, "val": 4}, 6, "no-relate", seed=3, format=fmt)
        prepare(root, min_instance_count=1)
    vocab = {r: json.loads((r / "vocab.json").read_text()) for r in (clevr, vqa)}
    for split in ("train", "val"):
        with h5py.File(clevr / f"{split}.h5") as c, h5py.File(vqa / f"{split}.h5") as v:
            clevr_layouts = [vocab[clevr]["layouts"][i] for i in c["layout"][()]]
            vqa_layouts = [vocab[vqa]["layouts"][i] for i in v["layout"][()]]
            assert vqa_layouts == [_vqa_layout(t) for t in clevr_layouts]   # the parses say what the programs do
            assert (c["tokens"].shape[0] == v["tokens"].shape[0]) and (c["lengths"][()] == v["lengths"][()]).all()
            # image rows: VQA ids are neither 0-based nor contiguous, the row map keeps them in order
            assert (v["image_index"][()] == c["image_index"][()]).all()
            assert (np.diff(np.unique(v["image_id"][()])) == 3).all() and v["image_id"][()].min() > 0
            humans = v["vqa_answers"][()]
            assert humans.shape[1] == 10
            # the most common answer is the program's answer for nearly every question (10% noise)
            clevr_answers = np.array([list(vocab[clevr]["answers"])[i] for i in c["answer"][()]])
            vqa_answers = np.array([list(vocab[vqa]["answers"])[i] for i in v["answer"][()]])
            assert (clevr_answers == vqa_answers).mean() > 0.95
    assert all(parse_layout(t) for t in vocab[vqa]["layouts"])
    assert vocab[vqa]["question_types"] == ["yes/no", "number", "other"]


def test_vqa_commands_refuse_what_they_cannot_do(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["data", "generate", str(tmp_path / "v"), "--images", "4", "--format", "vqa",
                                  "--families", "all"])
    assert result.exit_code == 1 and "NMN parses cannot express; use --families no-relate" in result.output
    assert not (tmp_path / "v" / "Questions").exists()
    generate(tmp_path / "c", {"train": 3}, 2, "no-relate")
    result = runner.invoke(main, ["data", "prepare", str(tmp_path / "c"), "--format", "vqa"])
    assert result.exit_code == 1 and "no OpenEnded_{source}_{split}_questions.json found" in result.output


@pytest.mark.slow
def test_tiny_vqa_pipeline_beats_the_prior_and_reports_official_vqa_accuracy(tmp_path, tiny_overrides):
    from modtrain.pipeline import run_pipeline

    recipe = Recipe.load("nmn-vqa", tiny_overrides)
    workdir = Workdir.for_recipe(recipe, tmp_path)
    report = run_pipeline(recipe, workdir, torch.device("cpu"), say=lambda _: None)
    val = report["splits"]["val"]
    assert set(val["by_type"]) == {"yes/no", "number", "other"}
    assert val["vqa_accuracy"] > val["encoder_vqa_accuracy"] + 0.05
    assert val["accuracy"] > val["encoder_accuracy"] + 0.05
    # recomputed from the predictions file (the official results format) and the raw annotations
    predictions = json.loads((workdir.reports / "predictions" / "val.json").read_text())
    annotations = {a["question_id"]: a for a in json.loads(
        (workdir.data / "Annotations" / "modtrain_val_annotations.json").read_text())["annotations"]}
    assert len(predictions) == len(annotations) == val["questions"]
    scores = [vqa_accuracy(p["answer"], [h["answer"] for h in annotations[p["question_id"]]["answers"]])
              for p in predictions]
    assert np.mean(scores) == pytest.approx(val["vqa_accuracy"])
    numbers = [s for p, s in zip(predictions, scores) if annotations[p["question_id"]]["answer_type"] == "number"]
    assert np.mean(numbers) == pytest.approx(val["by_type"]["number"]["vqa_accuracy"])


def test_features_of_a_vqa_folder_keep_the_id_to_row_map(tmp_path):
    from modtrain.datasets.features import features_command
    from modtrain.datasets.vqa import VQAFolder

    data = tmp_path / "vqa"
    generate(data, {"train": 6, "val": 3}, 3, "no-relate", format="vqa")
    (data / "generate.json").unlink()  # as if from another generator: clevr-cnn says what it is
    with pytest.warns(UserWarning, match="modtrain did not generate these images.*--backbone resnet101"):
        shapes = features_command(data, "clevr-cnn", pretrain_images=20, pretrain_epochs=1)
    folder = VQAFolder(data)
    for split in ("train", "val"):
        with h5py.File(data / "features" / f"{split}.h5") as f:
            assert (f["image_ids"][()] == folder.image_ids(split)).all()
        assert shapes[split][0] == folder.num_images(split) == len(folder.image_paths(split))
    # --from-h5: features made elsewhere are checked against the split's image ids
    elsewhere = tmp_path / "elsewhere_{split}.h5"
    for split in ("train", "val"):
        with h5py.File(str(elsewhere).replace("{split}", split), "w") as f:
            f.create_dataset("features", data=np.zeros((folder.num_images(split), 4, 2, 2), np.float32))
            ids = folder.image_ids(split)
            f.create_dataset("image_ids", data=ids[::-1] if split == "val" else ids)
    with pytest.raises(ModtrainError, match=r"elsewhere_val.h5: row 0 holds image_id \d+, but the split's row 0"):
        features_command(data, from_h5=str(elsewhere))
