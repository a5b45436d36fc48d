"""The pages a process wrote since the last look, from the kernel.

Theory of operation
-------------------
A dirty log covers a list of ranges (a guest's RAM blocks) and has one
operation, :meth:`DirtyLog.sync`: the pages of each range written since the
previous sync (or since :meth:`~DirtyLog.arm`), as page indices.  This is
what KVM's dirty log gives QEMU's ``migration_bitmap_sync``; here the writes
may come from any thread of this process, by ordinary stores.

Two implementations, best first (:func:`open_dirty_log` picks):

* :class:`WPAsyncDirtyLog` -- userfaultfd write-protect in *async* mode
  (``UFFD_FEATURE_WP_ASYNC``, Linux 6.7): a write to a protected page is
  resolved by the kernel itself, no message, and the page is marked
  written.  ``PAGEMAP_SCAN`` with ``PM_SCAN_WP_MATCHING`` reports the pages
  in category ``PAGE_IS_WRITTEN`` and write-protects them again *in the same
  walk, under the page-table lock*: a write after a page was reported faults
  and shows in the next sync.  Nothing is lost, so writers never stop.
* :class:`SoftDirtyLog` -- soft-dirty bits (bit 55 of /proc/self/pagemap
  entries), reset by writing ``4`` to /proc/self/clear_refs.  The reset is
  process-wide (one log per process, over all ranges at once) and is not
  atomic with the read: a write that lands on a clean page between the read
  and the reset is forgotten.  ``atomic`` is False, and a caller must keep
  writers out of :meth:`sync` (the Guest holds its vCPU's batch lock there).
"""
from __future__ import annotations

import ctypes
import mmap
import os
from typing import Optional, Protocol, Sequence

import numpy as np

from livemig.engine.kernelmem import abi
from livemig.engine.kernelmem.calls import buffer_address, ioctl
from livemig.engine.kernelmem.uffd import (
    Availability, UffdError, UffdUnavailable, Userfaultfd,
)
from livemig.engine.kernelmem.uffd import available as uffd_available

Range = tuple[int, int]  # (address, length), page aligned

#: page regions PAGEMAP_SCAN fills per call (24 bytes each); a sync of a
#: range with more runs than this takes several calls
SCAN_REGIONS = 4096

WP_ASYNC_FEATURES = (abi.UFFD_FEATURE_WP_ASYNC | abi.UFFD_FEATURE_WP_UNPOPULATED
                     | abi.UFFD_FEATURE_WP_HUGETLBFS_SHMEM)


class DirtyLog(Protocol):
    """What the Guest needs from a kernel dirty log."""

    #: True when a write racing :meth:`sync` is never lost
    atomic: bool
    #: "wp-async" or "soft-dirty"
    kind: str

    def arm(self) -> None:
        """Forget every write so far: the next sync reports writes from now on."""

    def sync(self) -> list[np.ndarray]:
        """Per range, the indices of the pages written since the last sync."""

    def close(self) -> None: ...


