"""A synchronous QMP session on any QMP socket, through qemu.qmp.

The differential tests and ``livemig monitor`` talk to processes they did
not necessarily start (a QEMU, or later ``livemig vm --qmp``), so this is a
client of a socket path only.  (:class:`livemig.conformance.qemu_vm.QemuVM`
is the harness that also starts QEMU; it keeps its own connection.)

Every event the session receives is kept, in order, in :attr:`QMPSession.events`
(the raw QMP dicts, timestamps included); :meth:`QMPSession.wait_event`
searches that list from a cursor, pumping the client's event queue with a
bounded timeout, so no event is lost between two waits and nothing sleeps on
hope.  Like QemuVM, the async client runs on a private event loop, and a
session is meant to be used from one thread.
"""
from __future__ import annotations

import asyncio
import os
import time
from typing import Any, Callable, Mapping, Optional

from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.events import EventListener

#: ``("ok", result)`` or ``("error", error_class, desc)``
Reply = tuple


class QMPSessionError(RuntimeError):
    """The socket could not be reached, or a wait ran out of time."""


class QMPSession:
    """One qemu.qmp connection to a QMP unix socket, used synchronously."""

    def __init__(self, path: str, name: str = "qmp", connect_timeout: float = 30.0,
                 command_timeout: float = 60.0,
                 alive: Optional[Callable[[], bool]] = None) -> None:
        self.path = path
        self.name = name
        self.command_timeout = command_timeout
        self.events: list[dict] = []
        self._alive = alive
        self._loop = asyncio.new_event_loop()
        self._client: Optional[QMPClient] = None
        self._listener = EventListener()
        try:
            self._connect(connect_timeout)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------ lifecycle
    def _run(self, coro: Any, timeout: Optional[float]) -> Any:
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self._alive is not None and not self._alive():
                raise QMPSessionError(f"{self.name}: process exited before QMP was reachable")
            if os.path.exists(self.path):
                client = QMPClient(self.name)
                try:
                    self._run(client.connect(self.path), max(0.1, deadline - time.monotonic()))
                except Exception as exc:  # noqa: BLE001 - retried until the deadline
                    last = exc
                else:
                    client.register_listener(self._listener)
                    self._client = client
                    return
            time.sleep(0.02)  # poll for the socket file; bounded by the deadline
        raise QMPSessionError(f"{self.name}: QMP socket {self.path} not reachable within "
                              f"{timeout}s (last error: {last!r})")

    def close(self) -> None:
        """Disconnect (idempotent); the process on the other end is not touched."""
        if self._client is not None:
            try:
                self._run(self._client.disconnect(), 5)
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass
            self._client = None
        if not self._loop.is_closed():
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def __enter__(self) -> "QMPSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ commands
    def execute(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Reply:
        """Run one command; ``("ok", result)`` or ``("error", class, desc)``."""
        if self._client is None:
            raise QMPSessionError(f"{self.name}: not connected")
        try:
            result = self._run(self._client.execute(cmd, args), self.command_timeout)
        except ExecuteError as exc:
            err = exc.received["error"]
            return ("error", err["class"], err["desc"])
        return ("ok", result)

    def command(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Any:
        """Run one command; raise QMPSessionError carrying QEMU's text on error."""
        reply = self.execute(cmd, args)
        if reply[0] == "error":
            raise QMPSessionError(f"{self.name}: {cmd} failed: {reply[1]}: {reply[2]}")
        return reply[1]

    # ------------------------------------------------------------ events
    def pump(self, timeout: float) -> bool:
        """Move at most one received event into :attr:`events`; False on timeout."""
        if self._client is None:
            return False
        try:
            event = self._run(self._listener.get(), max(0.0, timeout))
        except asyncio.TimeoutError:
            return False
        self.events.append(dict(event))
        return True

    def drain(self) -> None:
        """Move every event already received into :attr:`events`."""
        if self._client is None:
            return
        self._loop.run_until_complete(asyncio.sleep(0))
        while not self._listener.empty():
            self.events.append(dict(self._loop.run_until_complete(self._listener.get())))

    def wait_event(self, predicate: Callable[[dict], bool], timeout: float,
                   start: int = 0, what: str = "event") -> int:
        """Index in :attr:`events` of the first event at or after ``start`` matching.

        Raises QMPSessionError after ``timeout`` seconds, or at once when the
        process at the other end (``alive``) has exited without sending it.
        """
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.events):
                if predicate(self.events[i]):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPSessionError(f"{self.name}: no {what} within {timeout}s; "
                                      f"MIGRATION so far: {self.statuses()}")
            if self._alive is not None and not self._alive():
                # The process is gone: what it sent is all there will be.
                self.drain()
                if any(predicate(e) for e in self.events[i:]):
                    continue
                raise QMPSessionError(f"{self.name}: the process exited before {what}; "
                                      f"MIGRATION so far: {self.statuses()}")
            self.pump(min(left, 1.0))

    def wait_status(self, status: str, timeout: float, start: int = 0) -> int:
        """Wait for a ``MIGRATION`` event with ``status``; returns its index."""
        return self.wait_event(
            lambda e: e.get("event") == "MIGRATION" and e.get("data", {}).get("status") == status,
            timeout, start, what=f"MIGRATION {status!r}")

    def statuses(self) -> list[str]:
        """The statuses of the ``MIGRATION`` events received so far, in order."""
        return [e["data"]["status"] for e in self.events
                if e.get("event") == "MIGRATION" and "status" in e.get("data", {})]

    def count(self, name: str) -> int:
        """How many events called ``name`` were received so far."""
        return sum(1 for e in self.events if e.get("event") == name)
