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


@pytest.fixture(scope="module")
def in_process_reference(tiny_run, tmp_path_factory):
    """The tiny recipe run in process, once for both cluster tests: the cards they must reproduce.
    It reads the cluster runs' data folder: the features come from a backbone pretrained when the
    data is made, whose weights (like any trained weights) depend on the threads that trained it."""
    _, workdir, _, _ = tiny_run
    reference = tmp_path_factory.mktemp("in-process")
    subprocess.run([str(Path(sys.executable).parent / "modtrain"), "run", "--recipe", str(workdir.root / "recipe.toml"),
                    "--workdir", str(reference), "--data", str(workdir.data), "--device", "cpu"], check=True, capture_output=True, env=ENV)
    return reference


@pytest.mark.slow
def test_every_training_job_gets_a_gpu_of_its_own_on_a_simulated_cluster(tiny_run, in_process_reference, tmp_path):
    """Two nodes declaring 2 GPUs each: every training job holds one GPU (``ray.get_gpu_ids``),
    jobs that overlap hold different GPUs, and, with no CUDA device in
    the workers, the jobs fall back to the CPU (said once) and train the cards of an in-process run."""
    recipe, workdir, _, _ = tiny_run
    env, reference = ENV, in_process_reference
    cluster = Workdir(tmp_path / "cluster", workdir.data)
    out = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "cluster_run.py"),
                           str(workdir.root / "recipe.toml"),
                           str(cluster.root), str(cluster.data), str(out)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert "no node has more than 2" in result["too_many_gpus"] and "2 GPU(s), 2 CPU(s)" in result["too_many_gpus"]
    assert sum("sees no CUDA device" in m for m in result["messages"]) == 1
    placement = json.loads((cluster.reports / "jobs.json").read_text())["placement"]
    trained = {job: p for job, p in placement.items() if job.startswith("train ")}
    assert set(trained) == {f"train {m}" for m in recipe.modules}
    assert all(len(p["gpu_ids"]) == 1 and p["device"] == "cpu" and p["node"] in result["nodes"]
               for p in trained.values())
    assert all(not p["gpu_ids"] for job, p in placement.items() if not job.startswith("train "))
    # no two jobs hold the same GPU at the same time (whether two overlap at all is up to the scheduler)
    for a, b in itertools.combinations(trained.values(), 2):
        if a["started"] < b["ended"] and b["started"] < a["ended"]:
            assert (a["node"], a["gpu_ids"]) != (b["node"], b["gpu_ids"])
    for name in recipe.modules:
        here, there = load_card(reference / "modules", name), load_card(cluster.modules, name)
        assert here["weights_sha256"] == there["weights_sha256"], name


@pytest.mark.slow
def test_a_node_lost_mid_job_is_retried_elsewhere_and_the_run_ends_with_the_same_cards(tiny_run, in_process_reference,
                                                                                      tmp_path):
    recipe, workdir, _, _ = tiny_run
    env, reference = ENV, in_process_reference
    cluster = Workdir(tmp_path / "cluster", workdir.data)
    out = tmp_path / "cluster.json"
    done = subprocess.run([sys.executable, str(Path(__file__).parent / "cluster_run.py"),
                           str(workdir.root / "recipe.toml"),
                           str(cluster.root), str(cluster.data), str(out), "node-loss"], capture_output=True, text=True,
                          env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["errors"] == [] and result["killed_during_find"]
    # find ran (its last, successful attempt) on the node that joined, not on the one that died
    assert result["placement"]["train find"]["node"] != result["doomed"]
    for name in recipe.modules:
        assert load_card(reference / "modules", name)["weights_sha256"] == \
            load_card(cluster.modules, name)["weights_sha256"], name
    assert not [p for p in cluster.root.rglob("*") if p.name.endswith(".tmp") or p.name.endswith(".ckpt")]
