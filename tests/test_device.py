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


@pytest.fixture
def half_rows(tmp_path):
    import h5py
    import numpy as np

    values = np.random.default_rng(0).standard_normal((64, 3, 4, 4)).astype(np.float16)
    path = tmp_path / "features.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=values, chunks=(8, 3, 4, 4))
    return path, values


@pytest.mark.parametrize("stored", ["float16", "float32"])
@pytest.mark.parametrize("where", ["whole", "window", "disk"])
def test_float_batches_are_the_rows_as_float32(half_rows, stored, where, tmp_path):
    import h5py
    import numpy as np

    from modtrain.data import H5Rows
    from modtrain.device import FloatBatches

    path, values = half_rows
    if stored == "float32":
        values = values.astype(np.float32)
        path = tmp_path / "float32.h5"
        with h5py.File(path, "w") as f:
            f.create_dataset("features", data=values, chunks=(8, 3, 4, 4))
    source = H5Rows(path, "features", in_memory_bytes=None if where == "whole" else 0)
    if where == "window":
        source.hold([source.read(np.arange(16, 40))])
    rows = np.array([17, 39, 17, 20, 33])
    batch = FloatBatches().take(source, rows)
    assert batch.dtype == torch.float32 and batch.shape == (5, 3, 4, 4)
    assert torch.equal(batch, torch.from_numpy(values[rows]).float())


def test_a_float_batch_is_not_overwritten_while_anything_holds_it(half_rows):
    import numpy as np

    from modtrain.data import H5Rows
    from modtrain.device import FloatBatches

    path, values = half_rows
    source = H5Rows(path, "features")
    batches = FloatBatches()
    expected = {k: torch.from_numpy(values[k * 4:k * 4 + 4]).float() for k in range(6)}

    def take(k):
        return batches.take(source, np.arange(k * 4, k * 4 + 4))

    first = take(0)
    pointer = first.data_ptr()
    second = take(1)  # the first is still held: another buffer
    assert second.data_ptr() != pointer
    del first
    third = take(2)  # the first's buffer is free again
    assert third.data_ptr() == pointer
    detached, as_numpy = third.detach(), second.numpy()
    del third, second
    fourth = take(3)  # both buffers still shared: a new tensor
    assert fourth.data_ptr() not in (pointer, detached.data_ptr(), as_numpy.ctypes.data)
    assert torch.equal(detached, expected[2]) and np.array_equal(as_numpy, expected[1].numpy())
    assert torch.equal(fourth, expected[3])
    del detached, fourth
    smaller = batches.take(source, np.arange(60, 62))  # a last, smaller batch: a view of a kept buffer
    assert smaller.data_ptr() == pointer and torch.equal(smaller, torch.from_numpy(values[60:62]).float())
