"""The destination's thread programs: accept, load, multifd receive, faults.

Theory of operation
-------------------
:class:`DestinationDriver` moves one incoming migration's bytes, written
once as programs (see :mod:`livemig.engine.runner`) that run on real threads
or on the fake link.

* The *load/listen thread* (:meth:`DestinationDriver._load_all`) accepts the
  main channel and every multifd channel, told apart by their first bytes
  (:func:`classify_channel`); while multifd channels are still missing, a
  main channel that ends fails the load instead of waiting for connections
  that will never come (its early bytes are kept and loaded later).  Then it
  reads the stream into the session's buffer, sends return-path bytes, starts
  the vCPU after POSTCOPY_RUN, and on a broken channel in postcopy pauses
  (PostcopyState RUNNING) and waits for ``migrate-recover`` to accept a new
  channel; at the end every multifd channel must have reached end of file.
* A *multifd receive thread* per channel feeds its decoder; at a SYNC packet
  it waits until every channel has reached the same SYNC (:class:`SyncPoints`).
* A postcopy *fault* (:meth:`DestinationDriver.fault`, called on the vCPU's
  own thread) asks the session for the request bytes, sends them at once,
  and waits until the pages are placed -- the session never blocks.  With
  the kernel memory backend the kernel stops the thread itself and the
  backend's fault thread calls :meth:`DestinationDriver.kernel_fault`, which
  sends the requests and returns (the COPY that places a page wakes it).
  A fault thread that fails fails the migration
  (:meth:`DestinationDriver._fault_crashed`), never leaves it waiting.

Rules:

* the load thread owns the session; the vCPU thread touches only the page
  requests (under the runner's lock, which the session holds around them)
  and reads the received bitmaps; ``migrate-recover`` takes the same lock
  around its check and setup event so the load thread's acceptance of an
  earlier recovery channel cannot slip in between;
* return-path bytes are small and leave from whichever thread produced them,
  under that lock (QEMU's rp mutex);
* every failure of the load ends in ``load_failed`` (failed, or paused in
  postcopy) with SHUT 1 on the return path; a multifd channel that fails
  shuts every channel, so no sender blocks on a socket nobody reads.
"""
from __future__ import annotations

from typing import Any, Callable, Optional

from livemig.engine.layouts import layouts
from livemig.engine.multifd import MultifdDecoder, SyncPoints
from livemig.engine.postcopy import PostcopyDestination
from livemig.engine.runner import (
    Accept, ListenerOrData, Peek, Program, RecvInto, Runner, Task, WaitFor,
)
from livemig.engine.source_driver import error_text
from livemig.engine.threads import crash_text
from livemig.engine.wire import wire_tables
from livemig.errors import MigrationError, StreamError

RECV_CHUNK = 512 << 10  # bytes parsed at a time on the destination
EARLY_LIMIT = 16 << 20  # main-channel bytes kept while multifd channels connect
MULTIFD_DONE_TIMEOUT = 60.0  # seconds channels get to reach EOF after the main stream
SYNC_TIMEOUT = 120.0  # seconds a channel waits for the others at a SYNC


def classify_channel(profile: Any, head: bytes) -> str:
    """Which channel an accepted connection is, from its first bytes
    (CHANNEL_MAGIC): ``"multifd"`` (MULTIFD_MAGIC) or ``"main"`` (anything
    else; the stream decoder refuses what is not a stream)."""
    magic = layouts(profile)["CHANNEL_MAGIC"]
    if len(head) >= magic.size and \
            magic.unpack_from(head, 0)[0][0] == wire_tables(profile).multifd_magic:
        return "multifd"
    return "main"


