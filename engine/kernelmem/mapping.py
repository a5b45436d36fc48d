"""Guest RAM the kernel can track: a memfd (shmem) mapped shared.

Why shmem and not anonymous memory: the same RAM file can be mapped by a
second process (a guest that lives in a child, as CRIU's lazy pages serve
one), userfaultfd offers MISSING and WP on it, and a discard really drops
the page from the file (``MADV_REMOVE``), so the next touch faults again.
On shmem ``MADV_DONTNEED`` only unmaps the page from this process: the file
keeps it and the next touch maps it back without a fault, which is why
:meth:`SharedMemory.discard` uses ``MADV_REMOVE`` there.
"""
from __future__ import annotations

import mmap
import os

from livemig.engine.kernelmem import abi
from livemig.engine.kernelmem.calls import buffer_address, madvise


class SharedMemory:
    """``size`` bytes of shmem (``memfd_create``), mapped ``MAP_SHARED``.

    ``mmap`` is the Python mapping (numpy views are made from it), ``address``
    its start, ``fd`` the memfd (another process maps the same RAM through it)."""

    def __init__(self, name: str, size: int) -> None:
        self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
        try:
            os.ftruncate(self.fd, size)
            self.mmap = mmap.mmap(self.fd, size, mmap.MAP_SHARED)
        except BaseException:
            os.close(self.fd)
            raise
        self.size = size
        self.address = buffer_address(self.mmap)

    def discard(self, offset: int, length: int) -> None:
        """Drop [offset, offset+length) from the file: reads see zeros, and
        a userfaultfd MISSING registration faults on it again."""
        madvise(self.address + offset, length, abi.MADV_REMOVE, "madvise(MADV_REMOVE)")

    def close(self) -> None:
        try:
            self.mmap.close()
        except BufferError:  # numpy views still alive: the GC unmaps it
            pass
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def discard_private(address: int, length: int) -> None:
    """Drop pages of a private anonymous mapping (``MADV_DONTNEED``): the next
    touch sees a zero page, or faults under a MISSING registration."""
    madvise(address, length, abi.MADV_DONTNEED, "madvise(MADV_DONTNEED)")
