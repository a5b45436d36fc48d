"""Transports for the migration stream: ``tcp:HOST:PORT``, ``unix:PATH``,
``fd:N`` and ``file:PATH``.

A :class:`Channel` is a byte pipe with scatter-gather writes
(``socket.sendmsg`` with up to IOV_MAX buffers per call, partial writes
resumed) and ``recv_into`` reads into memory the caller owns.  Sockets are
bidirectional, so the same channel carries the return path; a ``file:``
channel is one-way (no return path).  A :class:`Listener` binds for an
incoming migration; ``tcp:...:0`` picks a free port, reported by
:attr:`Listener.socket_address` in query-migrate's shape.
"""
from __future__ import annotations

import errno
import os
import select
import socket
import time
from dataclasses import dataclass
from typing import Optional, Sequence

IOV_MAX = 1024
PROTOCOLS = ("tcp", "unix", "fd", "file")


class UriError(ValueError):
    """The URI names no protocol livemig supports."""


@dataclass(frozen=True)
class Uri:
    protocol: str
    host: str = ""
    port: int = 0
    path: str = ""
    fd: int = -1

    def __str__(self) -> str:
        if self.protocol == "tcp":
            return f"tcp:{self.host}:{self.port}"
        if self.protocol == "fd":
            return f"fd:{self.fd}"
        return f"{self.protocol}:{self.path}"


def parse_uri(uri: str) -> Uri:
    """Parse a migration URI; :class:`UriError` when the protocol is unknown."""
    proto, sep, rest = uri.partition(":")
    if not sep or proto not in PROTOCOLS:
        raise UriError(uri)
    if proto == "tcp":
        host, sep, port = rest.rpartition(":")
        if not sep or not port.isdigit():
            raise UriError(uri)
        return Uri("tcp", host=host.strip("[]") or "0.0.0.0", port=int(port))
    if proto == "fd":
        if not rest.isdigit():
            raise UriError(uri)
        return Uri("fd", fd=int(rest))
    if not rest:
        raise UriError(uri)
    return Uri(proto, path=rest)


class Channel:
    """One connection (or file) carrying stream bytes."""

    def __init__(self, sock: Optional[socket.socket] = None, fd: Optional[int] = None,
                 writable: bool = True) -> None:
        self.sock = sock
        self.fd = fd
        self.writable = writable
        self.bidirectional = sock is not None
        self.closed = False

    def send_buffers(self, buffers: Sequence) -> int:
        """Write every buffer, in order; returns the byte count."""
        views = [memoryview(b).cast("B") for b in buffers]
        views = [v for v in views if v.nbytes]
        total = sum(v.nbytes for v in views)
        if self.sock is None:
            for v in views:
                while v.nbytes:
                    n = os.write(self.fd, v)  # type: ignore[arg-type]
                    v = v[n:]
            return total
        i = 0
        while i < len(views):
            n = self.sock.sendmsg(views[i:i + IOV_MAX])
            while n:
                if n >= views[i].nbytes:
                    n -= views[i].nbytes
                    i += 1
                else:
                    views[i] = views[i][n:]
                    n = 0
        return total

    def recv_into(self, buf: memoryview) -> int:
        if self.sock is None:
            return os.readv(self.fd, [buf])  # type: ignore[arg-type]
        return self.sock.recv_into(buf)

    def recv_more_into(self, buf: memoryview) -> int:
        """Non-blocking top-up read: 0 when nothing is waiting (sockets only)."""
        if self.sock is None:
            return 0
        try:
            return self.sock.recv_into(buf, 0, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0

    def recv(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (b"": end of file)."""
        assert self.sock is not None
        return self.sock.recv(limit)

    def buffered(self) -> bool:
        """Bytes are waiting that a select() on the socket would not show
        (a TLS channel's decrypted plaintext); never for a plain socket."""
        return False

    def peek(self, want: int, timeout: float) -> bytes:
        """Up to ``want`` first bytes, left to be read again; bounded in time,
        so a peer that connects and says nothing cannot hold the accept loop."""
        sock = self.sock
        if sock is None:
            return b""
        deadline = time.monotonic() + timeout
        head = b""
        while len(head) < want:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                break
            more = sock.recv(want, socket.MSG_PEEK)
            if not more or len(more) == len(head):
                break  # EOF, or no new byte arrived since the last look
            head = more
        return head

    def shutdown_write(self) -> None:
        """End of file for the peer; reading goes on (a multifd channel's
        "all my pages are sent")."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def shutdown(self) -> None:
        """Unblock every reader and writer (QEMU's qemu_file_shutdown)."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.sock is not None:
            self.sock.close()
        elif self.fd is not None:
            try:
                os.close(self.fd)
            except OSError:
                pass


def _tune(sock: socket.socket) -> None:
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def connect(uri: Uri, timeout: float = 30.0) -> Channel:
    """Open the outgoing channel; raises OSError as the connect fails."""
    if uri.protocol == "tcp":
        sock = socket.create_connection((uri.host, uri.port), timeout=timeout)
        sock.settimeout(None)
        _tune(sock)
        return Channel(sock)
    if uri.protocol == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(uri.path)
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        return Channel(sock)
    if uri.protocol == "fd":
        try:
            sock = socket.socket(fileno=os.dup(uri.fd))
            return Channel(sock)
        except OSError:
            return Channel(fd=os.dup(uri.fd))
    fd = os.open(uri.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return Channel(fd=fd)


class Listener:
    """The incoming side's bound endpoint."""

    def __init__(self, uri: Uri) -> None:
        self.uri = uri
        self.sock: Optional[socket.socket] = None
        if uri.protocol == "tcp":
            family = socket.AF_INET6 if ":" in uri.host else socket.AF_INET
            self.sock = socket.socket(family, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((uri.host, uri.port))
            self.sock.listen(16)
        elif uri.protocol == "unix":
            if os.path.exists(uri.path):
                os.unlink(uri.path)
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(uri.path)
            self.sock.listen(16)

    @property
    def socket_address(self) -> list[dict]:
        """query-migrate's ``socket-address`` (SocketAddress list)."""
        if self.sock is None:
            return []
        if self.uri.protocol == "tcp":
            host, port = self.sock.getsockname()[:2]
            return [{"type": "inet", "host": host, "port": str(port)}]
        return [{"type": "unix", "path": self.uri.path}]

    @property
    def connect_uri(self) -> str:
        if self.uri.protocol == "tcp" and self.sock is not None:
            host, port = self.sock.getsockname()[:2]
            return f"tcp:{host}:{port}"
        return str(self.uri)

    def accept(self) -> Channel:
        if self.uri.protocol == "fd":
            try:
                return Channel(socket.socket(fileno=os.dup(self.uri.fd)))
            except OSError:
                return Channel(fd=os.dup(self.uri.fd), writable=False)
        if self.uri.protocol == "file":
            return Channel(fd=os.open(self.uri.path, os.O_RDONLY), writable=False)
        sock = self.sock
        if sock is None:  # closed (by abort, from another thread)
            raise OSError(errno.EBADF, "Bad file descriptor")
        conn, _ = sock.accept()
        _tune(conn)
        return Channel(conn)

    def close(self) -> None:
        # Take the socket first: the load thread and the VM may close at once.
        sock, self.sock = self.sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
            if self.uri.protocol == "unix":
                try:
                    os.unlink(self.uri.path)
                except OSError:
                    pass
