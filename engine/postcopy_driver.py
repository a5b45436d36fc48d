"""Drivers for postcopy: the postcopy sessions on real sockets and threads.

* :class:`PostcopySourceDriver` is the migration thread of a postcopy-capable
  migration: precopy iterations until ``migrate-start-postcopy`` (or
  convergence, then the precopy completion), the switch (stop the vCPU, the
  discard commands and the package), then requested pages first and the
  rest in the background, in small chunks so a request never waits behind a
  large write.  A broken channel in postcopy pauses the session and parks the
  thread until :meth:`~PostcopySourceDriver.resume` (``migrate resume=true``)
  hands it a new URI: connect, RECV_BITMAP for every block, wait for every
  bitmap, POSTCOPY_RESUME, wait for RESUME_ACK; any failure parks it again.
* :class:`PostcopyDestinationDriver` is the load/listen thread: it reads the
  stream, sends return-path bytes (also straight from the faulting vCPU
  thread, under a lock, so a page request leaves at once), starts the vCPU
  with the fault hook after RUN, and on a broken channel pauses (PostcopyState
  RUNNING) and waits for :meth:`~PostcopyDestinationDriver.recover`
  (``migrate-recover``) to accept a new channel.
* ``pause()`` on either driver is ``migrate-pause``: a socket shutdown.
"""
from __future__ import annotations

import sys
import threading
import time
from typing import Callable, Optional

from livemig.engine.driver import RP_CLOSE_TIMEOUT, RECV_CHUNK, DestinationDriver, SourceDriver
from livemig.engine.guest import RUN_FINISH_MIGRATE, RUN_POSTMIGRATE
from livemig.engine.postcopy import (
    POSTCOPY_SOURCE_ROWS, Idle, PostcopyDestination, PostcopyDone, PostcopySource, StartPostcopy,
)
from livemig.engine.source import Converged, Send, Wait
from livemig.engine.threads import crash_text, spawn
from livemig.engine.transport import Channel, Listener, Uri, connect
from livemig.errors import MigrationError, ReturnPathError, StreamError

RESUME_TIMEOUT = 30.0
SWITCH_INTERVAL = 0.0002  # seconds, see faster_thread_switches


def _text(exc: BaseException) -> str:
    if isinstance(exc, MigrationError):
        return exc.message
    if isinstance(exc, OSError):
        return exc.strerror or str(exc)
    return str(exc)


