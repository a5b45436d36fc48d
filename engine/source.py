"""The source side of precopy, sans-I/O.

Theory of operation
-------------------
:class:`SourceMigration` is QEMU's migration thread with the I/O taken out.
A driver (``livemig.engine.driver``) or a test's fake link calls it and moves
the bytes; it never touches a socket, a thread or the wall clock (``now`` is
always passed in).  Its life, as in QEMU's ``migration_thread``:

1. :meth:`begin` -- ``migrate_init``: the plain store to none, then
   none -> setup (rows ``src.migrate_init.reset``/``.setup``).
2. :meth:`setup` -- the header, the configuration section, OPEN_RETURN_PATH
   and PING when the return path is on, and the ``ram`` START section (the
   block list).  Every page starts dirty and the guest's dirty log is
   cleared; then setup -> active (``src.thread.active``).
3. :meth:`poll` -- one iteration: a :class:`Send` of one ``ram`` PART section
   of dirty pages within the rate limit (``max-bandwidth`` spent in 100 ms
   windows), a :class:`Wait` until the window ends, or :class:`Converged`
   once the dirty bytes left fit in ``bandwidth x downtime-limit`` after an
   exact bitmap sync.  A bitmap sync starts every pass and emits
   MIGRATION_PASS; ``auto-converge`` raises the guest's throttle when the
   guest dirties more than ``throttle-trigger-threshold`` percent of what was
   sent, twice in a row.
4. :meth:`switchover` -- with ``pause-before-switchover``, active ->
   pre-switchover; ``migrate-continue`` then gives pre-switchover -> device.
5. :meth:`completion` -- with the vCPU stopped: a final sync, the ``ram`` END
   section with every page still dirty, the global state and device
   sections, EOF.  :meth:`completed` closes the books (row
   ``src.completion.completed``).

Errors: :meth:`stream_error` (a broken transport) fires
``src.detect_error.failed`` or ``src.completion.failed`` with an error-desc;
:meth:`cancel` fires ``src.cancel``; :meth:`cleanup` fires
``src.cleanup.cancelled``.  The guest is never touched by a failure except
that a vCPU stopped for completion is restarted by the driver.

Page data: zero pages are found with one numpy reduction per chunk and sent
as ZERO records; others as PAGE records (vectorised, see
:mod:`livemig.engine.stream`), or per page as XBZRLE deltas (``xbzrle``,
after the first pass) or zlib COMPRESS_PAGE records (``compress``, on
``compress-threads`` threads).  With ``multifd`` the page records go to
:class:`MultifdPacket` buffers for the extra channels instead (format in
:mod:`livemig.engine.multifd`).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import numpy as np

from livemig.core.cell import StatusCell
from livemig.core.params import param
from livemig.engine import multifd as mfd
from livemig.engine.guest import Guest, RAMBlock
from livemig.engine.returnpath import ReturnPathDecoder, RPMessage
from livemig.engine.rows import SOURCE_ROWS as ROW, statuses
from livemig.engine.stream import (
    DEVICE_SECTION, GLOBALSTATE_SECTION, RAM_SECTION, RAM_SECTION_VERSION, Buffer,
    StreamEncoder,
)
from livemig.engine.xbzrle import XbzrleCache, encode as xbzrle_encode
from livemig.errors import ReturnPathError
from livemig.spec import DEFAULT_PROFILE, load_profile
from livemig.spec.schema import Profile

BUFFER_DELAY = 0.1  # seconds: QEMU's rate-limit and bandwidth window
MAX_CHUNK_PAGES = 2048
#: a chunk's zero scan is split into pieces of this many pages (from two pieces
#: on), which the migration thread and a helper take in turn
SCAN_SPLIT_PAGES = 256
#: livemig's own machine type: the first of every profile's MACHINES
MACHINE = load_profile(DEFAULT_PROFILE).machine().name
#: auto-converge in QEMU 3.0 has no throttle-trigger-threshold parameter:
#: ram.c throttles when the period's dirty bytes exceed half the bytes sent
#: (``bytes_dirty_period > bytes_xfer_period / 2``), i.e. a threshold of 50
_QEMU30_THROTTLE_TRIGGER = 50
#: nor a max-cpu-throttle parameter: the throttle is capped by the
#: constant CPU_THROTTLE_PCT_MAX, 99
_QEMU30_MAX_CPU_THROTTLE = 99


@dataclass
class Send:
    """Bytes for the main channel (``channel`` 0) or a multifd channel (1..n)."""

    buffers: list[Buffer]
    channel: int = 0
    extra: list[tuple[int, list[Buffer]]] = field(default_factory=list)


@dataclass
class Wait:
    until: float


@dataclass
class Converged:
    pass


@dataclass
class Stats:
    transferred: int = 0
    duplicate: int = 0
    normal: int = 0
    normal_bytes: int = 0
    multifd_bytes: int = 0
    precopy_bytes: int = 0
    downtime_bytes: int = 0
    dirty_sync_count: int = 0
    dirty_pages_rate: int = 0
    pages_per_second: int = 0
    mbps: float = 0.0
    xbzrle_pages: int = 0
    xbzrle_bytes: int = 0
    compressed_pages: int = 0
    compressed_size: int = 0


class SourceMigration:
    """One outgoing migration of ``guest`` (see the module docstring)."""

    def __init__(self, profile: Profile, guest: Guest, cell: StatusCell, *,
                 caps: dict[str, bool], params: dict[str, Any],
                 machine: Optional[str] = None,
                 uuid: Optional[bytes] = None,
                 on_pass: Optional[Callable[[int], None]] = None) -> None:
        self.profile = profile
        self.guest = guest
        self.cell = cell
        self.caps = dict(caps)
        self.params = dict(params)
        #: the machine type the configuration names, and the sections it carries
        self.machine_type = profile.machine(machine)
        self.machine = self.machine_type.name
        self.uuid = uuid
        self.on_pass = on_pass
        self.st = statuses(profile)
        self.enc = StreamEncoder(profile)
        self.w = self.enc.w
        self.page_size = self.w.page_size
        self.stats = Stats()
        self.error_desc: Optional[str] = None
        self.return_path = bool(caps.get("return-path"))
        self.rp_decoder = ReturnPathDecoder(profile)
        self.pongs: list[int] = []
        self.shut: Optional[int] = None
        self.bitmaps: dict[str, np.ndarray] = {
            name: np.zeros(b.npages, dtype=bool) for name, b in guest.blocks.items()}
        self._pass: list[tuple[RAMBlock, np.ndarray]] = []
        self._pass_pos = 0
        self.passes_done = 0
        self._ram_sid = self.machine_type.ram_section_id
        self._sid_global = self.machine_type.globalstate_section_id
        self._sid_device = self.machine_type.device_section_id
        # timing
        self.start_time: Optional[float] = None
        self.setup_time: Optional[float] = None
        self.total_time: Optional[float] = None
        self.downtime: Optional[float] = None
        self.expected_downtime: Optional[float] = None
        self._window_start = 0.0
        self._window_bytes = 0
        self._window_pages = 0
        self._iteration_start: Optional[float] = None
        self.bandwidth = 0.0  # bytes per second
        self.threshold = 0.0  # bytes
        self._last_sync_time: Optional[float] = None
        self._sync_period_dirty = 0
        self._sync_period_xfer = 0
        self._dirty_high = 0
        self.throttle = 0
        self.stop_time: Optional[float] = None
        # features
        self.xbzrle: Optional[XbzrleCache] = (
            XbzrleCache(int(self._param("xbzrle-cache-size")), self.page_size)
            if caps.get("xbzrle") else None)
        #: how compressed pages are made: one by one here; a driver on real
        #: threads gives a map over compress-threads workers (zlib releases
        #: the GIL), see runner.ThreadRunner.parallel_map
        self.parallel_map: Callable[[Callable, Any], list] = _serial_map
        #: how a chunk's zero-page scan is split: serial here; a driver on
        #: real threads gives a map over two workers (numpy's reductions
        #: release the GIL), so a zero-heavy chunk is read by both cores
        self.scan_map: Callable[[Callable, Any], list] = _serial_map
        # whether the last chunk was mostly zero pages: then the first-word
        # probe (one cache line per page) is skipped, as it would only add
        # a strided read before the full scan
        self._zero_heavy = False
        self.multifd_channels = (int(self._multifd_channels_param())
                                 if caps.get("multifd") else 0)
        self._multifd_next = 0
        self._multifd_packet = 0
        self._pass_changed = False
        self.on_status: Optional[Callable[[str], None]] = None

    # ------------------------------------------------------------ parameters
    def _param(self, name: str) -> Any:
        """The parameter ``name``, or the spec's default."""
        return param(self.profile, self.params, name)

    def _declared(self, name: str) -> bool:
        return any(p.name == name for p in self.profile.parameters)

    def _param_or(self, name: str, fixed: Any) -> Any:
        """A parameter that older profiles (qemu-3.0) do not declare: there
        QEMU's behaviour is the constant ``fixed`` (see its definition)."""
        return self._param(name) if self._declared(name) else fixed

    def _multifd_channels_param(self) -> Any:
        """multifd-channels; QEMU 3.0 names it x-multifd-channels (experimental)."""
        if self._declared("multifd-channels"):
            return self._param("multifd-channels")
        return self._param("x-multifd-channels")

    # ------------------------------------------------------------ lifecycle
    def begin(self, now: float) -> None:
        """migrate_init: plain store to none, then none -> setup."""
        self.cell.store(ROW["reset"])
        self.cell.fire(ROW["setup"])
        self.start_time = now

    def setup(self, now: float) -> list[Buffer]:
        """The stream's first bytes; fires setup -> active.  ``[]`` if the
        state moved on (a cancel raced in)."""
        enc = self.enc
        out: list[Buffer] = [enc.header(),
                             enc.configuration(self.machine, uuid=self._sent_uuid())]
        if self.return_path:
            out.append(enc.command("OPEN_RETURN_PATH"))
            out.append(enc.layouts.cmd["PING"].pack(self.w.ping_after_open_return_path))
        blocks = list(self.guest.blocks.values())
        # Every page starts dirty; the log restarts now (global dirty log start).
        for bm in self.bitmaps.values():
            bm[:] = True
        self.guest.clear_dirty_log()
        self._last_sync_time = now
        out.append(enc.section_start(self._ram_sid, RAM_SECTION, 0, RAM_SECTION_VERSION))
        out.append(enc.ram_setup(blocks))
        out.append(enc.footer(self._ram_sid))
        self._start_pass(now, sync=False)
        if not self.cell.fire(ROW["active"]):
            return []
        self.setup_time = now - (self.start_time or now)
        self._window_start = now
        self.stats.transferred += 0
        return out

    def _sent_uuid(self) -> Optional[bytes]:
        return self.uuid if (self.caps.get("validate-uuid") and self.uuid) else None

    @property
    def state(self) -> str:
        return self.cell.state

    def remaining_bytes(self) -> int:
        return sum(int(np.count_nonzero(bm)) for bm in self.bitmaps.values()) * self.page_size

    # ------------------------------------------------------------ passes
    def _sync(self, now: float) -> None:
        """The profile's ``bitmap_sync`` (migration_bitmap_sync): the guest's
        dirty log into the bitmap, one more in the counter, the pass event;
        the dirty rate and auto-converge once the spec's period has passed."""
        new = self.guest.sync_dirty_log(self.bitmaps)
        self.stats.dirty_sync_count += 1
        self._sync_period_dirty += new
        period_s = self.profile.bitmap_sync.period_s
        if self._last_sync_time is not None and now - self._last_sync_time >= period_s:
            period = now - self._last_sync_time
            self.stats.dirty_pages_rate = int(self._sync_period_dirty / period)
            self._maybe_throttle()
            self._sync_period_dirty = 0
            self._sync_period_xfer = 0
            self._last_sync_time = now
        if self.on_pass is not None:
            self.on_pass(self.stats.dirty_sync_count)

    def _maybe_throttle(self) -> None:
        """auto-converge: throttle the vCPU when it dirties faster than we send."""
        if not self.caps.get("auto-converge") or self.passes_done < 1:
            return
        dirty_bytes = self._sync_period_dirty * self.page_size
        trigger = self._sync_period_xfer * int(self._param_or("throttle-trigger-threshold", _QEMU30_THROTTLE_TRIGGER))
        if dirty_bytes * 100 > trigger:
            self._dirty_high += 1
            if self._dirty_high >= 2:
                self._dirty_high = 0
                initial = int(self._param("cpu-throttle-initial"))
                inc = int(self._param("cpu-throttle-increment"))
                top = int(self._param_or("max-cpu-throttle", _QEMU30_MAX_CPU_THROTTLE))
                self.throttle = initial if self.throttle == 0 else min(self.throttle + inc, top)
                self.guest.throttle = self.throttle

    def _start_pass(self, now: float, sync: bool = True) -> None:
        if sync:
            self._sync(now)
        else:
            self.stats.dirty_sync_count += 1
            if self.on_pass is not None:
                self.on_pass(self.stats.dirty_sync_count)
        self._pass = [(self.guest.blocks[name], np.flatnonzero(bm))
                      for name, bm in self.bitmaps.items() if bm.any()]
        self._pass_pos = 0
        self._pass_changed = True

    def _next_chunk(self, max_pages: int) -> Optional[tuple[RAMBlock, np.ndarray]]:
        while self._pass:
            block, idx = self._pass[0]
            if self._pass_pos >= len(idx):
                self._pass.pop(0)
                self._pass_pos = 0
                continue
            chunk = idx[self._pass_pos:self._pass_pos + max_pages]
            self._pass_pos += len(chunk)
            bm = self.bitmaps[block.name]
            # Only pages still dirty (a sync between passes may not have re-set them).
            chunk = chunk[bm[chunk]]
            if chunk.size == 0:
                continue
            bm[chunk] = False  # clear before reading: a later write is logged again
            return block, chunk
        return None

    # ------------------------------------------------------------ iteration
    def poll(self, now: float) -> Send | Wait | Converged | None:
        """One step of the migration thread's loop (state must be active)."""
        if self.state != self.st.active:
            return None
        self._roll_window(now)
        limit = self._window_limit()
        if limit is not None and self._window_bytes >= limit:
            return Wait(self._window_start + BUFFER_DELAY)
        pending = self.remaining_bytes()
        if self.passes_done >= 1 and pending <= self.threshold:
            self._start_pass(now)  # exact count (QEMU syncs before deciding)
            if self.remaining_bytes() <= self.threshold:
                return Converged()
        budget_pages = MAX_CHUNK_PAGES
        if limit is not None:
            budget_pages = max(1, min(budget_pages,
                                      (limit - self._window_bytes) // self.page_size + 1))
        chunk = self._next_chunk(budget_pages)
        if chunk is None:
            self.passes_done += 1
            self._start_pass(now)
            chunk = self._next_chunk(budget_pages)
            if chunk is None:
                # Nothing dirty at all: converged by definition.
                return Converged()
        block, idx = chunk
        self.enc.reset_continue()
        extra = self._pass_sync()
        body, more = self._encode(block, idx, bulk=self.passes_done == 0)
        buffers: list[Buffer] = [self.enc.section_part(self._ram_sid)]
        buffers += body
        buffers += [self.enc.eos(), self.enc.footer(self._ram_sid)]
        return Send(buffers, extra=extra + more)

    def _pass_sync(self) -> list[tuple[int, list[Buffer]]]:
        """SYNC packets on every multifd channel when a new pass began.

        Within a pass a page is sent once; across passes it may go on two
        channels, so the destination's channels meet at a barrier on every
        SYNC and no newer copy can be overtaken by an older one."""
        if not self.multifd_channels or not self._pass_changed:
            return []
        self._pass_changed = False
        out = []
        for ch in range(1, self.multifd_channels + 1):
            out.append((ch, [mfd.sync_packet(self.profile, self._multifd_packet)]))
            self._multifd_packet += 1
        return out

    def sent(self, nbytes: int, now: float, *, multifd: int = 0) -> None:
        """The driver wrote ``nbytes`` (plus ``multifd`` bytes on extra channels)."""
        total = nbytes + multifd
        self.stats.transferred += total
        self.stats.multifd_bytes += multifd
        if self.stop_time is None:
            self.stats.precopy_bytes += total
        else:
            self.stats.downtime_bytes += total
        self._window_bytes += total
        self._sync_period_xfer += total

    def _window_limit(self) -> Optional[int]:
        bw = int(self._param("max-bandwidth"))
        if bw <= 0 or bw >= (1 << 62):
            return None
        return max(1, int(bw * BUFFER_DELAY))

    def _roll_window(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed < BUFFER_DELAY:
            return
        self.bandwidth = self._window_bytes / elapsed if elapsed > 0 else 0.0
        downtime_ms = int(self._param("downtime-limit"))
        self.threshold = self.bandwidth * downtime_ms / 1000.0
        pending = self.remaining_bytes()
        if self.bandwidth > 0:
            self.expected_downtime = pending / self.bandwidth
        self.stats.mbps = self.bandwidth * 8 / 1e6
        self.stats.pages_per_second = int(self._window_pages / elapsed)
        self._window_bytes = 0
        self._window_pages = 0
        self._window_start = now

    # ------------------------------------------------------------ encoding
    def _encode(self, block: RAMBlock, idx: np.ndarray, *,
                bulk: bool) -> tuple[list[Buffer], list[tuple[int, list[Buffer]]]]:
        n = len(idx)
        first, last = int(idx[0]), int(idx[-1])
        src = block.pages[first:last + 1] if last - first + 1 == n else block.pages[idx]
        words = src.view(np.uint64)
        nonzero = self._nonzero_pages(words)
        zero_idx = idx[~nonzero]
        all_nonzero = bool(nonzero.all())
        norm_idx = idx if all_nonzero else idx[nonzero]
        norm_data = src if all_nonzero else src[nonzero]
        self.stats.duplicate += len(zero_idx)
        self._window_pages += n
        out: list[Buffer] = []
        out += self.enc.zero_pages(block, zero_idx)
        extra: list[tuple[int, list[Buffer]]] = []
        if len(norm_idx) == 0:
            return out, extra
        xbzrle, channels = self._page_features()
        if xbzrle is not None:
            if not bulk:
                return out + self._xbzrle_pages(block, norm_idx, norm_data), extra
            self._xbzrle_fill(block, norm_idx, norm_data)
        if self.caps.get("compress"):
            return out + self._compress_pages(block, norm_idx, norm_data), extra
        self.stats.normal += len(norm_idx)
        self.stats.normal_bytes += len(norm_idx) * self.page_size
        if channels:
            self._multifd_next = self._multifd_next % channels + 1
            extra.append((self._multifd_next,
                          mfd.page_packet(self.profile, block, norm_idx, norm_data,
                                          self._multifd_packet, self.page_size)))
            self._multifd_packet += 1
            return out, extra
        out += self.enc.normal_pages(block, norm_idx, norm_data)
        return out, extra

    def _page_features(self) -> tuple[Optional[XbzrleCache], int]:
        """The XBZRLE cache and the multifd channel count the next chunk's
        data pages use (postcopy sends its pages plain: see PostcopySource)."""
        return self.xbzrle, self.multifd_channels

    def _nonzero_pages(self, words: np.ndarray) -> np.ndarray:
        """Which pages of ``words`` (pages x words) hold a non-zero byte.

        A page whose first word is non-zero is non-zero, so only the others
        need a full read: random RAM costs one cache line per page.  Where
        most pages are zero (this chunk's probe says so, or the last chunk
        was so) every page is read anyway, and the read is split across
        ``scan_map``'s workers, since one core does not reach the memory
        bandwidth."""
        n = len(words)
        if not self._zero_heavy:
            nonzero = words[:, 0] != 0
            maybe_zero = np.flatnonzero(~nonzero)
            if maybe_zero.size <= n // 4:
                if maybe_zero.size:
                    nonzero[maybe_zero] = words[maybe_zero].any(axis=1)
                return nonzero
        if n >= 2 * SCAN_SPLIT_PAGES:
            pieces = [words[a:a + SCAN_SPLIT_PAGES] for a in range(0, n, SCAN_SPLIT_PAGES)]
            nonzero = np.concatenate(self.scan_map(_nonzero_rows, pieces))
        else:
            nonzero = _nonzero_rows(words)
        self._zero_heavy = int(np.count_nonzero(nonzero)) <= (3 * n) // 4
        return nonzero

    def _xbzrle_fill(self, block: RAMBlock, idx: np.ndarray, data: np.ndarray) -> None:
        base = self._xbzrle_key_base(block)
        for i, page in enumerate(idx.tolist()):
            self.xbzrle.insert(base + page, data[i])  # type: ignore[union-attr]

    def _xbzrle_key_base(self, block: RAMBlock) -> int:
        base = 0
        for b in self.guest.blocks.values():
            if b is block:
                return base
            base += b.npages
        return base

    def _xbzrle_pages(self, block: RAMBlock, idx: np.ndarray,
                      data: np.ndarray) -> list[Buffer]:
        cache = self.xbzrle
        assert cache is not None
        out: list[Buffer] = []
        normal_idx: list[int] = []
        normal_rows: list[int] = []
        base = self._xbzrle_key_base(block)
        limit = self.page_size - 16
        for i, page in enumerate(idx.tolist()):
            current = np.array(data[i])  # a stable copy: the vCPU may write meanwhile
            old = cache.lookup(base + page)
            encoded = xbzrle_encode(old, current, limit) if old is not None else None
            if old is not None and encoded is None:
                cache.overflow += 1
            cache.insert(base + page, current)
            if encoded is None:
                normal_idx.append(page)
                normal_rows.append(i)
                continue
            if not encoded:
                continue  # unchanged since last sent
            payload = self.enc.xbzrle_payload(encoded)
            out.append(self.enc.special_page(block, "f_xbzrle", page, payload))
            cache.pages += 1
            cache.bytes += len(payload)
            self.stats.xbzrle_pages += 1
            self.stats.xbzrle_bytes += len(payload)
        if normal_idx:
            rows = np.array(normal_rows)
            out += self.enc.normal_pages(block, np.array(normal_idx), data[rows])
            self.stats.normal += len(normal_idx)
            self.stats.normal_bytes += len(normal_idx) * self.page_size
        return out

    def _compress_pages(self, block: RAMBlock, idx: np.ndarray,
                        data: np.ndarray) -> list[Buffer]:
        level = int(self._param("compress-level"))
        blobs = self.parallel_map(lambda row: zlib.compress(row.tobytes(), level), data)
        out: list[Buffer] = []
        for page, blob in zip(idx.tolist(), blobs):
            out.append(self.enc.special_page(block, "f_compress", page,
                                             self.enc.compressed_payload(blob)))
            self.stats.compressed_size += len(blob)
        self.stats.compressed_pages += len(blobs)
        return out

    # ------------------------------------------------------------ switchover
    def switchover(self) -> bool:
        """Before completion: active -> pre-switchover if the capability is on.
        Returns True when the caller must wait for migrate-continue."""
        if self.caps.get("pause-before-switchover"):
            return self.cell.fire(ROW["pre_switchover"])
        return False

    def continue_switchover(self) -> bool:
        """migrate-continue arrived: pre-switchover -> device."""
        return self.cell.fire(ROW["device"])

    def completion(self, now: float) -> Iterator[Send]:
        """The final pass with the vCPU stopped, device state and EOF."""
        self.stop_time = now
        self.guest.sync_dirty_log(self.bitmaps)
        self.stats.dirty_sync_count += 1
        if self.on_pass is not None:
            self.on_pass(self.stats.dirty_sync_count)
        self._pass = [(self.guest.blocks[name], np.flatnonzero(bm))
                      for name, bm in self.bitmaps.items() if bm.any()]
        self._pass_pos = 0
        self._pass_changed = True
        while True:
            chunk = self._next_chunk(MAX_CHUNK_PAGES)
            if chunk is None:
                break
            block, idx = chunk
            self.enc.reset_continue()
            extra = self._pass_sync()
            body, more = self._encode(block, idx, bulk=False)
            yield Send([self.enc.section_part(self._ram_sid)] + body + [
                self.enc.eos(), self.enc.footer(self._ram_sid)], extra=extra + more)
        extra: list[tuple[int, list[Buffer]]] = []
        enc = self.enc
        yield Send([enc.section_part(self._ram_sid, end=True), enc.eos(),
                    enc.footer(self._ram_sid)] + self.state_sections() + self.stream_end(),
                   extra=extra)

    def stream_end(self) -> list[bytes]:
        """EOF, and for a QEMU machine type the vmdesc QEMU sends after it
        (a QEMU destination waits for its first byte)."""
        out = [self.enc.eof()]
        if self.machine_type.qemu:
            out.append(self.enc.vmdesc([(GLOBALSTATE_SECTION,
                                         self.machine_type.globalstate_layout)]))
        return out

    def state_sections(self) -> list[bytes]:
        """The globalstate section (the machine type's layout) and, for
        livemig's own machine, the device section (the vCPU's state)."""
        enc = self.enc
        runstate = self.guest.run_state_before_stop.encode()
        layout = self.machine_type.globalstate_layout
        if layout == "QEMU_GLOBALSTATE_BODY":  # be32 size + NUL-padded buffer
            body = enc.layouts[layout].pack(len(runstate) + 1, runstate)
        else:
            body = enc.globalstate_body(runstate)
        out = [enc.section_start(self._sid_global, GLOBALSTATE_SECTION, 0, 1, full=True),
               body, enc.footer(self._sid_global)]
        if self._sid_device is not None:
            out += [enc.section_start(self._sid_device, DEVICE_SECTION, 0, 1, full=True),
                    enc.device_body(self.guest.save_device_state()),
                    enc.footer(self._sid_device)]
        return out

    def completed(self, now: float) -> bool:
        """Everything is sent (and the return path closed): -> completed."""
        ok = self.cell.fire(ROW["completed"])
        if ok:
            self._finish_times(now)
        return ok

    def _finish_times(self, now: float) -> None:
        if self.start_time is not None:
            self.total_time = now - self.start_time
        if self.stop_time is not None:
            self.downtime = now - self.stop_time

    # ------------------------------------------------------------ errors
    def stream_error(self, message: str, now: float, *, in_completion: bool = False) -> bool:
        """The transport broke: record error-desc and fail, as QEMU's
        migration_detect_error (which leaves cancelling alone) or, during
        completion, migration_completion's fail path."""
        if self.error_desc is None:
            self.error_desc = message
        state = self.state
        rows = {name: self.profile.sources_of(self.profile.transition(ROW[name]))
                for name in ("stream_failed", "completion_failed")}
        if state == self.st.setup:
            ok = self.cell.fire(ROW["connect_error"])
        elif state == self.st.cancelling:
            ok = False
        elif in_completion and state in rows["completion_failed"]:
            ok = self.cell.fire(ROW["completion_failed"])
        elif state in rows["stream_failed"]:
            ok = self.cell.fire(ROW["stream_failed"])
        else:
            ok = False
        self._finish_times(now)
        return ok

    def connect_error(self, message: str) -> bool:
        self.error_desc = message
        return self.cell.fire(ROW["connect_error"])

    def channel_connected(self, protocol: str, bidirectional: bool) -> bool:
        """migrate_fd_connect's checks once the main channel is open, in QEMU's
        order; False (and failed) when the migration cannot go on:

        * the return path (return-path, postcopy) needs a two-way channel --
          a one-way ``file:`` fails with row ``src.fd_connect.rp_failed``;
        * multifd needs a protocol that carries several channels, else
          multifd_save_setup fails (``src.fd_connect.multifd_failed``).

        QEMU only prints these texts; livemig also keeps them as error-desc."""
        if self.return_path and not bidirectional:
            self.error_desc = self.w.error("rp_open_failed")
            self.cell.fire(ROW["rp_failed"])
            return False
        if self.multifd_channels and \
                protocol not in self.profile.wire.multi_channel_protocols:
            self.error_desc = self.w.error("multifd_protocol")
            self.cell.fire(ROW["multifd_failed"])
            return False
        return True

    def multifd_error(self, message: str) -> bool:
        """A multifd channel failed to connect or to send: its thread fails the
        migration at once if it is setup, active, pre-switchover or device
        (QEMU's multifd_send_terminate_threads); the migration thread's own
        error then finds the state failed and changes nothing."""
        if self.error_desc is None:
            self.error_desc = message
        if self.state not in self.profile.sources_of(
                self.profile.transition(ROW["multifd_send_failed"])):
            return False
        return self.cell.fire(ROW["multifd_send_failed"])

    def cancel(self) -> bool:
        """migrate_cancel: any running state -> cancelling (a retried CAS)."""
        return self.cell.fire(ROW["cancel"])

    def cleanup(self, now: float) -> bool:
        """The cleanup BH: cancelling -> cancelled."""
        self._finish_times(now)
        return self.cell.fire(ROW["cancelled"])

    # ------------------------------------------------------------ return path
    def receive_rp(self, data: bytes) -> list[RPMessage]:
        """Bytes from the return path; records PONGs and SHUT.  Raises
        ReturnPathError on a malformed message or a sibling's error."""
        messages = self.rp_decoder.feed(data)
        for m in messages:
            if m.name == "PONG":
                self.pongs.append(int(m.value or 0))
            elif m.name == "SHUT":
                self.shut = int(m.value or 0)
                if self.shut:
                    raise ReturnPathError(self.w.error("rp_sibling_error", self.shut))
        return messages


def _nonzero_rows(words: np.ndarray) -> np.ndarray:
    """Rows (pages) with a non-zero word.  ``max`` rather than ``any``: the
    same answer, and numpy's vectorised max needs fewer instructions per word
    (about 1.5x faster where the data is in cache, equal when memory-bound)."""
    return words.max(axis=1) != 0


def _serial_map(fn: Callable, items: Any) -> list:
    return [fn(item) for item in items]
