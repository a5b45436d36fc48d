"""The source's thread programs: migration, return path, multifd senders.

Theory of operation
-------------------
:class:`SourceDriver` moves one outgoing migration's bytes.  It is written
once, as programs (see :mod:`livemig.engine.runner`), and runs on real
threads and sockets (:class:`~livemig.engine.runner.ThreadRunner`) or as
tasks on the fake link (``livemig.conformance.fakelink``).

The *migration thread* (:meth:`SourceDriver._migrate`), in the order of
QEMU's migration_thread:

* connect the main channel and run migrate_fd_connect's checks on it, open
  the multifd channels (each written by its own *sender* program, fed
  through a queue of four buffer lists so the migration thread does not wait
  for a slow channel), send the setup, start the *return-path* program when
  the session wants one and the channel can carry it;
* iterate: the session's :class:`~livemig.engine.source.Send` buffers are
  written, a :class:`~livemig.engine.source.Wait` waits (woken early by a
  cancel, a return-path message or ``migrate-start-postcopy``);
* on :class:`~livemig.engine.source.Converged`: stop the vCPU, maybe pause
  before switchover, the final pass, end of file on every channel, wait for
  the return path to close with SHUT 0 (never complete on a return path
  that died: the destination has not confirmed the load), completed;
* on :class:`~livemig.engine.postcopy.StartPostcopy`: the switch (vCPU
  stopped, discards and the package), then requested pages first and the
  background pages in small chunks; a broken channel pauses the session and
  parks the thread until ``migrate resume=true`` hands it a new URI: connect,
  RECV_BITMAP for every block, wait for every bitmap, POSTCOPY_RESUME, wait
  for RESUME_ACK; any failure parks it again.

Rules:

* every session call is made under the runner's session lock (the return
  path thread and the migration thread share the session); the lock is held
  across a write only where the order of bytes on the main channel matters
  (postcopy: requested pages leave from the return-path thread);
* the only session state other threads change directly is the status cell
  (compare-and-swap, ``migrate_cancel``) and the ``start_postcopy`` flag;
  everything else they post to the driver (``abort``, ``post_continue``,
  ``resume``), which wakes the programs;
* every exception ends in a spec row: the migration thread's handler fails
  the migration (``stream_error``), the return path marks itself bad
  (``mark_source_rp_bad``) and the migration thread fails or pauses on it.
"""
from __future__ import annotations

import collections
import os
from typing import Any, Callable, Optional

from livemig.engine import multifd as mfd
from livemig.engine.guest import RUN_FINISH_MIGRATE, RUN_POSTMIGRATE
from livemig.engine.postcopy import PostcopyDone, PostcopySource, StartPostcopy
from livemig.engine.rows import POSTCOPY_SOURCE_ROWS
from livemig.engine.runner import (
    PREEMPT, Connect, Program, Recv, Runner, Task, WaitFor, Write,
)
from livemig.engine.source import Converged, Send, Wait
from livemig.engine.stream import buffers_len
from livemig.engine.threads import crash_text
from livemig.engine.tls import TLSError
from livemig.engine.transport import Uri
from livemig.errors import MigrationError, ReturnPathError, StreamError

RP_CLOSE_TIMEOUT = 60.0  # seconds the return path has to close after EOF
RESUME_TIMEOUT = 30.0  # seconds a postcopy recovery handshake may take
SENDER_QUEUE = 4  # buffer lists waiting for one multifd channel
SENDER_JOIN_TIMEOUT = 5.0  # seconds senders get to stop after a failure


