"""Kernel dirty logs (engine/kernelmem/dirtylog.py) on real memory: pages
written by plain threads with ctypes stores are exactly what sync returns;
a write after a sync shows in the next; a concurrent writer loses nothing
(precopy's property: a shadow copy refreshed from the synced pages ends
equal to the memory)."""
from __future__ import annotations

import ctypes
import mmap
import threading
import time

import numpy as np
import pytest

from livemig.engine.kernelmem import dirtylog
from livemig.engine.kernelmem.calls import buffer_address
from livemig.engine.kernelmem.mapping import SharedMemory

PS = mmap.PAGESIZE
TIMEOUT = 30.0


def _kind(kind: str):
    got = dirtylog.available(kind)
    return pytest.param(kind, marks=pytest.mark.skipif(not got, reason=str(got.reason)))


KINDS = [_kind("wp-async"), _kind("soft-dirty")]


class Memory:
    """One shmem range and one private anonymous range, as a guest's blocks."""

    def __init__(self, pages: int) -> None:
        self.shm = SharedMemory("test-dirtylog", pages * PS)
        self.anon = mmap.mmap(-1, pages * PS, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        self.ranges = [(self.shm.address, pages * PS), (buffer_address(self.anon), pages * PS)]
        self.pages = pages

    def write(self, r: int, page: int, value: int = 1) -> None:
        ctypes.memset(self.ranges[r][0] + page * PS + 17, value, 1)

    def close(self) -> None:
        self.shm.close()
        try:
            self.anon.close()
        except BufferError:  # a test's numpy views: the GC unmaps it
            pass


@pytest.fixture
def mem():
    m = Memory(256)
    yield m
    m.close()


@pytest.mark.parametrize("kind", KINDS)
def test_sync_returns_exactly_the_written_pages(mem, kind):
    log = dirtylog.open_dirty_log(mem.ranges, PS, kind)
    try:
        assert [x.size for x in log.sync()] == [0, 0]  # armed: nothing yet
        wanted = ({3, 4, 100, 255}, {0, 7})
        threads = [threading.Thread(target=mem.write, args=(r, p))
                   for r, pages in enumerate(wanted) for p in pages]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        got = log.sync()
        assert [set(x.tolist()) for x in got] == [set(w) for w in wanted]
        assert [x.size for x in log.sync()] == [0, 0]  # re-armed
        mem.write(0, 9)
        mem.write(0, 3)  # written again after its sync: reported again
        assert [x.tolist() for x in log.sync()] == [[3, 9], []]
    finally:
        log.close()


@pytest.mark.parametrize("kind", KINDS)
def test_reads_are_not_writes(mem, kind):
    log = dirtylog.open_dirty_log(mem.ranges, PS, kind)
    try:
        buf = ctypes.create_string_buffer(PS)
        for p in range(0, 256, 5):
            ctypes.memmove(buf, mem.ranges[0][0] + p * PS, PS)
        assert [x.size for x in log.sync()] == [0, 0]
    finally:
        log.close()


@pytest.mark.parametrize("kind", KINDS)
def test_more_runs_than_one_scan_holds(kind):
    pages = 2 * dirtylog.SCAN_REGIONS + 10
    m = Memory(pages)
    log = dirtylog.open_dirty_log(m.ranges[:1], PS, kind)
    try:
        every_other = list(range(0, pages, 2))  # one region each: > SCAN_REGIONS regions
        for p in every_other:
            m.write(0, p)
        assert log.sync()[0].tolist() == every_other
    finally:
        log.close()
        m.close()


@pytest.mark.parametrize("kind", [_kind("wp-async")])  # soft-dirty is not atomic
def test_a_concurrent_writer_loses_nothing(mem, kind):
    """Precopy over the log: the writer runs through every sync; a shadow copy
    refreshed from each sync's pages must end equal to the memory."""
    log = dirtylog.open_dirty_log(mem.ranges, PS, kind)
    views = [np.frombuffer(mem.shm.mmap, np.uint8).reshape(-1, PS),
             np.frombuffer(mem.anon, np.uint8).reshape(-1, PS)]
    shadow = [v.copy() for v in views]
    stop = threading.Event()
    writes = [0]

    def writer() -> None:
        rng = np.random.default_rng(1)
        while not stop.is_set():
            r, p = int(rng.integers(2)), int(rng.integers(mem.pages))
            writes[0] += 1
            mem.write(r, p, writes[0] & 0xFF)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        harvested = syncs = 0
        deadline = time.monotonic() + TIMEOUT
        # enough syncs that writes and re-arms interleave, bounded
        while (syncs < 200 or writes[0] < 20000) and time.monotonic() < deadline:
            syncs += 1
            for view, sh, pages in zip(views, shadow, log.sync()):
                sh[pages] = view[pages]
                harvested += pages.size
        stop.set()
        t.join(TIMEOUT)
        for view, sh, pages in zip(views, shadow, log.sync()):  # the final pass
            sh[pages] = view[pages]
        assert harvested > 0 and writes[0] >= 20000
        for view, sh in zip(views, shadow):
            assert np.array_equal(view, sh)
    finally:
        stop.set()
        log.close()


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="wp-async, soft-dirty"):
        dirtylog.available("kvm")


def test_soft_dirty_unavailability_says_why():
    got = dirtylog.available("soft-dirty")
    assert got.ok or "soft-dirty" in (got.reason or "")
