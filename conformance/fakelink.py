"""The engine without threads or sockets: an in-memory network and drivers
that a test steps by hand.

Theory of operation
-------------------
The engine is sans-I/O (``livemig.engine.source``, ``.destination``,
``.postcopy``): drivers move its bytes.  The real drivers
(``livemig.engine.driver``, ``.postcopy_driver``) do it with threads and
sockets; this module does it with *tasks* on one thread, so every
interleaving is chosen by the test and replays exactly:

* :class:`FakeNetwork` -- listeners by URI, connections as pairs of byte
  pipes, one-way ``file:`` channels, and faults: a connection broken like a
  TCP reset (:meth:`FakeNetwork.break_connections`), connects refused
  (:attr:`FakeNetwork.refuse`), a process killed (:meth:`FakeLink.kill`).
* :class:`FakeSourceDriver` and :class:`FakeDestinationDriver` -- the
  migration, return-path, load and multifd-receive threads of the real
  drivers written as generators, step for step in the same order (same
  session calls, same error handling).  A generator yields a predicate at
  every point where the real thread blocks, or could be preempted; the task
  can go on when the predicate is true.
* :class:`FakeLink` -- the tasks, a simulated clock, and :meth:`FakeLink.step`
  / :meth:`FakeLink.run` to move them.  ``FakeLink.transport(owner)`` is what
  ``VM(transport=...)`` takes, so the VM's QMP commands, checkers, sessions and
  status cells are the engine's own; only the drivers are these.

What the real threads do differently is only *when*: the sequencing is the
same code shape, and the socket drivers keep their own tests (the stateful
run over sockets, the process and scenario tests).
"""
from __future__ import annotations

import errno
import struct
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Generator, Iterable, Optional

from livemig.engine import multifd as mfd
from livemig.engine.guest import RUN_FINISH_MIGRATE, RUN_POSTMIGRATE
from livemig.engine.multifd import MultifdDecoder
from livemig.engine.postcopy import (
    POSTCOPY_SOURCE_ROWS, Idle, PostcopyDestination, PostcopyDone, PostcopySource, StartPostcopy,
)
from livemig.engine.source import Converged, Send, Wait
from livemig.engine.stream import buffers_len
from livemig.engine.transport import Uri
from livemig.engine.wire import wire_tables
from livemig.errors import MigrationError, ReturnPathError, StreamError

#: a predicate a task waits on; ``READY`` is a preemption point
Predicate = Callable[[], bool]
Program = Generator[Predicate, None, Any]
RP_CLOSE_TIMEOUT = 60.0  # simulated seconds, as the real drivers'
RESUME_TIMEOUT = 30.0


def READY() -> bool:
    return True


