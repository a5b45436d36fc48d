"""userfaultfd on real memory (engine/kernelmem/uffd.py): a thread that reads
a missing page sleeps in the kernel until the handler places it; zero pages;
a discarded page faults again; a page is placed once (EEXIST is reported)."""
from __future__ import annotations

import ctypes
import errno
import mmap
import threading

import pytest

from livemig.engine.kernelmem import abi
from livemig.engine.kernelmem.calls import buffer_address
from livemig.engine.kernelmem.mapping import SharedMemory, discard_private
from livemig.engine.kernelmem.uffd import PageExists, UffdUnavailable, Userfaultfd, available

PS = mmap.PAGESIZE
TIMEOUT = 10.0
AVAIL = available(abi.UFFD_FEATURE_MISSING_SHMEM)
pytestmark = pytest.mark.skipif(not AVAIL, reason=f"userfaultfd: {AVAIL.reason}")


class Reader:
    """A thread that copies one page out with ctypes.memmove (GIL released)."""

    def __init__(self, addr: int) -> None:
        self.buf = ctypes.create_string_buffer(PS)
        self.done = threading.Event()
        self.addr = addr
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        ctypes.memmove(self.buf, self.addr, PS)
        self.done.set()


def _next_fault(uffd: Userfaultfd):
    assert uffd.wait(TIMEOUT), "no fault message came"
    faults = uffd.read_faults()
    assert faults
    return faults[0]


@pytest.fixture
def shm():
    mem = SharedMemory("test-uffd", 8 * PS)
    yield mem
    mem.close()


@pytest.fixture
def uffd(shm):
    u = Userfaultfd(abi.UFFD_FEATURE_MISSING_SHMEM | abi.UFFD_FEATURE_THREAD_ID)
    u.range_ioctls = u.register(shm.address, shm.size, abi.UFFDIO_REGISTER_MODE_MISSING)
    assert u.range_ioctls & (1 << abi.IOCTL_BIT_COPY)
    assert u.range_ioctls & (1 << abi.IOCTL_BIT_WAKE)
    yield u
    u.close()


def test_reader_of_missing_page_sleeps_until_copy(shm, uffd):
    page = 3
    r = Reader(shm.address + page * PS)
    fault = _next_fault(uffd)
    assert fault.address & ~(PS - 1) == shm.address + page * PS
    assert not fault.write
    assert fault.thread_id == r.thread.native_id  # UFFD_FEATURE_THREAD_ID
    assert not r.done.is_set()  # it cannot have read a page nobody placed
    src = ctypes.create_string_buffer(b"\xab" * PS, PS)
    assert uffd.copy(shm.address + page * PS, ctypes.addressof(src), PS) == PS
    assert r.done.wait(TIMEOUT)
    assert r.buf.raw == b"\xab" * PS
    assert shm.mmap[page * PS:page * PS + 4] == b"\xab" * 4  # placed in the file too


def test_zeropage_places_zeros(shm, uffd):
    assert uffd.range_ioctls & (1 << abi.IOCTL_BIT_ZEROPAGE)  # shmem allows it
    r = Reader(shm.address + PS)
    _next_fault(uffd)
    uffd.zeropage(shm.address + PS, PS)
    assert r.done.wait(TIMEOUT)
    assert r.buf.raw == b"\0" * PS


def test_page_is_placed_once(shm, uffd):
    src = ctypes.create_string_buffer(b"\x11" * PS, PS)
    uffd.copy(shm.address, ctypes.addressof(src), PS)
    again = ctypes.create_string_buffer(b"\x22" * PS, PS)
    with pytest.raises(PageExists) as exc:
        uffd.copy(shm.address, ctypes.addressof(again), PS)
    assert exc.value.errno == errno.EEXIST and exc.value.done == 0
    with pytest.raises(PageExists):
        uffd.zeropage(shm.address, PS)
    assert shm.mmap[0:PS] == b"\x11" * PS  # the second copy changed nothing


