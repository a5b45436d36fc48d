"""livemig.engine.qmpclient: the one synchronous QMP client.

Job
---
Talk QMP to a process over its QMP socket from plain synchronous code: the
demo, the benchmarks, the conformance harnesses that start QEMU or
``livemig vm --qmp``, and ``livemig monitor`` attaching to a process it did
not start.  Starting and stopping processes is the callers' job
(:mod:`livemig.engine.qmpprocess`, :mod:`livemig.conformance.qemu_vm`); this
module only connects, sends commands, collects events and disconnects.

Rules
-----
* The protocol work (greeting, ``qmp_capabilities`` negotiation, command ids,
  event dispatch) is QEMU's own client, ``qemu.qmp``, so every use of this
  class is also a check that livemig's QMP endpoint satisfies QEMU's client.
  ``qemu.qmp`` is asyncio: each :class:`SyncQMPClient` owns a private event
  loop that runs only inside the client's own calls.  One client is used from
  one thread.
* Every wait is bounded.  Connecting retries until ``connect_timeout`` (the
  socket file can appear, or even exist, a moment before the process
  listens); each command waits at most ``command_timeout``; each event wait
  its own ``timeout``.  The only sleep is the poll for the socket file,
  bounded by the connect deadline.  A wait also ends at once when ``alive``
  says the process at the other end has exited.
* QEMU's answer is data or a typed error, never a library exception:
  :meth:`SyncQMPClient.execute` returns ``("ok", result)`` or
  ``("error", error_class, desc)`` (for code that records or compares
  answers); :meth:`SyncQMPClient.command` returns the result or raises
  :class:`QMPCommandError` carrying QEMU's class and text.  A lost
  connection raises :class:`QMPClientError`, a missed deadline
  :class:`QMPTimeout`; their messages end with what ``diagnostics()`` says
  (an exit status, a log tail), so a failure explains itself.
* No event is lost between two waits: every event received is appended, in
  order and as QEMU sent it (timestamp included), to
  :attr:`SyncQMPClient.events`; waits search that list from a cursor the
  caller keeps.

    >>> with SyncQMPClient("/tmp/vm.qmp", "vm") as qmp:      # doctest: +SKIP
    ...     qmp.command("query-status")["status"]
    'running'
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable, Literal, Mapping, Optional, Union

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, StateError
from qemu.qmp.events import EventListener

#: ``("ok", result)`` or ``("error", error_class, desc)``: QEMU's answer as data.
Reply = Union[tuple[Literal["ok"], Any], tuple[Literal["error"], str, str]]
#: A unix socket path, or a ``(host, port)`` pair for a TCP QMP server.
Address = Union[str, tuple[str, int]]

#: Seconds between looks for the socket file while connecting.
SOCKET_POLL = 0.02
#: The one event whose data carries a migration status.
STATUS_EVENT = "MIGRATION"


class QMPClientError(RuntimeError):
    """The socket could not be reached, the connection was lost, or a wait ran out."""


class QMPTimeout(QMPClientError, TimeoutError):
    """No reply, or no awaited event, within the deadline."""


class QMPCommandError(QMPClientError):
    """QEMU refused a command sent with :meth:`SyncQMPClient.command`."""

    def __init__(self, cmd: str, error_class: str, desc: str, name: str = "qmp") -> None:
        super().__init__(f"{name}: {cmd}: {error_class}: {desc}")
        self.cmd = cmd
        self.error_class = error_class
        self.desc = desc


def status_of(event: Mapping[str, Any]) -> Optional[str]:
    """The status of a ``MIGRATION`` event, or None for any other event."""
    if event.get("event") != STATUS_EVENT:
        return None
    data = event.get("data")
    status = data.get("status") if isinstance(data, Mapping) else None
    return status if isinstance(status, str) else None


class SyncQMPClient:
    """One qemu.qmp connection to a QMP socket, used synchronously (see the module doc).

    Parameters:
      address: the socket path (or ``(host, port)``).
      name: a label for messages and for qemu.qmp's logger.
      connect_timeout: seconds to keep trying to connect.
      command_timeout: seconds to wait for one reply.
      alive: says whether the process at the other end still runs; waits stop
        at once when it returns False.
      diagnostics: text appended to connection and timeout errors.
    """

    def __init__(self, address: Address, name: str = "qmp", connect_timeout: float = 30.0,
                 command_timeout: float = 60.0, alive: Optional[Callable[[], bool]] = None,
                 diagnostics: Optional[Callable[[], str]] = None) -> None:
        self.path = address
        self.name = name
        self.command_timeout = command_timeout
        #: Every event received so far, in order (the raw QMP dicts).
        self.events: list[dict] = []
        self._alive = alive
        self._diagnostics = diagnostics
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

    def _why(self) -> str:
        extra = self._diagnostics() if self._diagnostics is not None else ""
        return f"; {extra}" if extra else ""

    def _connect(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self._alive is not None and not self._alive():
                raise QMPClientError(f"{self.name}: the process exited before QMP was reachable"
                               f"{self._why()}")
            if not isinstance(self.path, str) or os.path.exists(self.path):
                client = QMPClient(self.name)
                # qemu.qmp logs every refused attempt at ERROR level; refusals are
                # expected while the process starts, so it is quiet until connected.
                client.logger.setLevel(logging.CRITICAL)
                try:
                    self._run(client.connect(self.path), max(0.1, deadline - time.monotonic()))
                except Exception as exc:  # noqa: BLE001 - retried until the deadline
                    last = exc
                else:
                    client.logger.setLevel(logging.NOTSET)
                    client.register_listener(self._listener)
                    self._client = client
                    return
            time.sleep(SOCKET_POLL)  # the socket file is not there yet; bounded above
        raise QMPTimeout(f"{self.name}: QMP socket {self.path} not reachable within "
                         f"{timeout}s (last error: {last!r}){self._why()}")

    @property
    def connected(self) -> bool:
        """True between a successful connect and :meth:`close`."""
        return self._client is not None

    def close(self) -> None:
        """Disconnect (idempotent); the process at the other end is not touched."""
        if self._client is not None:
            try:
                self._run(self._client.disconnect(), 5)
            except Exception:  # noqa: BLE001 - the peer may be gone already
                pass
            self._client = None
        if not self._loop.is_closed():
            # Cancel qemu.qmp's background tasks so that closing the loop leaves
            # nothing pending behind.
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()

    def __enter__(self) -> "SyncQMPClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ commands
    def execute(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Reply:
        """Run one command; QEMU's answer as data.

        ``args`` is sent as the raw JSON ``arguments`` object (``None``: no
        ``arguments`` member at all), so malformed arguments reach QEMU as
        written.  Raises :class:`QMPClientError` when no answer comes (connection
        lost) and :class:`QMPTimeout` when none comes within ``command_timeout``.
        """
        if self._client is None:
            raise QMPClientError(f"{self.name}: not connected")
        try:
            result = self._run(self._client.execute(cmd, args), self.command_timeout)
        except ExecuteError as exc:
            err = exc.received["error"]  # the raw reply: QEMU's exact class and text
            return ("error", err["class"], err["desc"])
        except (ExecInterruptedError, StateError, ConnectionError, EOFError) as exc:
            raise QMPClientError(f"{self.name}: {cmd}: QMP connection lost ({exc!r})"
                           f"{self._why()}") from exc
        except asyncio.TimeoutError as exc:
            raise QMPTimeout(f"{self.name}: {cmd}: no reply within {self.command_timeout}s"
                             f"{self._why()}") from exc
        return ("ok", result)

    def command(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Any:
        """Run one command and return its result; :class:`QMPCommandError` on a refusal."""
        reply = self.execute(cmd, args)
        if reply[0] == "error":
            raise QMPCommandError(cmd, reply[1], reply[2], self.name)
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

    def drain(self) -> list[dict]:
        """Move every event already received into :attr:`events`; the ones moved."""
        if self._client is None:
            return []
        first = len(self.events)
        # One turn of the loop lets the reader task deliver what is already
        # on the socket.
        self._loop.run_until_complete(asyncio.sleep(0))
        while not self._listener.empty():
            self.events.append(dict(self._loop.run_until_complete(self._listener.get())))
        return self.events[first:]

    def wait_event(self, match: Union[str, Callable[[dict], bool]], timeout: float,
                   start: int = 0, what: Optional[str] = None) -> int:
        """Index in :attr:`events` of the first event at or after ``start`` that matches.

        ``match`` is an event name or a predicate on the raw event.  Raises
        :class:`QMPTimeout` after ``timeout`` seconds, and :class:`QMPClientError` at
        once when the process at the other end (``alive``) has exited
        without sending it.
        """
        predicate = (lambda e: e.get("event") == match) if isinstance(match, str) else match
        what = what or (f"{match} event" if isinstance(match, str) else "event")
        deadline = time.monotonic() + timeout
        i = start
        while True:
            while i < len(self.events):
                if predicate(self.events[i]):
                    return i
                i += 1
            left = deadline - time.monotonic()
            if left <= 0:
                raise QMPTimeout(f"{self.name}: no {what} within {timeout}s; "
                                 f"MIGRATION so far: {self.statuses()}")
            if self._alive is not None and not self._alive():
                # The process is gone: what it sent is all there will be.
                self.drain()
                if any(predicate(e) for e in self.events[i:]):
                    continue
                raise QMPClientError(f"{self.name}: the process exited before {what}; "
                               f"MIGRATION so far: {self.statuses()}{self._why()}")
            # At most a second at a time, so that an exit is noticed promptly.
            self.pump(min(left, 1.0))

    def wait_status(self, status: str, timeout: float, start: int = 0) -> int:
        """Wait for a ``MIGRATION`` event with ``status``; returns its index."""
        return self.wait_event(lambda e: status_of(e) == status, timeout, start,
                               what=f"MIGRATION {status!r}")

    def statuses(self) -> list[str]:
        """The statuses of the ``MIGRATION`` events received so far, in order."""
        return [s for s in map(status_of, self.events) if s is not None]

    def count(self, name: str) -> int:
        """How many events called ``name`` were received so far."""
        return sum(1 for e in self.events if e.get("event") == name)
