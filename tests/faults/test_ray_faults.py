"""Ray faults: a user error inside a job, an address nobody answers at, a driver killed with SIGKILL."""
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from modtrain.distributed import connect, run_pipeline_on_ray
from modtrain.errors import ModtrainError
from modtrain.workdir import Workdir

pytestmark = pytest.mark.slow


def test_a_user_error_in_a_ray_job_is_the_same_one_line(ray_local, tiny_run, tmp_path):
    recipe, workdir, _, _ = tiny_run
    copy = Workdir(tmp_path / "run", workdir.data)
    shutil.copytree(workdir.root, copy.root, ignore=shutil.ignore_patterns("data", ".modtrain.lock"))
    diverging = recipe.with_overrides(["modules.measure.lr=1e12", "train.max_epochs=5"])
    with pytest.raises(ModtrainError) as error:
        run_pipeline_on_ray(diverging, copy, "local", lambda m: None, gpus=None, cpus_per_job=2)
    message = str(error.value)
    assert message.startswith("measure: training diverged: the loss of epoch 1 is ")
    assert "\n" not in message and "ray::" not in message and "Traceback" not in message


def test_an_address_nobody_answers_at_fails_at_once():
    start = time.perf_counter()
    with pytest.raises(ModtrainError, match=r"cannot reach the Ray cluster at '127.0.0.1:1' .*'ray start --head'"):
        connect("127.0.0.1:1")
    assert time.perf_counter() - start < 30


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.starts_ray
def test_a_killed_driver_leaves_no_ray_processes(tmp_path):
    driver = subprocess.Popen([sys.executable, "-c", (
        "import os, time\n"
        "from modtrain.distributed import connect\n"
        "from modtrain.reaper import descendants\n"
        "connect('local', num_cpus=1)\n"
        "time.sleep(2)\n"  # the agents start after ray.init returns
        "print(' '.join(map(str, descendants(os.getpid()))), flush=True)\n"
        "time.sleep(600)\n")], stdout=subprocess.PIPE, text=True, env={**os.environ, "RAY_AUTH_MODE": "disabled"})
    try:
        pids = [int(p) for p in driver.stdout.readline().split()]
        assert len(pids) >= 3  # raylet, GCS, agents, the reaper
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.5)
    survivors = [p for p in pids if _alive(p)]
    assert survivors == [], [open(f"/proc/{p}/cmdline").read().replace("\0", " ")[:80] for p in survivors]
