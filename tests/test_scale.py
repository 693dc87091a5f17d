"""Scale: memory under a budget whatever the data size, and jobs placed on a (simulated) GPU cluster."""
import itertools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from modtrain import data as data_module
from modtrain.card import load_card
from modtrain.job import Job, train_module
from modtrain.workdir import Workdir


@pytest.mark.slow
def test_a_tiny_memory_budget_streams_every_dataset_by_windows_of_chunks(tiny_run, tmp_path, monkeypatch):
    """Features and caches over ``data.in_memory_bytes`` are never read whole. In the uniform
    order they are read by batches of rows, and the module trained that way is the one trained
    with everything in memory; in the window order (what "auto" picks for streamed features, in
    the job key) a training epoch reads each window's rows once, ahead, and batches read nothing."""
    recipe, workdir, _, _ = tiny_run
    copy = Workdir(tmp_path / "run", tmp_path / "run" / "data")
    shutil.copytree(workdir.root, copy.root)
    held_whole, reads, windows = [], [], []
    take, read = data_module.H5Rows.take, data_module.H5Rows.read

    def spy(self, rows):
        out = take(self, rows)
        reads.append((self.name, len(rows), any(len(w[0]) for w in self._held), self.path.stem))
        held_whole.append(self._array is not None)
        return out

    def spy_read(self, rows):
        windows.append((self.name, len(np.unique(rows))))
        return read(self, rows)

    monkeypatch.setattr(data_module.H5Rows, "take", spy)
    monkeypatch.setattr(data_module.H5Rows, "read", spy_read)
    uniform = recipe.with_overrides(["data.in_memory_bytes=4096", "data.shuffle='uniform'"])  # far below a split
    for module in ("find", "describe"):  # find reads the features, describe the caches
        (copy.modules / f"{module}.json").unlink()
        card = train_module(copy, uniform, module, torch.device("cpu"))
        assert card["weights_sha256"] == load_card(workdir.modules, module)["weights_sha256"]
    assert reads and not any(held_whole) and not windows
    assert {name for name, *_ in reads} >= {"features"}
    # a training batch at a time, or a validation batch (four training batches)
    assert max(n for _, n, *_ in reads) <= 4 * max(recipe.train_config(m).batch_size for m in ("find", "describe"))

    streamed = recipe.with_overrides(["data.in_memory_bytes=4096"])  # a quarter of it: less than a chunk
    find = Job.for_module(copy, streamed, "find", torch.device("cpu"))
    assert find.key["order"] == {"window_chunks": 1} and "order" not in Job.for_module(
        copy, recipe, "find", torch.device("cpu")).key  # held in memory: the uniform order, as before
    for module in ("describe", "find"):  # describe first: it reads the caches of the find trained before
        reads.clear(), windows.clear()
        (copy.modules / f"{module}.json").unlink()
        card = train_module(copy, streamed, module, torch.device("cpu"))
        assert card["job_key"] != load_card(workdir.modules, module)["job_key"]
        training = [held for _, _, held, split in reads if split == "train"]
        assert training and all(training)  # every training batch from a held window
        images = len(data_module.H5Rows(copy.data / "features" / "train.h5", "features"))
        epochs = card["metrics"]["epochs"]
        assert windows  # each image's features read once an epoch at most
        assert sum(n for name, n in windows if name == "features") <= epochs * images
    assert not any(held_whole)
    # the default budget holds the same files whole
    held_whole.clear()
    data_module.set_in_memory_bytes(recipe.data.in_memory_bytes)
    rows = data_module.H5Rows(copy.data / "features" / "val.h5", "features")
    rows.take(np.arange(3))
    assert held_whole == [True]


# The cluster runs' jobs each hold 1 CPU (1 thread); the reference runs single-threaded too, in a
# fresh process as Ray's workers are. With more threads, OpenMP and MKL split a matrix product by
# what each process's environment says (MKL's own default, its dynamic threading), and the last
# bits of the weights then depend on how Ray started the worker; one thread leaves one order.
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.mark.slow
@pytest.mark.starts_ray
def test_jobs_on_a_gpu_cluster_hold_a_gpu_each_survive_a_lost_node_and_train_the_in_process_cards(tiny_run,
                                                                                                  tmp_path):
    """A simulated cluster (a head without GPUs, a node with 2): 3 GPUs a job is refused up front;
    every training job holds one GPU (``ray.get_gpu_ids``) and jobs that overlap hold different
    ones; with no CUDA device in the workers the jobs fall back to the CPU (said once); the GPU
    node dies while find trains, find is retried on the node that joined and resumes; the run
    ends with the cards and the accuracy of a run in process, and nothing half-written."""
    recipe, workdir, _, _ = tiny_run
    # the reference reads the cluster run's data folder: the features come from a backbone
    # pretrained when the data is made, whose weights depend on the threads that trained it
    # (single-threaded, beside the cluster run, whose jobs also run one thread each)
    reference = tmp_path / "in-process"
    in_process = subprocess.Popen([str(Path(sys.executable).parent / "modtrain"), "run", "--recipe",
                                   str(workdir.root / "recipe.toml"), "--workdir", str(reference), "--data",
                                   str(workdir.data), "--device", "cpu"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    cluster = Workdir(tmp_path / "cluster", workdir.data)
    out = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "cluster_run.py"),
                           str(workdir.root / "recipe.toml"), str(cluster.root), str(cluster.data), str(out)],
                          capture_output=True, text=True, env=ENV, timeout=900)
    _, in_process_errors = in_process.communicate(timeout=600)
    assert in_process.returncode == 0, in_process_errors[-3000:]
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "no node has more than 2" in result["too_many_gpus"] and "2 GPU(s), 2 CPU(s)" in result["too_many_gpus"]
    assert result["errors"] == [] and result["killed_during_find"]
    assert sum("sees no CUDA device" in m for m in result["messages"]) == 1
    assert any("∥" in m for m in result["messages"])  # independent jobs submitted together
    placement = result["placement"]
    trained = {job: p for job, p in placement.items() if job.startswith("train ")}
    assert set(trained) == {f"train {m}" for m in recipe.modules}
    assert all(len(p["gpu_ids"]) == 1 and p["device"] == "cpu" and p["node"] in [*result["nodes"], result["doomed"]]
               for p in trained.values())
    assert all(not p["gpu_ids"] for job, p in placement.items() if not job.startswith("train "))
    # no two jobs hold the same GPU at the same time (whether two overlap at all is up to the scheduler)
    for a, b in itertools.combinations(trained.values(), 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"]:
            assert (a["node"], a["gpu_ids"]) != (b["node"], b["gpu_ids"])
    # find ran (its last, successful attempt) on the node that joined, not on the one that died
    assert trained["train find"]["node"] != result["doomed"]
    for name in recipe.modules:
        here, there = load_card(reference / "modules", name), load_card(cluster.modules, name)
        for key in ("job_key", "weights_sha256", "instances", "hyperparameters", "signature", "metrics"):
            assert here[key] == there[key], (name, key)
    report = json.loads((reference / "reports" / "assemble.json").read_text())
    assert result["val_accuracy"] == report["splits"]["val"]["accuracy"]
    assert not [p for p in cluster.root.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".ckpt")]
