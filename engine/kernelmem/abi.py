"""Linux kernel ABI numbers for :mod:`livemig.engine.kernelmem` -- the one
constants module of this package.

These are facts of the Linux uapi headers (``linux/userfaultfd.h``,
``linux/fs.h``, ``linux/mman.h``, ``Documentation/admin-guide/mm/pagemap.rst``)
for x86_64, not facts of QEMU's migration, which is why they live here and
not in :mod:`livemig.spec`.  The ctypes structures mirror the uapi structs
field for field; every ioctl number is built by :func:`_iowr` / :func:`_ior`
from its struct size, as the headers' ``_IOWR``/``_IOR`` macros do, so a
wrong struct is a wrong number (the kernel then answers ENOTTY/EINVAL
instead of scribbling on memory).

Bits newer than the installed headers (``UFFD_FEATURE_WP_ASYNC``,
``PAGEMAP_SCAN``) are from Linux 6.7's uapi; :func:`livemig.engine.kernelmem.
uffd.available` asks the running kernel for them rather than trusting this
table.
"""
from __future__ import annotations

import ctypes
import platform

# ------------------------------------------------------------------ syscalls
#: __NR_userfaultfd and __NR_memfd_create per machine (arch/*/syscall tables)
_SYSCALLS = {"x86_64": {"userfaultfd": 323}, "aarch64": {"userfaultfd": 282}}
NR_USERFAULTFD: int | None = _SYSCALLS.get(platform.machine(), {}).get("userfaultfd")

#: userfaultfd(2) flags: O_CLOEXEC, O_NONBLOCK (x86_64/aarch64 values) and
#: UFFD_USER_MODE_ONLY (faults from user mode only: what a guest makes)
UFFD_O_CLOEXEC = 0o2000000
UFFD_O_NONBLOCK = 0o4000
UFFD_USER_MODE_ONLY = 1


# ------------------------------------------------------------------ ioctl macros
def _ioc(direction: int, typ: int, nr: int, size: int) -> int:
    return (direction << 30) | (size << 16) | (typ << 8) | nr


def _iowr(typ: int, nr: int, struct: type) -> int:
    return _ioc(3, typ, nr, ctypes.sizeof(struct))


def _ior(typ: int, nr: int, struct: type) -> int:
    return _ioc(2, typ, nr, ctypes.sizeof(struct))


# ------------------------------------------------------------------ userfaultfd
UFFD_API = 0xAA
_UFFDIO = 0xAA


class uffdio_api(ctypes.Structure):
    _fields_ = [("api", ctypes.c_uint64), ("features", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class uffdio_range(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class uffdio_register(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64),
                ("ioctls", ctypes.c_uint64)]


class uffdio_copy(ctypes.Structure):
    _fields_ = [("dst", ctypes.c_uint64), ("src", ctypes.c_uint64), ("len", ctypes.c_uint64),
                ("mode", ctypes.c_uint64), ("copy", ctypes.c_int64)]


class uffdio_zeropage(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64),
                ("zeropage", ctypes.c_int64)]


class uffdio_writeprotect(ctypes.Structure):
    _fields_ = [("range", uffdio_range), ("mode", ctypes.c_uint64)]


class uffd_pagefault(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("address", ctypes.c_uint64),
                ("ptid", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class uffd_msg(ctypes.Structure):
    """struct uffd_msg: 8-byte header and a 24-byte union (only the
    pagefault member is read; other events are skipped by type)."""

    _fields_ = [("event", ctypes.c_uint8), ("reserved1", ctypes.c_uint8),
                ("reserved2", ctypes.c_uint16), ("reserved3", ctypes.c_uint32),
                ("pagefault", uffd_pagefault)]


UFFDIO_API = _iowr(_UFFDIO, 0x3F, uffdio_api)
UFFDIO_REGISTER = _iowr(_UFFDIO, 0x00, uffdio_register)
UFFDIO_UNREGISTER = _ior(_UFFDIO, 0x01, uffdio_range)
UFFDIO_WAKE = _ior(_UFFDIO, 0x02, uffdio_range)
UFFDIO_COPY = _iowr(_UFFDIO, 0x03, uffdio_copy)
UFFDIO_ZEROPAGE = _iowr(_UFFDIO, 0x04, uffdio_zeropage)
UFFDIO_WRITEPROTECT = _iowr(_UFFDIO, 0x06, uffdio_writeprotect)

#: bit numbers of uffdio_register.ioctls (what a registered range allows)
IOCTL_BIT_WAKE = 0x02
IOCTL_BIT_COPY = 0x03
IOCTL_BIT_ZEROPAGE = 0x04
IOCTL_BIT_WRITEPROTECT = 0x06

UFFDIO_REGISTER_MODE_MISSING = 1 << 0
UFFDIO_REGISTER_MODE_WP = 1 << 1
UFFDIO_COPY_MODE_DONTWAKE = 1 << 0
UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1 << 0
UFFDIO_WRITEPROTECT_MODE_WP = 1 << 0

UFFD_EVENT_PAGEFAULT = 0x12
UFFD_PAGEFAULT_FLAG_WRITE = 1 << 0
UFFD_PAGEFAULT_FLAG_WP = 1 << 1

UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0
UFFD_FEATURE_MISSING_SHMEM = 1 << 5
UFFD_FEATURE_THREAD_ID = 1 << 8
UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12
UFFD_FEATURE_WP_UNPOPULATED = 1 << 13
UFFD_FEATURE_WP_ASYNC = 1 << 15

#: feature bit -> uapi name, for "the kernel lacks X" texts
FEATURE_NAMES = {value: name for name, value in dict(globals()).items()
                 if name.startswith("UFFD_FEATURE_")}


# ------------------------------------------------------------------ PAGEMAP_SCAN
class pm_scan_arg(ctypes.Structure):
    _fields_ = [("size", ctypes.c_uint64), ("flags", ctypes.c_uint64),
                ("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("walk_end", ctypes.c_uint64), ("vec", ctypes.c_uint64),
                ("vec_len", ctypes.c_uint64), ("max_pages", ctypes.c_uint64),
                ("category_inverted", ctypes.c_uint64), ("category_mask", ctypes.c_uint64),
                ("category_anyof_mask", ctypes.c_uint64), ("return_mask", ctypes.c_uint64)]


class page_region(ctypes.Structure):
    _fields_ = [("start", ctypes.c_uint64), ("end", ctypes.c_uint64),
                ("categories", ctypes.c_uint64)]


PAGEMAP_SCAN = _iowr(ord("f"), 16, pm_scan_arg)
PM_SCAN_WP_MATCHING = 1 << 0
PM_SCAN_CHECK_WPASYNC = 1 << 1
PAGE_IS_WRITTEN = 1 << 1

# ------------------------------------------------------------------ soft-dirty
#: /proc/PID/clear_refs value that clears the soft-dirty bits
CLEAR_REFS_SOFT_DIRTY = b"4"
#: /proc/PID/pagemap: one little-endian u64 per page
PAGEMAP_ENTRY_BYTES = 8
PM_SOFT_DIRTY_BIT = 55

# ------------------------------------------------------------------ madvise / fallocate
MADV_DONTNEED = 4
MADV_REMOVE = 9
