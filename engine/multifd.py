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

A SYNC packet has no pages.  Before every EOS of a ``ram`` PART/END section
the source puts one SYNC packet on every channel; the destination's main
loader, on that EOS, waits until every channel has applied all packets up to
its SYNC (QEMU's multifd_send_sync_main / multifd_recv_sync_main), so RAM is
complete when the main stream says it is.  Zero pages stay on the main
channel as ZERO records.
"""
from __future__ import annotations

import struct
import threading
from typing import Optional

import numpy as np

from livemig.engine.guest import RAMBlock
from livemig.engine.wire import wire_tables
from livemig.errors import StreamError
from livemig.spec.schema import Profile

FLAG_SYNC = 1
_HDR = struct.Struct(">IIQB")


def hello(profile: Profile, channel: int) -> bytes:
    w = wire_tables(profile)
    return struct.pack(">IIB", w.multifd_magic, w.multifd_version, channel)


def sync_packet(number: int) -> bytes:
    return _HDR.pack(FLAG_SYNC, 0, number, 0)


def page_packet(block: RAMBlock, idx: np.ndarray, data: np.ndarray, number: int,
                page_size: int) -> list:
    name = block.name.encode()
    head = _HDR.pack(0, len(idx), number, len(name)) + name
    offsets = (idx.astype(np.uint64) * np.uint64(page_size)).astype(">u8")
    return [head, offsets, np.ascontiguousarray(data)]


class MultifdDecoder:
    """One destination multifd channel: parses hello and packets, writes pages."""

    def __init__(self, profile: Profile, blocks: dict[str, RAMBlock]) -> None:
        self.w = wire_tables(profile)
        self.blocks = blocks
        self.page_size = self.w.page_size
        self._buf = bytearray()
        self.channel: Optional[int] = None
        self.syncs = 0
        self.pages = 0
        self.cond = threading.Condition()

    def feed(self, data: bytes) -> None:
        self._buf += data
        buf = self._buf
        pos = 0
        if self.channel is None:
            if len(buf) < 9:
                return
            magic, version, ch = struct.unpack_from(">IIB", buf, 0)
            if magic != self.w.multifd_magic or version != self.w.multifd_version:
                raise StreamError(self.w.error("not_a_stream"))
            self.channel = ch
            pos = 9
        while len(buf) - pos >= _HDR.size:
            flags, npages, _number, idlen = _HDR.unpack_from(buf, pos)
            need = _HDR.size + idlen + npages * (8 + self.page_size)
            if len(buf) - pos < need:
                break
            p = pos + _HDR.size
            if npages:
                name = bytes(buf[p:p + idlen]).decode(errors="replace")
                block = self.blocks.get(name)
                if block is None:
                    raise StreamError(self.w.error("ram_unknown_block", name))
                p += idlen
                offsets = np.frombuffer(buf, ">u8", npages, p).astype(np.uint64)
                p += 8 * npages
                if (offsets >= block.used_length).any() or (offsets % self.page_size).any():
                    bad = int(offsets[(offsets >= block.used_length)
                                      | (offsets % self.page_size != 0)][0])
                    raise StreamError(self.w.error("ram_bad_offset", bad))
                data = np.frombuffer(buf, np.uint8, npages * self.page_size, p)
                block.pages[(offsets // np.uint64(self.page_size)).astype(np.intp)] = \
                    data.reshape(npages, self.page_size)
                del data  # release the view before the buffer is trimmed
                self.pages += npages
            pos += need
            if flags & FLAG_SYNC:
                with self.cond:
                    self.syncs += 1
                    self.cond.notify_all()
        del buf[:pos]
