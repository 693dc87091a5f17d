"""Jobs on a Ray cluster: one task per module job, dependencies as object references.

``--address local`` starts Ray on this machine's CPUs; ``auto`` or ``HOST:PORT`` joins a
running cluster (``ray start --head`` / ``ray start --address=...``). Every node must see
the workdir at the same absolute path (a shared filesystem) and have modtrain installed.
Training jobs ask for ``--gpus-per-job`` GPUs (default: 1 where the cluster has GPUs,
0 otherwise; a fraction such as 0.5 packs two small modules on one GPU). Asking for GPUs a
cluster does not have fails at once, since Ray would wait for them forever.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any, Callable

from modtrain.errors import ModtrainError
from modtrain.reaper import descendants, watch

log = logging.getLogger(__name__)


def connect(address: str = "local", num_cpus: int | None = None):
    """Start or join Ray once per process; returns the ``ray`` module."""
    import ray

    # a failed job is reported once, as its one line (``get``); the jobs after it fail with the
    # same error, which Ray would print again as "Unhandled error" stacks when their refs go
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    if address != "local":
        _reachable(address)
    if ray.is_initialized():
        return ray
    if address == "local":
        # a cluster of our own on this machine: no token to share with anyone
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, logging_level=logging.WARNING,
                 log_to_driver=False)
        watch(descendants(os.getpid()))  # its processes go with this one, even if it is killed
    else:
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise ModtrainError(f"cannot join the Ray cluster at {address!r}: {e}; start one with "
                                f"'ray start --head' or use --address local") from None
    return ray


# An HTTP/2 client's opening (what a gRPC client such as Ray's sends first) and an empty SETTINGS frame
_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def _reachable(address: str, timeout: float = 10.0) -> None:
    """Fail within ``timeout`` for a HOST:PORT where no Ray cluster answers (Ray itself retries
    for minutes, and prints native warnings meanwhile): Ray's GCS is a gRPC server, so it must
    answer an HTTP/2 opening with a SETTINGS frame; a web server, or a service that says
    nothing, does not."""
    target = address.removeprefix("ray://")
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    advice = "start one with 'ray start --head' (it prints the address) or use --address local"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as conn:
            conn.settimeout(timeout)
            conn.sendall(_HTTP2_PREFACE)
            reply = b""
            while len(reply) < 9:
                chunk = conn.recv(9 - len(reply))
                if not chunk:
                    break
                reply += chunk
    except socket.timeout:
        raise ModtrainError(f"{address!r} accepts connections but did not answer as a Ray cluster within "
                            f"{timeout:g} s; {advice}") from None
    except (OSError, ValueError) as e:
        raise ModtrainError(f"cannot reach the Ray cluster at {address!r} ({e}); {advice}") from None
    if len(reply) < 9 or reply[3] != 0x4:  # frame type 4: SETTINGS
        said = reply[:20].decode("latin-1").split("\r")[0] or "nothing"
        raise ModtrainError(f"{address!r} is not a Ray cluster: it answered {said!r} where Ray's GCS speaks gRPC; "
                            f"{advice}")


def get(ray, refs):
    """``ray.get``, with a user error raised in a job shown as the one line it is in-process."""
    try:
        return ray.get(refs)
    except ray.exceptions.RayTaskError as e:
        if isinstance(e.cause, ModtrainError):
            raise ModtrainError(str(e.cause)) from None
        raise


def gpus_per_job(requested: float | None) -> float:
    """GPUs each training job asks for, checked against what each node of the cluster has (a job
    runs on one node: asking for more than any node has would make Ray wait forever)."""
    import ray

    available = float(ray.cluster_resources().get("GPU", 0.0))
    if requested is None:
        return 1.0 if available >= 1 else 0.0
    if requested < 0:
        raise ModtrainError(f"--gpus-per-job {requested:g}: must be 0 or more")
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    largest = max((float(n["Resources"].get("GPU", 0.0)) for n in nodes), default=0.0)
    if requested > 0 and largest < requested:
        per_node = "; ".join(f"node {n['NodeID'][:8]}: {float(n['Resources'].get('GPU', 0.0)):g} GPU(s), "
                             f"{float(n['Resources'].get('CPU', 0.0)):g} CPU(s)" for n in nodes)
        raise ModtrainError(f"--gpus-per-job {requested:g}: the Ray cluster has {available:g} GPU(s) and no node has "
                            f"more than {largest:g} ({per_node}); Ray would wait forever. Use --gpus-per-job "
                            f"{largest:g} or less, or 0 to train on CPUs")
    return requested


def absolute(path: str | Path, what: str = "storage path") -> Path:
    """A path every node can resolve: absolute, or an error saying so."""
    path = Path(path)
    if not path.is_absolute():
        raise ModtrainError(f"{what} {str(path)!r} is relative; Ray jobs on other nodes need an absolute path "
                            f"on storage every node sees (e.g. {Path(path).resolve()})")
    return path


def _job(kind: str, module: str | None, recipe_raw: dict, recipe_where: str, root: str, data: str,
         device: str, threads: int, allow_untrusted: bool, *upstream: Any) -> dict[str, Any]:
    """One job of the plan, run in a Ray worker (``upstream`` only orders it after its dependencies)."""
    import ray
    import torch

    from modtrain.data import PreparedData
    from modtrain.device import use_threads
    from modtrain.pipeline import run_job
    from modtrain.plan import make_plan
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    use_threads(threads)
    recipe = Recipe(recipe_raw, recipe_where)
    plan = make_plan(recipe)
    job = next(j for j in plan.jobs if (j.kind, j.module) == (kind, module))
    gpu_ids = [str(g) for g in ray.get_gpu_ids()]
    fallback = device.startswith("cuda") and not torch.cuda.is_available()
    if fallback:  # a GPU granted by Ray, but no CUDA device in this worker (a simulated cluster)
        device = "cpu"
    started = time.time()
    result = run_job(job, recipe, plan, Workdir(Path(root), Path(data)), PreparedData(data), torch.device(device),
                     say=log.info, allow_untrusted=allow_untrusted)
    result["placement"] = {"node": ray.get_runtime_context().get_node_id(), "gpu_ids": gpu_ids, "device": device,
                           "cpu_fallback": fallback, "pid": os.getpid(), "started": started, "ended": time.time()}
    return result


def run_pipeline_on_ray(recipe, workdir, address: str, say: Callable[[str], None], gpus: float | None = None,
                        cpus_per_job: int = 1, allow_untrusted: bool = False, grow_from=None,
                        grow_only: list[str] | None = None) -> dict:
    """``modtrain run --address``: the plan's jobs as Ray tasks; independent ones run at once."""
    from modtrain.workdir import Workdir

    workdir = Workdir(workdir.root.resolve(), workdir.data.resolve())
    with workdir.lock():
        return _run_on_ray(recipe, workdir, address, say, gpus, cpus_per_job, allow_untrusted, grow_from, grow_only)


