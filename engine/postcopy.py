"""Postcopy, page requests, pause and recovery, sans-I/O, on both sides.

Theory of operation
-------------------
:class:`PostcopySource` and :class:`PostcopyDestination` extend the precopy
sessions (:mod:`livemig.engine.source`, :mod:`livemig.engine.destination`)
with what QEMU 7.2 does once ``postcopy-ram`` is on.  They still never touch
a socket or a thread; the driver (or a test's fake link) moves the bytes.

Source, in the order of QEMU's migration thread:

* setup sends POSTCOPY_ADVISE (be64 page-size summary, be64 target page size)
  right after OPEN_RETURN_PATH and its PING; postcopy always opens the
  return path.
* ``migrate-start-postcopy`` sets :attr:`PostcopySource.start_postcopy`;
  :meth:`~PostcopySource.poll` then answers :class:`StartPostcopy` at the
  next iteration (the precopy-only data pending is nil, so it is always within
  the threshold), unless the migration converged first.
* :meth:`~PostcopySource.postcopy_start` fires ``src.postcopy_start.switch``
  (or ``.pre_switchover``; ``migrate-continue`` then fires ``.continue``);
  the driver stops the vCPU; :meth:`~PostcopySource.package` syncs the dirty
  log and returns PING 2, the discard commands (the dirty pages as byte
  ranges, at most MAX_DISCARDS_PER_COMMAND per command), PACKAGED and its
  blob (LISTEN, the global and device state sections, PING 3, RUN) and
  PING 4.
* :meth:`~PostcopySource.poll_postcopy` sends the pages a REQ_PAGES asked for
  first, then the remaining dirty pages in the background;
  :meth:`~PostcopySource.postcopy_complete` ends the ram section and the
  stream.  A request is checked as QEMU checks it (unknown block, misaligned).
* a broken channel in postcopy-active (or postcopy-recover) is
  :meth:`~PostcopySource.postcopy_pause` (``src.postcopy_pause``);
  ``migrate resume=true`` connects and fires ``src.fd_connect.resume``;
  :meth:`~PostcopySource.resume_prepare` sends RECV_BITMAP for every block;
  each answer (the destination's *received* bitmap, little-endian longs, then
  the end mark) rebuilds the dirty bitmap as its complement;
  :meth:`~PostcopySource.resume_command` is POSTCOPY_RESUME; RESUME_ACK with
  value 1 fires ``src.rp.resume_ack``.

Destination:

* the commands run core's PostcopyCell handlers ("advise", "discard",
  "listen", "run", "end"), so a command in the wrong state fails with QEMU's
  text after QEMU's exchange-then-check; ADVISE and DISCARD lengths are
  checked with QEMU's texts.
* LISTEN fires ``dst.listen.start``; RUN loads the device state and sets
  :attr:`PostcopyDestination.run_requested` (the driver starts the vCPU).
* pages are tracked in a *received* bitmap from ADVISE on; after LISTEN a page
  already received is never written again (a page both requested and pushed
  is placed once), and a page's received bit is set only after its bytes are
  in place, so a vCPU let through by :meth:`~PostcopyDestination.present`
  never reads half a page.
* :meth:`~PostcopyDestination.request_pages` is the vCPU touching pages: the
  return-path bytes that ask for the missing ones (REQ_PAGES_ID when the
  block changes, REQ_PAGES otherwise, page aligned; :class:`PageRequests`).
  It never blocks: the driver sends them and waits until the pages are
  placed (:attr:`~PostcopyDestination.on_pages_placed`).  The request ->
  placed round trip feeds a latency histogram.
* a load error with PostcopyState RUNNING is :meth:`~PostcopyDestination.pause`
  (``dst.pause``); otherwise the listen thread fails (``dst.listen.failed``).
  ``migrate-recover`` emits ``dst.incoming.setup_event``; the new channel
  fires ``dst.recover.accept`` and continues the stream where it was (no
  header); RECV_BITMAP is answered; POSTCOPY_RESUME fires ``dst.resume``,
  sends RESUME_ACK and re-sends every pending page request.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Optional

import numpy as np

from livemig.core.cell import PostcopyCell, StatusCell
from livemig.core.params import param
from livemig.engine.destination import DestinationMigration
from livemig.engine.guest import Guest, RAMBlock
from livemig.engine.rows import POSTCOPY_DESTINATION_ROWS, POSTCOPY_SOURCE_ROWS
from livemig.engine.layouts import layouts
from livemig.engine.returnpath import ReturnPathDecoder, RPMessage, encode_u32
from livemig.engine.source import BUFFER_DELAY, Send, SourceMigration, Wait
from livemig.engine.stream import (
    CommandReceived, DeviceState, EndOfStream, Event,
    StreamDecoder, _S_TOP,
)
from livemig.engine.wire import wire_tables
from livemig.errors import ReturnPathError, StreamError
from livemig.spec.schema import Profile

if TYPE_CHECKING:
    from livemig.engine.xbzrle import XbzrleCache
    from livemig.engine.kernelmem.backend import PostcopyRAM

# Rules: no threads, sockets, locks or sleeps here.  The sessions are owned
# by one driver thread each; what another thread may touch is said where it
# is (PageRequests, under the lock the driver gives as ``exclusive``).
SROW = POSTCOPY_SOURCE_ROWS
DROW = POSTCOPY_DESTINATION_ROWS

#: latency histogram bucket upper bounds, seconds (the last bucket is open)
LATENCY_BUCKETS = (50e-6, 100e-6, 200e-6, 500e-6, 1e-3, 2e-3, 5e-3, 10e-3, 50e-3, 0.1, 1.0)


@dataclass(frozen=True)
class PostcopyStatuses:
    """Postcopy status names, read from spec rows."""

    active: str
    paused: str
    recover: str


def postcopy_statuses(profile: Profile) -> PostcopyStatuses:
    t = profile.transition
    return PostcopyStatuses(active=t(SROW["switch"]).new, paused=t(SROW["pause"]).new,
                            recover=t(SROW["resume"]).new)


@dataclass
class StartPostcopy:
    """The migration thread must switch to postcopy now."""


@dataclass
class PostcopyDone:
    """Every page is sent: end the stream (:meth:`PostcopySource.postcopy_complete`)."""


@dataclass
class Idle:
    """Nothing to send right now (only possible while paused or recovering)."""


@dataclass(frozen=True)
class ReceivedBitmap:
    """A RECV_BITMAP answer on the return path, with its trailing bitmap."""

    block: str
    size: int
    raw: bytes
    end_mark: int


class LatencyHistogram:
    """Fault round trips (request -> placed), in fixed buckets plus raw samples.

    One thread adds (the one placing pages); any thread may read: readers
    work on a snapshot of the samples (a list copy is atomic in CPython)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.samples: list[float] = []

    def add(self, seconds: float) -> None:
        i = int(np.searchsorted(self.bounds, seconds))
        self.counts[i] += 1
        self.samples.append(seconds)

    def percentile(self, p: float) -> Optional[float]:
        samples = list(self.samples)
        if not samples:
            return None
        return float(np.percentile(samples, p))

    def to_json(self) -> dict[str, Any]:
        """A MigrationInfo-shaped histogram (microsecond bounds)."""
        samples = list(self.samples)
        counts = list(self.counts)
        n = len(samples)
        buckets = [{"le-us": int(round(b * 1e6)), "count": c}
                   for b, c in zip(self.bounds, counts)]
        buckets.append({"le-us": None, "count": counts[-1]})
        out: dict[str, Any] = {"count": n, "buckets": buckets}
        if n:
            arr = np.array(samples)
            out.update({"p50-us": int(np.percentile(arr, 50) * 1e6),
                        "p99-us": int(np.percentile(arr, 99) * 1e6),
                        "mean-us": int(arr.mean() * 1e6),
                        "max-us": int(arr.max() * 1e6)})
        return out


