"""Guest RAM backends: what a :class:`~livemig.engine.guest.Guest`'s memory is
and who tracks it.

Theory of operation
-------------------
A backend says how the guest's RAM is made and how the migration learns
about it.  Two exist:

* ``simulated`` -- anonymous (or ``--mem-path``) memory; the vCPU workload
  logs every page it writes and, on a postcopy destination, asks the engine
  before it touches a page (``Guest.fault_hook``).  Runs anywhere.
* ``kernel`` -- :class:`KernelMemory`: every RAM block is shmem (a memfd
  mapped shared, :class:`~livemig.engine.kernelmem.mapping.SharedMemory`),
  and the kernel does the tracking, as KVM and userfaultfd do for QEMU:

  - the source's dirty log is the kernel's (:mod:`.dirtylog`: async
    write-protect + PAGEMAP_SCAN, else soft-dirty), so the pages re-sent are
    the ones *any* thread of the process wrote by ordinary stores;
    ``Guest.sync_dirty_log`` -- the engine's ``migration_bitmap_sync`` -- ORs
    it into the migration bitmap;
  - the destination's RAM, from POSTCOPY_LISTEN to the end of the load, is
    registered with userfaultfd MISSING (:class:`PostcopyRAM`): a thread that
    touches a page not placed yet sleeps in the kernel; the fault thread
    turns each fault message into a page request on the return path (as
    QEMU's postcopy_ram_fault_thread), and the load thread places the page
    with UFFDIO_COPY (UFFDIO_ZEROPAGE for a zero page), which wakes it.

Rules of the kernel backend:

* after LISTEN no engine thread writes guest RAM with a store: a store to a
  missing page would sleep in the kernel holding the GIL, and the fault
  thread that must wake it could never run.  Placement is an ioctl, and the
  guest's own threads write through libc calls (ctypes releases the GIL
  around them: :func:`touch_pages`);
* a page is placed once: the decoder places only pages its *received*
  bitmap lacks, and a COPY that finds the page present (EEXIST) is accepted
  only for a page already received -- any other is an error, since the page
  would hold bytes nobody sent;
* at LISTEN every page not received is dropped from the file
  (``MADV_REMOVE``), so present and received are the same set: a page the
  destination never got faults, whatever was written there before;
* the fault latency is taken from the moment the fault message is read to
  the COPY that wakes the thread (QEMU's postcopy-blocktime measures the
  same span from the fault to the wake-up);
* every exception of the fault thread ends in ``on_crash`` (see
  :mod:`livemig.engine.threads`): the driver fails the migration with it.
"""
from __future__ import annotations

import bisect
import ctypes
import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np

from livemig.engine.kernelmem import abi
from livemig.engine.kernelmem import dirtylog
from livemig.engine.kernelmem.mapping import SharedMemory
from livemig.engine.kernelmem.uffd import (
    Availability, PageExists, UffdUnavailable, Userfaultfd,
)
from livemig.engine.kernelmem.uffd import available as uffd_available
from livemig.engine.threads import spawn

#: the backends Guest(memory=...) and ``--memory`` accept
MEMORY_CHOICES = ("kernel", "simulated", "auto")

#: what the destination needs from userfaultfd: MISSING faults on shmem, and
#: the faulting thread's id (for the fault latency per thread, as QEMU's
#: blocktime keeps it per vCPU)
POSTCOPY_FEATURES = abi.UFFD_FEATURE_MISSING_SHMEM | abi.UFFD_FEATURE_THREAD_ID

#: how long the fault thread sleeps in poll() before it looks at its stop flag
#: again (a stop also writes the wake pipe: this is only the backstop)
FAULT_POLL = 1.0


class MemoryUnavailable(UffdUnavailable):
    """``memory="kernel"`` asked where the kernel lacks what it needs."""