class DestinationDriver:
    """The load/listen thread (and multifd receive threads) of one incoming
    migration, with postcopy faults, pause and recovery."""

    def __init__(self, session: PostcopyDestination, listener: Any, runner: Runner, *,
                 multifd_channels: int = 0,
                 on_done: Optional[Callable[[bool], None]] = None,
                 on_run: Optional[Callable[[], None]] = None) -> None:
        self.session = session
        self.listener = listener
        self.rt = runner
        self.multifd_channels = multifd_channels
        self.on_done = on_done
        self.on_run = on_run
        self.lock = runner.session_lock()
        self.chan: Any = None
        self.aborted = False
        self.recover_listener: Any = None
        self.mf_chans: list[Any] = []
        self.mf_tasks: list[Task] = []
        self.mf_finished = 0
        self.mf_error: Optional[str] = None
        self.points: Optional[SyncPoints] = None
        self._early = bytearray()  # main-channel bytes read while accepting
        self.task: Optional[Task] = None
        session.exclusive = self.lock
        session.clock = runner.clock  # request stamps: simulated on the fake link
        session.on_pages_placed = runner.wake
        session.on_rp_data = self._flush_rp
        session.before_finish = self._multifd_check
        session.on_kernel_fault = self.kernel_fault
        session.on_fault_crash = self._fault_crashed
        #: the kernel fault thread's failure (it ends the load: no pause)
        self.fault_error: Optional[str] = None

    # ------------------------------------------------------------ control
    def start(self) -> None:
        self.task = self.rt.spawn("livemig-load", self._run(), self._crashed)

    def join(self, timeout: float) -> bool:
        """Wait for the load thread; True once it has ended."""
        return self.task is not None and self.task.join(timeout)

    @property
    def recover_lock(self) -> Any:
        """Held by migrate-recover around its check and setup event."""
        return self.lock

    def pause(self) -> None:
        """migrate-pause on the destination: shut the channel down."""
        if self.chan is not None:
            self.chan.shutdown()

    def recover(self, listener: Any) -> None:
        """migrate-recover: accept the next channel on ``listener``."""
        old, self.recover_listener = self.recover_listener, listener
        if old is not None and old is not listener:
            old.close()
        self.rt.wake()

    def abort(self) -> None:
        self.aborted = True
        for chan in [self.chan] + self.mf_chans:
            if chan is not None:
                chan.shutdown()
        self.listener.close()
        self.session.close()
        if self.recover_listener is not None:
            self.recover_listener.close()
        self.rt.wake()

    def fault(self, block_name: str, first: int, last: int) -> bool:
        """The vCPU touches pages [first, last): request the missing ones and
        wait (the runner's fault timeout) until they are placed.  False when
        they are not (timeout, or shutdown): the vCPU must not touch them."""
        s = self.session
        if s.present(block_name, first, last):
            return True
        with self.lock:  # compute and send in one go: requests leave in order
            self._send_rp(s.request_pages(block_name, first, last))
        self.rt.block_until(lambda: s.closed or s.present(block_name, first, last),
                            self.rt.fault_timeout)
        return s.present(block_name, first, last)

    def kernel_fault(self, block_name: str, pages: Any) -> None:
        """The kernel stopped threads on ``pages`` (sorted) of ``block_name``:
        request the missing ones on the return path, in runs, and return (on
        a paused channel they are kept and re-sent after RESUME)."""
        s = self.session
        pages = [int(p) for p in pages]
        runs: list[tuple[int, int]] = []
        for p in pages:
            if runs and runs[-1][1] == p:
                runs[-1] = (runs[-1][0], p + 1)
            else:
                runs.append((p, p + 1))
        with self.lock:  # requests leave in order, as in fault()
            self._send_rp(b"".join(s.request_pages(block_name, a, b) for a, b in runs))

    def _fault_crashed(self, text: str) -> None:
        """The kernel fault thread's net: fail the migration with its text (the
        load thread, woken by the shut channel, ends without pausing; if the
        migration is paused now, it fails once recovered)."""
        self.fault_error = text
        with self.lock:
            failed = self.session.fault_failed(text)
            if failed:
                self._send_rp(self.session.data_to_send())
        if failed and self.chan is not None:
            self.chan.shutdown()
        self.rt.wake()

    def failure_text(self, exc: BaseException) -> str:
        """error-desc of a load that ended by ``exc``: the transport's or the
        stream's text, a multifd channel's error when that channel is why
        the main stream ended, and for anything else (a bug) the thread and
        the exception, so the load fails and says so on the return path."""
        if isinstance(exc, (MigrationError, OSError)):
            text = error_text(exc)
        else:
            text = crash_text("livemig-load", exc)
        eof_text = wire_tables(self.session.profile).error("stream_eof")
        if self.mf_error and (not isinstance(exc, StreamError) or text == eof_text):
            text = self.mf_error  # the channel's error is the cause
        return text

    def _crashed(self, text: str) -> None:
        """The load thread's net (see threads.py): the failure row."""
        self.session.load_failed(text)

    # ------------------------------------------------------------ return path
    def _flush_rp(self) -> None:
        with self.lock:
            self._send_rp(self.session.data_to_send())

    def _send_rp(self, data: bytes) -> None:
        chan = self.chan
        if not data or chan is None or not chan.bidirectional:
            return
        try:
            chan.send_buffers([data])
        except OSError:
            pass  # the load thread sees the broken channel

    # ------------------------------------------------------------ load thread
    def _run(self) -> Program:
        killed = False
        ok = False
        try:
            ok = yield from self._load_all()
        except GeneratorExit:  # the fake link killed the process: no cleanup
            killed = True
            raise
        finally:
            if not killed:
                for chan in self.mf_chans:
                    chan.shutdown()
                if self.chan is not None:
                    self.chan.close()
                for chan in self.mf_chans:
                    chan.close()
                if self.on_done is not None:
                    self.on_done(ok)

    def _load_all(self) -> Program:
        s = self.session
        try:
            self.chan = yield from self._accept_all()
            self.listener.close()
            if self._early:  # main-channel bytes read while multifd channels came
                s.feed(bytes(self._early))
                self._early.clear()
                self._flush_rp()
            while True:
                try:
                    yield from self._load()
                    break
                except (OSError, MigrationError) as exc:
                    if not (s.in_postcopy and s.can_pause) or self.aborted or self.fault_error:
                        raise
                    if not s.pause(error_text(exc)) and s.cell.state != s.pst.recover:
                        raise
                    # (7.2: a channel lost while recovering leaves postcopy-recover
                    # as it is; the thread waits all the same)
                    if not (yield from self._wait_recovered()):
                        return False
            yield from self._join_multifd()
            s.load_finished()
            self._flush_rp()
            return True
        except Exception as exc:  # noqa: BLE001 - a bug too fails the load (SHUT 1)
            if self.fault_error is not None:
                s.fault_failed(self.fault_error)  # not a pause: no fault is served
            else:
                s.load_failed(self.failure_text(exc))
            self._flush_rp()
            return False

    def _load(self) -> Program:
        s = self.session
        chan = self.chan
        chunk = RECV_CHUNK
        started = s.run_requested
        while not s.finished:
            buf = s.get_buffer(chunk)[:chunk]
            got = yield RecvInto(chan, buf)
            if got == 0:
                if self.mf_error:
                    raise StreamError(self.mf_error)
                s.input_ended()  # the end, if only the vmdesc was left; else StreamError
                break
            if not s.in_postcopy:
                # Top up while bytes are waiting: fewer, larger parses, but a
                # cache-sized working set.  (Not in postcopy: a page request's
                # answer is parsed the moment it arrives.)
                while got < chunk:
                    more = yield RecvInto(chan, buf[got:], top_up=True)
                    if not more:
                        break
                    got += more
            s.buffer_updated(got)
            self._flush_rp()
            if self.fault_error is not None and s.cell.state == s.pst.active:
                raise StreamError(self.fault_error)  # failed while paused: fail now
            if s.run_requested and not started:
                started = True
                self.rt.postcopy_started()
                if self.on_run is not None:
                    self.on_run()

    # ------------------------------------------------------------ accepting
    def _accept_all(self) -> Program:
        """The main channel and every multifd channel; returns the main one."""
        w = wire_tables(self.session.profile)
        main: Any = None
        while main is None or len(self.mf_chans) < self.multifd_channels:
            if self.mf_error:
                raise StreamError(self.mf_error)
            if main is not None:
                yield from self._wait_listener_or_eof(main)
            chan = yield Accept(self.listener)
            if not chan.bidirectional:
                self.session.accepted()
                return chan  # fd/file: a single channel
            head = yield Peek(chan, 4)
            if classify_channel(self.session.profile, head) == "multifd" and self.multifd_channels:
                self._start_multifd(chan)
            else:
                main = chan
                self.session.accepted()
                self.chan = main  # abort() can shut it while we wait
        return main

    def _wait_listener_or_eof(self, main: Any) -> Program:
        """Until a connection waits on the listener; the stream's early-end
        error if the main channel reaches end of file first.  Bytes that
        arrive on the main channel meanwhile are kept in :attr:`_early` up to
        :data:`EARLY_LIMIT`; a source that sent that much is alive, and past
        it only the listener is watched."""
        while True:
            if self.mf_error:
                raise StreamError(self.mf_error)
            try:
                data = yield ListenerOrData(self.listener, main, EARLY_LIMIT - len(self._early))
            except OSError as exc:
                raise StreamError(error_text(exc)) from None
            if data is None:
                return
            if not data:
                raise StreamError(self.mf_error
                                  or wire_tables(self.session.profile).error("stream_eof"))
            self._early += data

    # ------------------------------------------------------------ multifd
    def _start_multifd(self, chan: Any) -> None:
        if self.points is None:
            self.points = SyncPoints(self.multifd_channels)
        dec = MultifdDecoder(self.session.profile, self.session.guest.blocks)
        slot = len(self.mf_chans)
        self.session.multifd.append(dec)
        self.mf_chans.append(chan)
        self.mf_tasks.append(self.rt.spawn("livemig-multifd-recv",
                                           self._multifd_loop(dec, chan, slot),
                                           self._multifd_failed))

    def _multifd_loop(self, dec: MultifdDecoder, chan: Any, slot: int) -> Program:
        points = self.points
        assert points is not None
        try:
            while True:
                buf = dec.get_buffer(RECV_CHUNK)[:RECV_CHUNK]
                n = yield RecvInto(chan, buf)
                if n:
                    dec.buffer_updated(n)
                while dec.held:
                    k = dec.syncs
                    points.arrive(slot, k)
                    self.rt.wake()
                    yield WaitFor(lambda: points.met(k), self.rt.clock() + SYNC_TIMEOUT)
                    if not points.met(k):
                        raise StreamError("multifd: channels did not meet at a sync point")
                    dec.release()
                if not n:
                    return
        except (OSError, StreamError) as exc:
            self._multifd_failed(error_text(exc))
        finally:
            self.mf_finished += 1
            self.rt.wake()

    def _multifd_failed(self, text: str) -> None:
        """A receive channel failed: the load fails with its error, and every
        channel is shut so that no sender blocks on a full socket nobody
        reads (the source then fails too)."""
        self.mf_error = self.mf_error or text
        if self.points is not None:
            self.points.break_()
        for chan in [self.chan] + self.mf_chans:
            if chan is not None:
                chan.shutdown()
        self.rt.wake()

    def _join_multifd(self) -> Program:
        """Before the load may finish: every channel at EOF, all pages applied."""
        if self.mf_tasks:
            n = len(self.mf_tasks)
            deadline = self.rt.clock() + MULTIFD_DONE_TIMEOUT
            yield WaitFor(lambda: self.mf_finished >= n, deadline)
            if self.mf_finished < n:
                raise StreamError("multifd: channel did not finish")
        self._multifd_check()

    def _multifd_check(self) -> None:
        if self.mf_error:
            raise StreamError(self.mf_error)

    # ------------------------------------------------------------ recovery
    def _wait_recovered(self) -> Program:
        s = self.session
        if self.chan is not None:
            self.chan.shutdown()
            self.chan.close()
            self.chan = None
        while True:
            yield WaitFor(lambda: self.aborted or self.recover_listener is not None)
            if self.aborted:
                return False
            listener = self.recover_listener
            try:
                chan = yield Accept(listener)
            except OSError:
                if self.aborted:
                    return False
                if self.recover_listener is listener:
                    self.recover_listener = None
                continue  # a newer migrate-recover replaced the listener
            listener.close()
            if self.recover_listener is listener:
                self.recover_listener = None
            with self.lock:
                self.chan = chan
                return s.recover_accepted()


__all__ = ["DestinationDriver", "classify_channel", "RECV_CHUNK", "EARLY_LIMIT"]
