"""A fault relay: a loopback TCP / unix-socket proxy between a migration's
source and destination that breaks one channel at a moment the test picks.

Theory of operation
-------------------
:class:`FaultRelay` listens on ``tcp:127.0.0.1:0`` or ``unix:PATH`` and, for
every connection it accepts, opens one to its target (the destination's
listening URI) and joins the two with a :class:`Link`: one :class:`Pump`
thread per direction (``fwd`` = source -> destination, ``rev`` =
destination -> source; the return path is the ``rev`` direction of the
main channel).  Links are numbered in accept order and named by their first
bytes: ``multifd`` (MULTIFD_MAGIC, ``Link.multifd_id`` is the channel id of
the hello), else ``main`` -- or ``recovery`` after :meth:`FaultRelay.retarget`
(the new connection of ``migrate resume=true``).

Faults (methods of :class:`Link`, callable from the test thread or from a
trigger): :meth:`~Link.cut` (both sides closed with FIN), :meth:`~Link.rst`
(SO_LINGER 0: a reset), :meth:`~Link.half_close` (shut one direction: the
receiver sees end-of-file), :meth:`~Link.stall` (stop forwarding for N s,
then resume; the sender is back-pressured), :meth:`~Link.throttle`
(bytes/s), :meth:`~Link.delay` (fixed latency per chunk), :meth:`~Link.drop`
(one direction silently discarded, the sockets stay open; an end-of-file is
still passed on).

Triggers (:meth:`FaultRelay.when`) fire an action inside the pump the moment
the relay sees something: ``"accept"`` (a new connection, before the relay
connects to the target or forwards a byte), ``("bytes", n)`` (n bytes have
crossed that direction) or ``("pattern", b"...")`` (those bytes are about to
cross: the bytes before them are forwarded, the action runs, then the rest
is forwarded if the link is still up).  So statuses too short to hit from
outside (the device section passing, the destination's SHUT passing) are
hit exactly.

Lifetimes: every socket has a 50 ms timeout and every pump looks at the
link's ``dead`` flag between chunks, so no thread blocks for long; a link
ends when both directions reached end-of-file or a fault closed it;
:meth:`FaultRelay.close` closes everything and joins every thread (bounded).
"""
from __future__ import annotations

import os
import socket
import struct
import threading
import time
from typing import Callable, Optional

from livemig.engine.wire import wire_tables
from livemig.spec import load_profile

TICK = 0.05  # seconds any pump or the acceptor blocks at most before looking at flags
CHUNK = 1 << 16

_W = wire_tables(load_profile("qemu-7.2"))
MULTIFD_MAGIC = struct.pack(">I", _W.multifd_magic)
#: the device section's idstr as it crosses the main channel (u8 length + name)
DEVICE_SECTION = b"\x0elivemig-device"
#: the destination's MIG_RP_MSG_SHUT 0 on the return path: the load succeeded
SHUT_OK = struct.pack(">HHI", _W.rp["SHUT"].value, 4, 0)


def _connect(uri: str) -> socket.socket:
    kind, _, rest = uri.partition(":")
    if kind == "tcp":
        host, port = rest.rsplit(":", 1)
        assert host in ("127.0.0.1", "localhost", "::1"), uri  # loopback only
        sock = socket.create_connection((host, int(port)), timeout=5)
    else:
        sock = socket.socket(socket.AF_UNIX)
        sock.settimeout(5)
        sock.connect(rest)
    return sock


