"""Thread programs and the runner that executes them on real threads.

Theory of operation
-------------------
The body of every engine thread -- the migration thread, the return-path
thread, the multifd senders and receivers, the load/listen thread, the
postcopy pause and recovery loops -- is written once, as a *program*: a
generator that yields an *operation* at every point where a real thread
would block or could be preempted, and gets the operation's result back
(or its exception thrown in at the ``yield``).  The programs live in
:mod:`livemig.engine.source_driver` and :mod:`livemig.engine.destination_driver`.

Two runners execute them:

* :class:`ThreadRunner` (here): one real thread per program, started by
  :func:`livemig.engine.threads.spawn` so that none dies silently; each
  operation is the blocking call it names, on a real
  :class:`~livemig.engine.transport.Channel`.
* the fake link's stepped scheduler (:mod:`livemig.conformance.fakelink`):
  every program is a task on one thread, an operation is a predicate the
  scheduler waits on, and time is a simulated clock -- so a test chooses
  every interleaving and a run replays bit for bit.

Rules for programs:

* every wait is an operation with a bound: :class:`WaitFor` takes a
  deadline on the runner's clock, reads and accepts end when the channel is
  shut down (``abort()`` shuts every channel, which unblocks every thread);
* a program never sleeps, reads a clock or takes a lock that it holds across
  a blocking operation, except the runner's session lock around an
  encode-and-write pair whose order on the wire matters;
* whatever changes what another program waits for calls :meth:`Runner.wake`
  afterwards (the thread runner re-checks every wait at least every
  :data:`RECHECK` seconds all the same, so a forgotten wake costs time, not
  a hang);
* writes of a few bytes (return-path messages) may be made directly, from
  whichever thread produced them, under the channel's send lock -- as QEMU
  writes them under its return-path mutex.
"""
from __future__ import annotations

import itertools
import select
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, Generator, Iterable, Optional, Protocol, Sequence

from livemig.engine.threads import CrashHandler, spawn
from livemig.engine.transport import Channel, Listener, Uri, connect

#: the longest a waiting thread goes without re-checking its predicate
TLS_LOOK = 0.02  # seconds between looks at a TLS acceptor's queue
RECHECK = 0.5
#: seconds between thread switches once postcopy runs (see postcopy_started)
SWITCH_INTERVAL = 0.0002
#: seconds a new connection may take to send its first bytes (see :class:`Peek`)
HELLO_TIMEOUT = 30.0

Predicate = Callable[[], bool]


# ==================================================================== operations
class Op:
    """Something a program waits for; the runner gives back its result."""

    __slots__ = ()


@dataclass(frozen=True)
class Preempt(Op):
    """Nothing to wait for: a point where another thread may run first."""


PREEMPT = Preempt()


@dataclass(frozen=True)
class Connect(Op):
    """Open an outgoing channel to ``uri`` -> the channel (OSError if refused)."""

    uri: Uri


@dataclass(frozen=True)
class Accept(Op):
    """The next connection on ``listener`` -> a channel (OSError once closed)."""

    listener: Any


@dataclass(frozen=True)
class RecvInto(Op):
    """Read into ``buf`` -> the byte count (0: end of file).  With
    ``top_up`` the read never blocks: 0 means nothing is waiting."""

    chan: Any
    buf: memoryview
    top_up: bool = False


@dataclass(frozen=True)
class Recv(Op):
    """Up to ``limit`` bytes -> bytes (empty: end of file)."""

    chan: Any
    limit: int


@dataclass(frozen=True)
class Write(Op):
    """Every buffer, in order -> the byte count (OSError on a broken channel)."""

    chan: Any
    buffers: Sequence


@dataclass(frozen=True)
class Peek(Op):
    """Up to ``n`` first bytes of a new connection, left unread, waiting at
    most ``timeout`` seconds for them -> bytes (fewer at EOF or timeout)."""

    chan: Any
    n: int
    timeout: float = HELLO_TIMEOUT


@dataclass(frozen=True)
class ListenerOrData(Op):
    """Wait until a connection is waiting on ``listener`` (-> None) or bytes
    (at most ``limit``) or end of file arrive on ``chan`` (-> bytes)."""

    listener: Any
    chan: Any
    limit: int


@dataclass(frozen=True)
class WaitFor(Op):
    """Until ``predicate()`` holds or the runner's clock reaches ``until``
    (None: no deadline) -> the predicate's last value."""

    predicate: Predicate
    until: Optional[float] = None


