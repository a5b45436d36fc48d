"""The engine's own thread programs on an in-memory network, stepped by a test.

Theory of operation
-------------------
The engine's thread bodies are programs (``livemig.engine.runner``): the
source's migration, return-path and multifd-sender threads
(``livemig.engine.source_driver``) and the destination's load, multifd
receive and recovery threads (``livemig.engine.destination_driver``).  On
real threads they run on :class:`~livemig.engine.runner.ThreadRunner`; here
they run as *tasks* on one thread, so every interleaving is chosen by the
test and replays exactly.  This module holds only what is fake:

* :class:`FakeNetwork` -- listeners by URI, connections as pairs of byte
  pipes, one-way ``file:`` channels, and faults: a connection broken like a
  TCP reset (:meth:`FakeNetwork.break_connections`), connects refused
  (:meth:`FakeNetwork.refuse_connect`), a process killed (:meth:`FakeLink.kill`).
* :class:`Task` and :class:`FakeLink` -- the scheduler: a task is a program
  and the operation it waits on, made a predicate over the fake network and
  a simulated clock; :meth:`FakeLink.step` / :meth:`FakeLink.run` move them.
* :class:`FakeRunner` -- the runner one process's drivers get;
  ``FakeLink.transport(owner)`` is what ``VM(transport=...)`` takes, so the
  VM's QMP commands, checkers, sessions, status cells *and drivers* are the
  engine's own.

Rules: nothing here decides what a migration does (that is the programs'
job); a fault is injected only through the network or :meth:`FakeLink.kill`;
the simulated clock moves only when the test says so.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

from livemig.engine.runner import (
    Accept, Connect, ListenerOrData, Op, Peek, Preempt, Program, Recv, RecvInto, WaitFor, Write,
)
from livemig.engine.source import Send
from livemig.engine.stream import buffers_len
from livemig.engine.threads import crash_text
from livemig.engine.transport import Uri


# ==================================================================== network
class Pipe:
    """One direction of a connection."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.digest = hashlib.sha256()  # of every byte written (replay checks)
        self.eof = False  # the writer shut its side: EOF once drained
        self.reader_gone = False  # writes fail with EPIPE
        self.reset = False  # the connection broke: both ends fail now


@dataclass(eq=False)
class FakeChannel:
    """One end of a connection, with the real Channel's methods: it writes
    ``out`` and reads ``inp``."""

    out: Pipe
    inp: Pipe
    bidirectional: bool = True
    owner: str = ""
    shut: bool = False  # shut down here: reads see EOF, writes fail
    closed: bool = False

    # -- writing
    def send_buffers(self, buffers: Iterable) -> int:
        if self.out.reset:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if self.shut or self.out.reader_gone or self.out.eof:
            raise BrokenPipeError(errno.EPIPE, "Broken pipe")
        n = 0
        for b in buffers:
            view = memoryview(b).cast("B")
            self.out.data += view
            self.out.digest.update(view)
            n += view.nbytes
        return n

    def shutdown_write(self) -> None:
        self.out.eof = True

    # -- reading
    def readable(self) -> bool:
        """A read would not block (data, end of file, or an error)."""
        return bool(self.inp.data) or self.inp.eof or self.inp.reset or self.shut

    def available(self) -> int:
        return len(self.inp.data)

    def at_end(self) -> bool:
        """No more bytes will come (end of file, shut down, or reset)."""
        return self.inp.eof or self.inp.reset or self.shut

    def recv(self, limit: int) -> bytes:
        if self.inp.reset:
            raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
        if self.shut:
            return b""
        assert self.readable(), "recv on an empty channel would block"
        out = bytes(self.inp.data[:limit])
        del self.inp.data[:limit]
        return out

    def peek(self, n: int) -> bytes:
        return bytes(self.inp.data[:n])

    # -- ending
    def shutdown(self) -> None:
        """As ``socket.shutdown(SHUT_RDWR)``: this end reads EOF and cannot
        write; the peer reads EOF after the data, and cannot write."""
        self.shut = True
        self.out.eof = True
        self.inp.reader_gone = True

    def break_(self) -> None:
        """A reset: both ends fail at once, data in flight is lost."""
        for pipe in (self.out, self.inp):
            pipe.reset = True
            pipe.data.clear()

    def close(self) -> None:
        self.shutdown()
        self.closed = True