def error_text(exc: BaseException) -> str:
    """error-desc of an expected failure: the engine's text or the OS's."""
    if isinstance(exc, MigrationError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


def connect_error_text(profile: Any, uri: Uri, exc: OSError) -> str:
    """error-desc of a channel that could not connect.  A refused socket
    connect names the address, as QEMU's inet/unix connect does; a TLS
    failure on a connected socket is QEMU's TLS text as it stands."""
    reason = exc.strerror or str(exc)
    if isinstance(exc, TLSError):
        return reason
    if uri.protocol == "unix":
        return profile.qapi_error("connect_failed_unix") % (uri.path, reason)
    if uri.protocol == "tcp":
        return profile.qapi_error("connect_failed_inet") % (uri.host, uri.port, reason)
    return reason


class _Sender:
    """One multifd channel and the buffer lists queued for it."""

    def __init__(self, chan: Any) -> None:
        self.chan = chan
        self.queue: collections.deque = collections.deque()
        self.closing = False  # no more buffers: end of file once drained
        self.finished = False
        self.error: Optional[BaseException] = None
        self.sent = 0
        self.task: Optional[Task] = None


class SourceDriver:
    """The migration thread (and its helpers) of one outgoing migration."""

    def __init__(self, session: PostcopySource, uri: Uri, runner: Runner, *,
                 on_done: Optional[Callable[[], None]] = None) -> None:
        self.session = session
        self.uri = uri
        self.rt = runner
        self.on_done = on_done
        self.lock = runner.session_lock()
        self.chan: Any = None
        self.senders: list[_Sender] = []
        self.aborted = False
        self.continue_posted = False
        self.resume_uri: Optional[Uri] = None
        self.rp_error: Optional[str] = None
        self.rp_done = True
        self.rp_task: Optional[Task] = None
        self._rp_generation = 0
        self._pokes = 0  # bumped by whatever a waiting iteration should see
        self._stopped_vcpu = False
        self.task: Optional[Task] = None
        if session.caps.get("compress"):
            session.parallel_map = runner.parallel_map(int(session.params["compress-threads"]))
        if (os.cpu_count() or 1) > 1:
            # the zero scan's second reader (the compress pool when there is one)
            session.scan_map = runner.helped_map()

    # ------------------------------------------------------------ control
    def start(self) -> None:
        self.task = self.rt.spawn("livemig-migration", self._run(), self._crashed)

    def join(self, timeout: float) -> bool:
        """Wait for the migration thread; True once it has ended."""
        return self.task is not None and self.task.join(timeout)

    def abort(self) -> None:
        """migrate_cancel: unblock everything; the thread cleans up."""
        self.aborted = True
        for chan in [self.chan] + [s.chan for s in self.senders]:
            if chan is not None:
                chan.shutdown()
        self._poke()

    def post_continue(self) -> None:
        """migrate-continue: release the pre-switchover pause."""
        self.continue_posted = True
        self._poke()

    def start_postcopy(self) -> None:
        """migrate-start-postcopy: switch at the next iteration."""
        self.session.start_postcopy = True
        self._poke()

    def pause(self) -> None:
        """migrate-pause on the source: shut the channel down."""
        chan = self.chan
        if chan is not None:
            chan.shutdown()

    def resume(self, uri: Uri) -> None:
        """migrate resume=true: the paused thread connects to ``uri``."""
        self.resume_uri = uri
        self._poke()

    def _poke(self) -> None:
        self._pokes += 1
        self.rt.wake()

    def _crashed(self, text: str) -> None:
        """The migration thread's net (see threads.py): the failure row."""
        self.session.stream_error(text, self.rt.clock(), in_completion=True)

    # ------------------------------------------------------------ migration thread
    def _run(self) -> Program:
        killed = False
        try:
            yield from self._migrate()
        except GeneratorExit:  # the fake link killed the process: no cleanup
            killed = True
            raise
        finally:
            if not killed:
                yield from self._finish()

    def _migrate(self) -> Program:
        s = self.session
        clock = self.rt.clock
        in_completion = False
        try:
            if not (yield from self._connect_main()):
                return
            yield PREEMPT  # the multifd channels connect asynchronously
            if not (yield from self._open_multifd()):
                return
            if self.aborted:
                return
            with self.lock:
                buffers = s.setup(clock())
            if not buffers:
                return
            n = yield Write(self.chan, buffers)
            with self.lock:
                s.sent(n, clock())
            if s.return_path and self.chan.bidirectional:
                self._start_rp()
            step = yield from self._iterate()
            if step is None:
                return  # no longer active: cancelled
            if isinstance(step, Converged):
                in_completion = True
                yield from self._complete_precopy()
            else:
                yield from self._switch_to_postcopy()
        except (OSError, MigrationError) as exc:
            text = error_text(exc)
            if isinstance(exc, OSError) and self.rp_error:
                text = self.rp_error
            self._restart_vcpu()
            with self.lock:
                s.stream_error(text, clock(), in_completion=in_completion)
        except Exception as exc:  # a bug: fail the migration, never vanish
            self._restart_vcpu()
            with self.lock:
                s.stream_error(crash_text("livemig-migration", exc), clock(),
                               in_completion=True)

    def _restart_vcpu(self) -> None:
        """A source whose migration failed runs on (QEMU restarts it); done
        before the failure row, so whoever sees ``failed`` sees it running."""
        if self._stopped_vcpu:
            self.session.guest.vm_start()
            self._stopped_vcpu = False

    def _connect_main(self) -> Program:
        """Open the main channel and run migrate_fd_connect's checks on it;
        False (the session has failed) if the migration cannot go on."""
        s = self.session
        try:
            self.chan = yield Connect(self.uri)
        except OSError as exc:
            s.connect_error(connect_error_text(s.profile, self.uri, exc))
            return False
        return s.channel_connected(self.uri.protocol, self.chan.bidirectional)

    def _open_multifd(self) -> Program:
        s = self.session
        for ch in range(1, s.multifd_channels + 1):
            try:
                chan = yield Connect(self.uri)
            except OSError as exc:
                with self.lock:
                    s.multifd_error(connect_error_text(s.profile, self.uri, exc))
                return False
            sender = _Sender(chan)
            self.senders.append(sender)
            sender.task = self.rt.spawn(f"livemig-multifd-{ch}", self._send_loop(sender),
                                        lambda text, sender=sender: self._sender_failed(
                                            sender, MigrationError(text)))
            yield from self._put(sender, [mfd.hello(s.profile, ch)])
        return True

    def _iterate(self) -> Program:
        """Precopy iterations until the session converges or switches to
        postcopy (the step), or is no longer active (None)."""
        s = self.session
        clock = self.rt.clock
        while True:
            if self.rp_error is not None:
                raise ReturnPathError(self.rp_error)
            with self.lock:
                step = s.poll(clock())
            if step is None:
                return None
            if isinstance(step, Wait):
                seen = self._pokes
                yield WaitFor(lambda: self._pokes != seen or self.rp_error is not None,
                              step.until)
                continue
            if isinstance(step, (Converged, StartPostcopy)):
                return step
            yield from self._send(step)

    def _send(self, step: Send) -> Program:
        multifd = 0
        for ch, bufs in step.extra:
            yield from self._put(self.senders[ch - 1], bufs)
            multifd += buffers_len(bufs)
        n = yield Write(self.chan, step.buffers)
        with self.lock:
            self.session.sent(n, self.rt.clock(), multifd=multifd)

    def _send_main(self, buffers: list) -> Program:
        """A write on the main channel that must not interleave with the
        return-path thread's requested pages."""
        with self.lock:
            n = yield Write(self.chan, buffers)
            self.session.sent(n, self.rt.clock())

    def _stop_for_completion(self) -> Program:
        """Stop the vCPU and, with pause-before-switchover, wait for
        migrate-continue; True if the completion may go on (not cancelled)."""
        s = self.session
        s.guest.vm_stop(RUN_FINISH_MIGRATE)
        self._stopped_vcpu = True
        if s.switchover():
            yield from self._wait_continue()
            if s.state != s.st.pre_switchover:
                return False  # cancelled while paused
            s.continue_switchover()
        return s.state in (s.st.active, s.st.device)

    def _wait_continue(self) -> Program:
        """Paused in pre-switchover: until migrate-continue (or a cancel)."""
        yield WaitFor(lambda: self.continue_posted or self.aborted)

    def _complete_precopy(self) -> Program:
        s = self.session
        clock = self.rt.clock
        if not (yield from self._stop_for_completion()):
            return
        passes = s.completion(clock())
        while True:
            with self.lock:
                step = next(passes, None)
            if step is None:
                break
            yield from self._send(step)
        yield from self._close_senders()
        if self.rp_task is not None:
            yield from self._await_shut()
        with self.lock:
            if s.completed(clock()):
                s.guest.set_run_state(RUN_POSTMIGRATE)
                self._stopped_vcpu = False

    # ------------------------------------------------------------ multifd senders
    def _put(self, sender: _Sender, buffers: list) -> Program:
        yield WaitFor(lambda: len(sender.queue) < SENDER_QUEUE or sender.error is not None
                      or self.aborted)
        if sender.error is not None:
            raise sender.error
        sender.queue.append(buffers)
        self.rt.wake()

    def _send_loop(self, sender: _Sender) -> Program:
        """A multifd sender thread: writes queued buffer lists to its channel;
        a write error fails the migration (multifd_send_terminate_threads)."""
        try:
            while True:
                yield WaitFor(lambda: bool(sender.queue) or sender.closing)
                if not sender.queue:
                    # Everything queued is written: end of file tells the
                    # destination this channel's pages are all there.
                    if sender.error is None:
                        sender.chan.shutdown_write()
                    return
                buffers = sender.queue.popleft()
                self.rt.wake()  # the migration thread may wait for room
                if sender.error is not None:
                    continue
                try:
                    sender.sent += yield Write(sender.chan, buffers)
                except OSError as exc:
                    self._sender_failed(sender, exc)
        finally:
            sender.finished = True
            self.rt.wake()

    def _sender_failed(self, sender: _Sender, exc: BaseException) -> None:
        sender.error = exc
        with self.lock:
            self.session.multifd_error(error_text(exc))
        self.rt.wake()

    def _close_senders(self) -> Program:
        """End of file on every channel once its queue is written; a
        channel's error fails the migration."""
        for sender in self.senders:
            sender.closing = True
        self.rt.wake()
        deadline = self.rt.clock() + RP_CLOSE_TIMEOUT
        yield WaitFor(lambda: all(x.finished for x in self.senders), deadline)
        for sender in self.senders:
            if sender.error is not None:
                raise sender.error
            if not sender.finished:
                raise StreamError("multifd: channel did not finish")

    # ------------------------------------------------------------ return path
    def _start_rp(self) -> None:
        self.rp_error = None
        self.rp_done = False
        self._rp_generation += 1
        gen = self._rp_generation
        chan = self.chan

        def crashed(text: str) -> None:
            if gen == self._rp_generation:
                self._rp_bad(text)
                self.rp_done = True
            self._poke()

        self.rp_task = self.rt.spawn("livemig-return-path", self._rp_loop(chan, gen), crashed)

    def _rp_bad(self, text: str) -> None:
        """mark_source_rp_bad: remember why and stop reading; the migration
        thread fails (or, in postcopy, pauses) on the error."""
        if self.rp_error is None:
            self.rp_error = text
        if self.chan is not None:
            self.chan.shutdown()

    def _rp_loop(self, chan: Any, gen: int) -> Program:
        """The return-path thread of one channel (``gen``: a resumed
        migration's new channel gets a new one; the old one's news is
        ignored)."""
        s = self.session
        current = lambda: gen == self._rp_generation  # noqa: E731
        try:
            while True:
                data = yield Recv(chan, 65536)
                if not data:
                    if s.shut is None and current():
                        self.rp_error = self.rp_error or "return path closed"
                        if s.postcopy_ram:
                            # a postcopy migration pauses on it at once; a
                            # precopy one goes on and fails at the end (QEMU's
                            # mark_source_rp_bad leaves the stream alone)
                            chan.shutdown()
                    return
                with self.lock:
                    s.receive_rp(data)
                if s.in_postcopy and self.chan is chan:
                    try:
                        yield from self._serve_requests(chan)
                    except OSError:
                        pass  # the migration thread sees the broken channel
                self._poke()
                if s.shut is not None:
                    return
        except ReturnPathError as exc:
            if current():
                self.rp_error = exc.message
            chan.shutdown()
        except OSError as exc:
            if s.shut is None and not self.aborted and current():
                self.rp_error = error_text(exc)
        except Exception as exc:  # a message nobody validated: the path is bad
            if current():
                self.rp_error = crash_text("livemig-return-path", exc)
            chan.shutdown()
        finally:
            if current():
                self.rp_done = True
            self._poke()

    def _serve_requests(self, chan: Any) -> Program:
        """On the return-path thread: the requested pages leave now."""
        s = self.session
        with self.lock:
            if self.chan is not chan:
                return
            step = s.requested()
            if step is None:
                return
            n = yield Write(chan, step.buffers)
            s.sent(n, self.rt.clock())

    def _await_shut(self) -> Program:
        """QEMU's await_return_path_close_on_source: the return path must
        close with the destination's SHUT 0, and without having been marked
        bad, or the migration fails."""
        deadline = self.rt.clock() + RP_CLOSE_TIMEOUT
        yield WaitFor(lambda: self.rp_done, deadline)
        if not self.rp_done:
            raise ReturnPathError("return path did not close")
        if self.rp_error is not None:
            raise ReturnPathError(self.rp_error)
        if self.session.shut != 0:
            raise ReturnPathError("return path closed")

    # ------------------------------------------------------------ postcopy
    def _switch_to_postcopy(self) -> Program:
        """postcopy_start: the switch, the package, then the postcopy loop."""
        s = self.session
        clock = self.rt.clock
        if s.postcopy_start():
            yield from self._wait_continue()
            if s.state != s.st.pre_switchover:
                return
            s.postcopy_continue()
        if s.state != s.pst.active:
            return
        s.guest.vm_stop(RUN_FINISH_MIGRATE)
        self._stopped_vcpu = True  # restarted if the package cannot be sent
        yield PREEMPT  # the channel may break between the switch and the package
        try:
            with self.lock:
                package = s.package(clock())
            yield from self._send_main(package)
        except (OSError, MigrationError) as exc:
            # QEMU: postcopy_start's stream error after the package fails
            s.error_desc = error_text(exc)
            s.cell.fire(POSTCOPY_SOURCE_ROWS["start_stream_error"])
            return
        s.package_sent(clock())
        self._stopped_vcpu = False  # the guest runs on the destination now
        s.guest.set_run_state(RUN_POSTMIGRATE)
        self.rt.postcopy_started()
        yield from self._postcopy_loop()

    def _postcopy_loop(self) -> Program:
        s = self.session
        while True:
            try:
                yield from self._postcopy_send_all()
                return
            except (OSError, MigrationError) as exc:
                if self.aborted or s.state == s.st.cancelling:
                    return
                if not s.postcopy_pause(self.rp_error or error_text(exc)):
                    raise
                if not (yield from self._paused_until_resumed()):
                    return

    def _postcopy_send_all(self) -> Program:
        s = self.session
        clock = self.rt.clock
        while True:
            if self.rp_error is not None:
                raise ReturnPathError(self.rp_error)
            if self.aborted:
                return
            # encode and write under the lock: the return-path thread encodes
            # requested pages with the same encoder
            with self.lock:
                step = s.poll_postcopy(clock())
                if isinstance(step, Send):
                    n = yield Write(self.chan, step.buffers)
                    s.sent(n, clock())
                    continue
                if isinstance(step, PostcopyDone):
                    n = yield Write(self.chan, s.postcopy_complete(clock()))
                    s.sent(n, clock())
            if isinstance(step, PostcopyDone):
                # the multifd channels end first: the destination's load waits
                # for their end of file before it sends SHUT
                yield from self._close_senders()
                yield from self._await_shut()
                with self.lock:
                    s.completed(clock())
                return
            if isinstance(step, Wait):
                seen = self._pokes
                yield WaitFor(lambda: self._pokes != seen or self.aborted
                              or self.rp_error is not None, step.until)
                continue
            # Idle: postcopy is no longer active (paused under us)
            raise StreamError(s.error_desc or "postcopy: not active")

    def _paused_until_resumed(self) -> Program:
        """Parked in postcopy-paused; True once a resume brought it back to
        postcopy-active, False on cancel."""
        s = self.session
        clock = self.rt.clock
        if self.chan is not None:
            self.chan.shutdown()
            self.chan.close()
            self.chan = None
        while True:
            yield WaitFor(lambda: self.resume_uri is not None or self.aborted)
            if self.aborted:
                return False
            uri, self.resume_uri = self.resume_uri, None
            assert uri is not None
            try:
                chan = yield Connect(uri)
            except OSError as exc:
                # migrate_fd_error: a no-op while paused
                s.error_desc = connect_error_text(s.profile, uri, exc)
                continue
            self.chan = chan
            if not s.resume_connected():
                chan.close()
                return False
            try:
                self._start_rp()
                with self.lock:
                    prepare = s.resume_prepare()
                yield from self._send_main(prepare)
                deadline = clock() + RESUME_TIMEOUT
                yield WaitFor(lambda: (s.bitmaps_reloaded or self.rp_error is not None
                                       or self.aborted), deadline)
                if not s.bitmaps_reloaded:
                    raise ReturnPathError(self.rp_error or "recovery timed out")
                with self.lock:
                    command = s.resume_command()
                yield from self._send_main([command])
                yield WaitFor(lambda: (s.state != s.pst.recover or self.rp_error is not None
                                       or self.aborted), deadline)
                if s.state == s.pst.recover:
                    raise ReturnPathError(self.rp_error or "recovery timed out")
                return s.state == s.pst.active
            except (OSError, MigrationError) as exc:
                if self.aborted:
                    return False
                s.postcopy_pause(self.rp_error or error_text(exc))
                chan.shutdown()
                chan.close()
                self.chan = None

    # ------------------------------------------------------------ cleanup
    def _finish(self) -> Program:
        s = self.session
        if self._stopped_vcpu and s.state == s.st.cancelling:
            s.guest.vm_start()  # before ``cancelled``: the guest runs on here
            self._stopped_vcpu = False
        if s.state == s.st.cancelling:
            s.cleanup(self.rt.clock())
        self._restart_vcpu()
        for sender in self.senders:
            sender.chan.shutdown()
            sender.closing = True
        if self.chan is not None:
            self.chan.shutdown()
            self.chan.close()
        self.rt.wake()
        if self.senders:
            deadline = self.rt.clock() + SENDER_JOIN_TIMEOUT
            yield WaitFor(lambda: all(x.finished for x in self.senders), deadline)
        for sender in self.senders:
            sender.chan.close()
        self.rt.end_parallel()
        if self.on_done is not None:
            self.on_done()


__all__ = ["SourceDriver", "error_text"]
