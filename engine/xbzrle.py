"""XBZRLE: QEMU's delta encoding of a page against the copy last sent.

Format (facts §7.3, QEMU's docs/devel/xbzrle.rst): the encoded page is a
sequence of ``zrun nzrun data`` triples where ``zrun`` (ULEB128) counts bytes
that did not change, ``nzrun`` (ULEB128) counts bytes that did, and ``data``
is those ``nzrun`` new bytes.  A trailing unchanged run is not written.  An
encoding that would not be smaller than a page is refused (the page then
travels as a normal page), as QEMU does.

:class:`XbzrleCache` is the source's page cache of ``xbzrle-cache-size``
bytes: direct-mapped on the page number, holding the content last sent, so a
cache hit can be delta-encoded.  Run detection is vectorised; only the runs
themselves are assembled in Python (this is not the default hot path).
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def _uleb(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_uleb(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 28:
            raise ValueError("truncated ULEB128")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode(old: np.ndarray, new: np.ndarray, limit: int) -> Optional[bytes]:
    """Encode ``new`` against ``old``; None if the result would exceed ``limit``."""
    changed = np.asarray(old) != np.asarray(new)
    if not changed.any():
        return b""
    edges = np.flatnonzero(np.diff(changed.astype(np.int8)))
    # run boundaries: starts of changed runs and their ends
    bounds = np.concatenate(([0], edges + 1, [changed.size]))
    runs = np.diff(bounds)
    raw = np.asarray(new).tobytes()
    # Assemble alternately: (unchanged, changed) pairs.
    out = bytearray()
    pos = 0
    starts = bounds[:-1].tolist()
    lengths = runs.tolist()
    flags = [bool(changed[s]) for s in starts]
    k = 0
    n = len(starts)
    while k < n:
        if flags[k]:
            z = 0
        else:
            z = lengths[k]
            pos += z
            k += 1
            if k >= n:
                break  # trailing unchanged run: not written
        nz = lengths[k]
        out += _uleb(z) + _uleb(nz) + raw[pos:pos + nz]
        pos += nz
        k += 1
        if len(out) > limit:
            return None
    return bytes(out)


def decode_into(data: bytes, page: np.ndarray) -> None:
    """Apply an encoded delta to ``page`` in place; ValueError if malformed."""
    size = page.shape[0]
    pos = d = 0
    staged = page.copy()
    while pos < len(data):
        z, pos = _read_uleb(data, pos)
        d += z
        if pos >= len(data):
            raise ValueError("missing nzrun")
        nz, pos = _read_uleb(data, pos)
        if nz == 0 or d + nz > size or pos + nz > len(data):
            raise ValueError("run out of bounds")
        staged[d:d + nz] = np.frombuffer(data, np.uint8, nz, pos)
        pos += nz
        d += nz
    if d > size:
        raise ValueError("page overflow")
    page[:] = staged


class XbzrleCache:
    """Direct-mapped cache of sent pages, ``size`` bytes in total."""

    def __init__(self, size: int, page_size: int) -> None:
        self.slots = max(1, size // page_size)
        self.page_size = page_size
        self.data = np.zeros((self.slots, page_size), dtype=np.uint8)
        self.tags = np.full(self.slots, -1, dtype=np.int64)
        self.hits = 0
        self.misses = 0
        self.overflow = 0
        self.pages = 0
        self.bytes = 0

    def lookup(self, key: int) -> Optional[np.ndarray]:
        slot = key % self.slots
        if self.tags[slot] == key:
            self.hits += 1
            return self.data[slot]
        self.misses += 1
        return None

    def insert(self, key: int, content: np.ndarray) -> None:
        slot = key % self.slots
        self.tags[slot] = key
        self.data[slot] = content

    def stats(self) -> dict:
        total = self.hits + self.misses
        return {"cache-size": self.slots * self.page_size, "bytes": self.bytes,
                "pages": self.pages, "cache-miss": self.misses,
                "cache-miss-rate": (self.misses / total) if total else 0.0,
                "encoding-rate": 0.0, "overflow": self.overflow}
