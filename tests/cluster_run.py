"""Run a recipe on a simulated Ray cluster with GPUs (``ray.cluster_utils.Cluster``), in a
process of its own (a test process may already hold a local Ray). Used by tests/test_scale.py.

    python tests/cluster_run.py RECIPE.toml WORKDIR DATA OUT.json

The head has no GPU; one node has 2. A run asking 3 GPUs a job is refused first. Then, once find
has checkpointed an epoch, a second GPU node joins and the first one's raylet is killed: the job
is retried there and resumes.
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


def main() -> None:
    recipe_path, root, data, out = sys.argv[1:5]
    recipe, workdir = Recipe.load(recipe_path), Workdir(Path(root), Path(data))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "num_gpus": 0, "include_dashboard": False})
    doomed = cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.wait_for_nodes()
    result = {"messages": [], "errors": [], "doomed": doomed.node_id}
    try:
        run_pipeline_on_ray(recipe, workdir, cluster.address, print, gpus=3, cpus_per_job=1)
    except ModtrainError as e:
        result["too_many_gpus"] = str(e)

    def run() -> None:
        try:
            report = run_pipeline_on_ray(recipe, workdir, cluster.address, result["messages"].append, gpus=1,
                                         cpus_per_job=1)
            result["val_accuracy"] = report["splits"]["val"]["accuracy"]
        except BaseException as e:  # noqa: BLE001 - whatever ends the run in this thread is reported in the JSON
            result["errors"].append(repr(e))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    checkpoint = workdir.modules / ".find.ckpt"
    deadline = time.time() + 300
    while not checkpoint.exists() and thread.is_alive() and time.time() < deadline:
        time.sleep(0.05)
    result["killed_during_find"] = checkpoint.exists()
    cluster.add_node(num_cpus=2, num_gpus=2)
    cluster.remove_node(doomed, allow_graceful=False)
    thread.join(600)
    try:
        result["nodes"] = sorted(n["NodeID"] for n in ray.nodes() if n["Alive"])
        result["placement"] = json.loads((workdir.reports / "jobs.json").read_text()).get("placement", {})
        Path(out).write_text(json.dumps(result))
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main()
