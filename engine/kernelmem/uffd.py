"""userfaultfd(2): a file descriptor through which a thread's page faults on
a registered range are reported to user space and resolved by it.

Theory of operation
-------------------
:class:`Userfaultfd` opens the descriptor, negotiates features with
``UFFDIO_API`` (once per descriptor, as the kernel requires), registers
ranges (MISSING: a thread touching an absent page sleeps in the kernel; WP:
write-protect tracking) and resolves faults:

* ``UFFDIO_COPY`` places a page's bytes atomically and wakes the threads
  sleeping on it; ``UFFDIO_ZEROPAGE`` places a zero page;
* ``UFFDIO_WAKE`` wakes sleepers on a range that is already resolved;
* ``UFFDIO_WRITEPROTECT`` arms or drops write protection.

A page that is already present makes COPY/ZEROPAGE fail with EEXIST: that
is :class:`PageExists`, carrying how many bytes were placed before it, so a
caller can tell "placed once" from "placed again" and count neither twice.
A copy the kernel cut short (EAGAIN with a partial count: the mapping
changed under it) is resumed here.

Every call goes through ctypes, which drops the GIL: a COPY that waits for a
page-table lock, or a read of fault messages, never stalls other threads.

:func:`available` answers whether this kernel offers the features asked for,
and if not, why not, in words a user can act on.
"""
from __future__ import annotations

import ctypes
import errno
import os
import select
import struct
from dataclasses import dataclass
from typing import Callable, Optional

from livemig.engine.kernelmem import abi
from livemig.engine.kernelmem.calls import ioctl, syscall

_MSG_SIZE = ctypes.sizeof(abi.uffd_msg)
# event u8, 7 reserved bytes, flags u64, address u64, ptid u32, pad
_MSG = struct.Struct("<B7xQQI4x")
assert _MSG.size == _MSG_SIZE


class UffdError(OSError):
    """A userfaultfd call failed (errno and the call named in the text)."""


class UffdUnavailable(UffdError):
    """userfaultfd cannot be used here (no syscall, not allowed, a feature missing)."""


class PageExists(UffdError):
    """COPY/ZEROPAGE hit a page that is already present (EEXIST).

    ``done`` is how many bytes were placed before that page."""

    def __init__(self, what: str, done: int) -> None:
        super().__init__(errno.EEXIST, f"{what}: page already present after {done} bytes")
        self.done = done


@dataclass(frozen=True)
class Fault:
    """One UFFD_EVENT_PAGEFAULT message."""

    address: int
    flags: int
    thread_id: int

    @property
    def write(self) -> bool:
        return bool(self.flags & abi.UFFD_PAGEFAULT_FLAG_WRITE)

    @property
    def wp(self) -> bool:
        return bool(self.flags & abi.UFFD_PAGEFAULT_FLAG_WP)


@dataclass(frozen=True)
class Availability:
    """Whether userfaultfd with some features works here; ``reason`` if not."""

    ok: bool
    reason: Optional[str]
    features: int  # what the kernel offers (0 if it could not be asked)

    def __bool__(self) -> bool:
        return self.ok


def _open_fd(nonblock: bool) -> int:
    if abi.NR_USERFAULTFD is None:
        raise UffdUnavailable(errno.ENOSYS, "userfaultfd: no syscall number for this machine")
    flags = abi.UFFD_O_CLOEXEC | abi.UFFD_USER_MODE_ONLY
    if nonblock:
        flags |= abi.UFFD_O_NONBLOCK
    try:
        return syscall("userfaultfd", abi.NR_USERFAULTFD, flags)
    except OSError as exc:
        hint = {errno.EPERM: " (needs CAP_SYS_PTRACE or /proc/sys/vm/unprivileged_userfaultfd = 1)",
                errno.ENOSYS: " (kernel built without CONFIG_USERFAULTFD)"}.get(exc.errno, "")
        raise UffdUnavailable(exc.errno, f"{exc.strerror}{hint}") from None