def test_run_copy_stops_at_a_present_page_and_says_how_far(shm, uffd):
    src = ctypes.create_string_buffer(b"\x33" * (4 * PS), 4 * PS)
    uffd.copy(shm.address + 2 * PS, ctypes.addressof(src), PS)  # page 2 present
    with pytest.raises(PageExists) as exc:
        uffd.copy(shm.address, ctypes.addressof(src), 4 * PS)
    assert exc.value.done == 2 * PS  # pages 0 and 1 placed, then page 2 existed
    assert shm.mmap[PS:PS + 1] == b"\x33"


def test_discarded_shmem_page_faults_again(shm, uffd):
    src = ctypes.create_string_buffer(b"\x44" * PS, PS)
    uffd.copy(shm.address, ctypes.addressof(src), PS)
    shm.discard(0, PS)  # MADV_REMOVE: gone from the file
    r = Reader(shm.address)
    fault = _next_fault(uffd)
    assert fault.address & ~(PS - 1) == shm.address
    assert not r.done.is_set()
    uffd.zeropage(shm.address, PS)
    assert r.done.wait(TIMEOUT) and r.buf.raw == b"\0" * PS


def test_dontneed_on_shmem_does_not_drop_the_page(shm, uffd):
    """Why SharedMemory.discard uses MADV_REMOVE: DONTNEED keeps the file's page."""
    src = ctypes.create_string_buffer(b"\x55" * PS, PS)
    uffd.copy(shm.address, ctypes.addressof(src), PS)
    discard_private(shm.address, PS)
    r = Reader(shm.address)
    assert r.done.wait(TIMEOUT)
    assert r.buf.raw == b"\x55" * PS
    assert uffd.read_faults() == []


def test_discarded_anonymous_page_faults_again():
    mm = mmap.mmap(-1, 4 * PS, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    addr = buffer_address(mm)
    with Userfaultfd() as u:
        u.register(addr, 4 * PS, abi.UFFDIO_REGISTER_MODE_MISSING)
        src = ctypes.create_string_buffer(b"\x66" * PS, PS)
        u.copy(addr, ctypes.addressof(src), PS)
        assert mm[0:1] == b"\x66"  # ctypes-free read of a present page: no fault
        discard_private(addr, PS)
        r = Reader(addr)
        _next_fault(u)
        assert not r.done.is_set()
        u.copy(addr, ctypes.addressof(src), PS)
        assert r.done.wait(TIMEOUT) and r.buf.raw == b"\x66" * PS
    mm.close()


def test_wake_releases_a_sleeper_whose_page_another_path_placed(shm, uffd):
    """A page placed with DONTWAKE: the sleeper stays asleep until UFFDIO_WAKE."""
    r = Reader(shm.address + 5 * PS)
    _next_fault(uffd)
    src = ctypes.create_string_buffer(b"\x77" * PS, PS)
    uffd.copy(shm.address + 5 * PS, ctypes.addressof(src), PS, wake=False)
    assert not r.done.wait(0.2)  # only a bounded check that it still sleeps
    uffd.wake(shm.address + 5 * PS, PS)
    assert r.done.wait(TIMEOUT) and r.buf.raw == b"\x77" * PS


def test_closing_the_descriptor_wakes_sleepers(shm):
    u = Userfaultfd(abi.UFFD_FEATURE_MISSING_SHMEM)
    u.register(shm.address, shm.size, abi.UFFDIO_REGISTER_MODE_MISSING)
    r = Reader(shm.address + 7 * PS)
    _next_fault(u)
    u.close()
    assert r.done.wait(TIMEOUT)
    assert r.buf.raw == b"\0" * PS


def test_a_feature_the_kernel_lacks_is_named():
    missing = available(1 << 62)
    assert not missing and missing.reason == "the kernel lacks feature bit 62"
    with pytest.raises(UffdUnavailable, match="lacks feature bit 62"):
        Userfaultfd(1 << 62)
    assert AVAIL.features & abi.UFFD_FEATURE_MISSING_SHMEM
