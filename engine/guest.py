"""The guest a livemig VM runs: RAM blocks, a dirty log, a vCPU workload.

Theory of operation
-------------------
A :class:`RAMBlock` is a named, page-aligned byte region (anonymous or
file-backed ``mmap``) seen through numpy as a ``(pages, page_size)`` uint8
array.  Nothing outside :mod:`livemig.engine.stream` and this module writes
into it, and both only through numpy slices of that array, so no write can
leave the block.

Dirty tracking follows QEMU's software (TCG) scheme in two levels:

* the *dirty log* (``RAMBlock.dirty_log``, one bool per page) is set by the
  vCPU **after** it has written a page; it is guarded by ``Guest.dirty_lock``;
* the migration's own bitmap is filled by :meth:`Guest.sync_dirty_log`, which
  ORs the log into it and clears the log in one critical section (QEMU's
  ``migration_bitmap_sync``).

Writing first and logging second is what makes precopy lossless: a page
written after its bits were harvested is logged again and re-sent in a later
pass, and the final pass runs with the vCPU stopped.

That is the *simulated* memory backend.  With ``memory="kernel"``
(:mod:`livemig.engine.kernelmem.backend`) the blocks are shmem, the vCPU
writes with plain loads and stores and logs nothing, and the kernel's dirty
log -- which sees the writes of every thread of the process -- is ORed into
``dirty_log`` at the start of each :meth:`Guest.sync_dirty_log`; on a
postcopy destination the kernel, not a fault hook, stops the vCPU on a
missing page.

The workload is QEMU's migration-test guest in numpy: it sweeps the pages
from 1 MiB to 100 MiB (all of RAM above 1 MiB when the block is smaller) in
address order, incrementing the first byte of every page, in batches, at a
configurable rate in pages per second, forever.  ``stop()`` waits for the
current batch, so a stopped guest has exactly one "edge".
:func:`check_guest_ram` is QEMU's ``check_guests_ram``, vectorised.
"""
from __future__ import annotations

import contextlib
import mmap
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Optional

import numpy as np

from livemig.engine.kernelmem.backend import (
    KernelMemory, MemoryChoice, read_first_bytes, resolve, touch_pages,
)
from livemig.engine.layouts import Codec, layouts
from livemig.engine.threads import spawn
from livemig.errors import StreamError

MiB = 1 << 20

#: VM run states (QEMU's RunState names used by query-status and the stream)
RUN_RUNNING = "running"
RUN_PAUSED = "paused"
RUN_INMIGRATE = "inmigrate"
RUN_FINISH_MIGRATE = "finish-migrate"
RUN_POSTMIGRATE = "postmigrate"

FILLS = ("random", "zero", "pattern")

if TYPE_CHECKING:
    from livemig.engine.kernelmem.mapping import SharedMemory


def parse_size(text: str | int) -> int:
    """``"64M"``, ``"1G"``, ``"4096"`` -> bytes (QEMU's size suffixes, powers of 1024)."""
    if isinstance(text, int):
        return text
    s = text.strip().upper().rstrip("B")
    mult = 1
    for suffix, m in (("K", 1 << 10), ("M", 1 << 20), ("G", 1 << 30), ("T", 1 << 40)):
        if s.endswith(suffix):
            s, mult = s[:-1], m
            break
    return int(float(s) * mult)


def check_block_size(name: str, size: int, page_size: int) -> None:
    """A RAM block's size is a positive multiple of the page size (ValueError)."""
    if size <= 0 or size % page_size:
        raise ValueError(f"RAM block {name!r}: size {size} is not a positive multiple "
                         f"of the page size {page_size}")


