"""Shared fixtures: a hand-built scene, a tiny generated CLEVR folder, the tiny pipeline runs, Ray.

``make test`` runs the suite on two pytest-xdist workers (``-n 2``): most of its time is tiny
models trained in Python, one core each. Then each worker, and what it starts, computes on one
thread, the tiny runs are trained once for the session (the first worker that needs one trains it,
the other reads it), and every test that starts Ray runs on one worker (the ``ray`` group).
"""
from __future__ import annotations

import os
import pickle
import time
import types

if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported; inherited by the subprocesses
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
from modtrain.datasets.clevr import Scene  # noqa: E402


@pytest.fixture
def scene() -> Scene:
    """Four objects with hand-written relations.

    0 large red metal cube (x=-2, y=0)      1 small blue rubber sphere (x=0, y=-1)
    2 large red rubber cylinder (x=2, y=1)  3 small green metal sphere (x=1, y=2)
    Larger x is right; larger y is front.
    """
    objects = [
        {"color": "red", "size": "large", "shape": "cube", "material": "metal", "3d_coords": [-2, 0, 0.7]},
        {"color": "blue", "size": "small", "shape": "sphere", "material": "rubber", "3d_coords": [0, -1, 0.35]},
        {"color": "red", "size": "large", "shape": "cylinder", "material": "rubber", "3d_coords": [2, 1, 0.7]},
        {"color": "green", "size": "small", "shape": "sphere", "material": "metal", "3d_coords": [1, 2, 0.35]},
    ]
    relationships = {
        "left": [[], [0], [0, 1, 3], [0, 1]],
        "right": [[1, 2, 3], [2, 3], [], [2]],
        "front": [[2, 3], [0, 2, 3], [3], []],
        "behind": [[1], [], [0, 1], [0, 1, 2]],
    }
    return Scene("train", 0, "CLEVR_train_000000.png", objects, relationships)