class PostcopySourceDriver(SourceDriver):
    """The migration thread with postcopy, pause and resume."""

    def __init__(self, session: PostcopySource, uri: Uri, **kw) -> None:
        super().__init__(session, uri, **kw)
        self.session: PostcopySource = session
        self._wake = threading.Event()
        self._resume_uri: Optional[Uri] = None
        self._resume_lock = threading.Lock()
        self._rp_generation = 0
        #: one writer at a time on the main channel: the migration thread, or
        #: the return-path thread sending requested pages at once
        self._send_lock = threading.Lock()

    # ------------------------------------------------------------ control
    def start_postcopy(self) -> None:
        self.session.start_postcopy = True
        self._wake.set()

    def pause(self) -> None:
        """migrate-pause on the source: shut the channel down."""
        chan = self.chan
        if chan is not None:
            chan.shutdown()

    def resume(self, uri: Uri) -> None:
        """migrate resume=true: the paused thread connects to ``uri``."""
        with self._resume_lock:
            self._resume_uri = uri
        self._wake.set()

    def abort(self) -> None:
        super().abort()
        self._wake.set()

    # ------------------------------------------------------------ thread
    def _run(self) -> None:
        s = self.session
        if not s.postcopy_ram:
            return super()._run()
        st, pst = s.st, s.pst
        guest = s.guest
        in_completion = False
        try:
            if not self._connect_main():
                return
            if self._abort.is_set():
                return
            buffers = s.setup(self.clock())
            if not buffers:
                return
            s.sent(self.chan.send_buffers(buffers), self.clock())
            self._start_rp()
            while True:
                if self._rp_error is not None:
                    raise ReturnPathError(self._rp_error)
                now = self.clock()
                step = s.poll(now)
                if step is None:
                    return
                if isinstance(step, Wait):
                    self._wake.clear()
                    self._wake.wait(max(0.0, step.until - now))
                    if self._abort.is_set():
                        return
                    continue
                if isinstance(step, (Converged, StartPostcopy)):
                    break
                self._send(step)
            if isinstance(step, Converged):
                in_completion = True
                if not self._stop_for_completion():
                    return
                for step in s.completion(self.clock()):
                    self._send(step)
                self._wait_shut()
                if s.completed(self.clock()):
                    guest.set_run_state(RUN_POSTMIGRATE)
                    self._stopped_vcpu = False
                return
            # ---- postcopy_start
            if s.postcopy_start():
                self._wait_continue()
                if s.state != st.pre_switchover:
                    return
                s.postcopy_continue()
            if s.state != pst.active:
                return
            guest.vm_stop(RUN_FINISH_MIGRATE)
            self._stopped_vcpu = True  # restarted if the package cannot be sent
            try:
                self._send_main(s.package(self.clock()))
            except (OSError, MigrationError) as exc:
                # QEMU: postcopy_start's stream error after the package fails
                s.error_desc = _text(exc)
                s.cell.fire(POSTCOPY_SOURCE_ROWS["start_stream_error"])
                return
            s.package_sent(self.clock())
            self._stopped_vcpu = False  # the guest runs on the destination now
            guest.set_run_state(RUN_POSTMIGRATE)
            faster_thread_switches()
            self._postcopy_loop()
        except (OSError, MigrationError) as exc:
            text = _text(exc)
            if isinstance(exc, OSError) and self._rp_error:
                text = self._rp_error
            s.stream_error(text, self.clock(), in_completion=in_completion)
        except Exception as exc:  # a bug: fail the migration, never vanish
            s.stream_error(crash_text(self.thread.name, exc), self.clock(), in_completion=True)
        finally:
            self._finish()

    def _send_main(self, buffers: list) -> None:
        with self._send_lock:
            assert self.chan is not None
            n = self.chan.send_buffers(buffers)
            self.session.sent(n, self.clock())

    def _serve_requests(self, chan: Channel) -> None:
        """On the return-path thread: send the requested pages now."""
        s = self.session
        with self._send_lock:
            if self.chan is not chan:
                return
            step = s.requested()
            if step is None:
                return
            n = chan.send_buffers(step.buffers)
            s.sent(n, self.clock())

    def _start_rp(self) -> None:
        self._rp_error = None
        self._rp_done = threading.Event()
        self._rp_generation += 1
        gen = self._rp_generation
        chan = self.chan
        assert chan is not None

        def crashed(text: str) -> None:
            if gen == self._rp_generation:
                self._rp_crashed(text)

        self._rp_thread = spawn("livemig-return-path", lambda: self._rp_loop_pc(chan, gen),
                                crashed)

    def _rp_loop_pc(self, chan: Channel, gen: int) -> None:
        sock = chan.sock
        assert sock is not None
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    if self.session.shut is None and gen == self._rp_generation:
                        self._rp_error = self._rp_error or "return path closed"
                        chan.shutdown()
                    return
                self.session.receive_rp(data)
                if self.session.in_postcopy:
                    try:
                        self._serve_requests(chan)
                    except OSError:
                        pass  # the migration thread sees the broken channel
                self._wake.set()
                if self.session.shut is not None:
                    return
        except ReturnPathError as exc:
            if gen == self._rp_generation:
                self._rp_error = exc.message
            chan.shutdown()
        except OSError as exc:
            if self.session.shut is None and not self._abort.is_set() \
                    and gen == self._rp_generation:
                self._rp_error = _text(exc)
        except Exception as exc:  # a message nobody validated: the path is bad
            if gen == self._rp_generation:
                self._rp_error = crash_text("livemig-return-path", exc)
            chan.shutdown()
        finally:
            self._wake.set()
            if gen == self._rp_generation:
                self._rp_done.set()

    def _wait_shut(self) -> None:
        self._await_shut()

    def _postcopy_loop(self) -> None:
        s = self.session
        while True:
            try:
                self._postcopy_send_all()
                return
            except (OSError, MigrationError) as exc:
                if self._abort.is_set() or s.state == s.st.cancelling:
                    return
                text = self._rp_error or _text(exc)
                if not s.postcopy_pause(text):
                    raise
                if not self._paused_until_resumed():
                    return

    def _postcopy_send_all(self) -> None:
        s = self.session
        while True:
            if self._rp_error is not None:
                raise ReturnPathError(self._rp_error)
            if self._abort.is_set():
                return
            # encode and write under the send lock: the return-path thread
            # encodes requested pages with the same encoder
            with self._send_lock:
                assert self.chan is not None
                step = s.poll_postcopy(self.clock())
                if isinstance(step, Send):
                    s.sent(self.chan.send_buffers(step.buffers), self.clock())
                    continue
                if isinstance(step, PostcopyDone):
                    s.sent(self.chan.send_buffers(s.postcopy_complete(self.clock())),
                           self.clock())
            if isinstance(step, PostcopyDone):
                self._wait_shut()
                s.completed(self.clock())
                return
            if isinstance(step, Wait):
                self._wake.clear()
                self._wake.wait(max(0.0, step.until - self.clock()))
                continue
            if isinstance(step, Idle):
                if s.state != s.pst.active:
                    raise StreamError(s.error_desc or "postcopy: not active")
                self._wake.clear()
                self._wake.wait(0.05)

    def _paused_until_resumed(self) -> bool:
        """Parked in postcopy-paused; True once a resume brought it back to
        postcopy-active, False on cancel."""
        s = self.session
        if self.chan is not None:
            self.chan.shutdown()
            self.chan.close()
            self.chan = None
        while True:
            with self._resume_lock:
                uri, self._resume_uri = self._resume_uri, None
            if uri is None:
                self._wake.clear()
                if self._abort.is_set():
                    return False
                self._wake.wait(0.5)
                continue
            try:
                chan = connect(uri)
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
                deadline = time.monotonic() + RESUME_TIMEOUT
                while not s.bitmaps_reloaded:
                    if self._rp_error is not None:
                        raise ReturnPathError(self._rp_error)
                    if time.monotonic() > deadline or self._abort.is_set():
                        raise ReturnPathError("recovery timed out")
                    self._wake.clear()
                    self._wake.wait(0.05)
                self._send_main([s.resume_command()])
                while s.state == s.pst.recover:
                    if self._rp_error is not None:
                        raise ReturnPathError(self._rp_error)
                    if time.monotonic() > deadline or self._abort.is_set():
                        raise ReturnPathError("recovery timed out")
                    self._wake.clear()
                    self._wake.wait(0.05)
                return s.state == s.pst.active
            except (OSError, MigrationError) as exc:
                if self._abort.is_set():
                    return False
                s.postcopy_pause(self._rp_error or _text(exc))
                chan.shutdown()
                chan.close()
                self.chan = None