class WPAsyncDirtyLog:
    """userfaultfd async write-protect + PAGEMAP_SCAN over ``ranges``."""

    atomic = True
    kind = "wp-async"

    def __init__(self, ranges: Sequence[Range], page_size: int, *,
                 uffd: Optional[Userfaultfd] = None, pid: Optional[int] = None) -> None:
        """``ranges`` of this process; or, with ``uffd`` and ``pid``, ranges of
        process ``pid`` that it registered itself on that descriptor (a guest
        in a child process: its writes are in its own page tables)."""
        self.ranges = list(ranges)
        self.page_size = page_size
        adopted = uffd is not None
        self.uffd = uffd if uffd is not None else Userfaultfd(WP_ASYNC_FEATURES)
        try:
            if not adopted:
                for addr, length in self.ranges:
                    self.uffd.register(addr, length, abi.UFFDIO_REGISTER_MODE_WP)
            where = "self" if pid is None else str(pid)
            self._pagemap = os.open(f"/proc/{where}/pagemap", os.O_RDONLY | os.O_CLOEXEC)
        except BaseException:
            self.uffd.close()
            raise
        self._vec = (abi.page_region * SCAN_REGIONS)()
        self._arg = abi.pm_scan_arg()

    def arm(self) -> None:
        for addr, length in self.ranges:
            self.uffd.writeprotect(addr, length, True)

    def sync(self) -> list[np.ndarray]:
        return [self._scan(addr, length) for addr, length in self.ranges]

    def _scan(self, addr: int, length: int) -> np.ndarray:
        ps = self.page_size
        end = addr + length
        arg = self._arg
        pieces: list[np.ndarray] = []
        start = addr
        while start < end:
            ctypes.memset(ctypes.addressof(arg), 0, ctypes.sizeof(arg))
            arg.size = ctypes.sizeof(arg)
            arg.flags = abi.PM_SCAN_WP_MATCHING | abi.PM_SCAN_CHECK_WPASYNC
            arg.start, arg.end = start, end
            arg.vec, arg.vec_len = ctypes.addressof(self._vec), SCAN_REGIONS
            arg.category_mask = abi.PAGE_IS_WRITTEN
            arg.return_mask = abi.PAGE_IS_WRITTEN
            n = ioctl(self._pagemap, abi.PAGEMAP_SCAN, arg, "PAGEMAP_SCAN")
            if n:
                regions = np.frombuffer(self._vec, dtype=np.uint64).reshape(-1, 3)[:n]
                pieces.append(_expand((regions[:, :2] - np.uint64(addr)) // np.uint64(ps)))
            if arg.walk_end <= start:  # no progress: the kernel stopped early
                raise UffdError(0, f"PAGEMAP_SCAN stopped at {start:#x}")
            start = int(arg.walk_end)
        return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)

    def close(self) -> None:
        self.uffd.close()
        if self._pagemap >= 0:
            os.close(self._pagemap)
            self._pagemap = -1


def _expand(runs: np.ndarray) -> np.ndarray:
    """Page indices of ``runs`` (rows of [first, end)), vectorised: a random
    10% of 1 GiB is ~26k runs, too many for a Python loop per sync."""
    first = runs[:, 0].astype(np.int64)
    lens = runs[:, 1].astype(np.int64) - first
    total = int(lens.sum())
    # each run's first page, repeated over the run, plus the offset within it
    offsets = np.arange(total, dtype=np.int64) - np.repeat(np.cumsum(lens) - lens, lens)
    return np.repeat(first, lens) + offsets


class SoftDirtyLog:
    """Soft-dirty bits of this process over ``ranges`` (see the module doc:
    not atomic, writers must be kept out of :meth:`sync`)."""

    atomic = False
    kind = "soft-dirty"

    def __init__(self, ranges: Sequence[Range], page_size: int) -> None:
        self.ranges = list(ranges)
        self.page_size = page_size
        self._pagemap = os.open("/proc/self/pagemap", os.O_RDONLY | os.O_CLOEXEC)

    def arm(self) -> None:
        with open("/proc/self/clear_refs", "wb", buffering=0) as f:
            f.write(abi.CLEAR_REFS_SOFT_DIRTY)

    def sync(self) -> list[np.ndarray]:
        out = [self._read(addr, length) for addr, length in self.ranges]
        self.arm()
        return out

    def _read(self, addr: int, length: int) -> np.ndarray:
        ps = self.page_size
        want = length // ps * abi.PAGEMAP_ENTRY_BYTES
        raw = os.pread(self._pagemap, want, addr // ps * abi.PAGEMAP_ENTRY_BYTES)
        entries = np.frombuffer(raw, dtype="<u8")
        return np.flatnonzero((entries >> np.uint64(abi.PM_SOFT_DIRTY_BIT)) & np.uint64(1))

    def close(self) -> None:
        if self._pagemap >= 0:
            os.close(self._pagemap)
            self._pagemap = -1


def _probe_soft_dirty() -> Optional[str]:
    """None if soft-dirty tracking works in this process, else why not.  A
    kernel without CONFIG_MEM_SOFT_DIRTY accepts the clear_refs write and
    never sets the bit, so the probe writes a page and looks."""
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        log = SoftDirtyLog([(buffer_address(mm), mmap.PAGESIZE)], mmap.PAGESIZE)
        try:
            log.arm()
            ctypes.memset(buffer_address(mm), 1, 1)
            written = log.sync()[0]
        finally:
            log.close()
    except OSError as exc:
        return f"soft-dirty: {exc.strerror} (/proc/self/clear_refs, /proc/self/pagemap)"
    finally:
        mm.close()
    if not written.size:
        return "soft-dirty: a written page has no soft-dirty bit (kernel without " \
               "CONFIG_MEM_SOFT_DIRTY)"
    return None


def available(kind: str = "wp-async") -> Availability:
    """Can a dirty log of ``kind`` ("wp-async" or "soft-dirty") run here?"""
    if kind == "soft-dirty":
        why = _probe_soft_dirty()
        return Availability(why is None, why, 0)
    if kind != "wp-async":
        raise ValueError(f"unknown dirty log {kind!r}; known: wp-async, soft-dirty")
    got = uffd_available(WP_ASYNC_FEATURES)
    if not got:
        return got
    # PAGEMAP_SCAN (Linux 6.7) is told only by trying it on a one-page range.
    mm = mmap.mmap(-1, mmap.PAGESIZE)
    try:
        log = WPAsyncDirtyLog([(buffer_address(mm), mmap.PAGESIZE)], mmap.PAGESIZE)
        try:
            log.arm()
            log.sync()
        finally:
            log.close()
    except OSError as exc:
        return Availability(False, f"write-protect dirty log: {exc.strerror}", got.features)
    finally:
        mm.close()
    return got


def open_dirty_log(ranges: Sequence[Range], page_size: int,
                   kind: Optional[str] = None) -> DirtyLog:
    """The best dirty log this kernel offers (or ``kind``), armed.  Raises
    :class:`~livemig.engine.kernelmem.uffd.UffdUnavailable` naming why none can."""
    kinds = [kind] if kind else ["wp-async", "soft-dirty"]
    reasons = []
    for k in kinds:
        got = available(k)
        if got:
            log: DirtyLog = WPAsyncDirtyLog(ranges, page_size) if k == "wp-async" \
                else SoftDirtyLog(ranges, page_size)
            log.arm()
            return log
        reasons.append(f"{k}: {got.reason}")
    raise UffdUnavailable(0, "no kernel dirty log: " + "; ".join(reasons))


__all__ = ["DirtyLog", "SoftDirtyLog", "WPAsyncDirtyLog", "available", "open_dirty_log",
           "SCAN_REGIONS"]