class FakeListener:
    """A bound address; connections wait in :attr:`pending` until accepted."""

    def __init__(self, network: "FakeNetwork", uri: Uri, owner: str) -> None:
        self.network = network
        self.uri = uri
        self.owner = owner
        self.pending: deque[FakeChannel] = deque()
        self.closed = False
        self.sock = self  # query-migrate shows socket-address while bound

    @property
    def socket_address(self) -> list[dict]:
        if self.uri.protocol == "tcp":
            return [{"type": "inet", "host": self.uri.host, "port": str(self.uri.port)}]
        if self.uri.protocol == "unix":
            return [{"type": "unix", "path": self.uri.path}]
        return []

    def ready(self) -> bool:
        return self.closed or bool(self.pending) or self.uri.protocol in ("file", "fd")

    def accept(self) -> FakeChannel:
        if self.closed:
            raise OSError(errno.EINVAL, "Invalid argument")
        if self.uri.protocol == "file":
            pipe = self.network.files.get(self.uri.path)
            if pipe is None:
                raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            return FakeChannel(Pipe(), pipe, bidirectional=False, owner=self.owner)
        if self.uri.protocol == "fd":
            raise OSError(errno.EBADF, "Bad file descriptor")
        return self.pending.popleft()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.sock = None
        if self.network.listeners.get(str(self.uri)) is self:
            del self.network.listeners[str(self.uri)]
        for chan in self.pending:
            chan.break_()
        self.pending.clear()


class FakeNetwork:
    """Addresses, connections and the faults a test injects."""

    def __init__(self) -> None:
        self.listeners: dict[str, FakeListener] = {}
        self.files: dict[str, Pipe] = {}
        self.channels: list[FakeChannel] = []
        self._refuse: set[int] = set()
        self._connects = 0

    def refuse_connect(self, after: int = 0) -> None:
        """Refuse one connect: the next one (``after`` 0), or a later one
        (``after`` 1: the second from now, e.g. a multifd channel)."""
        self._refuse.add(self._connects + after)

    def listen(self, uri: Uri, owner: str) -> FakeListener:
        key = str(uri)
        old = self.listeners.get(key)
        if old is not None and not old.closed and uri.protocol == "tcp":
            raise OSError(errno.EADDRINUSE, "Address already in use")
        if old is not None:
            old.close()  # a unix path is unlinked and bound again, as Listener does
        listener = FakeListener(self, uri, owner)
        if uri.protocol != "file":
            self.listeners[key] = listener
        return listener

    def connect(self, uri: Uri, owner: str) -> FakeChannel:
        n = self._connects
        self._connects += 1
        if n in self._refuse:
            self._refuse.discard(n)
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if uri.protocol == "file":
            pipe = Pipe()
            self.files[uri.path] = pipe
            chan = FakeChannel(pipe, Pipe(), bidirectional=False, owner=owner)
            self.channels.append(chan)
            return chan
        if uri.protocol == "fd":
            raise OSError(errno.EBADF, "Bad file descriptor")
        listener = self.listeners.get(str(uri))
        if listener is None or listener.closed:
            if uri.protocol == "unix":
                raise FileNotFoundError(errno.ENOENT, "No such file or directory")
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        a, b = Pipe(), Pipe()
        client = FakeChannel(a, b, owner=owner)
        server = FakeChannel(b, a, owner=listener.owner)
        listener.pending.append(server)
        self.channels += [client, server]
        return client

    def break_connections(self, owner: Optional[str] = None) -> int:
        """Reset every open connection (of ``owner``'s); returns how many."""
        n = 0
        for chan in self.channels:
            if chan.closed or chan.out.reset or (owner is not None and chan.owner != owner):
                continue
            if chan.bidirectional or owner is not None:
                chan.break_()
                n += 1
        return n