class PostcopyDestinationDriver(DestinationDriver):
    """The load/listen thread with postcopy faults, pause and recovery."""

    def __init__(self, session: PostcopyDestination, listener: Listener, *,
                 on_run: Optional[Callable[[], None]] = None, **kw) -> None:
        super().__init__(session, listener, **kw)
        self.session: PostcopyDestination = session
        self.on_run = on_run
        self._send_lock = threading.Lock()
        self._recover = threading.Event()
        self._recover_listener: Optional[Listener] = None
        self._aborted = False
        session.on_rp_data = self._flush_rp

    def pause(self) -> None:
        """migrate-pause on the destination: shut the channel down."""
        if self.chan is not None:
            self.chan.shutdown()

    def recover(self, listener: Listener) -> None:
        """migrate-recover: accept the next channel on ``listener``."""
        old = self._recover_listener
        self._recover_listener = listener
        if old is not None and old is not listener:
            old.close()
        self._recover.set()

    def abort(self) -> None:
        self._aborted = True
        super().abort()
        self.session.close()
        if self._recover_listener is not None:
            self._recover_listener.close()
        self._recover.set()

    def _flush_rp(self) -> None:
        chan = self.chan
        if chan is None or not chan.bidirectional:
            return
        with self._send_lock:
            data = self.session.data_to_send()
            if data:
                try:
                    chan.send_buffers([data])
                except OSError:
                    pass  # the load thread sees the broken channel

    def _run(self) -> None:
        s = self.session
        ok = False
        try:
            self.chan = self._accept_all()
            self.listener.close()
            if self._early:  # main-channel bytes read while multifd channels came
                s.feed(bytes(self._early))
                self._early.clear()
                self._flush_rp()
            while True:
                try:
                    self._load()
                    break
                except (OSError, MigrationError) as exc:
                    if not (s.in_postcopy and s.can_pause) or self._aborted:
                        raise
                    text = _text(exc)
                    if not s.pause(text) and s.cell.state != s.pst.recover:
                        raise
                    # (7.2: a channel lost while recovering leaves postcopy-recover
                    # as it is; the thread waits all the same)
                    if not self._wait_recovered():
                        return
            s.load_finished()
            self._flush_rp()
            ok = True
        except Exception as exc:  # noqa: BLE001 - a bug too fails the load (SHUT 1)
            s.load_failed(self.failure_text(exc))
            self._flush_rp()
        finally:
            if self.chan is not None:
                self.chan.close()
            if self.on_done is not None:
                self.on_done(ok)

    def _load(self) -> None:
        s = self.session
        chan = self.chan
        assert chan is not None
        chunk = RECV_CHUNK
        started = s.run_requested
        while not s.finished:
            buf = s.get_buffer(chunk)[:chunk]
            n = chan.recv_into(buf)
            if n == 0:
                raise StreamError(s.decoder.w.error("stream_eof"))
            s.buffer_updated(n)
            self._flush_rp()
            if s.run_requested and not started:
                started = True
                faster_thread_switches()
                if self.on_run is not None:
                    self.on_run()

    def _wait_recovered(self) -> bool:
        s = self.session
        if self.chan is not None:
            self.chan.shutdown()
            self.chan.close()
            self.chan = None
        while True:
            self._recover.wait()
            self._recover.clear()
            if self._aborted:
                return False
            listener = self._recover_listener
            if listener is None:
                continue
            try:
                chan = listener.accept()
            except OSError:
                if self._aborted:
                    return False
                continue  # a newer migrate-recover replaced the listener
            listener.close()
            self._recover_listener = None
            with self._send_lock, s.recover_lock:
                self.chan = chan
                ok = s.recover_accepted()
            if not ok:
                return False
            return True


def faster_thread_switches() -> None:
    """In postcopy a page request crosses several threads per process; the
    interpreter's default 5 ms switch interval would let a busy thread hold a
    woken one back that long, so the process switches more often from now."""
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)