class Userfaultfd:
    """One userfaultfd descriptor with ``features`` negotiated.

    ``features`` are UFFD_FEATURE_* bits this caller needs: any the kernel
    lacks is :class:`UffdUnavailable` naming it.  ``nonblock`` makes
    :meth:`read_faults` return at once when no message waits."""

    def __init__(self, features: int = 0, *, nonblock: bool = True) -> None:
        self.fd = _open_fd(nonblock)
        try:
            api = abi.uffdio_api(api=abi.UFFD_API, features=features)
            try:
                ioctl(self.fd, abi.UFFDIO_API, api, "UFFDIO_API")
            except OSError as exc:
                lacking = _lacking(features, available().features)
                what = f"the kernel lacks {', '.join(lacking)}" if lacking else exc.strerror
                raise UffdUnavailable(exc.errno, f"UFFDIO_API: {what}") from None
            self.features = int(api.features)
            self.ioctls = int(api.ioctls)
        except BaseException:
            os.close(self.fd)
            raise
        self.closed = False

    @classmethod
    def adopt(cls, fd: int, features: int) -> "Userfaultfd":
        """A descriptor another process opened, negotiated and registered (and
        sent here over a unix socket): its ioctls act on *that* process's
        memory, which is how a handler serves a guest living elsewhere (as
        CRIU's lazy pages and Firecracker's page-fault handler do)."""
        self = cls.__new__(cls)
        self.fd = fd
        self.features = features
        self.ioctls = 0
        self.closed = False
        return self

    def fileno(self) -> int:
        return self.fd

    # ------------------------------------------------------------ ranges
    def register(self, addr: int, length: int, mode: int) -> int:
        """Register [addr, addr+length) with ``mode`` (UFFDIO_REGISTER_MODE_*);
        returns the ioctl bits the range allows."""
        reg = abi.uffdio_register(range=abi.uffdio_range(addr, length), mode=mode)
        ioctl(self.fd, abi.UFFDIO_REGISTER, reg, f"UFFDIO_REGISTER {addr:#x}+{length:#x}")
        return int(reg.ioctls)

    def unregister(self, addr: int, length: int) -> None:
        """Unregister a range: threads sleeping on it wake and fault normally."""
        ioctl(self.fd, abi.UFFDIO_UNREGISTER, abi.uffdio_range(addr, length),
              f"UFFDIO_UNREGISTER {addr:#x}+{length:#x}")

    # ------------------------------------------------------------ resolving
    def copy(self, dst: int, src: int, length: int, *, wake: bool = True) -> int:
        """UFFDIO_COPY ``length`` bytes from ``src`` to the registered ``dst``;
        returns ``length``.  :class:`PageExists` if a page is present."""
        mode = 0 if wake else abi.UFFDIO_COPY_MODE_DONTWAKE
        return self._fill("UFFDIO_COPY", abi.UFFDIO_COPY, "copy", dst, length,
                          lambda done: abi.uffdio_copy(dst=dst + done, src=src + done,
                                                       len=length - done, mode=mode))

    def zeropage(self, dst: int, length: int, *, wake: bool = True) -> int:
        """UFFDIO_ZEROPAGE over [dst, dst+length); returns ``length``."""
        mode = 0 if wake else abi.UFFDIO_ZEROPAGE_MODE_DONTWAKE
        return self._fill("UFFDIO_ZEROPAGE", abi.UFFDIO_ZEROPAGE, "zeropage", dst, length,
                          lambda done: abi.uffdio_zeropage(
                              range=abi.uffdio_range(dst + done, length - done), mode=mode))

    def _fill(self, what: str, request: int, count_field: str, dst: int, length: int,
              make_arg: Callable[[int], ctypes.Structure]) -> int:
        """COPY or ZEROPAGE until all ``length`` bytes are placed.  The kernel
        reports progress in ``count_field``: bytes placed (a partial fill,
        EAGAIN: the mapping changed under it; resume after them) or -errno."""
        done = 0
        while done < length:
            arg = make_arg(done)
            try:
                ioctl(self.fd, request, arg, what)
                return length
            except OSError as exc:
                placed = int(getattr(arg, count_field))
                if placed > 0:
                    done += placed
                    continue
                if exc.errno == errno.EEXIST:
                    raise PageExists(f"{what} {dst + done:#x}", done) from None
                if exc.errno == errno.EAGAIN:
                    continue  # nothing placed yet, the mapping changed: again
                raise UffdError(exc.errno, f"{what} {dst + done:#x}: {exc.strerror}") from None
        return length

    def wake(self, addr: int, length: int) -> None:
        """UFFDIO_WAKE: wake the threads sleeping on a resolved range."""
        ioctl(self.fd, abi.UFFDIO_WAKE, abi.uffdio_range(addr, length), "UFFDIO_WAKE")

    def writeprotect(self, addr: int, length: int, protect: bool = True) -> None:
        """UFFDIO_WRITEPROTECT: arm (``protect``) or drop write protection."""
        mode = abi.UFFDIO_WRITEPROTECT_MODE_WP if protect else 0
        ioctl(self.fd, abi.UFFDIO_WRITEPROTECT,
              abi.uffdio_writeprotect(range=abi.uffdio_range(addr, length), mode=mode),
              "UFFDIO_WRITEPROTECT")

    # ------------------------------------------------------------ messages
    def read_faults(self, max_messages: int = 64) -> list[Fault]:
        """The page-fault messages waiting now (none if nothing waits, on a
        non-blocking descriptor); other events are skipped."""
        try:
            data = os.read(self.fd, _MSG_SIZE * max_messages)
        except BlockingIOError:
            return []
        out = []
        for event, flags, address, ptid in _MSG.iter_unpack(data[:len(data) - len(data) % _MSG_SIZE]):
            if event == abi.UFFD_EVENT_PAGEFAULT:
                out.append(Fault(address, flags, ptid))
        return out

    def wait(self, timeout: Optional[float], *also: int) -> list[int]:
        """Block until a message waits (or one of the fds in ``also`` is
        readable, or ``timeout`` seconds pass); returns the readable fds."""
        p = select.poll()
        for fd in (self.fd, *also):
            p.register(fd, select.POLLIN)
        ms = None if timeout is None else max(0, int(timeout * 1000))
        return [fd for fd, _ev in p.poll(ms)]

    def close(self) -> None:
        """Close: every range is unregistered, sleeping threads wake."""
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __enter__(self) -> "Userfaultfd":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _lacking(wanted: int, offered: int) -> list[str]:
    """The uapi names of the bits of ``wanted`` not in ``offered``."""
    bits = [1 << i for i in range(64) if wanted & ~offered & (1 << i)]
    return [abi.FEATURE_NAMES.get(b, f"feature bit {b.bit_length() - 1}") for b in bits]


def available(features: int = 0) -> Availability:
    """Can userfaultfd be opened here with ``features``?  Asks the kernel on
    a throw-away descriptor (UFFDIO_API may be called once per descriptor)."""
    try:
        fd = _open_fd(nonblock=True)
    except UffdUnavailable as exc:
        return Availability(False, f"userfaultfd(2): {exc.strerror}", 0)
    try:
        api = abi.uffdio_api(api=abi.UFFD_API, features=0)
        try:
            ioctl(fd, abi.UFFDIO_API, api, "UFFDIO_API")
        except OSError as exc:
            return Availability(False, f"UFFDIO_API: {exc.strerror}", 0)
        offered = int(api.features)
    finally:
        os.close(fd)
    lacking = _lacking(features, offered)
    if lacking:
        return Availability(False, f"the kernel lacks {', '.join(lacking)}", offered)
    return Availability(True, None, offered)


__all__ = ["Availability", "Fault", "PageExists", "UffdError", "UffdUnavailable",
           "Userfaultfd", "available"]
