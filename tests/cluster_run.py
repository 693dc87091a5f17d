"""Run a recipe on a simulated Ray cluster with GPUs (``ray.cluster_utils.Cluster``), in a
process of its own (a test process may already hold a local Ray). Used by tests/test_scale.py.

    python tests/cluster_run.py RECIPE.toml WORKDIR DATA OUT.json            # two nodes, 2 GPUs each
    python tests/cluster_run.py RECIPE.toml WORKDIR DATA OUT.json node-loss  # the GPU node dies mid-job
"""
import json
import os
import sys
import threading
import time
from pathlib import Path

os.environ["RAY_AUTH_MODE"] = "disabled"

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from modtrain.distributed import run_pipeline_on_ray  # noqa: E402
from modtrain.errors import ModtrainError  # noqa: E402
from modtrain.recipe import Recipe  # noqa: E402
from modtrain.workdir import Workdir  # noqa: E402


def node_loss(recipe: Recipe, workdir: Workdir, out: str) -> None:
    """The head has no GPU; one node has 2. Once find has checkpointed an epoch on it, a second GPU
    node joins and the first one's raylet is killed: the job is retried there and resumes."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    messages, errors = [], []

    def run() -> None:
        try:
            run_pipeline_on_ray(recipe, workdir, cluster.address, messages.append, gpus=1, cpus_per_job=1)
        except BaseException as e:  # noqa: BLE001 - whatever ends the run in this thread is reported in the JSON
            errors.append(repr(e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    checkpoint = workdir.modules / ".find.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    killed_during_find = checkpoint.exists()
    doomed_id = doomed.node_id
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.remove_node(doomed, allow_graceful=False)
    thread.join(600)
    try:
        placement = json.loads((workdir.reports / "jobs.json").read_text()).get("placement", {})
        Path(out).write_text(json.dumps({"messages": messages, "errors": errors,
                                         "killed_during_find": killed_during_find,
                                         "doomed": doomed_id, "placement": placement}))
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    recipe_path, root, data, out = sys.argv[1:5]
    if sys.argv[5:] == ["node-loss"]:
        return node_loss(Recipe.load(recipe_path), Workdir(Path(root), Path(data)), out)
    # two nodes declaring 2 GPUs and 2 CPUs each; a job asks for 1 CPU and 1 GPU
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 2, "include_dashboard": False})
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    recipe = Recipe.load(recipe_path)
    workdir = Workdir(Path(root), Path(data))
    result = {}
    try:
        try:
            run_pipeline_on_ray(recipe, workdir, cluster.address, print, gpus=3, cpus_per_job=1)
        except ModtrainError as e:
            result["too_many_gpus"] = str(e)
        messages = []
        run_pipeline_on_ray(recipe, workdir, cluster.address, messages.append, gpus=1, cpus_per_job=1)
        result["messages"] = messages
        result["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        Path(out).write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