def once_per_session(tmp_path_factory, name: str, make):
    """``make(folder)``, computed once per test session: without workers, into a fresh folder; with
    pytest-xdist's, by the first worker that asks, under a lock, in a folder every worker sees (the
    others wait and read its pickled result)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp().parent  # the session's folder, above each worker's own
    folder, done = shared / name, shared / f"{name}.pickle"
    with FileLock(str(shared / f"{name}.lock")):
        if done.exists():
            return pickle.loads(done.read_bytes())
        folder.mkdir()
        result = make(folder)
        done.write_bytes(pickle.dumps(result))
    return result


@pytest.fixture(scope="session", autouse=True)
def _shared_runs_train_side_by_side(request):
    """On pytest-xdist's second worker, train ``clevr_run`` before the first test where the session
    has tests that read it: the first worker to ask trains ``tiny_run`` meanwhile, so the two shared
    runs train side by side instead of one worker waiting for the other's."""
    if os.environ.get("PYTEST_XDIST_WORKER") == "gw1" and any(
            "clevr_run" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("clevr_run")


@pytest.fixture(scope="session")
def tiny_clevr(tmp_path_factory):
    """A generated CLEVR folder: 30/8/8 images, 6 questions each, every family."""
    from modtrain.datasets.generate import generate

    root = tmp_path_factory.mktemp("clevr")
    generate(root, {"train": 30, "val": 8, "test": 8}, questions_per_image=6, families="all", seed=3)
    return root


# 20 questions per image: with 8, find's surrogate barely beat the prior on 476 validation
# questions (NLL gain 6.3%, interval 3.7–9.1%), too near trust.min_gain (5%) for a fixture whose
# run must trust it on every CPU; with 20 the gain is 27–30% over three data and training seeds.
TINY_RUN = ["data.images=250", "data.val_images=60", "data.test_images=30", "data.questions_per_image=20",
            "data.pretrain_images=1000", "data.pretrain_epochs=6", "train.max_epochs=20", "train.patience=5",
            "train.lr=0.005", "train.device='cpu'"]


@pytest.fixture(scope="session")
def tiny_overrides():
    """Recipe overrides for the tiny runs."""
    return list(TINY_RUN)


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The nmn-typed pipeline run once on a tiny generated dataset: (recipe, workdir, report, messages)."""
    import torch

    from modtrain.pipeline import run_pipeline
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    def make(folder):
        recipe = Recipe.load("nmn-typed", TINY_RUN)
        workdir = Workdir.for_recipe(recipe, folder)
        messages = []
        report = run_pipeline(recipe, workdir, torch.device("cpu"), say=messages.append)
        return recipe, workdir, report, messages

    return once_per_session(tmp_path_factory, "run", make)


# Every CLEVR program (nmn-clevr) on tiny all-family data: small batches and patience, since find
# and relate, trained through their surrogates, need many steps on 400 images.
CLEVR_RUN = ["data.images=400", "data.val_images=80", "data.test_images=40", "data.questions_per_image=10",
             "data.pretrain_images=1000", "data.pretrain_epochs=6", "train.max_epochs=40", "train.patience=10",
             "train.lr=0.005", "modules.find.batch_size=64", "modules.describe.batch_size=64",
             "modules.measure.batch_size=64", "train.device='cpu'",
             # the data these tests were written on: without depth balancing (nmn-clevr's default now),
             # whose deep questions 400 images cannot teach; the balanced data has its own tests
             "data.balance_depth='none'"]


@pytest.fixture(scope="session")
def clevr_run(tmp_path_factory):
    """The nmn-clevr pipeline run once on tiny all-family data: (recipe, workdir, report, messages)."""
    import torch

    from modtrain.pipeline import run_pipeline
    from modtrain.recipe import Recipe
    from modtrain.workdir import Workdir

    def make(folder):
        recipe = Recipe.load("nmn-clevr", CLEVR_RUN)
        workdir = Workdir.for_recipe(recipe, folder)
        messages = []
        # The tests of this run are about every program's layouts, not about trust: it goes on whatever
        # the surrogates say, as a user would after reading the message.
        report = run_pipeline(recipe, workdir, torch.device("cpu"), say=messages.append, allow_untrusted=True)
        return recipe, workdir, report, messages

    return once_per_session(tmp_path_factory, "clevr-run", make)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for the whole session: 2 CPUs, no dashboard, no auth."""
    import os

    import ray

    os.environ["RAY_AUTH_MODE"] = "disabled"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# A test that uses a trained pipeline or Ray is slow, whether or not it says so: the fast loop
# ('pytest -m "not slow"') must never train a pipeline or start Ray because of a fixture.
SLOW_FIXTURES = {"tiny_run", "clevr_run", "ray_local"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if SLOW_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
        # under `-n 2 --dist loadgroup`: one local Ray at a time, on one worker; a module's tests that
        # share a module-scoped fixture on the worker that made it
        if "ray_local" in names or item.get_closest_marker("starts_ray"):
            item.add_marker(pytest.mark.xdist_group("ray"))
        elif any(d.scope == "module" for defs in getattr(item, "_fixtureinfo", types.SimpleNamespace(
                name2fixturedefs={})).name2fixturedefs.values() for d in defs):
            item.add_marker(pytest.mark.xdist_group(item.module.__name__))


@pytest.fixture
def validations(monkeypatch):
    """Counts ``Job._validate`` calls (``.calls``, one per epoch); with ``.stop_at = n`` the n-th
    raises KeyboardInterrupt: a job interrupted in that epoch, after the previous one's checkpoint."""
    from modtrain.job import Job

    real = Job._validate
    state = types.SimpleNamespace(calls=0, stop_at=None)

    def counted(self):
        state.calls += 1
        if state.calls == state.stop_at:
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(Job, "_validate", counted)
    return state


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With MODTRAIN_TEST_TIMELINE=FILE: one line per test (worker, start, end, test) appended to
    FILE, to see how the suite spreads over pytest-xdist's workers."""
    path = os.environ.get("MODTRAIN_TEST_TIMELINE")
    start = time.time()
    yield
    if path:
        with open(path, "a") as f:
            f.write(f"{os.environ.get('PYTEST_XDIST_WORKER', '-')} {start:.1f} {time.time():.1f} "
                    f"{item.nodeid}\n")
