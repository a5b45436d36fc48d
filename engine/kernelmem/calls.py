"""libc calls through ctypes, each a thin function that raises ``OSError``
with errno and a text naming the call.

ctypes releases the GIL around every foreign call: that is the point.  A
thread blocked in the kernel here (a fault on a missing page, an ioctl that
waits) leaves the other Python threads running, among them the fault
handler that will unblock it.
"""
from __future__ import annotations

import ctypes
import errno
import os

_libc = ctypes.CDLL(None, use_errno=True)

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long

_ioctl = _libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int

_madvise = _libc.madvise
_madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
_madvise.restype = ctypes.c_int


def _fail(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")


def syscall(what: str, number: int, *args: int) -> int:
    """``syscall(number, *args)``; ``what`` names it in the error."""
    ret = _syscall(ctypes.c_long(number), *(ctypes.c_long(a) for a in args))
    if ret < 0:
        raise _fail(what)
    return int(ret)


def ioctl(fd: int, request: int, arg: ctypes.Structure, what: str) -> int:
    """``ioctl(fd, request, &arg)``, retried on EINTR."""
    while True:
        ret = _ioctl(fd, request, ctypes.addressof(arg))
        if ret >= 0:
            return int(ret)
        if ctypes.get_errno() != errno.EINTR:
            raise _fail(what)


def madvise(addr: int, length: int, advice: int, what: str) -> None:
    if _madvise(addr, length, advice) != 0:
        raise _fail(what)


def buffer_address(buf: object) -> int:
    """The address of a writable buffer (an ``mmap``, a ``bytearray``, a
    numpy array).  The temporary export is released before returning, so
    the buffer can still be closed; the caller keeps ``buf`` alive."""
    c = ctypes.c_char.from_buffer(buf)  # type: ignore[arg-type]
    addr = ctypes.addressof(c)
    del c
    return addr