class RAMBlock:
    """One RAM block: ``name`` (QEMU's idstr, e.g. ``pc.ram``) and its pages."""

    def __init__(self, name: str, size: int, page_size: int = 4096, *,
                 path: Optional[str] = None, populate: bool = False,
                 shared: Optional["SharedMemory"] = None) -> None:
        check_block_size(name, size, page_size)
        self.name = name
        self.used_length = size
        self.page_size = page_size
        self.npages = size // page_size
        #: the kernel backend's shmem (None: anonymous or file memory)
        self.shared = shared
        if shared is not None:
            self._mmap = shared.mmap
        elif path is not None:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                flags = mmap.MAP_SHARED
                if populate:
                    flags |= getattr(mmap, "MAP_POPULATE", 0)
                self._mmap = mmap.mmap(fd, size, flags)
            finally:
                os.close(fd)
        else:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
            if populate:  # preallocate (QEMU's -mem-prealloc): no faults while loading
                flags |= getattr(mmap, "MAP_POPULATE", 0)
            self._mmap = mmap.mmap(-1, size, flags)
        self.bytes = np.frombuffer(self._mmap, dtype=np.uint8)
        self.pages = self.bytes.reshape(self.npages, page_size)
        self.dirty_log = np.zeros(self.npages, dtype=bool)

    def fill(self, kind: str, seed: int = 0) -> None:
        """Fill the block: ``random`` bytes, ``zero`` (leave untouched) or a ``pattern``."""
        if kind == "zero":
            return
        if kind == "pattern":
            # Every page holds its own page number: easy to eyeball, mostly non-zero.
            idx = np.arange(self.npages, dtype=np.uint32)
            self.pages.view(np.uint32)[:, :] = idx[:, None]
            return
        if kind != "random":
            raise ValueError(f"unknown fill {kind!r}; known: {', '.join(FILLS)}")
        rng = np.random.default_rng(seed)
        step = 4096  # pages per chunk: bounded temporary memory
        for start in range(0, self.npages, step):
            stop = min(start + step, self.npages)
            view = self.pages[start:stop].view(np.uint64)
            view[:] = rng.integers(0, 1 << 63, size=view.shape, dtype=np.uint64)

    def close(self) -> None:
        if self.shared is not None:
            self.shared.close()
            return
        try:
            self._mmap.close()
        except BufferError:  # numpy views still alive: the GC will do it
            pass


@dataclass
class CheckResult:
    """Outcome of :func:`check_guest_ram`."""

    ok: bool
    bad: int
    edges: int
    first_byte: int
    messages: list[str] = field(default_factory=list)


