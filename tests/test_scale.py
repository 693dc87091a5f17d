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
from modtrain.job import train_module
from modtrain.workdir import Workdir


@pytest.mark.slow
def test_a_tiny_memory_budget_streams_every_dataset_and_trains_the_same_module(tiny_run, tmp_path, monkeypatch):
    """Features and caches over ``data.in_memory_bytes`` are read by batches of rows, never whole,
    and the module trained that way is the one trained with everything in memory."""
    recipe, workdir, _, _ = tiny_run
    copy = Workdir(tmp_path / "run", tmp_path / "run" / "data")
    shutil.copytree(workdir.root, copy.root)
    held_whole, reads = [], []
    take = data_module.H5Rows.take

    def spy(self, rows):
        out = take(self, rows)
        reads.append((self.path.name, self.name, len(rows)))
        held_whole.append(self._array is not None)
        return out

    monkeypatch.setattr(data_module.H5Rows, "take", spy)
    budget = recipe.with_overrides(["data.in_memory_bytes=4096"])  # far below one split's features
    for module in ("find", "describe"):  # find reads the features, describe the caches
        (copy.modules / f"{module}.json").unlink()
        card = train_module(copy, budget, module, torch.device("cpu"))
        assert card["weights_sha256"] == load_card(workdir.modules, module)["weights_sha256"]
    assert reads and not any(held_whole)
    assert {name for _, name, _ in reads} >= {"features"}
    # a training batch at a time, or a validation batch (four training batches)
    assert max(n for *_, n in reads) <= 4 * max(recipe.train_config(m).batch_size for m in ("find", "describe"))
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
