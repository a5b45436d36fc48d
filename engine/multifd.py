"""Multifd: page data on extra connections, livemig's packet format.

QEMU 7.2's multifd packets are not reproduced byte for byte; livemig uses
this documented format (all integers big-endian):

Channel opening (first bytes of every extra connection)::

    be32 MULTIFD_MAGIC (from the spec) | be32 MULTIFD_VERSION | u8 channel id (1..n)

The destination tells channels apart from the main stream by that first
be32, as QEMU does (QEMU_VM_FILE_MAGIC means main, MULTIFD_MAGIC multifd).

Packet::

    be32 flags (bit 0: SYNC) | be32 npages | be64 packet number |
    u8 idlen | idstr (RAM block) | npages x be64 page offset (bytes) |
    npages x page data

A SYNC packet has no pages.  When a new dirty-bitmap pass begins, the
source puts one SYNC packet on every channel before that pass's pages; a
destination channel that reads a SYNC waits at a barrier until every channel
has read its SYNC (QEMU's multifd_send_sync_main / the receive threads'
sem_sync), so a page re-sent in a later pass on another channel can never be
overtaken by its older copy.

The decoder is sans-I/O and never waits: after a SYNC packet it *holds*
(:attr:`MultifdDecoder.held`) and parses nothing more, keeping the bytes
behind the SYNC, until its owner calls :meth:`MultifdDecoder.release`; the
receive program (``destination_driver``) records the arrival in
:class:`SyncPoints` and waits for the other channels there.  At the end of the stream the source shuts the
channels' write side; the destination's main loader, on EOF, waits until
every channel has reached end-of-file with all packets applied, so RAM is
complete when the main stream says it is.  Zero pages stay on the main
channel as ZERO records.

Pages land in place.  The decoder asks for only the bytes of the packet
part it is at (the fixed header, then block name and offsets), so a
receive never reads past the offsets.  When a packet's offsets are one
contiguous, valid run of its block, :meth:`MultifdDecoder.get_buffer`
returns that run of guest RAM itself and the socket's ``recv_into`` writes
the pages there: one copy (the kernel's), not two.  Other packets go through
the decoder's buffer.  The offsets are checked against the block before its
memory is handed out, so no byte is written outside it.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from livemig.engine.guest import RAMBlock
from livemig.engine.layouts import layouts
from livemig.engine.wire import wire_tables
from livemig.errors import StreamError
from livemig.spec.schema import Profile

FLAG_SYNC = 1


def hello(profile: Profile, channel: int) -> bytes:
    w = wire_tables(profile)
    return layouts(profile)["MULTIFD_HELLO"].pack(w.multifd_magic, w.multifd_version, channel)


def sync_packet(profile: Profile, number: int) -> bytes:
    return layouts(profile)["MULTIFD_PACKET_HEADER"].pack(FLAG_SYNC, 0, number, 0)


PACKET_PAGES = 128  # pages per packet: the receiver's working set stays in cache


def page_packet(profile: Profile, block: RAMBlock, idx: np.ndarray, data: np.ndarray,
                number: int, page_size: int) -> list:
    """Buffers of packets carrying ``idx`` (pages of ``block``) with ``data``."""
    pack_header = layouts(profile)["MULTIFD_PACKET_HEADER"].pack
    name = block.name.encode()
    offsets = (idx.astype(np.uint64) * np.uint64(page_size)).astype(">u8")
    data = np.ascontiguousarray(data)
    out: list = []
    for a in range(0, len(idx), PACKET_PAGES):
        b = min(a + PACKET_PAGES, len(idx))
        out += [pack_header(0, b - a, number, len(name)) + name, offsets[a:b], data[a:b]]
    return out


class MultifdDecoder:
    """One destination multifd channel: parses hello and packets, writes pages."""

    def __init__(self, profile: Profile, blocks: dict[str, RAMBlock]) -> None:
        self.w = wire_tables(profile)
        L = layouts(profile)
        self._hello = L["MULTIFD_HELLO"]
        self._hdr = L["MULTIFD_PACKET_HEADER"].struct
        self.blocks = blocks
        self.page_size = self.w.page_size
        self._buf = np.empty(2 << 20, dtype=np.uint8)
        self._start = 0
        self._end = 0
        #: the guest RAM of the packet being received in place (a byte view of
        #: a contiguous page run), and how many of its bytes have arrived
        self._direct: Optional[np.ndarray] = None
        self._direct_got = 0
        self._direct_pages = 0
        self._direct_sync = False
        self.channel: Optional[int] = None
        #: SYNC packets parsed so far
        self.syncs = 0
        #: stopped after a SYNC until :meth:`release`
        self.held = False
        self.pages = 0

    def get_buffer(self, want: int = 512 << 10) -> memoryview:
        """Writable memory for the next ``recv_into``: the rest of the guest
        pages being received in place, or the decoder's buffer, at most up to
        the end of the packet part being read."""
        return self._writable(want, to_part_end=True)

    def _writable(self, want: int, *, to_part_end: bool) -> memoryview:
        if self._direct is not None:
            return memoryview(self._direct)[self._direct_got:]
        if to_part_end:
            want = min(want, self._next_part())
        pending = self._end - self._start
        if self._start and pending <= (64 << 10) or len(self._buf) - self._end < want:
            if len(self._buf) - pending < want:
                bigger = np.empty(max(2 * len(self._buf), pending + want), dtype=np.uint8)
                bigger[:pending] = self._buf[self._start:self._end]
                self._buf = bigger
            else:
                self._buf[:pending] = self._buf[self._start:self._end].copy()
            self._start, self._end = 0, pending
        return memoryview(self._buf)[self._end:self._end + want]

    def buffer_updated(self, nbytes: int) -> None:
        if self._direct is not None:
            self._direct_got += nbytes
            if self._direct_got == len(self._direct):
                self._direct_done()
            return
        self._end += nbytes
        if not self.held:
            self._parse()

    def _next_part(self) -> int:
        """Bytes still missing from the part of the stream being read (the
        hello, a packet header, its name and offsets), or a large read when
        the buffer holds a packet whose pages come through it."""
        pending = self._end - self._start
        if self.channel is None:
            return max(1, self._hello.size - pending)
        hdr = self._hdr
        if pending < hdr.size:
            return hdr.size - pending
        _flags, npages, _number, idlen = hdr.unpack_from(self._buf, self._start)
        head = hdr.size + idlen + 8 * npages
        if pending < head:
            return head - pending
        return max(1, head + npages * self.page_size - pending)

    def _direct_done(self) -> None:
        self.pages += self._direct_pages
        self._direct = None
        self._direct_got = 0
        if self._direct_sync:
            self._direct_sync = False
            self.syncs += 1
            self.held = True
        elif not self.held:
            self._parse()

    def release(self) -> None:
        """Every channel met at this SYNC: parse on (maybe up to the next)."""
        self.held = False
        self._parse()

    def feed(self, data: bytes) -> None:
        """Bytes of a channel that is alone (a barrier of one): every SYNC
        is released at once."""
        mv = memoryview(data).cast("B")
        while len(mv):
            # bytes in hand need no stop at each part's end (that only saves
            # a copy for bytes still to be received): many packets per copy
            buf = self._writable(len(mv), to_part_end=False)
            n = min(len(buf), len(mv))
            buf[:n] = mv[:n]
            mv = mv[n:]
            self.buffer_updated(n)
            while self.held:
                self.release()

    def _parse(self) -> None:
        buf = self._buf
        pos = self._start
        end = self._end
        if self.channel is None:
            if end - pos < self._hello.size:
                return
            (magic, version, ch), pos = self._hello.unpack_from(buf, pos, end)
            if magic != self.w.multifd_magic or version != self.w.multifd_version:
                raise StreamError(self.w.error("not_a_stream"))
            self.channel = ch
        hdr = self._hdr
        while end - pos >= hdr.size:
            flags, npages, _number, idlen = hdr.unpack_from(buf, pos)
            if npages > self.w.max_multifd_pages:  # bound what we buffer
                raise StreamError(self.w.error("multifd_too_many_pages", npages,
                                               self.w.max_multifd_pages))
            head = hdr.size + idlen + 8 * npages
            need = head + npages * self.page_size
            if end - pos < (head if npages else need):
                break
            p = pos + hdr.size
            if npages:
                name = buf[p:p + idlen].tobytes().decode(errors="replace")
                block = self.blocks.get(name)
                if block is None:
                    raise StreamError(self.w.error("ram_unknown_block", name))
                p += idlen
                offsets = np.frombuffer(buf, ">u8", npages, p).astype(np.uint64)
                p += 8 * npages
                bad = (offsets >= block.used_length) | (offsets % self.page_size != 0)
                if bad.any():
                    raise StreamError(self.w.error("ram_bad_offset", int(offsets[bad][0])))
                idx = (offsets // np.uint64(self.page_size)).astype(np.intp)
                first = int(idx[0])
                in_place = bool(np.all(np.diff(idx) == 1)) if npages > 1 else True
                if in_place and end - pos < need:
                    # a contiguous run (checked above: inside the block):
                    # what is buffered goes in now, the rest is received there
                    region = block.pages[first:first + npages].view()
                    region.shape = (-1,)  # raises rather than copy: writes must land in RAM
                    have = end - p
                    region[:have] = buf[p:end]
                    self._direct_pages = npages
                    self._start = self._end = 0
                    self._direct, self._direct_got = region, have
                    self._direct_sync = bool(flags & FLAG_SYNC)
                    return
                if end - pos < need:
                    break
                block.pages[idx] = buf[p:p + npages * self.page_size].reshape(
                    npages, self.page_size)
                self.pages += npages
            pos += need
            self._start = pos
            if flags & FLAG_SYNC:
                self.syncs += 1
                self.held = True
                return
        self._start = pos


class SyncPoints:
    """Where the ``n`` receive channels are: channel slot i has reached its
    ``reached[i]``-th SYNC.  Each slot is written by its own channel only, so
    the channels share it without a lock; a channel at its k-th SYNC goes on
    once :meth:`met` (k) holds, or the barrier is broken (a channel failed)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reached = [0] * n
        self.broken = False

    def arrive(self, slot: int, k: int) -> None:
        self.reached[slot] = k

    def met(self, k: int) -> bool:
        return self.broken or min(self.reached) >= k

    def break_(self) -> None:
        self.broken = True