def check_guest_ram(block: RAMBlock, start: int = MiB, end: int = 100 * MiB) -> CheckResult:
    """QEMU's ``check_guests_ram``: first bytes of the pages in [start, end) are
    all equal except at most one edge where a page is one less (mod 256) than
    the page before it.  ``end`` is clipped to the block."""
    ps = block.page_size
    end = min(end, block.used_length)
    return check_first_bytes(block.pages[start // ps:end // ps, 0], start, ps)


def check_first_bytes(first_bytes: np.ndarray, start: int, ps: int) -> CheckResult:
    """:func:`check_guest_ram` on the pages' first bytes, the first at ``start``."""
    first = first_bytes.astype(np.int16)
    if first.size == 0:
        return CheckResult(True, 0, 0, 0)
    step = (first[:-1] - first[1:]) % 256  # previous minus current
    edge_at = np.flatnonzero(step == 1)
    other = np.flatnonzero((step != 0) & (step != 1))
    bad_idx = list(other) + list(edge_at[1:])
    bad_idx.sort()
    messages = []
    for i in bad_idx[:10]:
        addr = start + (int(i) + 1) * ps
        messages.append(f"Memory content inconsistency at {addr:x} first_byte = {int(first[0]):x} "
                        f"last_byte = {int(first[i]):x} current = {int(first[i + 1]):x} "
                        f"hit_edge = {int(bool(len(edge_at)))}")
    return CheckResult(not bad_idx, len(bad_idx), len(edge_at), int(first[0]), messages)


@lru_cache(maxsize=None)
def _device_state() -> Codec:
    """The spec's DEVICE_STATE layout (a Guest has no profile; every profile's
    wire layouts are the same, a test checks it)."""
    from livemig.spec import DEFAULT_PROFILE, load_profile
    return layouts(load_profile(DEFAULT_PROFILE))["DEVICE_STATE"]


class Guest:
    """The guest of one VM: RAM blocks, run state and the vCPU workload thread.

    ``ram_size`` goes to block ``pc.ram``; ``extra_blocks`` adds small named
    blocks (by default ``/rom@etc/acpi/tables``-like ``small.ram`` of 128 KiB).

    ``memory`` is the RAM backend (:mod:`livemig.engine.kernelmem.backend`):
    ``"simulated"`` (the default: the vCPU logs its writes and asks before it
    touches a postcopy page), ``"kernel"`` (shmem, the kernel's dirty log and
    userfaultfd; :class:`~livemig.engine.kernelmem.backend.MemoryUnavailable`
    naming why where it cannot run) or ``"auto"`` (kernel where it can run).
    """

    def __init__(self, ram_size: int, *, page_size: int = 4096, fill: str = "random",
                 extra_blocks: Optional[dict[str, int]] = None, seed: int = 0,
                 mem_path: Optional[str] = None, workload_rate: float = 20000.0,
                 workload_start: int = MiB, workload_end: int = 100 * MiB,
                 batch: int = 64, run_state: str = RUN_PAUSED, populate: bool = False,
                 vcpu_thread: bool = True, memory: str = "simulated") -> None:
        self.page_size = page_size
        self.vcpu_thread = vcpu_thread
        #: what ``memory`` resolved to (kind, dirty log, why not kernel)
        self.memory: MemoryChoice = resolve(memory, mem_path=mem_path)
        #: the kernel backend, or None for the simulated one
        self.kernel: Optional[KernelMemory] = (
            KernelMemory(page_size, self.memory.dirty_log) if self.memory.kind == "kernel"
            else None)
        self.blocks: dict[str, RAMBlock] = {}
        sizes = {"pc.ram": ram_size}
        sizes.update(extra_blocks if extra_blocks is not None else {"small.ram": 128 * 1024})
        for name, size in sizes.items():
            shared = None
            if self.kernel is not None:
                check_block_size(name, size, page_size)  # before any shmem is made
                shared = self.kernel.new_block_memory(name, size)
            self.blocks[name] = RAMBlock(name, size, page_size, populate=populate,
                                         path=mem_path if name == "pc.ram" else None,
                                         shared=shared)
        for i, block in enumerate(self.blocks.values()):
            block.fill(fill, seed + i)
        self.dirty_lock = threading.Lock()
        self.device_state = b"livemig-device-v1:" + os.urandom(16).hex().encode()
        self.run_state = run_state
        self.run_state_before_stop = run_state
        self._run_lock = threading.Condition()
        self.on_run_state: Optional[Callable[[str, str], None]] = None
        # workload
        self.workload_rate = float(workload_rate)
        self.throttle = 0  # percent of time the vCPU sleeps (auto-converge)
        self.batch = batch
        ram = self.blocks["pc.ram"]
        first = min(workload_start, ram.used_length) // page_size
        last = min(workload_end, ram.used_length) // page_size
        self.work_range = (first, max(first, last))
        self._cursor = first
        # The workload's counters start equal (QEMU's guest RAM starts zeroed),
        # whatever the fill: the memory check relies on it.
        ram.pages[first:self.work_range[1], 0] = 0
        self._vcpu_running = False
        self._vcpu_idle = threading.Event()
        self._vcpu_idle.set()
        self._batch_lock = threading.Lock()
        #: the kernel vCPU's loads land here (one byte per page of a batch)
        self._scratch = np.zeros(max(batch, 1), dtype=np.uint8)
        self._thread: Optional[threading.Thread] = None
        self.vcpu_error: Optional[str] = None
        self._quit = False
        self.pages_written = 0
        #: postcopy destination: called with (first, last) pages of pc.ram before
        #: the vCPU touches them; blocks until they are present, False to skip
        self.fault_hook: Optional[Callable[[int, int], bool]] = None

    # ---------------------------------------------------------------- RAM
    @property
    def ram(self) -> RAMBlock:
        return self.blocks["pc.ram"]

    def total_bytes(self) -> int:
        return sum(b.used_length for b in self.blocks.values())

    def sync_dirty_log(self, bitmaps: dict[str, np.ndarray]) -> int:
        """OR every block's dirty log into ``bitmaps`` and clear the logs; returns
        the number of pages newly dirty (QEMU's migration_bitmap_sync)."""
        new = 0
        kernel = self.kernel
        # soft-dirty is not atomic with its reset: the vCPU is kept out
        outer = self._batch_lock if kernel is not None and not kernel.atomic \
            else contextlib.nullcontext()
        with outer, self.dirty_lock:
            if kernel is not None:  # the kernel's log first: the writes of any thread
                kernel.collect({name: b.dirty_log for name, b in self.blocks.items()})
            for name, block in self.blocks.items():
                log = block.dirty_log
                bm = bitmaps[name]
                new += int(np.count_nonzero(log & ~bm))
                np.logical_or(bm, log, out=bm)
                log[:] = False
        return new

    def clear_dirty_log(self) -> None:
        """Start the log afresh (a migration's setup: every page is dirty)."""
        with self.dirty_lock:
            if self.kernel is not None:
                self.kernel.arm()
            for block in self.blocks.values():
                block.dirty_log[:] = False

    def check(self) -> CheckResult:
        """The memory check on ``pc.ram`` over the workload's range."""
        first, last = self.work_range
        if self.kernel is not None and self.ram.shared is not None:
            # read by libc, not numpy: on a postcopy destination a read of a
            # page not placed yet sleeps in the kernel, and must not hold the
            # GIL the fault thread needs to have it placed
            out = np.zeros(last - first, dtype=np.uint8)
            read_first_bytes(self.ram.shared.address, first, last, self.page_size, out)
            return check_first_bytes(out, first * self.page_size, self.page_size)
        return check_guest_ram(self.ram, first * self.page_size, last * self.page_size)

    # ------------------------------------------------------------ device state
    def save_device_state(self) -> bytes:
        """The opaque device blob plus the vCPU's state (the workload cursor)."""
        return _device_state().pack(self._cursor, self.device_state)

    def load_device_state(self, blob: bytes) -> None:
        """Inverse of :meth:`save_device_state` (after an incoming migration)."""
        codec = _device_state()
        if len(blob) < codec.min_size:  # the stream decoder refuses such a section first
            raise StreamError(f"device state of {len(blob)} bytes, "
                              f"at least {codec.min_size} expected")
        cursor, device = codec.unpack(blob)
        first, last = self.work_range
        self._cursor = cursor if first <= cursor < max(last, first + 1) else first
        self.device_state = device

    # ------------------------------------------------------------ run state
    def set_run_state(self, state: str) -> None:
        with self._run_lock:
            old, self.run_state = self.run_state, state
            self._run_lock.notify_all()
        if self.on_run_state is not None and old != state:
            self.on_run_state(old, state)

    def wait_run_state(self, states: "set[str] | frozenset[str]", timeout: float) -> bool:
        """Block (bounded) until the run state is one of ``states``."""
        with self._run_lock:
            return self._run_lock.wait_for(lambda: self.run_state in states, timeout)

    def vm_start(self) -> None:
        """Run the vCPU (QEMU's vm_start)."""
        self._start_thread()
        self.set_run_state(RUN_RUNNING)
        self._vcpu_running = True
        self._vcpu_idle.clear()
        with self._run_lock:
            self._run_lock.notify_all()

    def vm_stop(self, state: str = RUN_PAUSED, timeout: float = 30.0) -> None:
        """Stop the vCPU and wait until it finished its current batch."""
        self.run_state_before_stop = self.run_state
        self._vcpu_running = False
        with self._run_lock:
            self._run_lock.notify_all()
        # A batch runs under _batch_lock and re-checks _vcpu_running inside it:
        # once we hold the lock, no write can follow (an event flag alone can
        # be read stale by a vCPU between its check and its write).
        if self._batch_lock.acquire(timeout=timeout):
            self._batch_lock.release()
        self.set_run_state(state)

    @property
    def vcpu_running(self) -> bool:
        return self._vcpu_running

    def shutdown(self) -> None:
        self._quit = True
        self._vcpu_running = False
        with self._run_lock:
            self._run_lock.notify_all()
        if self.kernel is not None:
            self.kernel.close()  # unregister first: a vCPU asleep on a fault wakes
        if self._thread is not None:
            self._thread.join(5)
        for b in self.blocks.values():
            b.close()

    # ------------------------------------------------------------- workload
    def _start_thread(self) -> None:
        if not self.vcpu_thread:
            return
        if self._thread is None or not self._thread.is_alive():
            self._thread = spawn("livemig-vcpu", self._vcpu_loop, self._vcpu_crashed)

    def _vcpu_crashed(self, text: str) -> None:
        """The workload thread failed: the guest stops writing (as a guest
        that crashed would); said on stderr and in :attr:`vcpu_error`.
        Migrations go on: the RAM they move is still consistent."""
        self.vcpu_error = text
        sys.stderr.write(f"livemig: {text}\n")

    def _one_batch(self, a: int, b: int) -> bool:
        """One batch of the workload: pages [a, b) of the range, then the log.
        False when the fault hook refused (postcopy: pages still missing) or
        the vCPU stopped meanwhile."""
        if self.kernel is not None:
            return self._kernel_batch(a, b)
        hook = self.fault_hook
        if hook is not None and not hook(a, b):
            return False
        with self._batch_lock:
            if not self._vcpu_running:
                return False
            col = self.ram.pages[a:b, 0]
            col += 1
            with self.dirty_lock:
                self.ram.dirty_log[a:b] = True
            self.pages_written += b - a
            first, last = self.work_range
            self._cursor = first if b >= last else b
        return True

    def _kernel_batch(self, a: int, b: int) -> bool:
        """The batch as a guest that knows nothing of migration runs it: plain
        loads and stores into its RAM.  The kernel logs them (source) or stops
        the thread on a missing page until postcopy placed it (destination).

        The loads come first, outside the batch lock: a page that is missing
        stops the thread there, where :meth:`vm_stop` need not wait for it
        (as QEMU kicks a vCPU out of a fault, and the guest's access runs
        again later); the stores then find their pages present."""
        ram = self.ram
        assert ram.shared is not None
        if len(self._scratch) < b - a:  # x-livemig-set-workload raised the batch
            self._scratch = np.zeros(b - a, dtype=np.uint8)
        read_first_bytes(ram.shared.address, a, b, self.page_size, self._scratch[:b - a])
        with self._batch_lock:
            if not self._vcpu_running:
                return False
            touch_pages(ram.shared.address, a, b, self.page_size)
            self.pages_written += b - a
            first, last = self.work_range
            self._cursor = first if b >= last else b
        return True

    def memory_info(self) -> dict:
        """The x-livemig-memory member of query-migrate: which backend."""
        if self.kernel is not None:
            return self.kernel.info()
        out: dict = {"backend": self.memory.kind}
        if self.memory.reason:
            out["kernel-unavailable"] = self.memory.reason
        return out

    def step_workload(self, batches: int = 1) -> int:
        """Run ``batches`` batches now, on the caller's thread (a guest made
        with ``vcpu_thread=False``: deterministic tests step the vCPU
        themselves).  Returns the pages written; stops at the first batch the
        fault hook refuses."""
        first, last = self.work_range
        written = 0
        for _ in range(batches):
            if not self._vcpu_running or last <= first:
                break
            a = self._cursor
            b = min(a + self.batch, last)
            if not self._one_batch(a, b):
                break
            written += b - a
        return written

    def _vcpu_loop(self) -> None:
        first, last = self.work_range
        span = last - first
        t_next = time.monotonic()
        while not self._quit:
            if not self._vcpu_running:
                self._vcpu_idle.set()
                with self._run_lock:
                    self._run_lock.wait_for(lambda: self._vcpu_running or self._quit, 1.0)
                t_next = time.monotonic()
                continue
            self._vcpu_idle.clear()
            if span <= 0 or self.workload_rate <= 0:
                with self._run_lock:
                    self._run_lock.wait_for(lambda: not self._vcpu_running or self._quit, 0.1)
                continue
            a = self._cursor
            b = min(a + self.batch, last)
            if not self._one_batch(a, b):
                continue
            # Pace: rate pages/s, stretched by the throttle percentage.
            t_next += (b - a) / self.workload_rate
            throttle = self.throttle
            if throttle:
                t_next += (b - a) / self.workload_rate * throttle / max(1, 100 - throttle)
            delay = t_next - time.monotonic()
            if delay > 0.002:
                self._vcpu_idle.set()  # sleeping between batches counts as idle
                with self._run_lock:
                    self._run_lock.wait_for(lambda: not self._vcpu_running or self._quit,
                                            delay)
                self._vcpu_idle.clear()
            elif delay < -1.0:
                t_next = time.monotonic()  # do not try to catch up a long stall