@dataclass(frozen=True)
class MemoryChoice:
    """What ``memory=`` resolved to: ``kind`` ("kernel" or "simulated"), the
    dirty log kind of a kernel backend, and why the kernel one was not taken
    (``auto`` on a kernel that lacks it)."""

    kind: str
    dirty_log: Optional[str]
    reason: Optional[str] = None
    #: what was asked for ("kernel", "simulated", "auto")
    asked: str = "simulated"


def available() -> Availability:
    """Can the kernel backend run here?  Both halves are asked for: a guest
    does not know yet whether it will be a migration's source (a dirty log)
    or destination (userfaultfd MISSING on shmem)."""
    got = uffd_available(POSTCOPY_FEATURES)
    if not got:
        return Availability(False, f"userfaultfd MISSING on shmem: {got.reason}", got.features)
    reasons = []
    for kind in ("wp-async", "soft-dirty"):
        log = dirtylog.available(kind)
        if log:
            return got
        reasons.append(f"{kind}: {log.reason}")
    return Availability(False, "no kernel dirty log (" + "; ".join(reasons) + ")", got.features)


def dirty_log_kind() -> Optional[str]:
    """The dirty log this kernel gives, best first (None: none)."""
    for kind in ("wp-async", "soft-dirty"):
        if dirtylog.available(kind):
            return kind
    return None


def resolve(memory: str, *, mem_path: Optional[str] = None) -> MemoryChoice:
    """``memory`` ("kernel", "simulated", "auto") -> the backend to build.
    "kernel" where it cannot run is :class:`MemoryUnavailable` naming why;
    "auto" falls back to simulated and keeps the reason."""
    if memory not in MEMORY_CHOICES:
        raise ValueError(f"memory {memory!r}: expected one of {', '.join(MEMORY_CHOICES)}")
    if memory == "simulated":
        return MemoryChoice("simulated", None, asked=memory)
    why: Optional[str]
    if mem_path is not None:
        why = "guest RAM is a --mem-path file, the kernel backend's is a memfd"
    else:
        got = available()
        why = None if got else got.reason
    if why is None:
        return MemoryChoice("kernel", dirty_log_kind(), asked=memory)
    if memory == "kernel":
        raise MemoryUnavailable(0, f"kernel memory backend unavailable: {why}")
    return MemoryChoice("simulated", None, why, asked=memory)


# ============================================================ guest writes
_memmove = ctypes.memmove  # CFUNCTYPE: the GIL is released for the call
_memset = ctypes.memset


def touch_pages(base: int, first: int, last: int, page_size: int) -> None:
    """Add one to the first byte of pages [first, last) at ``base``, as a
    guest's own code would: a plain load and store per page, done by libc so
    that a thread the kernel stops on a missing page does not hold the GIL
    (the fault thread that wakes it is Python too)."""
    cell = ctypes.c_ubyte()
    where = ctypes.addressof(cell)
    for page in range(first, last):
        addr = base + page * page_size
        _memmove(where, addr, 1)
        _memset(addr, (cell.value + 1) & 0xFF, 1)


def read_first_bytes(base: int, first: int, last: int, page_size: int,
                     out: np.ndarray) -> None:
    """``out[i]`` = the first byte of page ``first + i``, read by libc (a read
    of a missing page sleeps without the GIL, as in :func:`touch_pages`)."""
    dst = out.__array_interface__["data"][0]
    for i, page in enumerate(range(first, last)):
        _memmove(dst + i, base + page * page_size, 1)


