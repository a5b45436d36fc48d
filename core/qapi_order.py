"""Which unknown member QEMU 7.2 reports first ("Parameter 'x' is unexpected").

QEMU does not report the first unknown member *in request order*.  Observed
on 7.2: ``{"aaa": 1, "zzz": 1}`` and ``{"zzz": 1, "aaa": 1}`` both give
"Parameter 'zzz' is unexpected".  The order comes from two hash tables:

1. The JSON object is parsed into a QDict: 512 buckets, bucket =
   ``qdict_hash(key) % 512`` (the TDB string hash: start with
   ``0x238F13AF * len``, add each byte shifted left by ``(i * 5) % 24``,
   finish with ``1103515243 * v + 12345``, all modulo 2**32); iteration goes
   bucket by bucket, newest entry of a bucket first.
2. When the input visitor starts a struct it copies the QDict's keys, in that
   iteration order, into a GLib ``GHashTable`` (``g_str_hash``: djb2,
   ``h = h * 33 + byte`` from 5381).  GLib places a key at
   ``((hash * 11) mod 2**32) % mod`` with quadratic probing (step 1, 2, 3, ... masked by
   ``size - 1``); the table starts at 8 slots (mod 7) and grows or shrinks
   with GLib's in-place relocation.  Every member the visitor reads is
   removed (leaving a tombstone, and possibly shrinking the table); the
   first key left, in slot order, is the one reported.

This module reproduces that order from those facts (GLib 2.74, Debian
bookworm); ``conformance/test_qapi_order.py`` checks it against every recorded
case, and ``livemig.core.qapi`` uses it for its "unexpected" error.
"""
from __future__ import annotations

from typing import Iterable, Optional, Sequence

_M32 = 0xFFFFFFFF
QDICT_BUCKETS = 512
_MIN_SHIFT = 3
# GLib's table of moduli by shift (size = 1 << shift).
_PRIME_MOD = (1, 2, 3, 7, 13, 31, 61, 127, 251, 509, 1021, 2039, 4093, 8191, 16381, 32749,
              65521)
_UNUSED, _TOMBSTONE = 0, 1


def qdict_hash(key: str) -> int:
    """The QDict bucket hash of ``key`` (before ``% 512``)."""
    data = key.encode()
    value = (0x238F13AF * len(data)) & _M32
    for i, byte in enumerate(data):
        value = (value + (byte << ((i * 5) % 24))) & _M32
    return (1103515243 * value + 12345) & _M32


def qdict_order(keys: Iterable[str]) -> list[str]:
    """``keys`` (in insertion = JSON order) as a QDict iterates them."""
    buckets: dict[int, list[str]] = {}
    for key in keys:
        buckets.setdefault(qdict_hash(key) % QDICT_BUCKETS, []).insert(0, key)
    return [k for b in sorted(buckets) for k in buckets[b]]


def g_str_hash(key: str) -> int:
    value = 5381
    for byte in key.encode():
        value = ((value << 5) + value + byte) & _M32
    return value


class _GHashTable:
    """Just enough of GLib's GHashTable to know where each key sits."""

    def __init__(self) -> None:
        self.shift = _MIN_SHIFT
        self.size = 1 << self.shift
        self.mod = _PRIME_MOD[self.shift]
        self.hashes = [_UNUSED] * self.size
        self.keys: list[Optional[str]] = [None] * self.size
        self.nnodes = 0
        self.noccupied = 0

    def _index(self, h: int) -> int:
        return ((h * 11) & _M32) % self.mod  # guint arithmetic: wraps at 2**32

    def insert(self, key: str) -> None:
        h = g_str_hash(key)
        if h < 2:
            h = 2
        i = self._index(h)
        step = 0
        tomb = None
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == h and self.keys[i] == key:
                return
            if self.hashes[i] == _TOMBSTONE and tomb is None:
                tomb = i
            step += 1
            i = (i + step) & (self.size - 1)
        if tomb is not None:
            i = tomb
        else:
            self.noccupied += 1
        self.hashes[i], self.keys[i] = h, key
        self.nnodes += 1
        self._maybe_resize()

    def remove(self, key: str) -> None:
        h = g_str_hash(key)
        if h < 2:
            h = 2
        i = self._index(h)
        step = 0
        while self.hashes[i] != _UNUSED:
            if self.hashes[i] == h and self.keys[i] == key:
                self.hashes[i], self.keys[i] = _TOMBSTONE, None
                self.nnodes -= 1
                self._maybe_resize()
                return
            step += 1
            i = (i + step) & (self.size - 1)

    def _maybe_resize(self) -> None:
        if ((self.size > self.nnodes * 4 and self.size > 1 << _MIN_SHIFT)
                or self.size <= self.noccupied + self.noccupied // 16):
            self._resize()

    def _resize(self) -> None:
        old_size = self.size
        want = int(self.nnodes * 1.333)
        shift = 0
        while want:
            want >>= 1
            shift += 1
        self.shift = max(shift, _MIN_SHIFT)
        self.size = 1 << self.shift
        self.mod = _PRIME_MOD[self.shift]
        span = max(old_size, self.size)
        hashes = self.hashes + [_UNUSED] * (span - old_size)
        keys = self.keys + [None] * (span - old_size)
        moved = [False] * span
        mask = self.size - 1
        # GLib relocates in place: walk the old slots; each real entry goes to
        # the first slot of its probe chain not yet filled in this pass,
        # evicting whatever was there, which is placed next.
        for i in range(old_size):
            h = hashes[i]
            if h < 2:
                hashes[i], keys[i] = _UNUSED, None
                continue
            if moved[i]:
                continue
            k = keys[i]
            hashes[i], keys[i] = _UNUSED, None
            while True:
                j = ((h * 11) & _M32) % self.mod
                step = 0
                while moved[j]:
                    step += 1
                    j = (j + step) & mask
                moved[j] = True
                rh, rk = hashes[j], keys[j]
                hashes[j], keys[j] = h, k
                if rh < 2:
                    break
                h, k = rh, rk
        self.hashes, self.keys = hashes[:self.size], keys[:self.size]
        self.noccupied = self.nnodes

    def slot_order(self) -> list[str]:
        return [k for h, k in zip(self.hashes, self.keys) if h >= 2 and k is not None]


def unexpected_member(request_keys: Sequence[str], known: Sequence[str]) -> Optional[str]:
    """The member QEMU reports as unexpected, or None when every key is known.

    ``request_keys`` in JSON order; ``known`` are the struct's members in
    schema order (the visitor reads, and removes, those present in that order).
    """
    table = _GHashTable()
    for key in qdict_order(request_keys):
        table.insert(key)
    present = set(request_keys)
    for name in known:
        if name in present:
            table.remove(name)
    left = table.slot_order()
    return left[0] if left else None