Program = Generator[Op, Any, Any]


class Task(Protocol):
    """A started program: a thread, or a task of the fake link."""

    name: str

    @property
    def done(self) -> bool: ...

    def join(self, timeout: float) -> bool: ...


class Runner(Protocol):
    """What a driver needs from where it runs (see the module docstring)."""

    #: how long a postcopy vCPU may block on a missing page (None: until it
    #: arrives, 0: never -- the vCPU retries later)
    fault_timeout: Optional[float]

    def clock(self) -> float: ...

    def spawn(self, name: str, program: Program, on_crash: CrashHandler) -> Task: ...

    def wake(self) -> None: ...

    def block_until(self, predicate: Predicate, timeout: Optional[float]) -> bool: ...

    def session_lock(self) -> Any: ...

    def parallel_map(self, workers: int) -> Callable[[Callable, Iterable], list]: ...

    def helped_map(self) -> Callable[[Callable, Iterable], list]: ...

    def end_parallel(self) -> None: ...

    def postcopy_started(self) -> None: ...


# ==================================================================== threads
class _Thread:
    """A program running on its own thread."""

    def __init__(self, name: str, thread: threading.Thread) -> None:
        self.name = name
        self.thread = thread

    @property
    def done(self) -> bool:
        return not self.thread.is_alive()

    def join(self, timeout: float) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()


