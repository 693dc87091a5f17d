"""A job's threads: what Ray grants it, never more than OMP_NUM_THREADS where that is set."""
import pytest
import torch

from modtrain.device import use_threads


@pytest.fixture
def restored_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("env, granted, expected", [(None, 2, 2), ("1", 2, 1), ("4", 2, 2), ("", 3, 3),
                                                     ("junk", 2, 2), (None, 0, 1)])
def test_a_job_uses_its_cpus_up_to_the_environments_cap(monkeypatch, restored_threads, env, granted, expected):
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    assert use_threads(granted) == expected
    assert torch.get_num_threads() == expected