# ============================================================ the backend
class KernelMemory:
    """A guest's RAM made of shmem, its dirty log from the kernel, and (on a
    postcopy destination) its userfaultfd registration.

    :meth:`new_block_memory` makes each block's memory; the Guest calls
    :meth:`arm` when a migration starts its dirty log and :meth:`collect`
    from ``sync_dirty_log``."""

    kind = "kernel"

    def __init__(self, page_size: int, dirty_log: Optional[str] = None) -> None:
        self.page_size = page_size
        self.dirty_log_kind = dirty_log
        self.memories: dict[str, SharedMemory] = {}
        self.log: Optional[dirtylog.DirtyLog] = None
        self.postcopy: Optional[PostcopyRAM] = None
        #: kernel dirty-log syncs and the time they took, seconds (for
        #: query-migrate and the benchmark: the cost of a sync)
        self.syncs = 0
        self.sync_seconds = 0.0
        #: dirty logs of other processes that map these blocks and write
        #: them (:meth:`attach_process`): (pid, block names, their log)
        self.attached: list[tuple[int, list[str], dirtylog.WPAsyncDirtyLog]] = []
        #: processes whose mappings of these blocks are registered MISSING
        #: (a postcopy destination's guest in a child): the fault thread
        #: serves their faults too
        self.fault_peers: list[FaultPeer] = []

    def new_block_memory(self, name: str, size: int) -> SharedMemory:
        mem = SharedMemory(f"livemig:{name}", size)
        self.memories[name] = mem
        return mem

    # ------------------------------------------------------------ dirty log
    def _ranges(self) -> list[tuple[int, int]]:
        return [(m.address, m.size) for m in self.memories.values()]

    def arm(self) -> None:
        """Forget all writes so far (a migration's setup: every page is dirty
        anyway).  The log is opened on first use and kept: registering costs a
        walk of the page tables."""
        if self.postcopy is not None:
            # a destination that finished is migrating on: its MISSING
            # registration must be gone before WP can register the same range
            self.postcopy.close()
            self.postcopy = None
        if self.log is None:
            self.log = dirtylog.open_dirty_log(self._ranges(), self.page_size,
                                               self.dirty_log_kind)
            self.dirty_log_kind = self.log.kind
        else:
            self.log.arm()
        for pid, names, log in list(self.attached):
            try:
                log.arm()
            except OSError:  # it exited: nothing more to learn from it
                self._detach(pid)

    @property
    def atomic(self) -> bool:
        """True when a write racing :meth:`collect` is never lost (soft-dirty
        is not: the Guest then keeps its vCPU out of the sync)."""
        return self.log is None or self.log.atomic

    def collect(self, logs: dict[str, np.ndarray]) -> None:
        """Set ``logs[block][page]`` for every page written since the last
        collect (or arm): one kernel walk per block."""
        if self.log is None:
            self.arm()
            return  # armed now: nothing logged before this instant is lost,
            # since the caller's bitmap starts all dirty at setup
        t0 = time.perf_counter()
        written = self.log.sync()
        self.sync_seconds += time.perf_counter() - t0
        self.syncs += 1
        for name, idx in zip(self.memories, written):
            if idx.size:
                logs[name][idx] = True
        for pid, names, log in list(self.attached):
            try:
                theirs = log.sync()
            except OSError:
                # the process is gone (or its mapping): which of its writes
                # were not synced yet is lost with it, so every page of its
                # blocks counts as written once more
                for name in names:
                    logs[name][:] = True
                self._detach(pid)
                continue
            for name, idx in zip(names, theirs):
                if idx.size:
                    logs[name][idx] = True

    # ------------------------------------------------------------ other processes
    def attach_process(self, sock: socket.socket, timeout: float = 30.0) -> int:
        """Track the writes of another process that maps these blocks (a
        guest living in a child, given the memfds): it has registered its
        mappings for async write-protect and sends the descriptor with
        :func:`export_dirty_log`.  Returns its pid.  Attach before the
        migration starts: its writes before that are in the first pass."""
        sock.settimeout(timeout)
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1 << 16, 1)
        if len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise MemoryUnavailable(0, "attach_process: no userfaultfd came with the message")
        info = json.loads(msg)
        uffd = Userfaultfd.adopt(fds[0], int(info["features"]))
        names = [n for n in self.memories if n in info["blocks"]]
        pid = int(info["pid"])
        if info.get("mode") == "missing":
            self.fault_peers.append(FaultPeer(pid, uffd, {n: int(info["blocks"][n][0])
                                                          for n in names}))
            if self.postcopy is not None:
                self.postcopy.peers_changed()
            return pid
        try:
            log = dirtylog.WPAsyncDirtyLog([tuple(info["blocks"][n]) for n in names],
                                           self.page_size, uffd=uffd, pid=pid)
        except BaseException:
            uffd.close()
            raise
        if self.log is not None:
            log.arm()
        self.attached.append((pid, names, log))
        return pid

    def _detach(self, pid: int) -> None:
        for entry in [a for a in self.attached if a[0] == pid]:
            self.attached.remove(entry)
            entry[2].close()

    # ------------------------------------------------------------ postcopy
    def postcopy_ram(self) -> "PostcopyRAM":
        """The destination's userfaultfd side for these blocks (one per
        incoming migration; a previous one is closed)."""
        if self.postcopy is not None:
            self.postcopy.close()
        if self.log is not None:  # a source turned destination: WP off first
            self.log.close()
            self.log = None
        self.postcopy = PostcopyRAM(self.memories, self.page_size, self.fault_peers)
        return self.postcopy

    def info(self) -> dict:
        """The x-livemig-memory member of query-migrate."""
        out: dict = {"backend": self.kind, "dirty-log": self.dirty_log_kind,
                     "dirty-syncs": self.syncs,
                     "dirty-sync-us": int(self.sync_seconds / self.syncs * 1e6)
                     if self.syncs else 0}
        if self.postcopy is not None:
            out["userfaultfd"] = self.postcopy.info()
        return out

    def close(self) -> None:
        """Unregister and close everything: threads asleep on a fault wake."""
        if self.postcopy is not None:
            self.postcopy.close()
        if self.log is not None:
            self.log.close()
            self.log = None
        for pid, _names, _log in list(self.attached):
            self._detach(pid)


