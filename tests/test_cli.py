import json
import subprocess
import sys
from pathlib import Path

import h5py
from click.testing import CliRunner

from modtrain import __version__
from modtrain.cli import main

MODTRAIN = [str(Path(sys.executable).parent / "modtrain")]


def test_help_and_version():
    runner = CliRunner()
    for flag in ("-h", "--help"):
        result = runner.invoke(main, [flag])
        assert result.exit_code == 0 and "module by module" in result.output
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(main, ["data", "-h"])
    assert all(c in result.output for c in ("generate", "features", "prepare", "info"))


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(MODTRAIN + ["data", "info", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("Error: ") and (
        "neither a CLEVR v1.0 folder (questions/CLEVR_{split}_questions.json) nor a VQA v1" in lines[0])


def test_data_pipeline_from_the_command_line(tmp_path):
    data = tmp_path / "data"
    runner = CliRunner()
    result = runner.invoke(main, ["data", "generate", str(data), "--images", "10", "--questions-per-image", "4",
                                  "--families", "no-relate", "--seed", "4"])
    assert result.exit_code == 0, result.output
    assert "train: 10 images" in result.output and "val: 2 images" in result.output
    result = runner.invoke(main, ["data", "generate", str(data), "--images", "10"])
    assert result.exit_code == 1 and "pass --fresh to replace them" in result.output and "--force" not in result.output
    result = runner.invoke(main, ["data", "features", str(data), "--device", "cpu",
                                  "--pretrain-images", "40", "--pretrain-epochs", "1", "--dtype", "float16"])
    assert result.exit_code == 0, result.output
    assert "train: features (10, 64, 8, 8)" in result.output
    with h5py.File(data / "features" / "val.h5") as f:
        assert f["features"].shape == (2, 64, 8, 8) and f["features"].dtype == "float16"
    card = json.loads((data / "features" / "clevr-cnn.json").read_text())
    assert card["config"]["images"] == 40
    result = runner.invoke(main, ["data", "prepare", str(data)])
    assert result.exit_code == 0, result.output
    assert (data / "vocab.json").exists() and (data / "train.h5").exists()
    result = runner.invoke(main, ["data", "info", str(data), "--json"])
    info = json.loads(result.output)
    train = info["splits"]["train"]
    assert train["images"] == 10 and train["questions"] == sum(train["depth_histogram"].values())
    assert set(train["families"]) <= {"exist", "count", "query_color", "query_shape", "query_size",
                                      "query_material", "exist_union", "count_union", "exist_intersect",
                                      "count_intersect"}
    table = runner.invoke(main, ["data", "info", str(data)]).output
    assert "depth histogram" in table and "[val]" in table
