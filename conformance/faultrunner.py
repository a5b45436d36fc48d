"""Faults for the engine's programs on real threads and real sockets.

Theory of operation
-------------------
The fake link injects faults by construction (its network is fake).  The
socket runs of the stateful tests need the same faults on the real drivers:
this module's :class:`FaultyTransport` is ``VM(transport=...)`` for that.
Its runners are :class:`~livemig.engine.runner.ThreadRunner` with three
hooks on the operations the programs yield:

* a connect can be refused (:meth:`FaultPlan.refuse_connect`: the next one,
  or the one after it -- the first multifd channel);
* every channel opened or accepted is tracked, so a test can break them all
  (:meth:`FaultPlan.break_connections`), or only the source's multifd
  channels (:meth:`FaultPlan.break_multifd`) -- a break is a shutdown of
  both directions, so both ends see the channel end at once;
* a *trigger* breaks every channel at an exact point: before the source
  writes a buffer list starting with given bytes (the postcopy package), or
  right after the destination has read given bytes (POSTCOPY_LISTEN): that
  read stops just after them (the rest is left in the socket, looked at with
  MSG_PEEK) and the channels break before the next read, so the destination
  parses LISTEN and never sees RUN.

Rules: nothing here changes what the programs do; a fault is only what a
network or a peer could do to them.
"""
from __future__ import annotations

import errno
import socket
import threading
from typing import Any, Optional

from livemig.engine.runner import Accept, Connect, Op, Recv, RecvInto, ThreadRunner, Write
from livemig.engine.transport import Listener, Uri


class FaultPlan:
    """The faults one test run injects (shared by every runner it makes)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._connects = 0
        self._refuse: set[int] = set()
        self.channels: list[Any] = []  # kept alive: ``broken`` holds their ids
        self.multifd: list[Any] = []
        self.broken: set[int] = set()
        #: break everything before a source write whose first buffer starts so
        self.break_before_write: Optional[bytes] = None
        #: break everything once a destination read has taken these bytes
        self.break_after_bytes: Optional[bytes] = None
        self._break_on_next_read = False
        self.breaks = 0

    def refuse_connect(self, after: int = 0) -> None:
        with self._lock:
            self._refuse.add(self._connects + after)

    def connect_allowed(self) -> bool:
        with self._lock:
            n = self._connects
            self._connects += 1
            if n in self._refuse:
                self._refuse.discard(n)
                return False
            return True

    def track(self, chan: Any, *, multifd: bool = False) -> None:
        with self._lock:
            self.channels.append(chan)
            if multifd:
                self.multifd.append(chan)

    def break_connections(self) -> int:
        """Break every tracked channel; returns how many were open."""
        with self._lock:
            chans = [c for c in self.channels if not c.closed]
            self.breaks += 1
        return self._break(chans)

    def break_multifd(self) -> int:
        with self._lock:
            chans = [c for c in self.multifd if not c.closed]
        return self._break(chans)

    def _break(self, chans: list) -> int:
        """Shut both directions; bytes still buffered are lost, as in a reset
        (a shut socket would still hand them out)."""
        with self._lock:
            self.broken.update(id(c) for c in chans)
        for chan in chans:
            chan.shutdown()
        return len(chans)

    def is_broken(self, chan: Any) -> bool:
        return id(chan) in self.broken

    def clear_triggers(self) -> None:
        self.break_before_write = None
        self.break_after_bytes = None
        self._break_on_next_read = False


class FaultyRunner(ThreadRunner):
    """A thread runner whose operations pass through a :class:`FaultPlan`."""

    def __init__(self, plan: FaultPlan) -> None:
        super().__init__()
        self.plan = plan
        self._opened = 0  # connects made by this driver: the first is the main channel

    def perform(self, op: Op) -> Any:
        plan = self.plan
        if isinstance(op, Connect):
            if not plan.connect_allowed():
                raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
            chan = super().perform(op)
            self._opened += 1
            plan.track(chan, multifd=self._opened > 1)  # (a resume reconnects: no multifd then)
            return chan
        if isinstance(op, Accept):
            chan = super().perform(op)
            plan.track(chan)
            return chan
        if isinstance(op, Write):
            marker = plan.break_before_write
            if marker is not None and op.buffers and \
                    bytes(memoryview(op.buffers[0]).cast("B")[:len(marker)]) == marker:
                plan.break_before_write = None
                plan.break_connections()
            return super().perform(op)
        if isinstance(op, (RecvInto, Recv)) and plan.is_broken(op.chan):
            return b"" if isinstance(op, Recv) else 0
        if isinstance(op, RecvInto):
            if plan._break_on_next_read:
                plan._break_on_next_read = False
                plan.break_connections()
                return 0
            marker = plan.break_after_bytes
            if marker is not None and not op.top_up and op.chan.sock is not None:
                head = op.chan.sock.recv(len(op.buf), socket.MSG_PEEK)
                at = head.find(marker)
                if at >= 0:
                    plan.break_after_bytes = None
                    plan._break_on_next_read = True
                    return super().perform(RecvInto(op.chan, op.buf[:at + len(marker)]))
        return super().perform(op)


class FaultyTransport:
    """``VM(transport=...)``: real listeners, runners that obey ``plan``."""

    def __init__(self, plan: FaultPlan) -> None:
        self.plan = plan

    def listen(self, uri: Uri) -> Listener:
        return Listener(uri)

    def runner(self) -> FaultyRunner:
        return FaultyRunner(self.plan)


__all__ = ["FaultPlan", "FaultyRunner", "FaultyTransport"]