def export_dirty_log(sock: socket.socket, blocks: dict[str, tuple[int, int]]) -> Userfaultfd:
    """In a process that maps a guest's blocks (``name -> (address, length)``
    of its own mappings) and writes them: register them for async
    write-protect and send the descriptor, its features and the ranges to
    the migrating process (:meth:`KernelMemory.attach_process`).  Keep the
    returned descriptor open while the migration runs."""
    return _export(sock, blocks, dirtylog.WP_ASYNC_FEATURES, abi.UFFDIO_REGISTER_MODE_WP, "wp")


def export_faults(sock: socket.socket, blocks: dict[str, tuple[int, int]]) -> Userfaultfd:
    """:func:`export_dirty_log` for a postcopy destination's guest in a child
    process: its mappings are registered MISSING, so its threads sleep on a
    page postcopy has not placed until the migrating process's fault thread
    has it placed and wakes them."""
    return _export(sock, blocks, POSTCOPY_FEATURES, abi.UFFDIO_REGISTER_MODE_MISSING, "missing")


def _export(sock: socket.socket, blocks: dict[str, tuple[int, int]], features: int,
            mode: int, name: str) -> Userfaultfd:
    uffd = Userfaultfd(features)
    try:
        for addr, length in blocks.values():
            uffd.register(addr, length, mode)
        info = {"pid": os.getpid(), "features": uffd.features, "mode": name,
                "blocks": {n: list(r) for n, r in blocks.items()}}
        socket.send_fds(sock, [json.dumps(info).encode()], [uffd.fd])
    except BaseException:
        uffd.close()
        raise
    return uffd


class FaultPeer:
    """Another process's MISSING registration of the blocks (its userfaultfd,
    adopted) and the pages its threads sleep on.  A COPY through our own
    descriptor puts the page in the shared file but wakes only our sleepers:
    theirs get UFFDIO_WAKE once the page is received."""

    def __init__(self, pid: int, uffd: Userfaultfd, bases: dict[str, int]) -> None:
        self.pid = pid
        self.uffd = uffd
        self.bases = bases
        items = sorted(bases.items(), key=lambda kv: kv[1])
        self.names = [n for n, _a in items]
        self.starts = [a for _n, a in items]
        self.sleeping: dict[str, set[int]] = {n: set() for n in bases}