def _bitmap_size(npages: int) -> int:
    """round_up(ceil(nbits / 8), 8): the byte size of a bitmap of longs."""
    return ((npages + 63) // 64) * 8


def encode_received_bitmap(received: np.ndarray) -> bytes:
    """``received`` as QEMU's bitmap of little-endian longs (1 = received)."""
    raw = np.packbits(received.astype(bool), bitorder="little").tobytes()
    return raw + b"\0" * (_bitmap_size(len(received)) - len(raw))


def decode_received_bitmap(raw: bytes, npages: int) -> np.ndarray:
    return np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little")[:npages].astype(bool)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, count) of every run of True in ``mask``."""
    if not mask.any():
        return []
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(a), int(b - a)) for a, b in zip(edges[::2], edges[1::2])]


# =============================================================== return path
class PostcopyRPDecoder(ReturnPathDecoder):
    """The return-path decoder plus the bitmap that follows a RECV_BITMAP
    outside the message framing (be64 size, bitmap, be64 end mark)."""

    def __init__(self, profile: Profile) -> None:
        super().__init__(profile)
        self._pending = bytearray()
        self._bitmap_for: Optional[str] = None
        #: block name -> the bitmap size the source expects (set by the
        #: source from its RAM blocks): a peer's be64 size is checked against
        #: it before anything is buffered
        self.bitmap_sizes: dict[str, int] = {}
        lay = layouts(profile)
        self._trailer = lay["RECV_BITMAP_TRAILER"]
        self._header = lay["RP_HEADER"].struct

    def feed(self, data: bytes) -> list[Any]:  # type: ignore[override]
        self._pending += data
        out: list[Any] = []
        trailer = self._trailer
        header = self._header
        while True:
            if self._bitmap_for is not None:
                if len(self._pending) < trailer.prefix.size:
                    break
                (size,) = trailer.prefix.unpack_from(self._pending)
                expected = self.bitmap_sizes.get(self._bitmap_for)
                if expected is None:
                    raise ReturnPathError(self.w.error("rp_unknown_block", self._bitmap_for))
                if size != expected:
                    raise ReturnPathError(self.w.error("rp_bitmap_size_mismatch",
                                                       self._bitmap_for, size, expected))
                if len(self._pending) < trailer.min_size + size:
                    break
                (raw, mark), end = trailer.unpack_from(self._pending, 0, len(self._pending))
                del self._pending[:end]
                out.append(ReceivedBitmap(self._bitmap_for, size, bytes(raw), mark))
                self._bitmap_for = None
                continue
            if len(self._pending) < header.size:
                break
            mtype, length = header.unpack_from(self._pending, 0)
            self.check_header(mtype, length)  # refuse a bad header at once
            if len(self._pending) < header.size + length:
                break  # wait for the whole message: a bitmap may follow it
            chunk = bytes(self._pending[:header.size + length])
            del self._pending[:header.size + length]
            for m in super().feed(chunk):
                out.append(m)
                if m.name == "RECV_BITMAP":
                    self._bitmap_for = m.block or ""
        return out