# ==================================================================== tasks
class Task:
    """One simulated thread: a program (see ``livemig.engine.runner``) and
    the operation it waits on.

    A *waiting* operation (a read, an accept, a wait for a condition) is a
    predicate over the fake network and the simulated clock; the task can go
    on when it holds, and the operation completes then.  A *non-blocking*
    one (a write, a connect, a preemption point) is done the moment it is
    yielded -- so bytes leave in the order the programs wrote them -- and
    the task resumes at a later step with its result."""

    def __init__(self, link: "FakeLink", name: str, owner: str, program: Program,
                 on_crash: Callable[[str], None]) -> None:
        self.link = link
        self.name = name
        self.owner = owner
        self.program = program
        self.on_crash = on_crash
        self.op: Optional[Op] = None  # None: not started
        self.since = link.clock.now  # when ``op`` was yielded
        self.result: Any = None
        self.error: Optional[BaseException] = None
        self.done = False
        self.steps = 0

    def join(self, timeout: float) -> bool:
        """No waiting on the fake link: has the program ended?"""
        return self.done

    def runnable(self) -> bool:
        return not self.done and (self.op is None or self.link.ready(self))

    def step(self) -> bool:
        """Run to the next blocking point; False if it could not run."""
        if not self.runnable():
            return False
        self.steps += 1
        if self.op is not None and not self.link.eager(self.op):
            self.complete(lambda: self.link.complete(self))
        try:
            if self.error is not None:
                error, self.error = self.error, None
                op = self.program.throw(error)
            else:
                op = self.program.send(self.result)
        except StopIteration:
            self.done = True
            return True
        except Exception as exc:  # the threads' net (engine/threads.py)
            self.done = True
            text = crash_text(self.name, exc)
            self.link.crashes.append(text)
            self.on_crash(text)
            return True
        self.op, self.since, self.result = op, self.link.clock.now, None
        self.link.trace.append(f"{self.name} {type(op).__name__}")
        if self.link.eager(op):
            self.complete(lambda: self.link.complete(self))
        return True

    def complete(self, perform: Callable[[], Any]) -> None:
        try:
            self.result = perform()
        except Exception as exc:  # handed to the program at its yield
            self.error = exc


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class FakeLink:
    """The network, the tasks and the clock of one deterministic run."""

    network: FakeNetwork = field(default_factory=FakeNetwork)
    clock: FakeClock = field(default_factory=FakeClock)
    tasks: list[Task] = field(default_factory=list)
    #: bytes a destination reads at a time (small: records arrive torn)
    read_chunk: int = 1 << 19
    #: texts of programs that ended by an exception nobody expected
    crashes: list[str] = field(default_factory=list)
    #: every step: the task and the operation it then waits on (replay checks)
    trace: list[str] = field(default_factory=list)

    def spawn(self, name: str, owner: str, program: Program,
              on_crash: Callable[[str], None]) -> Task:
        task = Task(self, name, owner, program, on_crash)
        self.tasks.append(task)
        return task

    # -- the operations (see livemig.engine.runner)
    @staticmethod
    def eager(op: Op) -> bool:
        return isinstance(op, (Write, Connect, Preempt))

    def ready(self, task: Task) -> bool:
        op = task.op
        if isinstance(op, (Write, Connect, Preempt)):
            return True
        if isinstance(op, WaitFor):
            return bool(op.predicate()) or (op.until is not None and self.clock.now >= op.until)
        if isinstance(op, (RecvInto, Recv)):
            return getattr(op, "top_up", False) or op.chan.readable()
        if isinstance(op, Accept):
            return op.listener.ready()
        if isinstance(op, Peek):
            return (op.chan.available() >= op.n or op.chan.at_end()
                    or self.clock.now >= task.since + op.timeout)
        if isinstance(op, ListenerOrData):
            return op.listener.ready() or (op.limit > 0 and op.chan.readable())
        raise TypeError(f"unknown operation {op!r}")

    def complete(self, task: Task) -> Any:
        op = task.op
        if isinstance(op, Write):
            return op.chan.send_buffers(op.buffers)
        if isinstance(op, Connect):
            return self.network.connect(op.uri, task.owner)
        if isinstance(op, Preempt):
            return None
        if isinstance(op, WaitFor):
            return op.predicate()
        if isinstance(op, RecvInto):
            if op.top_up:
                # reads are read_chunk sized, as the test chose: a top-up
                # finds nothing waiting, so records still arrive torn
                return 0
            data = op.chan.recv(min(len(op.buf), self.read_chunk))
            op.buf[:len(data)] = data
            return len(data)
        if isinstance(op, Recv):
            return op.chan.recv(op.limit)
        if isinstance(op, Accept):
            return op.listener.accept()
        if isinstance(op, Peek):
            return op.chan.peek(op.n)
        if isinstance(op, ListenerOrData):
            if op.listener.closed:
                return b""
            if op.listener.pending:
                return None
            return op.chan.recv(op.limit)
        raise TypeError(f"unknown operation {op!r}")

    # -- scheduling
    def runnable(self) -> list[Task]:
        self.tasks = [t for t in self.tasks if not t.done]
        return [t for t in self.tasks if t.runnable()]

    def step(self, choice: int = 0, quantum: int = 1) -> Optional[str]:
        """Run the ``choice``-th runnable task (modulo) for up to ``quantum``
        blocking points; returns its name, or None if nothing can run."""
        ready = self.runnable()
        if not ready:
            return None
        task = ready[choice % len(ready)]
        for _ in range(quantum):
            if not task.step():
                break
        return task.name

    def run(self, max_steps: int = 20000) -> int:
        """Round-robin until no task can run (or ``max_steps``); returns steps."""
        steps = 0
        while steps < max_steps:
            ready = self.runnable()
            if not ready:
                break
            for task in ready:
                task.step()
                steps += 1
        return steps

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds

    def kill(self, owner: str) -> None:
        """The process ``owner`` dies: its threads stop where they are (no
        cleanup runs), its connections reset and its listeners close."""
        for task in self.tasks:
            if task.owner == owner and not task.done:
                task.done = True  # first: the programs' cleanup sees it and skips
                task.program.close()
        for listener in list(self.network.listeners.values()):
            if listener.owner == owner:
                listener.close()
        self.network.break_connections(owner)

    def close(self) -> None:
        """End of a test: every task stops where it is."""
        for owner in {t.owner for t in self.tasks}:
            self.kill(owner)

    def fingerprint(self) -> str:
        """One digest of a run: the schedule and every byte every channel
        carried, in order (two runs of one test must give the same)."""
        h = hashlib.sha256("\n".join(self.trace).encode())
        for chan in self.network.channels:
            h.update(chan.out.digest.digest())
        return h.hexdigest()

    def transport(self, owner: str) -> "FakeTransport":
        return FakeTransport(self, owner)

    def vm_pair(self, *, ram: int, caps: Iterable[str] = (), listen: Optional[str] = None,
                seed: int = 1, profile: Optional[str] = None) -> tuple[Any, Any]:
        """A source VM and a destination VM (``-incoming defer``) on this link,
        both with ``caps`` on, the destination listening on ``listen`` if given."""
        from livemig.engine.vm import VM
        from livemig.spec import DEFAULT_PROFILE
        name = profile or DEFAULT_PROFILE
        src = VM(ram_size=ram, profile=name, seed=seed, vcpu_thread=False,
                 transport=self.transport("source"))
        dst = VM(ram_size=ram, profile=name, incoming="defer", vcpu_thread=False,
                 transport=self.transport("destination"))
        request = [{"capability": c, "state": True} for c in caps]
        if request:
            for vm in (src, dst):
                vm.execute("migrate-set-capabilities", {"capabilities": request})
        if listen is not None:
            dst.execute("migrate-incoming", {"uri": listen})
        return src, dst