class PostcopyRAM:
    """The destination's guest RAM under userfaultfd MISSING (see the module
    doc).  The load thread calls :meth:`listen`, :meth:`copy`, :meth:`fill`
    and :meth:`end`; the fault thread is started by :meth:`start_faults`.
    ``peers`` are other processes' registrations (:class:`FaultPeer`)."""

    def __init__(self, memories: dict[str, SharedMemory], page_size: int,
                 peers: Optional[list[FaultPeer]] = None) -> None:
        from livemig.engine.postcopy import LatencyHistogram  # postcopy imports us lazily
        self.memories = memories
        self.page_size = page_size
        self.uffd: Optional[Userfaultfd] = None
        self.registered = False
        self.closed = False
        # block lookup by address: sorted starts, for np.searchsorted
        items = sorted(memories.items(), key=lambda kv: kv[1].address)
        self._names = [n for n, _m in items]
        self._start_list = [m.address for _n, m in items]
        self._end_list = [m.address + m.size for _n, m in items]
        #: fault message -> wake-up, seconds (QEMU's postcopy-blocktime)
        self.latency = LatencyHistogram()
        self.faults = 0
        self.copies = 0
        self.zeropages = 0
        self.already_present = 0
        # pages a thread sleeps on: block -> page -> when its message was read.
        # The fault thread adds, the load thread removes: under _plock.
        self._pending: dict[str, dict[int, float]] = {n: {} for n in memories}
        self._plock = threading.Lock()
        self._zero = ctypes.create_string_buffer(page_size)
        self._fill_pages: dict[int, ctypes.Array] = {}
        self._thread: Optional[threading.Thread] = None
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self.peers: list[FaultPeer] = peers if peers is not None else []

    # ------------------------------------------------------------ listen
    def listen(self, received: dict[str, np.ndarray]) -> None:
        """POSTCOPY_LISTEN: drop every page not received, then register all
        blocks with MISSING: from now on a touch of such a page faults."""
        from livemig.engine.postcopy import _runs
        ps = self.page_size
        for name, mem in self.memories.items():
            for first, count in _runs(~received[name]):
                mem.discard(first * ps, count * ps)
        self.uffd = Userfaultfd(POSTCOPY_FEATURES)
        allowed = 1 << abi.IOCTL_BIT_COPY | 1 << abi.IOCTL_BIT_ZEROPAGE | 1 << abi.IOCTL_BIT_WAKE
        for name, mem in self.memories.items():
            got = self.uffd.register(mem.address, mem.size, abi.UFFDIO_REGISTER_MODE_MISSING)
            if got & allowed != allowed:
                raise MemoryUnavailable(0, f"userfaultfd: block {name} allows no "
                                           f"COPY/ZEROPAGE/WAKE (ioctls {got:#x})")
        self.registered = True

    def discard(self, name: str, first: int, last: int) -> None:
        """POSTCOPY_RAM_DISCARD of pages [first, last): dropped from the file,
        so the next touch after LISTEN faults (MADV_REMOVE: on shmem
        MADV_DONTNEED would only unmap them from this process)."""
        ps = self.page_size
        self.memories[name].discard(first * ps, (last - first) * ps)

    # ------------------------------------------------------------ placing
    def copy(self, name: str, idx: np.ndarray, data: np.ndarray,
             received: np.ndarray) -> None:
        """Place pages ``idx`` of block ``name`` with the rows of ``data``
        (one page each, any row stride), atomically, waking their sleepers."""
        uffd = self.uffd
        assert uffd is not None
        ps = self.page_size
        base = self.memories[name].address
        src = data.__array_interface__["data"][0]  # .ctypes builds an object: slower
        stride = data.strides[0] if data.ndim > 1 else ps
        for i, page in enumerate(idx.tolist()):
            try:
                uffd.copy(base + page * ps, src + i * stride, ps)
                self.copies += 1
            except PageExists:
                self._present(name, page, received)
        self._woken(name, idx)

    def fill(self, name: str, idx: np.ndarray, fills: np.ndarray,
             received: np.ndarray) -> None:
        """Place pages of one repeated byte each: UFFDIO_ZEROPAGE for zero,
        a COPY of a filled page otherwise."""
        uffd = self.uffd
        assert uffd is not None
        ps = self.page_size
        base = self.memories[name].address
        for page, byte in zip(idx.tolist(), fills.tolist()):
            try:
                if byte == 0:
                    uffd.zeropage(base + page * ps, ps)
                    self.zeropages += 1
                else:
                    buf = self._fill_pages.get(byte)
                    if buf is None:
                        buf = self._fill_pages[byte] = ctypes.create_string_buffer(
                            bytes([byte]) * ps, ps)
                    uffd.copy(base + page * ps, ctypes.addressof(buf), ps)
                    self.copies += 1
            except PageExists:
                self._present(name, page, received)
        self._woken(name, idx)

    def _present(self, name: str, page: int, received: np.ndarray) -> None:
        """EEXIST: fine for a page already placed (counted, nothing written);
        for any other page the file holds bytes nobody sent -- an error."""
        if received[page]:
            self.already_present += 1
            return
        raise PageExists(f"UFFDIO_COPY: page {page} of {name} is present but was never "
                         f"received", 0)

    def _woken(self, name: str, idx: np.ndarray) -> None:
        pending = self._pending[name]
        if not pending:
            return
        now = time.monotonic()
        with self._plock:
            for page in idx.tolist():
                t = pending.pop(page, None)
                if t is not None:
                    self.latency.add(now - t)

    def peers_changed(self) -> None:
        """A peer attached: the fault thread polls its descriptor from now on."""
        try:
            os.write(self._wake_w, b"p")
        except OSError:
            pass  # closed: no thread to tell

    def placed(self, name: str, idx: np.ndarray) -> None:
        """Pages ``idx`` are received (the bit is set): wake other processes'
        threads asleep on them.  After the bit, under the lock the fault
        thread checks it under: a peer's fault is either seen received there
        or woken here."""
        if not self.peers:
            return
        ps = self.page_size
        with self._plock:
            for peer in self.peers:
                sleeping = peer.sleeping.get(name)
                if not sleeping:
                    continue
                for page in idx.tolist():
                    if page in sleeping:
                        sleeping.discard(page)
                        peer.uffd.wake(peer.bases[name] + page * ps, ps)

    # ------------------------------------------------------------ faults
    def start_faults(self, on_fault: Callable[[str, list[int]], None],
                     received: dict[str, np.ndarray],
                     on_crash: Callable[[str], None]) -> None:
        """Start the fault thread: each fault message becomes
        ``on_fault(block, pages)`` (the driver sends the page requests; it
        must not block).  ``on_crash`` gets the text of any exception."""
        self._on_fault = on_fault
        self._received = received
        self._thread = spawn("livemig-postcopy-fault", self._fault_loop, on_crash)

    def _fault_loop(self) -> None:
        uffd = self.uffd
        assert uffd is not None
        while not self._stop:
            by_fd = {p.uffd.fd: p for p in self.peers}  # a peer may attach late
            ready = uffd.wait(FAULT_POLL, self._wake_r, *by_fd)
            if self._stop:
                return
            if self._wake_r in ready:
                os.read(self._wake_r, 4096)  # a peer attached: poll it too
            for fd in ready:
                peer = by_fd.get(fd)
                source = uffd if fd == uffd.fd else peer.uffd if peer is not None else None
                if source is None:
                    continue
                faults = source.read_faults()
                if not faults:
                    continue
                now = time.monotonic()
                self.faults += len(faults)
                if peer is None:
                    self.handle_faults([f.address for f in faults], now)
                else:
                    self.handle_peer_faults(peer, [f.address for f in faults], now)

    def handle_peer_faults(self, peer: FaultPeer, addresses: Sequence[int],
                           now: float) -> None:
        """Another process's faults: a page received already is woken now
        (our COPY did not wake it), a missing one is asked for and woken by
        :meth:`placed`."""
        ps = self.page_size
        asks: dict[str, list[int]] = {}
        with self._plock:
            for addr in addresses:
                s = bisect.bisect_right(peer.starts, addr) - 1
                name = peer.names[s] if s >= 0 else None
                page = (addr - peer.starts[s]) // ps if name is not None else -1
                if name is None or page >= self.memories[name].size // ps:
                    raise MemoryUnavailable(0, f"userfaultfd: process {peer.pid} faulted at "
                                               f"{addr:#x}, outside every RAM block")
                if self._received[name][page]:
                    peer.uffd.wake(peer.bases[name] + page * ps, ps)
                    continue
                peer.sleeping[name].add(page)
                self._pending[name].setdefault(page, now)
                asks.setdefault(name, []).append(page)
        for name, pages in asks.items():
            self._on_fault(name, sorted(set(pages)))

    def handle_faults(self, addresses: Sequence[int], now: float) -> None:
        """Fault messages at ``addresses`` (read at ``now``) -> page requests,
        per block, pages sorted and each once.  Plain Python, not numpy: a
        read brings one to a few messages, and numpy's per-call cost would be
        most of the fault's time."""
        ps = self.page_size
        by_block: dict[int, set[int]] = {}
        for addr in addresses:
            s = bisect.bisect_right(self._start_list, addr) - 1
            if s < 0 or addr >= self._end_list[s]:
                raise MemoryUnavailable(0, f"userfaultfd: a fault at {addr:#x}, outside "
                                           f"every RAM block")
            by_block.setdefault(s, set()).add((addr - self._start_list[s]) // ps)
        for s, page_set in by_block.items():
            name = self._names[s]
            received = self._received[name]
            pending = self._pending[name]
            missing = []
            with self._plock:
                for p in sorted(page_set):
                    # a page placed between the fault and now: its COPY woke
                    # the thread already, nothing to stamp or ask for
                    if not received[p]:
                        pending.setdefault(p, now)
                        missing.append(p)
            if missing:
                self._on_fault(name, missing)

    def sleepers(self) -> int:
        """Pages some thread is asleep on now (for tests and query-migrate)."""
        with self._plock:
            return sum(len(p) for p in self._pending.values())

    # ------------------------------------------------------------ ending
    def end(self) -> None:
        """The load ended (every page placed): unregister, stop the thread."""
        self.close()

    def close(self) -> None:
        """Stop the fault thread and close the descriptor: every range is
        unregistered and sleeping threads wake (a migration that failed or
        was shut down leaves no thread asleep forever)."""
        if self.closed:
            return
        self.closed = True
        self._stop = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(5)
        if self.uffd is not None:
            self.uffd.close()
        for peer in self.peers:
            # our copy of their descriptor does not end their registration:
            # unregister it (in their memory), so their sleepers wake too
            for name, base in peer.bases.items():
                try:
                    peer.uffd.unregister(base, self.memories[name].size)
                except OSError:
                    pass  # the process is gone
        self.registered = False
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass

    def info(self) -> dict:
        out = {"registered": self.registered, "faults": self.faults,
               "sleeping-pages": self.sleepers(), "copies": self.copies,
               "zeropages": self.zeropages, "already-present": self.already_present,
               "blocktime": self.latency.to_json()}
        return out


__all__ = ["export_dirty_log", "export_faults", "FaultPeer", "KernelMemory", "MemoryChoice", "MemoryUnavailable", "MEMORY_CHOICES",
           "PostcopyRAM", "available", "dirty_log_kind", "read_first_bytes", "resolve",
           "touch_pages"]