class Pump:
    """One direction of a link (see the module docstring)."""

    def __init__(self, link: "Link", name: str, rx: socket.socket, tx: socket.socket) -> None:
        self.link, self.name, self.rx, self.tx = link, name, rx, tx
        self.bytes = 0            # forwarded (or dropped) so far
        self.stall_until = 0.0    # no forwarding before this monotonic time
        self.rate = 0.0           # throttle, bytes/s (0: none)
        self.latency = 0.0        # delay per chunk, s
        self.dropping = False
        self.shut = False         # half-closed: nothing more goes this way
        self.eof = False
        self.triggers: list = []  # [kind, arg, action]
        self._tail = b""
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name=f"relay-{name}", daemon=True)

    def wait_bytes(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.bytes < n and not self.link.dead:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, TICK))
        return self.bytes >= n

    def _run(self) -> None:
        link = self.link
        try:
            while not link.dead:
                now = time.monotonic()
                if self.shut or now < self.stall_until:
                    time.sleep(min(TICK, max(0.0, self.stall_until - now)) or TICK)
                    continue
                try:
                    data = self.rx.recv(CHUNK)
                except socket.timeout:
                    continue
                if not data:
                    self.eof = True
                    if not self.dropping:  # a black hole swallows the FIN too
                        link._eof(self)
                    return
                self._deliver(data)
        except OSError:
            link._broken()

    def _deliver(self, data: bytes) -> None:
        for trig in list(self.triggers):
            kind, arg, action = trig
            if kind == "bytes" and self.bytes + len(data) >= arg:
                self.triggers.remove(trig)
                head = max(0, arg - self.bytes)
                self._send(data[:head])
                data = data[head:]
                action(self.link)
            elif kind == "pattern":
                hay = self._tail + data
                at = hay.find(arg)
                if at >= 0:
                    self.triggers.remove(trig)
                    cut = max(0, at - len(self._tail))
                    self._send(data[:cut])
                    data = data[cut:]
                    action(self.link)
            if self.link.dead or self.shut:
                return
            while time.monotonic() < self.stall_until and not self.link.dead:
                time.sleep(TICK)  # a stall set by the trigger holds what is left too
        self._tail = data[-64:]
        self._send(data)

    def _send(self, data: bytes) -> None:
        if not data:
            return
        if self.latency:
            time.sleep(self.latency)
        if not self.dropping:
            view = memoryview(data)
            while view:
                if self.link.dead or self.shut:
                    return
                if self.rate:
                    view = self._paced(view)
                    continue
                try:
                    n = self.tx.send(view)
                except socket.timeout:
                    continue
                view = view[n:]
        with self.cond:
            self.bytes += len(data)
            self.cond.notify_all()

    def _paced(self, view: memoryview) -> memoryview:
        piece = max(1, int(self.rate * TICK))
        try:
            n = self.tx.send(view[:piece])
        except socket.timeout:
            return view
        time.sleep(n / self.rate)
        return view[n:]


