"""The window order for streamed data: batches drawn from windows of HDF5 chunks, read ahead."""
import threading
import weakref

import h5py
import numpy as np
import pytest

from modtrain import data as data_module
from modtrain.data import H5Rows, ReadAhead, shuffled_batches, window_batches

CHUNK = 8  # rows per chunk in the test file


@pytest.fixture
def rows_file(tmp_path):
    path = tmp_path / "features.h5"
    values = np.arange(200 * 3, dtype=np.float32).reshape(200, 3)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=values, chunks=(CHUNK, 3))
    return path, values


def chunk_reads(monkeypatch):
    """Which chunks every read from disk touches, in order."""
    seen = []
    read_rows = data_module.read_rows

    def spy(dataset, rows, out=None):
        seen.append(sorted(set((np.asarray(rows) // CHUNK).tolist())))
        return read_rows(dataset, rows, out)

    monkeypatch.setattr(data_module, "read_rows", spy)
    return seen


def flat(units):
    return [b for batches, _ in units for b in batches]


def test_every_row_once_in_full_batches_each_drawn_from_its_window():
    rows = np.arange(1000, 3000)
    blocks = rows // 50  # 40 chunks of 50 rows
    units = window_batches(rows, blocks, 64, seed=3, epoch=1, window=4)
    batches = flat(units)
    stream = np.concatenate(batches)
    assert sorted(stream.tolist()) == rows.tolist()
    assert [len(b) for b in batches[:-1]] == [64] * (len(batches) - 1)
    assert len(units) == 10  # one per window of 4 chunks
    assert sorted(np.concatenate([window for _, window in units]).tolist()) == rows.tolist()
    for i, (unit, window) in enumerate(units):
        assert len(set((window // 50).tolist())) == 4
        # every batch's rows are its window's, but the last one's, which may reach into the next
        assert all(set(b.tolist()) <= set(window.tolist()) for b in unit[:-1])
        following = set(units[i + 1][1].tolist()) if i + 1 < len(units) else set()
        assert set(unit[-1].tolist()) <= set(window.tolist()) | following
    # the same seed and epoch give the same order; another epoch another one
    again = flat(window_batches(rows, blocks, 64, 3, 1, 4))
    assert all(np.array_equal(a, b) for a, b in zip(batches, again))
    other = np.concatenate(flat(window_batches(rows, blocks, 64, 3, 2, 4)))
    assert not np.array_equal(stream, other)


def test_chunks_and_rows_within_a_window_are_shuffled():
    rows = np.arange(400)
    blocks = rows // 10
    firsts, positions = set(), []
    for epoch in range(40):
        stream = np.concatenate(flat(window_batches(rows, blocks, 16, 0, epoch, 5)))
        firsts.add(int(stream[0] // 10))
        positions.append(int(np.flatnonzero(stream == 7)[0]))
        window = stream[:50]  # the first window: 5 whole chunks, rows in no chunk order
        assert len(set((window // 10).tolist())) == 5
        assert not np.array_equal(window, np.sort(window))
    assert len(firsts) > 20  # any chunk can come first
    assert max(positions) - min(positions) > 200  # and a row anywhere in the epoch


def test_a_window_of_one_chunk_and_a_window_of_all_chunks():
    rows = np.arange(100)
    one = window_batches(rows, rows // 10, 10, 1, 1, 1)
    assert all(len(set((b // 10).tolist())) == 1 for b in flat(one))  # batch = chunk
    everything = window_batches(rows, rows // 10, 10, 1, 1, 1000)
    assert len(everything) == 1  # one window: a uniform shuffle of the rows
    assert window_batches(rows[:0], rows[:0], 10, 1, 1, 4) == []


def test_held_rows_are_served_from_memory_and_others_from_disk(rows_file, monkeypatch):
    path, values = rows_file
    source = H5Rows(path, "features", in_memory_bytes=0)  # streams
    assert source.streams() and source.chunk_rows == CHUNK and source.nbytes == values.nbytes
    window = source.read(np.array([40, 17, 41, 17]))
    assert window[0].tolist() == [17, 40, 41]
    source.hold([window])
    seen = chunk_reads(monkeypatch)
    np.testing.assert_array_equal(source.take(np.array([41, 17, 41])), values[[41, 17, 41]])
    assert seen == []
    np.testing.assert_array_equal(source.take(np.array([41, 18])), values[[41, 18]])  # 18 is not held
    assert seen == [[2, 5]]
    source.hold([])
    source.take(np.array([40]))
    assert seen[-1] == [5]
    assert H5Rows(path, "features", in_memory_bytes=values.nbytes).streams() is False


def test_read_ahead_reads_each_window_once_and_serves_its_batches_from_memory(rows_file, monkeypatch):
    path, values = rows_file
    source = H5Rows(path, "features", in_memory_bytes=0)
    rows = np.arange(200)
    units = window_batches(rows, rows // CHUNK, 16, 0, 1, window=5)
    seen = chunk_reads(monkeypatch)
    threads = set()

    def reads(batch_rows):
        threads.add(threading.current_thread().name)
        return [(source, batch_rows)]

    out = []
    for batch in ReadAhead(units, reads):
        out.append(batch)
        np.testing.assert_array_equal(source.take(batch), values[batch])
    assert [b.tolist() for b in out] == [b.tolist() for b in flat(units)]
    assert len(seen) == len(units)  # one read per window, none per batch
    assert sum(len(chunks) for chunks in seen) == 25  # each chunk once
    assert all(name.startswith("read-ahead") for name in threads)
    assert source._held == []  # nothing held after the epoch
    # the uniform order reads a batch at a time, across the file
    seen.clear()
    for batch in ReadAhead([(shuffled_batches(rows, 16, 0, 1), rows)], None):
        source.take(batch)
    assert len(seen) == 13 and sum(len(chunks) for chunks in seen) > 100


def test_read_ahead_lets_go_of_its_window_when_training_stops(rows_file):
    source = H5Rows(rows_file[0], "features", in_memory_bytes=0)
    units = window_batches(np.arange(200), np.arange(200) // CHUNK, 16, 0, 1, window=5)
    batches = iter(ReadAhead(units, lambda r: [(source, r)]))
    next(batches)
    assert source._held != []
    batches.close()
    assert source._held == []


def test_a_window_array_is_filled_again_only_once_nothing_refers_to_it(rows_file):
    path, values = rows_file
    source = H5Rows(path, "features", in_memory_bytes=0)
    first, second, third = (source.read(np.arange(8 * k, 8 * k + 8)) for k in range(3))
    bases = [id(w[1].base) for w in (first, second, third)]  # ids: a reference would keep them in use
    assert len(set(bases)) == 3 and len(source._windows.buffers) == 3
    source.hold([first])
    kept = third[1][2:4]  # a view of the third window outlives it
    del second, third
    fourth = source.read(np.arange(100, 108))  # only the second's array is free
    assert id(fourth[1].base) == bases[1]
    np.testing.assert_array_equal(fourth[1], values[100:108])
    np.testing.assert_array_equal(source.take(np.arange(8)), values[:8])  # the held window is intact
    np.testing.assert_array_equal(kept, values[18:20])
    fifth = source.read(np.arange(120, 128))  # every kept array in use: a new one, not kept
    assert id(fifth[1].base) not in bases and len(source._windows.buffers) == 3
    np.testing.assert_array_equal(fifth[1], values[120:128])
    source.hold([])
    del first, kept, fourth
    larger = source.read(np.arange(0, 40))  # larger than any kept array: one free one makes way
    np.testing.assert_array_equal(larger[1], values[:40])
    assert len(source._windows.buffers) == 3 and any(larger[1].base is w for w in source._windows.buffers)


def test_an_epoch_of_windows_fills_at_most_three_arrays_and_lets_them_go_at_its_end(rows_file):
    path, values = rows_file
    source = H5Rows(path, "features", in_memory_bytes=0)
    rows = np.arange(200)
    units = window_batches(rows, rows // CHUNK, 8, 0, 1, window=2)
    assert len(units) > 10
    arrays, ended = [], []  # weak references: a reference would keep an array in use
    for batch in ReadAhead(units, lambda r: [(source, r)], lambda: ended.append(True)):
        np.testing.assert_array_equal(source.take(batch), values[batch])
        for window in source._held:
            if not any(a() is window[1].base for a in arrays):
                arrays.append(weakref.ref(window[1].base))
        assert len(source._windows.buffers) <= 3 and ended == []
    assert len(arrays) <= 3  # every window after the third filled one of the first three's arrays
    assert source._windows.buffers == [] and ended == [True]


def test_chunks_read_whole_and_next_to_each_other_are_one_read(rows_file, monkeypatch):
    from modtrain import io

    path, values = rows_file
    runs = []
    read_run = io._read_run

    def spy(dataset, lo, hi, out):
        runs.append((lo, hi))
        read_run(dataset, lo, hi, out)

    monkeypatch.setattr(io, "_read_run", spy)
    rows = np.r_[np.arange(0, 24), 40, 42, np.arange(48, 56), np.arange(64, 72), 199]
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(io.read_rows(f["features"], rows), values[rows])
        out = np.full((len(rows), 3), -1, np.float32)
        assert io.read_rows(f["features"], rows, out) is out
    np.testing.assert_array_equal(out, values[rows])
    # chunks 0-2 in one read; 40 and 42 picked from their chunk; chunks 6 and 8 do not touch; 199 alone
    assert runs == [(0, 24), (48, 56), (64, 72), (199, 200)] * 2
