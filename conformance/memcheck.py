"""The "no memory lost" check of QEMU's migration tests, for any guest RAM view.

The test guest (:mod:`livemig.conformance.guest`) increments the first byte
of every page in [start, end) in address order, forever.  Once the vCPU is
stopped, the first bytes therefore all hold the same value except at most one
*edge*: the page where the incrementer had got to holds exactly one less
(mod 256) than the page before it.  After a migration, a page that was
dirtied but never re-sent holds a stale value and shows up as a second edge
or as a step of some other size.  This is the logic of QEMU's
``check_guests_ram`` (facts §8), written here from that description.

:func:`check_guest_ram` takes the memory either as a bytes-like object or
numpy array holding guest-physical addresses ``[base, base + len)``, or as a
function ``read(address, length) -> bytes``.  :func:`qemu_guest_ram` reads a
running QEMU's memory through QMP ``pmemsave``.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import numpy as np

from livemig.conformance.guest import END_ADDRESS, PAGE_SIZE, START_ADDRESS

Reader = Callable[[int, int], bytes]
Memory = Union[bytes, bytearray, memoryview, np.ndarray, Reader]

#: How many inconsistencies are described in ``RamCheck.messages`` (QEMU prints 10).
MAX_MESSAGES = 10


@dataclass
class RamCheck:
    """The outcome of :func:`check_guest_ram`.

    ``bad`` counts every page that breaks the rule (a second edge counts as
    bad, like in QEMU); ``edges`` is the number of one-less steps seen;
    ``first_byte`` the value at ``start``; ``messages`` describe the first
    ``MAX_MESSAGES`` bad pages in QEMU's wording.
    """

    bad: int
    edges: int
    first_byte: int
    pages: int
    messages: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.bad == 0


def first_bytes(memory: Memory, start: int = START_ADDRESS, end: int = END_ADDRESS,
                page_size: int = PAGE_SIZE, base: int = 0) -> np.ndarray:
    """The first byte of every page in [start, end), as a uint8 array."""
    if callable(memory):
        return np.frombuffer(b"".join(memory(a, 1) for a in range(start, end, page_size)),
                             dtype=np.uint8)
    view = np.frombuffer(memory, dtype=np.uint8) if not isinstance(memory, np.ndarray) \
        else memory.reshape(-1).view(np.uint8)
    lo, hi = start - base, end - base
    if lo < 0 or hi > view.size:
        raise ValueError(f"memory covers [{base:#x}, {base + view.size:#x}), "
                         f"not [{start:#x}, {end:#x})")
    return view[lo:hi:page_size].copy()


def check_guest_ram(memory: Memory, start: int = START_ADDRESS, end: int = END_ADDRESS,
                    page_size: int = PAGE_SIZE, base: int = 0) -> RamCheck:
    """Check that the guest's page counters have at most one edge.

    Walks the pages in ``[start + page_size, end)`` and compares each first
    byte with the previous page's: equal is fine; exactly one less (mod 256)
    is the one allowed edge; anything else, and any edge after the first, is
    bad.
    """
    first = first_bytes(memory, start, end, page_size, base).astype(np.int16)
    if first.size == 0:
        return RamCheck(0, 0, 0, 0)
    step = (first[:-1] - first[1:]) % 256  # previous minus current
    edges = np.flatnonzero(step == 1)
    bad_at = np.sort(np.concatenate([np.flatnonzero((step != 0) & (step != 1)), edges[1:]]))
    messages = []
    for i in bad_at[:MAX_MESSAGES]:
        i = int(i)
        hit_edge = int(edges.size > 0 and edges[0] < i)
        messages.append(
            f"Memory content inconsistency at {start + (i + 1) * page_size:x} "
            f"first_byte = {int(first[0]):x} last_byte = {int(first[i]):x} "
            f"current = {int(first[i + 1]):x} hit_edge = {hit_edge:x}")
    return RamCheck(int(bad_at.size), int(edges.size), int(first[0]), int(first.size), messages)


def qemu_guest_ram(vm: Any, start: int = START_ADDRESS, end: int = END_ADDRESS,
                   workdir: str | None = None) -> bytes:
    """Guest-physical memory ``[start, end)`` of a QEMU VM, read with QMP ``pmemsave``.

    ``vm`` is a :class:`livemig.conformance.qemu_vm.QemuVM` (anything with
    ``command(name, args)``).  Stop the VM first for a consistent picture.
    """
    fd, path = tempfile.mkstemp(prefix="livemig-pmem-", dir=workdir)
    os.close(fd)
    try:
        vm.command("pmemsave", {"val": start, "size": end - start, "filename": path})
        with open(path, "rb") as f:
            data = f.read()
    finally:
        os.unlink(path)
    if len(data) != end - start:
        raise ValueError(f"pmemsave wrote {len(data)} bytes, asked for {end - start}")
    return data
