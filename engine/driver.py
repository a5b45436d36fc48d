"""Drivers: the sans-I/O sessions on real transports and real threads.

* :class:`SourceDriver` runs QEMU's *migration thread*: connect, setup,
  iterate (sending :class:`~livemig.engine.source.Send` buffers with
  ``sendmsg``, sleeping on a :class:`~livemig.engine.source.Wait`), stop the
  vCPU, optionally pause before switchover, complete, and clean up.  With the
  return path a *return-path thread* reads PONG/SHUT.  Multifd channels are
  extra connections written by their own sender threads.
* :class:`DestinationDriver` runs the *listen* and *load* threads: accept
  the main channel (and the multifd channels, told apart by their first
  be32), ``recv_into`` the decoder's buffer, answer on the return path,
  finish or fail.

Cancel and failure: ``abort()`` shuts the sockets down, which unblocks every
thread; the session decides which spec row (if any) the error fires.  The
source's vCPU is restarted if the driver had stopped it.
"""
from __future__ import annotations

import queue
import select
import socket
import struct
import threading
import time
from typing import Callable, Optional

from livemig.engine import multifd as mfd
from livemig.engine.destination import DestinationMigration
from livemig.engine.guest import RUN_FINISH_MIGRATE, RUN_POSTMIGRATE
from livemig.engine.multifd import MultifdDecoder, SyncBarrier
from livemig.engine.source import Converged, Send, SourceMigration, Wait
from livemig.engine.stream import buffers_len
from livemig.engine.threads import crash_text, spawn
from livemig.engine.transport import Channel, Listener, Uri, connect
from livemig.engine.wire import wire_tables
from livemig.errors import MigrationError, ReturnPathError, StreamError

RP_CLOSE_TIMEOUT = 60.0
RECV_CHUNK = 512 << 10  # bytes parsed at a time on the destination


class _ChannelSender:
    """A multifd sender thread: writes queued buffer lists to one channel.

    ``on_error`` fails the migration (QEMU's multifd_send_terminate_threads):
    for a send error, and for anything the thread did not expect."""

    def __init__(self, chan: Channel, name: str, on_error: Callable[[str], None]) -> None:
        self.chan = chan
        self.q: queue.Queue = queue.Queue(maxsize=4)
        self.error: Optional[BaseException] = None
        self.on_error = on_error
        self.sent = 0
        self.thread = spawn(name, self._loop, self._crashed, start=False)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> None:
        self.thread.join(timeout)

    def _crashed(self, text: str) -> None:
        self.error = MigrationError(text)
        self.on_error(text)

    def _loop(self) -> None:
        while True:
            item = self.q.get()
            if item is None:
                # Everything queued is written: end-of-file tells the destination
                # this channel's pages are all there (see multifd.py).
                if self.error is None and self.chan.sock is not None:
                    try:
                        self.chan.sock.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                return
            if self.error is not None:
                continue
            try:
                self.sent += self.chan.send_buffers(item)
            except OSError as exc:
                self.error = exc
                self.on_error(_os_text(exc))

    def put(self, buffers: list) -> None:
        if self.error is not None:
            raise self.error
        self.q.put(buffers)