def _run_on_ray(recipe, workdir, address: str, say: Callable[[str], None], gpus: float | None,
                cpus_per_job: int, allow_untrusted: bool, grow_from=None, grow_only: list[str] | None = None) -> dict:
    import torch

    from modtrain.pipeline import describe_result, prepare_run, record_job_time
    from modtrain.plan import make_plan

    ray = connect(address)
    gpu = gpus_per_job(gpus)
    prepare_run(recipe, workdir, torch.device("cpu"), say, grow_from, grow_only)
    remote = ray.remote(_job)
    refs: dict[str, Any] = {}
    plan = make_plan(recipe)
    for job in plan.jobs:  # sorted by level: every dependency is submitted before its dependents
        use_gpu = gpu if job.kind == "train" else 0.0
        refs[job.name] = remote.options(num_cpus=cpus_per_job, num_gpus=use_gpu, name=job.name).remote(
            job.kind, job.module, recipe.raw, recipe.where, str(workdir.root), str(workdir.data),
            "cuda" if use_gpu else "cpu", cpus_per_job, allow_untrusted, *[refs[d] for d in job.after])
    say(f"submitted {len(refs)} jobs to Ray: "
        + " | ".join(" ∥ ".join(j.name for j in level) for level in plan.levels()))
    report = None
    pending = dict(refs)
    fallback_said = False
    while pending:
        done, _ = ray.wait(list(pending.values()), num_returns=1)
        name = next(n for n, r in pending.items() if r == done[0])
        del pending[name]
        try:
            result = get(ray, done[0])
        except BaseException:
            for ref in pending.values():  # the jobs after a failed one would only fail the same way
                ray.cancel(ref)
            raise
        placement = result.get("placement", {})
        if placement.get("cpu_fallback") and not fallback_said:
            say(f"{name}: Ray granted GPU {', '.join(placement['gpu_ids'])} but its worker sees no CUDA device; "
                f"training jobs run on the CPU (said once)")
            fallback_said = True
        say(describe_result(result) + (f" [node {placement['node'][:8]}, GPU {','.join(placement['gpu_ids'])}]"
                                       if placement.get("gpu_ids") else ""))
        if not result["skipped"] and name != "assemble":
            record_job_time(workdir, name, result["seconds"], placement)
        report = result.get("report", report)
    return report


def run_tasks(fn: Callable, arg_lists: list[tuple], address: str | None, device: str,
              say: Callable[[str], None], labels: list[str], cpus: int = 1, gpus: float | None = None) -> list[Any]:
    """``fn(*args, device, threads)`` for every args tuple: in this process, one after another,
    or with ``address`` as Ray jobs all at once (results in the order given)."""
    if address is None:
        out = []
        for args, label in zip(arg_lists, labels):
            say(label)
            out.append(fn(*args, device, 0))
        return out
    ray = connect(address)
    gpu = gpus_per_job(gpus)
    remote = ray.remote(fn).options(num_cpus=cpus, num_gpus=gpu)
    refs = [remote.remote(*args, "cuda" if gpu else "cpu", cpus) for args in arg_lists]
    say(f"submitted {len(refs)} jobs to Ray")
    return get(ray, refs)
