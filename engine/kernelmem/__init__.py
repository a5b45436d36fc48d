"""livemig.engine.kernelmem: guest RAM the kernel manages for the migration.

* :mod:`~livemig.engine.kernelmem.uffd` -- userfaultfd(2): MISSING faults
  resolved with UFFDIO_COPY / UFFDIO_ZEROPAGE (the destination's postcopy,
  as QEMU's postcopy-ram does), write protection;
* :mod:`~livemig.engine.kernelmem.dirtylog` -- the pages written since the
  last sync, from userfaultfd write-protect in async mode with PAGEMAP_SCAN,
  or soft-dirty bits from /proc/PID/pagemap (the source's dirty log, as
  KVM's is for QEMU);
* :mod:`~livemig.engine.kernelmem.mapping` -- shmem RAM (a memfd mapped
  shared) and discards that really drop pages;
* :mod:`~livemig.engine.kernelmem.backend` -- the two together as a guest's
  RAM backend (what ``Guest(memory="kernel")`` uses; its ``available()`` asks
  for both halves, :func:`~livemig.engine.kernelmem.backend.resolve` picks);
* :mod:`~livemig.engine.kernelmem.abi` -- the kernel's numbers (ioctls,
  feature bits, struct layouts): the one constants module of this package.

Names are imported on first use, like :mod:`livemig.engine`.
"""
from __future__ import annotations

from livemig.lazy import lazy_exports

_EXPORTS: dict[str, str] = {
    "Userfaultfd": "uffd",
    "UffdError": "uffd",
    "UffdUnavailable": "uffd",
    "PageExists": "uffd",
    "Fault": "uffd",
    "available": "uffd",
    "SharedMemory": "mapping",
    "DirtyLog": "dirtylog",
    "WPAsyncDirtyLog": "dirtylog",
    "SoftDirtyLog": "dirtylog",
    "open_dirty_log": "dirtylog",
    "KernelMemory": "backend",
    "PostcopyRAM": "backend",
    "MemoryChoice": "backend",
    "MemoryUnavailable": "backend",
    "MEMORY_CHOICES": "backend",
    "touch_pages": "backend",
    "export_dirty_log": "backend",
    "export_faults": "backend",
    "FaultPeer": "backend",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