def _text(exc: BaseException) -> str:
    if isinstance(exc, MigrationError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


# ==================================================================== network
class Pipe:
    """One direction of a connection."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.eof = False  # the writer shut its side: EOF once drained
        self.reader_gone = False  # writes fail with EPIPE
        self.reset = False  # the connection broke: both ends fail now


class FakeChannel:
    """One end of a connection, with the real Channel's methods."""

    def __init__(self, out: Pipe, inp: Pipe, *, bidirectional: bool = True,
                 owner: str = "") -> None:
        self.out = out
        self.inp = inp
        self.bidirectional = bidirectional
        self.owner = owner
        self.shut = False
        self.closed = False

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
@dataclass
class Task:
    """One simulated thread: a generator and what it waits for."""

    name: str
    owner: str
    program: Program
    wait: Predicate = READY
    done: bool = False
    steps: int = 0

    def runnable(self) -> bool:
        return not self.done and bool(self.wait())

    def step(self) -> bool:
        """Run to the next blocking point; False if it could not run."""
        if not self.runnable():
            return False
        self.steps += 1
        try:
            self.wait = next(self.program)
        except StopIteration:
            self.done = True
        return True


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

    def spawn(self, name: str, owner: str, program: Program) -> Task:
        task = Task(name, owner, program)
        self.tasks.append(task)
        return task

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


class FakeTransport:
    """``VM(transport=...)``: listeners and drivers on the fake link."""

    fault_timeout: Optional[float] = 0.0  # a vCPU never blocks: it retries later

    def __init__(self, link: FakeLink, owner: str) -> None:
        self.link = link
        self.owner = owner

    def listen(self, uri: Uri) -> FakeListener:
        return self.link.network.listen(uri, self.owner)

    def source_driver(self, session: PostcopySource, uri: Uri) -> "FakeSourceDriver":
        return FakeSourceDriver(self.link, self.owner, session, uri)

    def destination_driver(self, session: PostcopyDestination, listener: FakeListener, *,
                           multifd_channels: int, on_done: Callable[[bool], None],
                           on_run: Callable[[], None]) -> "FakeDestinationDriver":
        return FakeDestinationDriver(self.link, self.owner, session, listener,
                                     multifd_channels=multifd_channels, on_done=on_done,
                                     on_run=on_run)


# ==================================================================== source
class FakeSourceDriver:
    """The migration and return-path threads of ``PostcopySourceDriver``."""

    def __init__(self, link: FakeLink, owner: str, session: PostcopySource, uri: Uri) -> None:
        self.link = link
        self.owner = owner
        self.session = session
        self.uri = uri
        self.chan: Optional[FakeChannel] = None
        self.extra: list[FakeChannel] = []
        self.aborted = False
        self.continue_posted = False
        self.resume_uri: Optional[Uri] = None
        self.rp_error: Optional[str] = None
        self.rp_done = False
        self.rp_task: Optional[Task] = None
        self._rp_generation = 0
        self._stopped_vcpu = False
        self.task: Optional[Task] = None

    # ------------------------------------------------------------ control
    def start(self) -> None:
        self.task = self.link.spawn("source:migration", self.owner, self._run())

    def join(self, timeout: float) -> bool:
        return self.task is not None and self.task.done

    def abort(self) -> None:
        self.aborted = True
        for chan in [self.chan] + self.extra:
            if chan is not None:
                chan.shutdown()

    def post_continue(self) -> None:
        self.continue_posted = True

    def start_postcopy(self) -> None:
        self.session.start_postcopy = True

    def pause(self) -> None:
        if self.chan is not None:
            self.chan.shutdown()

    def resume(self, uri: Uri) -> None:
        self.resume_uri = uri

    # ------------------------------------------------------------ thread
    def _run(self) -> Program:
        s = self.session
        st = s.st
        guest = s.guest
        now = self.link.clock
        in_completion = False
        try:
            try:
                self.chan = self.link.network.connect(self.uri, self.owner)
            except OSError as exc:
                s.connect_error(_text(exc))
                return
            if not s.channel_connected(self.uri.protocol, self.chan.bidirectional):
                return
            yield READY  # the multifd channels connect asynchronously
            try:
                for ch in range(1, s.multifd_channels + 1):
                    c = self.link.network.connect(self.uri, self.owner)
                    self.extra.append(c)
                    c.send_buffers([mfd.hello(s.profile, ch)])
            except OSError as exc:
                s.multifd_error(_text(exc))
                return
            if self.aborted:
                return
            buffers = s.setup(now())
            if not buffers:
                return
            s.sent(self.chan.send_buffers(buffers), now())
            if s.return_path:
                self._start_rp()
            yield READY
            while True:
                if self.rp_error is not None:
                    raise ReturnPathError(self.rp_error)
                step = s.poll(now())
                if step is None:
                    return
                if isinstance(step, Wait):
                    until = step.until
                    yield lambda: now() >= until or self.aborted or self.rp_error is not None
                    if self.aborted and s.postcopy_ram:
                        return
                    continue
                if isinstance(step, (Converged, StartPostcopy)):
                    break
                self._send(step)
                yield READY
            if isinstance(step, Converged):
                in_completion = True
                guest.vm_stop(RUN_FINISH_MIGRATE)
                self._stopped_vcpu = True
                if s.switchover():
                    yield lambda: self.continue_posted or self.aborted
                    if s.state != st.pre_switchover:
                        return
                    s.continue_switchover()
                if s.state not in (st.active, st.device):
                    return
                for step in s.completion(now()):
                    self._send(step)
                    yield READY
                for chan in self.extra:
                    chan.shutdown_write()
                if self.rp_task is not None:
                    yield from self._wait_shut()
                if s.completed(now()):
                    guest.set_run_state(RUN_POSTMIGRATE)
                    self._stopped_vcpu = False
                return
            # ---- postcopy_start
            if s.postcopy_start():
                yield lambda: self.continue_posted or self.aborted
                if s.state != st.pre_switchover:
                    return
                s.postcopy_continue()
            if s.state != s.pst.active:
                return
            guest.vm_stop(RUN_FINISH_MIGRATE)
            self._stopped_vcpu = True
            yield READY  # the channel may break between the switch and the package
            try:
                self._send_main(s.package(now()))
            except (OSError, MigrationError) as exc:
                s.error_desc = _text(exc)
                s.cell.fire(POSTCOPY_SOURCE_ROWS["start_stream_error"])
                return
            s.package_sent(now())
            self._stopped_vcpu = False
            guest.set_run_state(RUN_POSTMIGRATE)
            yield READY
            yield from self._postcopy_loop()
        except (OSError, MigrationError) as exc:
            text = _text(exc)
            if isinstance(exc, OSError) and self.rp_error:
                text = self.rp_error
            s.stream_error(text, now(), in_completion=in_completion)
        finally:
            if not self.link_killed():
                self._finish()

    def link_killed(self) -> bool:
        return self.task is not None and self.task.done

    def _send(self, step: Send) -> None:
        multifd = 0
        for ch, bufs in step.extra:
            try:
                multifd += self.extra[ch - 1].send_buffers(bufs)
            except OSError as exc:
                self.session.multifd_error(_text(exc))  # the multifd thread's failure
                raise
        assert self.chan is not None
        n = self.chan.send_buffers(step.buffers)
        self.session.sent(n, self.link.clock(), multifd=multifd)

    def _send_main(self, buffers: list) -> None:
        assert self.chan is not None
        self.session.sent(self.chan.send_buffers(buffers), self.link.clock())

    def _finish(self) -> None:
        s = self.session
        if s.state == s.st.cancelling:
            s.cleanup(self.link.clock())
        if self._stopped_vcpu:
            s.guest.vm_start()  # QEMU restarts a source whose migration failed
            self._stopped_vcpu = False
        for chan in self.extra + ([self.chan] if self.chan is not None else []):
            chan.close()

    # ------------------------------------------------------------ return path
    def _start_rp(self) -> None:
        assert self.chan is not None
        self.rp_error = None
        self.rp_done = False
        self._rp_generation += 1
        self.rp_task = self.link.spawn("source:return-path", self.owner,
                                       self._rp_loop(self.chan, self._rp_generation))

    def _rp_loop(self, chan: FakeChannel, gen: int) -> Program:
        s = self.session
        current = lambda: gen == self._rp_generation  # noqa: E731
        try:
            while True:
                yield chan.readable
                data = chan.recv(65536)
                if not data:
                    if s.shut is None and current():
                        self.rp_error = self.rp_error or "return path closed"
                        chan.shutdown()
                    return
                s.receive_rp(data)
                if s.in_postcopy and self.chan is chan:
                    step = s.requested()  # pages asked for leave from this thread
                    if step is not None:
                        try:
                            s.sent(chan.send_buffers(step.buffers), self.link.clock())
                        except OSError:
                            pass  # the migration thread sees the broken channel
                if s.shut is not None:
                    return
        except ReturnPathError as exc:
            if current():
                self.rp_error = exc.message
            chan.shutdown()
        except OSError as exc:
            if s.shut is None and not self.aborted and current():
                self.rp_error = _text(exc)
        finally:
            if current():
                self.rp_done = True

    def _wait_shut(self) -> Program:
        deadline = self.link.clock() + RP_CLOSE_TIMEOUT
        yield lambda: self.rp_done or self.link.clock() >= deadline
        if not self.rp_done:
            raise ReturnPathError("return path did not close")
        if self.rp_error is not None:
            raise ReturnPathError(self.rp_error)

    # ------------------------------------------------------------ postcopy
    def _postcopy_loop(self) -> Program:
        s = self.session
        while True:
            try:
                yield from self._postcopy_send_all()
                return
            except (OSError, MigrationError) as exc:
                if self.aborted or s.state == s.st.cancelling:
                    return
                if not s.postcopy_pause(self.rp_error or _text(exc)):
                    raise
                resumed = yield from self._paused_until_resumed()
                if not resumed:
                    return

    def _postcopy_send_all(self) -> Program:
        s = self.session
        now = self.link.clock
        while True:
            if self.rp_error is not None:
                raise ReturnPathError(self.rp_error)
            if self.aborted:
                return
            assert self.chan is not None
            step = s.poll_postcopy(now())
            if isinstance(step, Send):
                s.sent(self.chan.send_buffers(step.buffers), now())
                yield READY
                continue
            if isinstance(step, PostcopyDone):
                s.sent(self.chan.send_buffers(s.postcopy_complete(now())), now())
                yield from self._wait_shut()
                s.completed(now())
                return
            if isinstance(step, Wait):
                until = step.until
                yield lambda: now() >= until or self.aborted or self.rp_error is not None
                continue
            if isinstance(step, Idle):
                if s.state != s.pst.active:
                    raise StreamError(s.error_desc or "postcopy: not active")
                yield READY

    def _paused_until_resumed(self) -> Program:
        s = self.session
        now = self.link.clock
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        while True:
            yield lambda: self.resume_uri is not None or self.aborted
            if self.aborted:
                return False
            uri, self.resume_uri = self.resume_uri, None
            assert uri is not None
            try:
                chan = self.link.network.connect(uri, self.owner)
            except OSError as exc:
                s.error_desc = _text(exc)  # migrate_fd_error: a no-op while paused
                continue
            self.chan = chan
            if not s.resume_connected():
                chan.close()
                return False
            try:
                self._start_rp()
                self._send_main(s.resume_prepare())
                deadline = now() + RESUME_TIMEOUT
                yield lambda: (s.bitmaps_reloaded or self.rp_error is not None
                               or now() > deadline or self.aborted)
                if not s.bitmaps_reloaded:
                    raise ReturnPathError(self.rp_error or "recovery timed out")
                self._send_main([s.resume_command()])
                yield lambda: (s.state != s.pst.recover or self.rp_error is not None
                               or now() > deadline or self.aborted)
                if s.state == s.pst.recover:
                    raise ReturnPathError(self.rp_error or "recovery timed out")
                return s.state == s.pst.active
            except (OSError, MigrationError) as exc:
                if self.aborted:
                    return False
                s.postcopy_pause(self.rp_error or _text(exc))
                chan.close()
                self.chan = None


# ==================================================================== destination
class FakeBarrier:
    """The multifd SYNC barrier without blocking: a channel's task waits on
    :meth:`met` before it reads on (see FakeDestinationDriver._multifd_loop)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.counts: dict[int, int] = {}
        self.broken = False

    def arrive(self, k: int) -> None:
        self.counts[k] = self.counts.get(k, 0) + 1

    def met(self, k: int) -> bool:
        return self.broken or k == 0 or self.counts.get(k, 0) >= self.n

    def break_(self) -> None:
        self.broken = True


class FakeDestinationDriver:
    """The load/listen thread (and multifd receive threads) of
    ``PostcopyDestinationDriver``."""

    def __init__(self, link: FakeLink, owner: str, session: PostcopyDestination,
                 listener: FakeListener, *, multifd_channels: int,
                 on_done: Callable[[bool], None], on_run: Callable[[], None]) -> None:
        self.link = link
        self.owner = owner
        self.session = session
        self.listener = listener
        self.multifd_channels = multifd_channels
        self.on_done = on_done
        self.on_run = on_run
        self.chan: Optional[FakeChannel] = None
        self.aborted = False
        self.recover_listener: Optional[FakeListener] = None
        self.mf_chans: list[FakeChannel] = []
        self.mf_tasks: list[Task] = []
        self.mf_error: Optional[str] = None
        self.barrier: Optional[FakeBarrier] = None
        self.task: Optional[Task] = None
        session.on_rp_data = self._flush_rp

    def start(self) -> None:
        self.task = self.link.spawn("destination:load", self.owner, self._run())

    def join(self, timeout: float) -> bool:
        return self.task is not None and self.task.done

    def pause(self) -> None:
        if self.chan is not None:
            self.chan.shutdown()

    def recover(self, listener: FakeListener) -> None:
        old, self.recover_listener = self.recover_listener, listener
        if old is not None and old is not listener:
            old.close()

    def abort(self) -> None:
        self.aborted = True
        for chan in [self.chan] + self.mf_chans:
            if chan is not None:
                chan.shutdown()
        self.listener.close()
        self.session.close()
        if self.recover_listener is not None:
            self.recover_listener.close()

    def _flush_rp(self) -> None:
        chan = self.chan
        if chan is None or not chan.bidirectional:
            return
        data = self.session.data_to_send()
        if data:
            try:
                chan.send_buffers([data])
            except OSError:
                pass  # the load thread sees the broken channel

    # ------------------------------------------------------------ thread
    def _run(self) -> Program:
        s = self.session
        ok = False
        try:
            self.chan = yield from self._accept_all()
            self.listener.close()
            while True:
                try:
                    yield from self._load()
                    break
                except (OSError, MigrationError) as exc:
                    if not (s.in_postcopy and s.can_pause) or self.aborted:
                        raise
                    if not s.pause(_text(exc)) and s.cell.state != s.pst.recover:
                        raise
                    recovered = yield from self._wait_recovered()
                    if not recovered:
                        return
            if self.mf_tasks:  # the real driver joins the channel threads here
                yield lambda: all(t.done for t in self.mf_tasks)
            s.load_finished()
            self._flush_rp()
            ok = True
        except (OSError, MigrationError) as exc:
            s.load_failed(_text(exc))
            self._flush_rp()
        finally:
            if not (self.task is not None and self.task.done):
                if self.chan is not None:
                    self.chan.close()
                self.on_done(ok)

    def _accept_all(self) -> Generator[Predicate, None, FakeChannel]:
        magic = wire_tables(self.session.profile).multifd_magic
        main: Optional[FakeChannel] = None
        while main is None or len(self.mf_chans) < self.multifd_channels:
            listener = self.listener
            yield lambda: listener.ready() or self.aborted
            chan = listener.accept()
            if not chan.bidirectional:
                self.session.accepted()
                return chan  # file: one channel
            yield lambda: chan.available() >= 4 or chan.at_end()
            head = chan.peek(4)
            first = struct.unpack(">I", head)[0] if len(head) == 4 else None
            if first == magic and self.multifd_channels:
                self._start_multifd(chan)
            else:
                main = chan
                self.session.accepted()
        return main

    def _start_multifd(self, chan: FakeChannel) -> None:
        if self.barrier is None:
            self.barrier = FakeBarrier(self.multifd_channels)
        self.session.before_finish = self._multifd_finished
        dec = MultifdDecoder(self.session.profile, self.session.guest.blocks,
                             self.barrier)  # type: ignore[arg-type]
        self.session.multifd.append(dec)
        self.mf_chans.append(chan)
        self.mf_tasks.append(self.link.spawn("destination:multifd", self.owner,
                                             self._multifd_loop(dec, chan)))

    def _multifd_loop(self, dec: MultifdDecoder, chan: FakeChannel) -> Program:
        """Reads at most a page at a time: a read can then finish a SYNC packet
        but never a SYNC and the page packet behind it, so waiting for the
        barrier before each read keeps the real barrier's guarantee."""
        barrier = self.barrier
        assert barrier is not None
        page = dec.page_size
        try:
            while True:
                yield lambda: chan.readable() and barrier.met(dec.syncs)
                data = chan.recv(page)
                if not data:
                    return
                dec.feed(data)
        except (OSError, StreamError) as exc:
            self.mf_error = exc.message if isinstance(exc, StreamError) else _text(exc)
            barrier.break_()
            if self.chan is not None:
                self.chan.shutdown()

    def _multifd_finished(self) -> None:
        if self.mf_error:
            raise StreamError(self.mf_error)

    def _load(self) -> Program:
        s = self.session
        chan = self.chan
        assert chan is not None
        started = s.run_requested
        while not s.finished:
            yield chan.readable
            data = chan.recv(self.link.read_chunk)
            if not data:
                raise StreamError(s.decoder.w.error("stream_eof"))
            buf = s.get_buffer(len(data))
            buf[:len(data)] = data
            s.buffer_updated(len(data))
            self._flush_rp()
            if s.run_requested and not started:
                started = True
                self.on_run()

    def _wait_recovered(self) -> Generator[Predicate, None, bool]:
        s = self.session
        if self.chan is not None:
            self.chan.close()
            self.chan = None
        while True:
            yield lambda: self.aborted or (self.recover_listener is not None
                                           and self.recover_listener.ready())
            if self.aborted:
                return False
            listener = self.recover_listener
            assert listener is not None
            try:
                chan = listener.accept()
            except OSError:
                self.recover_listener = None
                continue  # a newer migrate-recover replaced the listener
            listener.close()
            self.recover_listener = None
            self.chan = chan
            return s.recover_accepted()


def transferred(step: Send) -> int:
    """Bytes of a Send on every channel (for tests that count)."""
    return buffers_len(step.buffers) + sum(buffers_len(b) for _c, b in step.extra)