# ==================================================================== source
class PostcopySource(SourceMigration):
    """An outgoing migration that can switch to postcopy, pause and resume."""

    def __init__(self, profile: Profile, guest: Guest, cell: StatusCell, **kw: Any) -> None:
        super().__init__(profile, guest, cell, **kw)
        self.pst = postcopy_statuses(profile)
        self.postcopy_ram = bool(self.caps.get("postcopy-ram"))
        if self.postcopy_ram:
            self.return_path = True
        self.rp_decoder = self._new_rp_decoder()
        self.start_postcopy = False
        self.in_postcopy = False
        #: background pages per write in postcopy: small, so that a page
        #: request never waits behind a long write
        self.postcopy_chunk = 128
        self.postcopy_downtime: Optional[float] = None
        self._pc_window_start = 0.0
        self._pc_window_bytes = 0
        self.postcopy_requests = 0
        self.postcopy_bytes = 0
        self._requests: list[tuple[RAMBlock, int, int]] = []  # (block, first page, count)
        self._last_req_block: Optional[RAMBlock] = None
        self._bitmaps_wanted: set[str] = set()
        self.resume_count = 0
        self.release_ram = bool(self.caps.get("release-ram"))
        self._to_release: list[tuple[RAMBlock, np.ndarray]] = []

    # ------------------------------------------------------------ setup
    def setup(self, now: float) -> list:
        out = super().setup(now)
        if out and self.postcopy_ram:
            # after header, configuration, OPEN_RETURN_PATH and its PING
            out.insert(4, self.advise())
        return out

    def advise(self) -> bytes:
        summary = 0
        for b in self.guest.blocks.values():
            summary |= b.page_size
        return self.enc.layouts.cmd["POSTCOPY_ADVISE"].pack(summary, self.page_size)

    # ------------------------------------------------------------ switching
    def poll(self, now: float):  # type: ignore[override]
        if (self.start_postcopy and self.postcopy_ram and not self.in_postcopy
                and self.state == self.st.active):
            if not (self.passes_done >= 1 and self.remaining_bytes() <= self.threshold):
                return StartPostcopy()
        return super().poll(now)

    def postcopy_start(self) -> bool:
        """active -> postcopy-active, or -> pre-switchover with
        pause-before-switchover (returns True: wait for migrate-continue).
        False (and no change) if the state moved on (a cancel)."""
        if self.caps.get("pause-before-switchover"):
            self.cell.fire(SROW["pre_switchover"])
            return True
        ok = self.cell.fire(SROW["switch"])
        self.in_postcopy = ok
        return False

    def postcopy_continue(self) -> bool:
        """migrate-continue after pre-switchover: -> postcopy-active."""
        ok = self.cell.fire(SROW["continue"])
        self.in_postcopy = ok
        return ok

    def package(self, now: float) -> list:
        """With the vCPU stopped: PING 2, discards, PACKAGED + blob, PING 4."""
        self.stop_time = now
        self.guest.sync_dirty_log(self.bitmaps)
        self.stats.dirty_sync_count += 1
        if self.on_pass is not None:
            self.on_pass(self.stats.dirty_sync_count)
        enc, w = self.enc, self.w
        c = self.profile.wire.const
        cmd = enc.layouts.cmd
        out: list = [cmd["PING"].pack(c("PING_BEFORE_PACKAGE"))]
        out += self.discard_commands()
        blob = b"".join([enc.command("POSTCOPY_LISTEN")] + self.state_sections() + [
            cmd["PING"].pack(c("PING_IN_PACKAGE")),
            enc.command("POSTCOPY_RUN"),
        ])
        out.append(cmd["PACKAGED"].pack(len(blob)))
        out.append(blob)
        out.append(cmd["PING"].pack(c("PING_AFTER_PACKAGE")))
        self._pass = []
        self._pass_pos = 0
        self._start_postcopy_pass()
        del w
        return out

    def discard_commands(self) -> list[bytes]:
        """POSTCOPY_RAM_DISCARD for every dirty run, byte ranges, <= 12 per command."""
        c = self.profile.wire.const
        per = c("MAX_DISCARDS_PER_COMMAND")
        version = c("POSTCOPY_RAM_DISCARD_VERSION")
        discard = self.enc.layouts.cmd["POSTCOPY_RAM_DISCARD"].pack
        out: list[bytes] = []
        for name, bm in self.bitmaps.items():
            runs = _runs(bm)
            raw = name.encode()
            for i in range(0, len(runs), per):
                out.append(discard(version, raw, [(a * self.page_size, n * self.page_size)
                                                  for a, n in runs[i:i + per]]))
        return out

    def _page_features(self) -> tuple[Optional[XbzrleCache], int]:
        """Pages after the switch go plain, on the main channel, as QEMU 7.2's
        ram_save_target_page sends them once in postcopy: an XBZRLE delta
        would apply to a page the destination discarded, and the multifd
        channels carry no page after the switch."""
        if self.in_postcopy:
            return None, 0
        return super()._page_features()

    def _start_postcopy_pass(self) -> None:
        self._pass = [(self.guest.blocks[name], np.flatnonzero(bm))
                      for name, bm in self.bitmaps.items() if bm.any()]
        self._pass_pos = 0

    # ------------------------------------------------------------ postcopy pages
    def poll_postcopy(self, now: float):
        """Requested pages first, then background pages; PostcopyDone at the end."""
        if self.state != self.pst.active:
            return Idle()
        self.release_sent()
        body, sent_any = self._requested_body()
        if not sent_any:
            wait = self._postcopy_rate_wait(now)
            if wait is not None:
                return wait
            chunk = self._next_chunk(self.postcopy_chunk)
            if chunk is None:
                self._start_postcopy_pass()  # pages re-dirtied by a resume
                chunk = self._next_chunk(self.postcopy_chunk)
                if chunk is None:
                    return PostcopyDone()
            block, idx = chunk
            part, _extra = self._encode(block, idx, bulk=False)
            body += part
            if self.release_ram:
                self._to_release.append((block, idx))
        return Send([self.enc.section_part(self._ram_sid)] + body
                    + [self.enc.eos(), self.enc.footer(self._ram_sid)])

    def _requested_body(self) -> tuple[list, bool]:
        requests, self._requests = self._requests, []
        body: list = []
        sent_any = False
        self.enc.reset_continue()
        for block, first, count in requests:
            idx = np.arange(first, first + count)
            bm = self.bitmaps[block.name]
            idx = idx[bm[idx]]
            if idx.size == 0:
                continue  # already sent (maybe in flight): QEMU skips a clean page
            bm[idx] = False
            part, _extra = self._encode(block, idx, bulk=False)
            body += part
            sent_any = True
            if self.release_ram:
                self._to_release.append((block, idx))
        return body, sent_any

    def requested(self) -> Optional[Send]:
        """Only the requested pages (a driver may send them from the thread
        that read the request, to save a thread hop), or None."""
        if self.state != self.pst.active or not self._requests:
            return None
        body, sent_any = self._requested_body()
        if not sent_any:
            return None
        return Send([self.enc.section_part(self._ram_sid)] + body
                    + [self.enc.eos(), self.enc.footer(self._ram_sid)])

    def _postcopy_rate_wait(self, now: float) -> Optional[Wait]:
        """max-postcopy-bandwidth (0 = unlimited) on background pages; a
        requested page is never held back."""
        bw = int(param(self.profile, self.params, "max-postcopy-bandwidth") or 0)
        if bw <= 0:
            return None
        if now - self._pc_window_start >= BUFFER_DELAY:
            self._pc_window_start = now
            self._pc_window_bytes = 0
            return None
        if self._pc_window_bytes >= bw * BUFFER_DELAY:
            return Wait(self._pc_window_start + BUFFER_DELAY)
        return None

    def release_sent(self) -> None:
        """release-ram: pages sent in postcopy are freed on the source (their
        buffers were written by the time the next poll runs)."""
        for block, idx in self._to_release:
            block.pages[idx] = 0
        self._to_release.clear()

    def sent(self, nbytes: int, now: float, *, multifd: int = 0) -> None:
        super().sent(nbytes, now, multifd=multifd)
        if self.in_postcopy:
            self.postcopy_bytes += nbytes + multifd
            self._pc_window_bytes += nbytes + multifd

    def postcopy_complete(self, now: float) -> list:
        """The ram END section and EOF (qemu_savevm_state_complete_postcopy)."""
        self.release_sent()
        enc = self.enc
        return [enc.section_part(self._ram_sid, end=True), enc.eos(),
                enc.footer(self._ram_sid)] + self.stream_end()

    def completed(self, now: float) -> bool:
        ok = self.cell.fire(SROW["completed"])
        if ok:
            self._finish_times(now)
        return ok

    def package_sent(self, now: float) -> None:
        """The package is written: the destination can run.  As in QEMU's
        postcopy_start, the downtime ends here, not at completion."""
        if self.stop_time is not None:
            self.postcopy_downtime = now - self.stop_time

    def _finish_times(self, now: float) -> None:
        super()._finish_times(now)
        if self.postcopy_downtime is not None:
            self.downtime = self.postcopy_downtime

    # ------------------------------------------------------------ return path
    def receive_rp(self, data: bytes) -> list:  # type: ignore[override]
        """Return-path bytes: PONG, SHUT, page requests, bitmaps, RESUME_ACK.
        Raises ReturnPathError with QEMU's text on a bad message."""
        out = self.rp_decoder.feed(data)
        for m in out:
            if isinstance(m, ReceivedBitmap):
                self._reload_bitmap(m)
                continue
            if m.name == "PONG":
                self.pongs.append(int(m.value or 0))
            elif m.name == "SHUT":
                self.shut = int(m.value or 0)
                if self.shut:
                    raise ReturnPathError(self.w.error("rp_sibling_error", self.shut))
            elif m.name in ("REQ_PAGES", "REQ_PAGES_ID"):
                self._queue_request(m)
            elif m.name == "RESUME_ACK":
                if m.value != self.w.resume_ack_value:
                    raise ReturnPathError(self.w.error("rp_resume_ack_value", m.value))
                self.cell.fire(SROW["resume_ack"])
        return out

    def _queue_request(self, m: RPMessage) -> None:
        if m.name == "REQ_PAGES_ID":
            block = self.guest.blocks.get(m.block or "")
            if block is None:
                raise ReturnPathError(self.w.error("rp_unknown_block", m.block))
            self._last_req_block = block
        block = self._last_req_block
        if block is None:
            raise ReturnPathError(self.w.error("rp_unknown_block", ""))
        start, length = int(m.start or 0), int(m.length or 0)
        host = block.page_size
        if start % host or length % host:
            raise ReturnPathError(self.w.error("rp_misaligned", start, length))
        if start + length > block.used_length:
            raise ReturnPathError(self.w.error("rp_request_overrun", start, length,
                                               block.used_length))
        self.postcopy_requests += 1
        self._requests.append((block, start // self.page_size, length // self.page_size))

    # ------------------------------------------------------------ pause / resume
    def postcopy_pause(self, message: str) -> bool:
        """A broken channel in postcopy-active or -recover: -> postcopy-paused."""
        self.error_desc = message
        self._requests.clear()  # the destination re-sends them after RESUME
        self._last_req_block = None
        self.rp_decoder = self._new_rp_decoder()
        return self.cell.fire(SROW["pause"])

    def resume_connected(self) -> bool:
        """migrate resume=true connected: postcopy-paused -> postcopy-recover."""
        return self.cell.fire(SROW["resume"])

    def resume_prepare(self) -> list[bytes]:
        """RECV_BITMAP for every block (ram_dirty_bitmap_sync_all)."""
        self._bitmaps_wanted = set(self.guest.blocks)
        out = []
        cmd = self.enc.layouts.cmd["RECV_BITMAP"]  # u8 length + name, nothing after it
        for name in self.guest.blocks:
            out.append(cmd.pack(name.encode()))
        return out

    @property
    def bitmaps_reloaded(self) -> bool:
        return not self._bitmaps_wanted

    def _new_rp_decoder(self) -> PostcopyRPDecoder:
        """A return-path decoder that knows each block's bitmap size, so a
        peer's declared size is checked before its bitmap is buffered."""
        dec = PostcopyRPDecoder(self.profile)
        dec.bitmap_sizes = {name: _bitmap_size(b.npages) for name, b in self.guest.blocks.items()}
        return dec

    def _reload_bitmap(self, m: ReceivedBitmap) -> None:
        if self.state != self.pst.recover:
            raise ReturnPathError(self.w.error("rp_recv_bitmap_not_recovering"))
        block = self.guest.blocks.get(m.block)
        if block is None:
            raise ReturnPathError(self.w.error("rp_unknown_block", m.block))
        expected = _bitmap_size(block.npages)
        if m.size != expected:
            raise ReturnPathError(self.w.error("rp_bitmap_size_mismatch", m.block, m.size,
                                               expected))
        if m.end_mark != self.w.recv_bitmap_ending:
            raise ReturnPathError(self.w.error("rp_bitmap_end_mark", m.block, m.end_mark))
        received = decode_received_bitmap(m.raw, block.npages)
        self.bitmaps[m.block][:] = ~received
        self._bitmaps_wanted.discard(m.block)

    def resume_command(self) -> bytes:
        """POSTCOPY_RESUME, once every bitmap is back; the pass restarts."""
        self._start_postcopy_pass()
        self.resume_count += 1
        return self.enc.command("POSTCOPY_RESUME")


# =============================================================== destination
class PostcopyStreamDecoder(StreamDecoder):
    """The stream decoder with postcopy placement: a *received* bitmap per
    block (set only after the bytes are in place) and, once ``placing``, no
    second write of a received page."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.received: Optional[dict[str, np.ndarray]] = None
        self.placing = False
        self.on_placed: Optional[Callable[[RAMBlock, np.ndarray], None]] = None
        #: runs a command the moment it is parsed, before any later RAM record
        #: of the same buffer is loaded (a DISCARD must not zero a page that
        #: follows it); gets the command and the events parsed so far
        self.on_command: Optional[Callable[[CommandReceived, list[Event]], bool]] = None
        #: the kernel backend's userfaultfd side: once it is registered
        #: (LISTEN), pages are placed by UFFDIO_COPY/ZEROPAGE, never stored
        self.kernel: Optional["PostcopyRAM"] = None

    def _kernel_for(self, block: RAMBlock) -> Optional["PostcopyRAM"]:
        """The userfaultfd side if it holds ``block`` now (a block a QEMU
        source declared and this side made on the fly is plain memory)."""
        kernel = self.kernel
        if kernel is not None and kernel.registered and block.name in kernel.memories:
            return kernel
        return None

    def _write_pages(self, block: RAMBlock, idx: np.ndarray, data: np.ndarray) -> None:
        kernel = self._kernel_for(block)
        if kernel is not None:
            kernel.copy(block.name, idx, data, self.received[block.name])  # type: ignore[index]
        else:
            block.pages[idx] = data

    def _fill_pages(self, block: RAMBlock, idx: np.ndarray, fill: np.ndarray) -> None:
        kernel = self._kernel_for(block)
        if kernel is not None:
            kernel.fill(block.name, idx, fill, self.received[block.name])  # type: ignore[index]
        else:
            block.pages[idx] = fill[:, None]

    def _vmdesc_follows(self) -> bool:
        return super()._vmdesc_follows() and not self.placing  # none after postcopy

    def _parse_command(self, pos: int, events: list[Event]) -> None:
        n = len(events)
        super()._parse_command(pos, events)
        if self.on_command is not None and len(events) > n:
            ev = events[-1]
            if isinstance(ev, CommandReceived) and self.on_command(ev, events):
                events.pop()

    def _placed(self, block: RAMBlock, idx: np.ndarray) -> None:
        self.received[block.name][idx] = True  # type: ignore[index]
        self._touched[block.name][idx] = True
        if self.on_placed is not None:
            self.on_placed(block, idx)

    def _page_run(self, block: RAMBlock) -> bool:
        if self.received is None:
            return super()._page_run(block)
        run = self._record_run(self._page_dtype, self._pagec, block)
        if run is None:
            return False
        rec, idx, bad = run
        if bad is not None:
            raise self._fail("ram_bad_offset", bad)
        data = rec["data"]
        if self.placing:
            fresh = ~self.received[block.name][idx]  # type: ignore[index]
            idx, data = idx[fresh], data[fresh]
        if idx.size:
            self._write_pages(block, idx, data)
            self._placed(block, idx)
        self.counters.normal += len(rec)
        self._consumed(rec)
        return True

    def _zero_run(self, block: RAMBlock) -> bool:
        if self.received is None:
            return super()._zero_run(block)
        run = self._record_run(self._zero_dtype, self._zeroc, block)
        if run is None:
            return False
        rec, idx, bad = run
        if bad is not None:
            raise self._fail("ram_bad_offset", bad)
        fill = rec["fill"]
        if self.placing:
            fresh = ~self.received[block.name][idx]  # type: ignore[index]
            idx, fill = idx[fresh], fill[fresh]
        if idx.size:
            self._fill_pages(block, idx, fill)
            self._placed(block, idx)
        self.counters.duplicate += len(rec)
        self._consumed(rec)
        return True

    def _one_record(self, hdr: int, events: list[Event]) -> None:
        if self.received is None:
            return super()._one_record(hdr, events)
        w = self.w
        flags = hdr & self._mask
        kind = flags & ~w.f_continue
        if kind not in (w.f_page, w.f_zero):
            if self.kernel is not None and self.kernel.registered \
                    and kind in (w.f_xbzrle, w.f_compress):
                # decoding stores into registered RAM: it would sleep on its own fault
                raise StreamError(self.w.error("kernel_ram_record_kind", kind))
            # Other records (EOS, setup, XBZRLE, compressed): the precopy path,
            # then mark the page received if one was written.
            super()._one_record(hdr, events)
            if kind in (w.f_xbzrle, w.f_compress) and self._last_block is not None:
                page = (hdr & ~self._mask) // self.page_size
                self._placed(self._last_block, np.array([page]))
            return
        pos = self._start + 8
        block, pos = self._block_for(flags, pos)
        addr = hdr & ~self._mask
        if kind == w.f_zero:
            fill, pos = self._u8(pos)
            payload = None
        else:
            self._take(pos, self.page_size)
            payload = self._buf[pos:pos + self.page_size]
            pos += self.page_size
        self._check_offset(block, addr)
        page = addr // self.page_size
        if not (self.placing and self.received[block.name][page]):  # type: ignore[index]
            one = np.array([page])
            if payload is None:
                self._fill_pages(block, one, np.array([fill], dtype=np.uint8))
            else:
                self._write_pages(block, one, np.frombuffer(payload, np.uint8).reshape(1, -1))
            self._placed(block, one)
        if payload is None:
            self.counters.duplicate += 1
        else:
            self.counters.normal += 1
        self._last_block = block
        self._start = pos


class PageRequests:
    """The destination's outstanding page requests (QEMU's fault thread's
    bookkeeping): which pages were asked for and when, the REQ_PAGES /
    REQ_PAGES_ID choice, and the request -> placed latency.

    Two threads use it (a vCPU asking, the load thread placing): the session
    holds it under :attr:`PostcopyDestination.exclusive`, a lock its driver
    gives (none when one thread does everything, as in the unit tests)."""

    def __init__(self, profile: Profile, blocks: dict[str, RAMBlock], page_size: int) -> None:
        rp = layouts(profile).rp
        self.page_size = page_size
        self._req_pages_id = rp["REQ_PAGES_ID"].pack  # (start, length, block)
        self._req_pages = rp["REQ_PAGES"].pack  # (start, length)
        self.asked = {name: np.zeros(b.npages, dtype=bool) for name, b in blocks.items()}
        self.times: dict[str, dict[int, float]] = {name: {} for name in blocks}
        self.last_block: Optional[str] = None
        self.latency = LatencyHistogram()
        self.count = 0

    def request(self, name: str, first: int, missing: np.ndarray, now: float,
                send: bool) -> bytes:
        """Ask for the ``missing`` pages (a mask from page ``first``) not
        asked for yet; the request bytes (none if ``send`` is False: a paused
        channel, the requests are re-sent after RESUME)."""
        mask = self.asked[name]
        new = missing & ~mask[first:first + len(missing)]
        if not new.any():
            return b""
        times = self.times[name]
        data = b""
        for a, n in _runs(new):
            a += first
            mask[a:a + n] = True
            for p in range(a, a + n):
                times[p] = now
            if send:
                data += self._request_bytes(name, a, n)
            self.count += 1
        return data

    def placed(self, name: str, idx: np.ndarray, now: float) -> None:
        mask = self.asked[name]
        hit = idx[mask[idx]]
        if hit.size == 0:
            return
        mask[hit] = False
        times = self.times[name]
        for p in hit.tolist():
            t = times.pop(p, None)
            if t is not None:
                self.latency.add(now - t)

    def pending(self, received: dict[str, np.ndarray]) -> bytes:
        """Every request still outstanding, again (after POSTCOPY_RESUME; the
        first names its block)."""
        self.last_block = None
        out = b""
        for name, mask in self.asked.items():
            for first, count in _runs(mask & ~received[name]):
                out += self._request_bytes(name, first, count)
        return out

    def _request_bytes(self, name: str, first: int, count: int) -> bytes:
        # framed here from ids read once: encode_rp's table lookup hashes the
        # whole profile on every call, too slow for the fault path
        ps = self.page_size
        if name != self.last_block:
            self.last_block = name
            return self._req_pages_id(first * ps, count * ps, name.encode())
        return self._req_pages(first * ps, count * ps)


class PostcopyDestination(DestinationMigration):
    """An incoming migration that accepts postcopy, faults, pauses and recovers."""

    def __init__(self, profile: Profile, guest: Guest, cell: StatusCell, *,
                 caps: dict[str, bool], clock: Callable[[], float] = time.monotonic,
                 **kw: Any) -> None:
        super().__init__(profile, guest, cell, caps=caps, **kw)
        old = self.decoder
        self.decoder = PostcopyStreamDecoder(profile, guest.blocks, machine=old.machine,
                                             uuid=old.uuid, caps=caps)
        self.decoder._touched = old._touched
        self.decoder.on_command = self._command_now
        self.pc = PostcopyCell(profile)
        self.pst = postcopy_statuses(profile)
        #: the runner's clock (simulated on the fake link): stamps requests
        self.clock = clock
        handler = profile.postcopy_handler
        self._ps_running = handler("run").new
        self.received = {name: np.zeros(b.npages, dtype=bool) for name, b in guest.blocks.items()}
        self.requests = PageRequests(profile, guest.blocks, self.decoder.page_size)
        self.decoder.on_new_block = self._new_block
        #: held around every use of :attr:`requests` (see PageRequests)
        self.exclusive: ContextManager = contextlib.nullcontext()
        #: called after pages are placed (the driver wakes waiting vCPUs)
        self.on_pages_placed: Optional[Callable[[], None]] = None
        #: called, under :attr:`exclusive`, when queued return-path bytes must
        #: leave before any request a vCPU makes next (RESUME_ACK and the
        #: re-sent requests: a later REQ_PAGES relies on their block)
        self.on_rp_data: Optional[Callable[[], None]] = None
        self.latency = self.requests.latency
        self.run_requested = False
        self.listening_started = False
        self.package_remaining: Optional[int] = None
        self.closed = False
        self.warning: Optional[str] = None
        #: the kernel memory backend's userfaultfd side (None: simulated RAM)
        self.kernel: Optional["PostcopyRAM"] = (
            guest.kernel.postcopy_ram() if guest.kernel is not None else None)
        self.decoder.kernel = self.kernel
        #: the driver's: send page requests for (block, sorted pages) the
        #: kernel reported faults on (called on the fault thread; never blocks)
        self.on_kernel_fault: Optional[Callable[[str, np.ndarray], None]] = None
        #: the driver's: the fault thread ended by an exception (its text)
        self.on_fault_crash: Optional[Callable[[str], None]] = None

    def _new_block(self, block: RAMBlock) -> None:
        """A block the source declared and this side lacked (a QEMU machine)."""
        self.received[block.name] = np.zeros(block.npages, dtype=bool)
        self.requests.asked[block.name] = np.zeros(block.npages, dtype=bool)
        self.requests.times[block.name] = {}

    @property
    def postcopy_requests(self) -> int:
        return self.requests.count

    # ------------------------------------------------------------ lifecycle
    def accepted(self) -> bool:
        self.pc.handle("incoming_start")
        return super().accepted()

    @property
    def in_postcopy(self) -> bool:
        return self.listening_started

    # ------------------------------------------------------------ commands
    def _command_now(self, ev: CommandReceived, events: list[Event]) -> bool:
        """A postcopy command, run as soon as it is parsed (True: consumed)."""
        if ev.name not in _DST_COMMANDS:
            return False
        if ev.name == "POSTCOPY_RUN":
            for prior in reversed(events):
                if isinstance(prior, DeviceState):
                    self.device_state = prior.blob
                    break
        getattr(self, "_cmd_" + ev.name.lower())(ev.payload)
        return True

    def _handle(self, events: list[Event]) -> list[Event]:
        for ev in events:
            if isinstance(ev, CommandReceived) and ev.name in _DST_COMMANDS:
                getattr(self, "_cmd_" + ev.name.lower())(ev.payload)
            elif isinstance(ev, DeviceState) and self.listening_started:
                self.device_state = ev.blob
            elif isinstance(ev, EndOfStream):
                self.finished = True
            else:
                super()._handle([ev])
        return events

    def _cmd_postcopy_advise(self, payload: bytes) -> None:
        self.pc.handle("advise")
        w = self.decoder.w
        postcopy_ram = bool(self.caps.get("postcopy-ram"))
        if len(payload) == 0:
            if postcopy_ram:
                raise StreamError(w.error("advise_zero_with_postcopy"))
            return
        if len(payload) != self._layouts["CMD_POSTCOPY_ADVISE"].size:
            raise StreamError(w.error("advise_bad_length", len(payload)))
        if not postcopy_ram:
            raise StreamError(w.error("advise_16_without_postcopy"))
        summary, target = self._layouts.cmd["POSTCOPY_ADVISE"].unpack(payload)
        local = 0
        for b in self.guest.blocks.values():
            local |= b.page_size
        if summary != local:
            raise StreamError(w.error("advise_page_sizes", summary, local))
        if target != w.page_size:
            raise StreamError(w.error("advise_target_page_sizes", target, w.page_size))
        self.decoder.received = self.received
        self.decoder.on_placed = self._on_placed

    def _cmd_postcopy_ram_discard(self, payload: bytes) -> None:
        w = self.decoder.w
        self.pc.handle("discard")
        if len(payload) < 2:
            raise StreamError(w.error("discard_bad_length", len(payload)))
        version = payload[0]
        if version != self.profile.wire.const("POSTCOPY_RAM_DISCARD_VERSION"):
            raise StreamError(w.error("discard_bad_version", version))
        n = payload[1]
        name = payload[2:2 + n].decode(errors="replace")
        if len(payload) < 2 + n + 1:
            raise StreamError(w.error("discard_bad_block_id"))
        nil = payload[2 + n]
        if nil:
            raise StreamError(w.error("discard_missing_nil", nil))
        body = payload[3 + n:]
        if len(body) % 16:
            raise StreamError(w.error("discard_bad_length", len(payload)))
        block = self.guest.blocks.get(name)
        if block is None:
            raise StreamError(w.error("ram_unknown_block", name))
        ranges = np.frombuffer(body, dtype=">u8").reshape(-1, 2)
        ps = self.decoder.page_size
        for start, length in ranges.tolist():
            if start % ps or length % ps or start + length > block.used_length:
                raise StreamError(w.error("ram_bad_offset", start))
            a, b = start // ps, (start + length) // ps
            if self.kernel is not None and name in self.kernel.memories:
                self.kernel.discard(name, a, b)  # dropped: a touch after LISTEN faults
            else:
                block.pages[a:b] = 0
            self.received[name][a:b] = False

    def _cmd_postcopy_listen(self, payload: bytes) -> None:
        self.pc.handle("listen")
        if self.kernel is not None:
            # QEMU registers guest RAM with userfaultfd here too
            # (postcopy_ram_incoming_setup): from now on a missing page faults
            self.kernel.listen(self.received)
            self.kernel.start_faults(self._kernel_fault, self.received, self._fault_crash)
        self.decoder.placing = True
        self.listening_started = True
        self.cell.fire(DROW["listen"])

    def _cmd_postcopy_run(self, payload: bytes) -> None:
        self.pc.handle("run")
        if self.device_state is not None:
            self.guest.load_device_state(self.device_state)
        self.run_requested = True

    def _cmd_packaged(self, payload: bytes) -> None:
        # The blob follows in the stream: the decoder reads it in line.
        (self.package_remaining,) = self._layouts.cmd["PACKAGED"].unpack(payload)

    def _cmd_postcopy_resume(self, payload: bytes) -> None:
        if self.cell.state != self.pst.recover:
            # QEMU only reports it and carries on.
            self.warning = self.decoder.w.error("resume_illegal", "loadvm_postcopy_handle_resume")
            return
        self.cell.fire(DROW["resume"])
        data = encode_u32(self.profile, "RESUME_ACK", self.decoder.w.resume_ack_value)
        with self.exclusive:
            self._rp_out += data + self.requests.pending(self.received)
            if self.on_rp_data is not None:
                self.on_rp_data()

    def _cmd_recv_bitmap(self, payload: bytes) -> None:
        w = self.decoder.w
        n = payload[0] if payload else 0
        if len(payload) != n + 1:  # QEMU's check, after reading the counted name
            raise StreamError(w.error("cmd_recv_bitmap_length", len(payload)))
        name = payload[1:].decode(errors="replace")
        block = self.guest.blocks.get(name)
        if block is None:
            raise StreamError(w.error("ram_unknown_block", name))
        if self.cell.state != self.pst.recover:
            raise StreamError(w.error("rp_recv_bitmap_not_recovering"))
        bitmap = encode_received_bitmap(self.received[name])
        raw = name.encode()
        L = layouts(self.profile)
        self._rp_out += (L.rp["RECV_BITMAP"].pack(raw)
                         + L["RECV_BITMAP_TRAILER"].pack(bitmap, w.recv_bitmap_ending))

    # ------------------------------------------------------------ faults
    def present(self, block_name: str, first: int, last: int) -> bool:
        """Pages [first, last) of ``block_name`` are all placed (a vCPU may
        touch them)."""
        return bool(self.received[block_name][first:last].all())

    def missing_pages(self, block_name: str, first: int, last: int) -> int:
        """How many of pages [first, last) of ``block_name`` are not placed yet."""
        return int((~self.received[block_name][first:last]).sum())

    def request_pages(self, block_name: str, first: int, last: int) -> bytes:
        """The vCPU touches pages [first, last): the return-path bytes that
        ask for the missing ones not asked for yet (none while paused: they
        are re-sent after RESUME).  Never blocks: the caller sends the bytes
        and waits for :attr:`on_pages_placed` (QEMU's fault thread)."""
        missing = ~self.received[block_name][first:last]
        if not missing.any():
            return b""
        with self.exclusive:
            return self.requests.request(block_name, first, missing, self.clock(),
                                         send=self.cell.state == self.pst.active)

    def fault(self, block_name: str, first: int, last: int) -> bool:
        """:meth:`request_pages` with the bytes queued on the return path
        (for a caller that is also the session's owner): True if every page
        is there already."""
        if self.present(block_name, first, last):
            return True
        self._rp_out += self.request_pages(block_name, first, last)
        return False

    def _kernel_fault(self, name: str, pages: np.ndarray) -> None:
        if self.on_kernel_fault is None:
            raise StreamError("postcopy: a page fault and no driver to request the page")
        self.on_kernel_fault(name, pages)

    def _fault_crash(self, text: str) -> None:
        if self.on_fault_crash is not None:
            self.on_fault_crash(text)
        else:
            self.fault_failed(text)

    def fault_failed(self, text: str) -> bool:
        """The fault thread failed: no fault would be served any more, so the
        migration fails (postcopy-active -> failed, the listen thread's row;
        a pause would leave every faulting thread asleep).  False if the
        state was not postcopy-active (paused: the load thread fails it after
        the recovery, when it sees the error).  Sleeping threads wake."""
        self.error_desc = f"load of migration failed: {text}"
        ok = self.cell.fire(DROW["listen_failed"])
        if ok:
            if self.return_path:
                self._rp_out += encode_u32(self.profile, "SHUT", 1)
            if self.kernel is not None:
                self.kernel.close()
        return ok

    def _on_placed(self, block: RAMBlock, idx: np.ndarray) -> None:
        if self.kernel is not None and self.kernel.registered:
            self.kernel.placed(block.name, idx)  # other processes' sleepers
        with self.exclusive:
            self.requests.placed(block.name, idx, self.clock())
        if self.on_pages_placed is not None:
            self.on_pages_placed()

    def close(self) -> None:
        """Release every vCPU waiting for a page (shutdown)."""
        self.closed = True
        if self.kernel is not None:
            self.kernel.close()  # unregistered: threads asleep on a fault wake
        if self.on_pages_placed is not None:
            self.on_pages_placed()

    # ------------------------------------------------------------ ending
    def load_finished(self) -> bool:
        """EOF: in postcopy the listen thread ends (END, -> completed)."""
        if not self.listening_started:
            return super().load_finished()
        self.pc.handle("end")
        if self.kernel is not None:
            self.kernel.end()  # every page is placed: the registration goes
        ok = self.cell.fire(DROW["listen_completed"])
        if self.return_path:
            self._rp_out += encode_u32(self.profile, "SHUT", 0)
        return ok

    def load_failed(self, message: str) -> bool:
        """A load error: pause when PostcopyState is RUNNING (and postcopy-ram),
        fail the listen thread after LISTEN, else the precopy failure."""
        if not self.listening_started:
            return super().load_failed(message)
        if self.pc.state == self._ps_running and self.caps.get("postcopy-ram"):
            return self.pause(message)
        self.error_desc = f"load of migration failed: {message}"
        if self.kernel is not None:
            self.kernel.close()  # no page will come: threads asleep on one wake
        return self.cell.fire(DROW["listen_failed"])

    @property
    def can_pause(self) -> bool:
        return self.pc.state == self._ps_running and bool(self.caps.get("postcopy-ram"))

    def pause(self, message: str) -> bool:
        """postcopy_pause_incoming: postcopy-active -> postcopy-paused."""
        self.error_desc = message
        ok = self.cell.fire(DROW["pause"])
        self._rp_out.clear()
        return ok

    def recover_listening(self) -> None:
        """migrate-recover: the setup event, no state change."""
        self.cell.emit(DROW["setup_event"])

    def recover_accepted(self) -> bool:
        """The new main channel: postcopy-paused -> postcopy-recover; the
        stream continues where it stopped (no header), with a fresh decoder."""
        old = self.decoder
        dec = PostcopyStreamDecoder(self.profile, self.guest.blocks, machine=old.machine,
                                    uuid=old.uuid, caps=self.caps, expect_header=False)
        dec._touched = old._touched
        dec._sections = dict(old._sections)
        dec.return_path = True
        dec.received = self.received
        dec.placing = True
        dec.on_placed = self._on_placed
        dec.on_command = self._command_now
        dec.on_new_block = self._new_block
        dec.kernel = old.kernel
        dec.counters = old.counters
        assert dec._state == _S_TOP
        self.decoder = dec
        self._rp_out.clear()
        return self.cell.fire(DROW["recover"])


_DST_COMMANDS = frozenset({"POSTCOPY_ADVISE", "POSTCOPY_RAM_DISCARD", "POSTCOPY_LISTEN",
                           "POSTCOPY_RUN", "PACKAGED", "POSTCOPY_RESUME", "RECV_BITMAP"})