class FakeRunner:
    """``livemig.engine.runner.Runner`` on the fake link, for one process:
    the engine's own driver programs, stepped by the test."""

    fault_timeout: Optional[float] = 0.0  # a vCPU never blocks: it retries later

    def __init__(self, link: FakeLink, owner: str) -> None:
        self.link = link
        self.owner = owner
        self.clock = link.clock

    def spawn(self, name: str, program: Program, on_crash: Callable[[str], None]) -> Task:
        return self.link.spawn(f"{self.owner}:{name}", self.owner, program, on_crash)

    def wake(self) -> None:
        """Nothing to do: every step re-checks what the tasks wait for."""

    def block_until(self, predicate: Callable[[], bool], timeout: Optional[float]) -> bool:
        return bool(predicate())  # one thread: whoever waits would wait forever

    def session_lock(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()  # one thread: nothing interleaves inside a step

    def parallel_map(self, workers: int) -> Callable[[Callable, Iterable], list]:
        return lambda fn, items: [fn(item) for item in items]

    def helped_map(self) -> Callable[[Callable, Iterable], list]:
        return self.parallel_map(1)

    def end_parallel(self) -> None:
        pass

    def postcopy_started(self) -> None:
        pass


class FakeTransport:
    """``VM(transport=...)``: listeners and runners on the fake link."""

    fault_timeout: Optional[float] = 0.0

    def __init__(self, link: FakeLink, owner: str) -> None:
        self.link = link
        self.owner = owner

    def listen(self, uri: Uri) -> FakeListener:
        return self.link.network.listen(uri, self.owner)

    def runner(self) -> FakeRunner:
        return FakeRunner(self.link, self.owner)


def transferred(step: Send) -> int:
    """Bytes of a Send on every channel (for tests that count)."""
    return buffers_len(step.buffers) + sum(buffers_len(b) for _c, b in step.extra)