class ThreadRunner:
    """Programs on real threads and real sockets."""

    fault_timeout: Optional[float] = None

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        #: TLS on every channel this runner opens or accepts (engine/tls.py),
        #: set by the VM when tls-creds is; None: plaintext
        self.tls: Optional[Any] = None
        self._acceptors: dict[int, Any] = {}
        self._cond = threading.Condition()
        self._lock = threading.RLock()
        self._pool: Optional[ThreadPoolExecutor] = None

    # -- programs
    def spawn(self, name: str, program: Program, on_crash: CrashHandler) -> _Thread:
        return _Thread(name, spawn(name, lambda: self.run(program), on_crash))

    def run(self, program: Program) -> Any:
        """Execute ``program`` on the calling thread until it returns."""
        result: Any = None
        error: Optional[BaseException] = None
        while True:
            try:
                op = program.throw(error) if error is not None else program.send(result)
            except StopIteration as stop:
                return stop.value
            result, error = None, None
            try:
                result = self.perform(op)
            except Exception as exc:  # handed to the program at its yield
                error = exc

    def perform(self, op: Op) -> Any:
        """The blocking call an operation names."""
        if isinstance(op, RecvInto):
            if op.top_up:
                return op.chan.recv_more_into(op.buf)
            return op.chan.recv_into(op.buf)
        if isinstance(op, Write):
            return op.chan.send_buffers(op.buffers)
        if isinstance(op, WaitFor):
            return self._wait(op.predicate, op.until)
        if isinstance(op, Recv):
            return op.chan.recv(op.limit)
        if isinstance(op, Preempt):
            return None
        if isinstance(op, Connect):
            chan = connect(op.uri)
            return self.tls.secure(chan, op.uri) if self.tls is not None else chan
        if isinstance(op, Accept):
            return self._accept(op.listener)
        if isinstance(op, Peek):
            return op.chan.peek(op.n, op.timeout)
        if isinstance(op, ListenerOrData):
            if self.tls is not None:
                return _secured_or_data(self._acceptor(op.listener), op.chan, op.limit)
            return _listener_or_data(op.listener, op.chan, op.limit)
        raise TypeError(f"unknown operation {op!r}")

    def _acceptor(self, listener: Listener) -> Any:
        """The listener's background TLS acceptor (engine/tls.py), made on
        first use: a refused peer is reported there and the listener keeps
        waiting, as QEMU's incoming TLS handshake does."""
        from livemig.engine.tls import TLSAcceptor
        acceptor = self._acceptors.get(id(listener))
        if acceptor is None or acceptor.listener is not listener:
            acceptor = self._acceptors[id(listener)] = TLSAcceptor(listener, self.tls)
        return acceptor

    def _accept(self, listener: Listener) -> Channel:
        """The next connection (with TLS: the next one secured)."""
        if self.tls is None:
            return listener.accept()
        if listener.sock is None:  # fd: / file: -- one channel, nothing to listen on
            return self.tls.secure(listener.accept(), listener.uri)
        return self._acceptor(listener).accept()

    # -- waiting
    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _wait(self, predicate: Predicate, until: Optional[float]) -> bool:
        with self._cond:
            while True:
                ok = predicate()
                if ok:
                    return ok
                left = RECHECK if until is None else min(RECHECK, until - self.clock())
                if left <= 0:
                    return predicate()
                self._cond.wait(left)

    def block_until(self, predicate: Predicate, timeout: Optional[float]) -> bool:
        """For threads that are not programs (a vCPU on a missing page)."""
        until = None if timeout is None else self.clock() + timeout
        return bool(self._wait(predicate, until))

    # -- sharing
    def session_lock(self) -> threading.RLock:
        return self._lock

    def parallel_map(self, workers: int) -> Callable[[Callable, Iterable], list]:
        """A map over a pool of ``workers`` threads (compress-threads)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=max(1, workers),
                                            thread_name_prefix="livemig-compress")
        pool = self._pool
        return lambda fn, items: list(pool.map(fn, items))

    def helped_map(self) -> Callable[[Callable, Iterable], list]:
        """A map the caller works on together with one pool thread: both
        take the next item from a shared counter until none is left, so the
        one that started late or runs slow simply takes fewer (two cores on
        one chunk's zero scan, neither waiting for a fixed half)."""
        pool = self._pool
        if pool is None:
            pool = self._pool = ThreadPoolExecutor(max_workers=1,
                                                   thread_name_prefix="livemig-compress")

        def run(fn: Callable, items: Iterable) -> list:
            items = list(items)
            results: list = [None] * len(items)
            taken = itertools.count()  # next() is atomic under the GIL

            def work() -> None:
                for i in iter(lambda: next(taken), None):
                    if i >= len(items):
                        return
                    results[i] = fn(items[i])
            helper = pool.submit(work)
            work()
            helper.result()  # re-raises the helper's exception, if any
            return results
        return run

    def end_parallel(self) -> None:
        """The migration is over: the compress workers go."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)
            self._pool = None

    def postcopy_started(self) -> None:
        """In postcopy a page request crosses several threads per process;
        the interpreter's default 5 ms switch interval would let a busy thread
        hold a woken one back that long, so the process switches more often
        from now on."""
        if sys.getswitchinterval() > SWITCH_INTERVAL:
            sys.setswitchinterval(SWITCH_INTERVAL)


def _listener_or_data(listener: Listener, chan: Channel, limit: int) -> Optional[bytes]:
    """None once a connection waits on ``listener``; else the bytes that
    arrived on ``chan`` (empty: end of file, or either was closed under us)."""
    while True:
        lsock, msock = listener.sock, chan.sock
        if lsock is None or msock is None:
            return b""
        if limit > 0 and chan.buffered():  # decrypted bytes select() cannot see
            return chan.recv(limit)
        watch = [lsock] if limit <= 0 else [lsock, msock]
        try:
            ready, _, _ = select.select(watch, [], [], RECHECK)
        except (OSError, ValueError):  # abort() closed them under us
            return b""
        if lsock in ready:
            return None
        if msock in ready:
            return chan.recv(limit)


def _secured_or_data(acceptor: Any, chan: Channel, limit: int) -> Optional[bytes]:
    """:func:`_listener_or_data` for a TLS listener: None once a secured
    connection waits in ``acceptor``."""
    while True:
        if acceptor.waiting():
            return None
        msock = chan.sock
        if msock is None or acceptor.listener.sock is None:
            return b""
        if limit > 0 and chan.buffered():
            return chan.recv(limit)
        try:  # short looks: the acceptor's queue has no file descriptor to select on
            ready = select.select([msock] if limit > 0 else [], [], [], TLS_LOOK)[0]
        except (OSError, ValueError):
            return b""
        if ready:
            return chan.recv(limit)


class SocketTransport:
    """Where a VM's migrations run by default: real listeners, and the
    drivers' programs on a :class:`ThreadRunner` each.  The deterministic
    tests pass the fake link's transport instead (same methods)."""

    def listen(self, uri: Uri) -> Listener:
        """Bind for an incoming migration; OSError when the address is taken."""
        return Listener(uri)

    def runner(self) -> ThreadRunner:
        return ThreadRunner()


__all__ = [
    "Accept", "Connect", "ListenerOrData", "Op", "PREEMPT", "Peek", "Preempt", "Program",
    "Recv", "RecvInto", "Runner", "SocketTransport", "Task", "ThreadRunner", "WaitFor",
    "Write",
]
