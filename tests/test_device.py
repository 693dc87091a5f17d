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
@pytest.mark.parametrize("where", ["whole", "window", "two windows", "disk"])
@pytest.mark.parametrize("one_call", [True, False])
def test_float_batches_are_the_rows_as_float32(half_rows, stored, where, one_call, tmp_path, monkeypatch):
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
    from modtrain import device

    if not one_call:  # a torch without _foreach_copy_
        monkeypatch.setattr(device, "_foreach_copy", None)
    source = H5Rows(path, "features", in_memory_bytes=None if where == "whole" else 0)
    if where == "window":
        source.hold([source.read(np.arange(16, 40))])
    elif where == "two windows":  # a batch that straddles them
        source.hold([source.read(np.arange(16, 32)), source.read(np.arange(32, 48))])
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


def test_float_batches_refuse_rows_past_the_end(half_rows):
    import numpy as np

    from modtrain.data import H5Rows
    from modtrain.device import FloatBatches

    path, values = half_rows
    source = H5Rows(path, "features")
    source._array = values.astype(np.float32)  # held whole, float32: numpy's gather, which does not check
    with pytest.raises(IndexError):
        FloatBatches().take(source, np.array([3, len(values)]))
    for rows in ([0, 5], [5], [len(values) - 1]):  # the first row, one row, the last row: all valid
        assert torch.equal(FloatBatches().take(source, np.array(rows)), torch.from_numpy(source._array[rows]))


def test_float_batches_keep_two_buffers_and_let_them_go(half_rows):
    import numpy as np

    from modtrain.data import H5Rows
    from modtrain.device import FloatBatches

    path, values = half_rows
    source = H5Rows(path, "features")
    batches = FloatBatches()
    held = [batches.take(source, np.arange(k, k + 4)) for k in range(3)]  # three held at once
    assert len(batches._buffers.buffers) == 2 and all(torch.equal(h, torch.from_numpy(values[k:k + 4]).float())
                                              for k, h in enumerate(held))
    kept = {b.data_ptr() for b in batches._buffers.buffers}
    del held
    larger = batches.take(source, np.arange(10, 16))  # larger than both: one makes way for it
    assert len(batches._buffers.buffers) == 2 and larger.data_ptr() not in kept
    assert larger.data_ptr() in {b.data_ptr() for b in batches._buffers.buffers}
    assert torch.equal(larger, torch.from_numpy(values[10:16]).float())
    first = batches.take(source, np.arange(4))  # in use while the other buffer, free, is too small
    del larger
    smaller_held = batches.take(source, np.arange(40, 42))
    del smaller_held
    largest = batches.take(source, np.arange(20, 28))
    assert torch.equal(largest, torch.from_numpy(values[20:28]).float()) and len(batches._buffers.buffers) == 2
    assert torch.equal(first, torch.from_numpy(values[:4]).float())
    batches.clear()
    assert batches._buffers.buffers == []
    assert torch.equal(batches.take(source, np.arange(4)), torch.from_numpy(values[:4]).float())


@pytest.mark.parametrize("streams", [True, False])
def test_a_streamed_source_is_gathered_on_one_thread_then_threads_come_back(half_rows, streams, monkeypatch):
    import numpy as np

    from modtrain import device
    from modtrain.data import H5Rows
    from modtrain.device import FloatBatches

    path, values = half_rows
    source = H5Rows(path, "features", in_memory_bytes=0 if streams else None)
    if streams:
        source.hold([source.read(np.arange(0, 32))])
    seen = []

    def copy(outs, ins):  # records the threads the gather runs on
        seen.append(torch.get_num_threads())
        return torch._foreach_copy_(outs, ins)

    monkeypatch.setattr(device, "_foreach_copy", copy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        batch = FloatBatches().take(source, np.array([3, 30, 3]))
        assert seen == [1 if streams else 2] and torch.get_num_threads() == 2
        assert torch.equal(batch, torch.from_numpy(values[[3, 30, 3]]).float())
        monkeypatch.setattr(device, "_foreach_copy", lambda outs, ins: 1 / 0)
        with pytest.raises(ZeroDivisionError):  # a failed gather gives the threads back too
            FloatBatches().take(source, np.array([3]))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