class SourceDriver:
    """The migration thread (and return-path thread) of one outgoing migration."""

    def __init__(self, session: SourceMigration, uri: Uri, *,
                 on_done: Optional[Callable[[], None]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.session = session
        self.uri = uri
        self.on_done = on_done
        self.clock = clock
        self.chan: Optional[Channel] = None
        self.extra: list[_ChannelSender] = []
        self._abort = threading.Event()
        self._continue = threading.Event()
        self._rp_thread: Optional[threading.Thread] = None
        self._rp_done = threading.Event()
        self._rp_error: Optional[str] = None
        self._stopped_vcpu = False
        self.thread = spawn("livemig-migration", self._run, self._crashed, start=False)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the migration thread; True once it has ended."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def abort(self) -> None:
        """migrate_cancel: unblock everything; the thread cleans up."""
        self._abort.set()
        self._continue.set()
        for chan in [self.chan] + [s.chan for s in self.extra]:
            if chan is not None:
                chan.shutdown()

    def post_continue(self) -> None:
        """migrate-continue: release the pre-switchover pause."""
        self._continue.set()

    # ------------------------------------------------------------ thread
    def _connect_main(self) -> bool:
        """Open the main channel and run migrate_fd_connect's checks on it;
        False (the session has failed) if the migration cannot go on."""
        s = self.session
        try:
            self.chan = connect(self.uri)
        except OSError as exc:
            s.connect_error(_os_text(exc))
            return False
        return s.channel_connected(self.uri.protocol, self.chan.bidirectional)

    def _run(self) -> None:
        s = self.session
        guest = s.guest
        in_completion = False
        try:
            if not self._connect_main():
                return
            try:
                for ch in range(1, s.multifd_channels + 1):
                    c = connect(self.uri)
                    sender = _ChannelSender(c, f"livemig-multifd-{ch}", on_error=s.multifd_error)
                    sender.start()
                    self.extra.append(sender)
                    sender.put([mfd.hello(s.profile, ch)])
            except OSError as exc:
                s.multifd_error(_os_text(exc))
                return
            if self._abort.is_set():
                return
            buffers = s.setup(self.clock())
            if not buffers:
                return
            s.sent(self.chan.send_buffers(buffers), self.clock())
            if s.return_path and self.chan.bidirectional:
                self._rp_thread = spawn("livemig-return-path", self._rp_loop,
                                        self._rp_crashed)
            while True:
                if self._rp_error is not None:
                    raise ReturnPathError(self._rp_error)
                now = self.clock()
                step = s.poll(now)
                if step is None:
                    return  # no longer active: cancelled
                if isinstance(step, Wait):
                    self._abort.wait(max(0.0, step.until - now))
                    continue
                if isinstance(step, Converged):
                    break
                self._send(step)
            # ---- completion: stop the vCPU, maybe pause, final pass, EOF
            in_completion = True
            if not self._stop_for_completion():
                return
            for step in s.completion(self.clock()):
                self._send(step)
            for sender in self.extra:
                sender.q.put(None)
            for sender in self.extra:
                sender.join(RP_CLOSE_TIMEOUT)
                if sender.error is not None:
                    raise sender.error
                try:  # end-of-file on the channel: the destination's "all applied"
                    sender.chan.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
                except OSError:
                    pass
            if self._rp_thread is not None:
                self._await_shut()
            if s.completed(self.clock()):
                guest.set_run_state(RUN_POSTMIGRATE)
                self._stopped_vcpu = False
        except (OSError, MigrationError) as exc:
            text = exc.message if isinstance(exc, MigrationError) else _os_text(exc)
            if isinstance(exc, OSError) and self._rp_error:
                text = self._rp_error
            s.stream_error(text, self.clock(), in_completion=in_completion)
        except Exception as exc:  # a bug: fail the migration, never vanish
            s.stream_error(crash_text(self.thread.name, exc), self.clock(), in_completion=True)
        finally:
            self._finish()

    def _crashed(self, text: str) -> None:
        """The migration thread's net (see threads.py): the failure row."""
        self.session.stream_error(text, self.clock(), in_completion=True)

    def _await_shut(self) -> None:
        """QEMU's await_return_path_close_on_source: the return path must close
        with the destination's SHUT 0, and without having been marked bad, or
        the migration fails.  Never complete on a return path that died: the
        destination has not confirmed the load (issue 11, false success)."""
        if not self._rp_done.wait(RP_CLOSE_TIMEOUT):
            raise ReturnPathError("return path did not close")
        if self._rp_error is not None:
            raise ReturnPathError(self._rp_error)
        if self.session.shut != 0:
            raise ReturnPathError("return path closed")

    def _rp_bad(self, text: str) -> None:
        """mark_source_rp_bad: remember why and stop reading; the migration
        thread fails (or, in postcopy, pauses) on the error."""
        if self._rp_error is None:
            self._rp_error = text
        if self.chan is not None:
            self.chan.shutdown()

    def _rp_crashed(self, text: str) -> None:
        self._rp_bad(text)
        self._rp_done.set()

    def _wait_continue(self) -> None:
        """Paused in pre-switchover: until migrate-continue (or a cancel)."""
        while not self._continue.wait(0.5):
            if self._abort.is_set():
                return

    def _stop_for_completion(self) -> bool:
        """Stop the vCPU and, with pause-before-switchover, wait for
        migrate-continue; True if the completion may go on (not cancelled)."""
        s = self.session
        s.guest.vm_stop(RUN_FINISH_MIGRATE)
        self._stopped_vcpu = True
        if s.switchover():
            self._wait_continue()
            if s.state != s.st.pre_switchover:
                return False  # cancelled while paused
            s.continue_switchover()
        return s.state in (s.st.active, s.st.device)

    def _send(self, step: Send) -> None:
        multifd = 0
        for ch, bufs in step.extra:
            sender = self.extra[ch - 1]
            sender.put(bufs)
            multifd += buffers_len(bufs)
        assert self.chan is not None
        n = self.chan.send_buffers(step.buffers)
        self.session.sent(n, self.clock(), multifd=multifd)

    def _finish(self) -> None:
        s = self.session
        if s.state == s.st.cancelling:
            s.cleanup(self.clock())
        if self._stopped_vcpu:
            s.guest.vm_start()  # QEMU restarts a source whose migration failed
            self._stopped_vcpu = False
        for sender in self.extra:
            sender.chan.shutdown()
            try:
                sender.q.put_nowait(None)
            except queue.Full:
                pass
        if self.chan is not None:
            self.chan.shutdown()
            self.chan.close()
        for sender in self.extra:
            sender.join(5)
            sender.chan.close()
        if self.on_done is not None:
            self.on_done()

    def _rp_loop(self) -> None:
        assert self.chan is not None and self.chan.sock is not None
        sock = self.chan.sock
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    if self.session.shut is None:
                        self._rp_error = self._rp_error or "return path closed"
                    return
                self.session.receive_rp(data)
                if self.session.shut is not None:
                    return
        except ReturnPathError as exc:
            self._rp_bad(exc.message)
        except OSError as exc:
            if self.session.shut is None and not self._abort.is_set():
                self._rp_error = _os_text(exc)
        except Exception as exc:  # a message nobody validated: the path is bad
            self._rp_bad(crash_text("livemig-return-path", exc))
        finally:
            self._rp_done.set()


class DestinationDriver:
    """Listen and load threads of one incoming migration."""

    def __init__(self, session: DestinationMigration, listener: Listener, *,
                 multifd_channels: int = 0,
                 on_done: Optional[Callable[[bool], None]] = None) -> None:
        self.session = session
        self.listener = listener
        self.multifd_channels = multifd_channels
        self.on_done = on_done
        self.chan: Optional[Channel] = None
        self._mf_threads: list[threading.Thread] = []
        self._mf_chans: list[Channel] = []
        self._mf_error: Optional[str] = None
        self._early = bytearray()  # main-channel bytes read while accepting
        self._barrier: Optional[SyncBarrier] = None
        self.thread = spawn("livemig-load", self._run, self._crashed, start=False)

    def start(self) -> None:
        self.thread.start()

    def join(self, timeout: float) -> bool:
        """Wait for the load thread; True once it has ended."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def abort(self) -> None:
        for c in [self.chan] + self._mf_chans:
            if c is not None:
                c.shutdown()
        self.listener.close()

    def failure_text(self, exc: Exception) -> str:
        """error-desc of a load that ended by ``exc``: the transport's or the
        stream's text, a multifd channel's error when that channel is why
        the main stream ended, and for anything else (a bug) the thread and
        the exception, so the load fails and says so on the return path."""
        if isinstance(exc, MigrationError):
            text = exc.message
        elif isinstance(exc, OSError):
            text = _os_text(exc)
        else:
            text = crash_text(self.thread.name, exc)
        eof_text = wire_tables(self.session.profile).error("stream_eof")
        if self._mf_error and (not isinstance(exc, StreamError) or text == eof_text):
            text = self._mf_error  # the channel's error is the cause
        return text

    def _crashed(self, text: str) -> None:
        """The load thread's net (see threads.py): the failure row."""
        self.session.load_failed(text)

    def _accept_all(self) -> Channel:
        """Accept the main channel and every multifd channel, told apart by
        their first be32 (:func:`classify_channel`).  While channels are still
        missing, a main channel that ends (the source cancelled or failed
        before it opened them all) fails the load instead of waiting for
        connections that will never come."""
        w = wire_tables(self.session.profile)
        main: Optional[Channel] = None
        while main is None or len(self._mf_chans) < self.multifd_channels:
            if self._mf_error:
                raise StreamError(self._mf_error)
            if main is not None:
                self._wait_listener_or_eof(main)
            chan = self.listener.accept()
            if chan.sock is None:
                self.session.accepted()
                return chan  # fd/file: a single channel
            if classify_channel(w, _peek_head(chan.sock)) == "multifd" \
                    and self.multifd_channels:
                self._start_multifd(chan)
            else:
                main = chan
                self.session.accepted()
                self.chan = main  # abort() can shut it while we wait
        return main

    def _wait_listener_or_eof(self, main: Channel) -> None:
        """Block until a connection is waiting on the listener; raise the
        stream's early-end error if the main channel reaches end-of-file (or
        breaks) first.  Bytes that arrive on the main channel meanwhile are
        kept in :attr:`_early` (fed to the decoder once the load starts) up
        to :data:`EARLY_LIMIT`; a source that sent that much is alive, and
        past it only the listener is watched."""
        eof_text = self._mf_error or wire_tables(self.session.profile).error("stream_eof")
        lsock, msock = self.listener.sock, main.sock
        if lsock is None or msock is None:
            raise StreamError(eof_text)
        while True:
            if self._mf_error:
                raise StreamError(self._mf_error)
            watch = [lsock] if len(self._early) >= EARLY_LIMIT else [lsock, msock]
            try:
                ready, _, _ = select.select(watch, [], [], 1.0)
            except (OSError, ValueError):  # abort() closed them under us
                raise StreamError(eof_text) from None
            if lsock in ready:
                return
            if msock in ready:
                try:
                    data = msock.recv(EARLY_LIMIT - len(self._early))
                except OSError as exc:
                    raise StreamError(_os_text(exc)) from None
                if not data:
                    raise StreamError(eof_text)
                self._early += data

    def _join_multifd(self) -> None:
        """Before the load may finish: every channel at EOF, all pages applied."""
        for t in self._mf_threads:
            t.join(RP_CLOSE_TIMEOUT)
            if t.is_alive():
                raise StreamError("multifd: channel did not finish")
        if self._mf_error:
            raise StreamError(self._mf_error)

    def _start_multifd(self, chan: Channel) -> None:
        self.session.before_finish = self._join_multifd
        if self._barrier is None:
            self._barrier = SyncBarrier(self.multifd_channels)
        dec = MultifdDecoder(self.session.profile, self.session.guest.blocks, self._barrier)
        self.session.multifd.append(dec)
        self._mf_chans.append(chan)

        def loop() -> None:
            try:
                while True:
                    buf = dec.get_buffer(RECV_CHUNK)[:RECV_CHUNK]
                    n = chan.recv_into(buf)
                    if not n:
                        return
                    dec.buffer_updated(n)
            except (OSError, StreamError) as exc:
                failed(exc.message if isinstance(exc, StreamError) else _os_text(exc))

        def failed(text: str) -> None:
            """A receive channel failed: the load fails with its error, and
            every channel is shut so that no sender blocks on a full socket
            nobody reads (the source then fails too)."""
            self._mf_error = self._mf_error or text
            if self._barrier is not None:
                self._barrier.break_()
            for c in [self.chan] + self._mf_chans:
                if c is not None:
                    c.shutdown()

        self._mf_threads.append(spawn("livemig-multifd-recv", loop, failed))

    def _run(self) -> None:
        s = self.session
        ok = False
        try:
            self.chan = self._accept_all()
            self.listener.close()
            chan = self.chan
            chunk = RECV_CHUNK
            if self._early:
                s.feed(bytes(self._early))
                self._early.clear()
            while not s.finished:
                buf = s.get_buffer(chunk)[:chunk]
                n = chan.recv_into(buf)
                if n == 0:
                    raise StreamError(self._mf_error or
                                      wire_tables(s.profile).error("stream_eof"))
                got = n
                # Top up while bytes are waiting: fewer, larger parses, but a
                # cache-sized working set (the kernel copies into warm memory).
                while got < chunk:
                    more = chan.recv_more_into(buf[got:])
                    if not more:
                        break
                    got += more
                s.buffer_updated(got)
                rp = s.data_to_send()
                if rp and chan.bidirectional:
                    chan.send_buffers([rp])
            s.load_finished()  # joins the multifd channels first (before_finish)
            rp = s.data_to_send()
            if rp and chan.bidirectional:
                try:
                    chan.send_buffers([rp])
                except OSError:
                    pass
            ok = True
        except Exception as exc:  # noqa: BLE001 - see failure_text
            s.load_failed(self.failure_text(exc))
            rp = s.data_to_send()
            if rp and self.chan is not None and self.chan.bidirectional:
                try:
                    self.chan.send_buffers([rp])
                except OSError:
                    pass
        finally:
            for c in self._mf_chans:
                c.shutdown()
            if self.chan is not None:
                self.chan.close()
            for c in self._mf_chans:
                c.close()
            if self.on_done is not None:
                self.on_done(ok)


def classify_channel(w, head: bytes) -> str:
    """Which channel an accepted connection is, from its first bytes:
    ``"multifd"`` (MULTIFD_MAGIC) or ``"main"`` (anything else; the stream
    decoder refuses what is not a stream)."""
    if len(head) >= 4 and struct.unpack_from(">I", head)[0] == w.multifd_magic:
        return "multifd"
    return "main"


EARLY_LIMIT = 16 << 20  # main-channel bytes kept while multifd channels connect
HELLO_TIMEOUT = 30.0  # seconds an accepted connection may take to send its first be32


def _peek_head(sock: socket.socket, want: int = 4) -> bytes:
    """Up to ``want`` first bytes of a new connection, left in the socket;
    bounded in time, so a peer that connects and says nothing cannot hold
    the accept loop forever (it is then taken as the main channel, whose
    decoder fails or waits under the migration's own rules)."""
    deadline = time.monotonic() + HELLO_TIMEOUT
    head = b""
    while len(head) < want:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([sock], [], [], left)[0]:
            break
        more = sock.recv(want, socket.MSG_PEEK)
        if not more or len(more) == len(head):
            break  # EOF, or no new byte arrived since the last look
        head = more
    return head


def _os_text(exc: OSError) -> str:
    return exc.strerror or str(exc)