class Link:
    """One accepted connection and its connection to the target."""

    def __init__(self, relay: "FaultRelay", index: int, kind: str,
                 a: socket.socket) -> None:
        self.relay, self.index, self.kind = relay, index, kind
        self.a: socket.socket = a
        self.b: Optional[socket.socket] = None
        self.multifd_id: Optional[int] = None
        self.dead = False
        self.fault: Optional[str] = None
        self.fwd: Optional[Pump] = None
        self.rev: Optional[Pump] = None
        self._lock = threading.Lock()
        self._closed = False
        self._accepting = False
        self._pending: list = []

    # ---------------------------------------------------------------- faults
    def cut(self) -> None:
        """Close both sides with FIN."""
        self._close("cut", rst=False)

    def rst(self) -> None:
        """Close both sides with SO_LINGER 0: a connection reset."""
        self._close("rst", rst=True)

    def half_close(self, direction: str = "fwd") -> None:
        """Shut one direction: its receiver sees end-of-file, its sender is no
        longer read (once the other direction ends too, the link closes)."""
        if self._later(self.half_close, direction):
            return
        pump = self._pump(direction)
        pump.shut = True
        self.fault = f"half-close-{direction}"
        try:
            pump.tx.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def stall(self, seconds: float, direction: str = "both") -> None:
        if self._later(self.stall, seconds, direction):
            return
        until = time.monotonic() + seconds
        for p in self._pumps(direction):
            p.stall_until = until
        self.fault = self.fault or f"stall-{direction}"

    def resume(self, direction: str = "both") -> None:
        for p in self._pumps(direction):
            p.stall_until = 0.0

    def throttle(self, rate: float, direction: str = "both") -> None:
        if self._later(self.throttle, rate, direction):
            return
        for p in self._pumps(direction):
            p.rate = float(rate)

    def delay(self, seconds: float, direction: str = "both") -> None:
        if self._later(self.delay, seconds, direction):
            return
        for p in self._pumps(direction):
            p.latency = seconds

    def drop(self, direction: str = "fwd") -> None:
        """Discard one direction silently; the sockets stay open."""
        if self._later(self.drop, direction):
            return
        self._pump(direction).dropping = True
        self.fault = f"drop-{direction}"

    # ---------------------------------------------------------------- internals
    def _later(self, *call) -> bool:
        """During an ``accept`` trigger the pumps do not exist yet: keep the call."""
        if self.fwd is None and self._accepting:
            self._pending.append(call)
            return True
        return False

    def _pump(self, direction: str) -> Pump:
        self.relay.wait_pumps(self)
        return self.fwd if direction == "fwd" else self.rev  # type: ignore[return-value]

    def _pumps(self, direction: str) -> list[Pump]:
        self.relay.wait_pumps(self)
        return [p for p in (self.fwd, self.rev)
                if p is not None and direction in ("both", p.name.split("-")[-1])]

    def _start(self, b: socket.socket) -> None:
        self.b = b
        self.fwd = Pump(self, f"{self.index}-fwd", self.a, b)
        self.rev = Pump(self, f"{self.index}-rev", b, self.a)
        for fn, *args in self._pending:
            fn(*args)
        self._pending.clear()

    def _eof(self, pump: Pump) -> None:
        try:
            pump.tx.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        other = self.rev if pump is self.fwd else self.fwd
        if other is None or other.eof or other.shut:
            # the other way ended or was shut: like a peer that closed, the
            # remaining writer must see the connection go (not block forever)
            self._close(self.fault or "eof", rst=other is not None and other.shut)

    def _broken(self) -> None:
        self._close(self.fault or "broken", rst=False)

    def _close(self, why: str, *, rst: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self.fault = self.fault if why in ("eof", "broken") else why
            self.dead = True
        me = threading.current_thread()
        for p in (self.fwd, self.rev):  # no pump touches a socket we close
            if p is not None and p.thread is not me and p.thread.ident is not None:
                p.thread.join(5)
        for sk in (self.a, self.b):
            if sk is None:
                continue
            try:
                if rst:
                    sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                else:
                    sk.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sk.close()
        with self.relay.cond:
            self.relay.cond.notify_all()


class FaultRelay:
    """Listens on ``transport`` (``"tcp"`` or ``"unix"``) and relays each
    accepted connection to ``target`` (a tcp:127.0.0.1:PORT or unix:PATH URI)."""

    def __init__(self, target: str, transport: str, sockdir: str) -> None:
        self.target = target
        self.kind = "main"  # the kind of the next first connection
        self.links: list[Link] = []
        self.cond = threading.Condition()
        self._triggers: list = []  # [kind-of-link, direction, trigger kind, arg, action]
        self._closing = False
        if transport == "tcp":
            self.lsock = socket.create_server(("127.0.0.1", 0))
            self.uri = f"tcp:127.0.0.1:{self.lsock.getsockname()[1]}"
        else:
            path = os.path.join(sockdir, f"relay-{id(self):x}.sock")
            self.lsock = socket.socket(socket.AF_UNIX)
            self.lsock.bind(path)
            self.lsock.listen(16)
            self.uri = f"unix:{path}"
        self.lsock.settimeout(TICK)
        self.acceptor = threading.Thread(target=self._accept_loop, name="relay-accept",
                                         daemon=True)
        self.acceptor.start()

    # ---------------------------------------------------------------- test API
    def retarget(self, target: str, kind: str = "recovery") -> None:
        """Later connections go to ``target``; the next non-multifd one is ``kind``."""
        self.target, self.kind = target, kind

    def when(self, link_kind: str, trigger, action: Callable[[Link], None],
             direction: str = "fwd") -> None:
        """Run ``action(link)`` on the first ``link_kind`` link when
        ``trigger`` happens: ``"accept"``, ``("bytes", n)``, ``("pattern", b)``."""
        if trigger == "accept":
            self._triggers.append([link_kind, "accept", None, None, action])
        else:
            self._triggers.append([link_kind, direction, trigger[0], trigger[1], action])

    def link(self, kind: str = "main", nth: int = 0, timeout: float = 30.0) -> Link:
        """The ``nth`` link of ``kind``, once its pumps exist (or it died);
        waits for it, bounded."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [l for l in self.links if l.kind == kind]
                if len(found) > nth:
                    break
                left = deadline - time.monotonic()
                assert left > 0, f"no {kind} link #{nth}: {[l.kind for l in self.links]}"
                self.cond.wait(min(left, TICK))
        self.wait_pumps(found[nth], max(1.0, deadline - time.monotonic()))
        return found[nth]

    def wait_pumps(self, link: Link, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while link.fwd is None and not link.dead:
                assert time.monotonic() < deadline, "link never connected"
                self.cond.wait(TICK)

    def close(self) -> None:
        self._closing = True
        self.acceptor.join(5)
        self.lsock.close()
        if self.uri.startswith("unix:"):
            try:
                os.unlink(self.uri[5:])
            except OSError:
                pass
        for l in list(self.links):
            l._close(l.fault or "relay closed", rst=False)
        for l in list(self.links):
            for p in (l.fwd, l.rev):
                if p is not None and p.thread.ident is not None:
                    p.thread.join(5)

    def threads_alive(self) -> list[threading.Thread]:
        out = [self.acceptor] if self.acceptor.is_alive() else []
        for l in self.links:
            out += [p.thread for p in (l.fwd, l.rev) if p is not None and p.thread.is_alive()]
        return out

    # ---------------------------------------------------------------- internals
    def _accept_loop(self) -> None:
        while not self._closing:
            try:
                a, _ = self.lsock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            a.settimeout(TICK)
            self._serve(a)

    def _classify(self, a: socket.socket) -> tuple[str, Optional[int]]:
        """The first connection since (re)targeting is main (or recovery): the
        engine opens it first and it is named at once, so an ``accept``
        trigger on it hits the source still in setup; later ones are named
        by their first bytes (the multifd hello)."""
        if not any(l.kind == self.kind for l in self.links):
            return self.kind, None
        head = b""
        deadline = time.monotonic() + 5
        while len(head) < 9 and time.monotonic() < deadline:
            try:
                head = a.recv(9, socket.MSG_PEEK)
            except socket.timeout:
                continue
            if head and not head.startswith(MULTIFD_MAGIC[:len(head)]):
                break
            if not head:
                break
        if head.startswith(MULTIFD_MAGIC) and len(head) >= 9:
            return "multifd", head[8]
        return "other", None

    def _serve(self, a: socket.socket) -> None:
        kind, mid = self._classify(a)
        link = Link(self, len(self.links), kind, a)
        link.multifd_id = mid
        with self.cond:
            self.links.append(link)
            self.cond.notify_all()
        mine = [t for t in self._triggers if t[0] == kind]
        link._accepting = True
        for t in [t for t in mine if t[1] == "accept"]:
            self._triggers.remove(t)
            t[4](link)
        link._accepting = False
        if link.dead:
            return
        try:
            b = _connect(self.target)
        except OSError:
            link._close("connect failed", rst=True)
            return
        b.settimeout(TICK)
        link._start(b)
        for t in [t for t in mine if t[1] in ("fwd", "rev")]:
            self._triggers.remove(t)
            pump = link.fwd if t[1] == "fwd" else link.rev
            pump.triggers.append([t[2], t[3], t[4]])  # type: ignore[union-attr]
        link.fwd.thread.start()  # type: ignore[union-attr]
        link.rev.thread.start()  # type: ignore[union-attr]
        with self.cond:
            self.cond.notify_all()
