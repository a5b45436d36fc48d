"""Multifd pages received in place: the destination's ``recv_into`` writes a
contiguous packet's pages straight into guest RAM (MultifdDecoder.get_buffer
hands out the RAM itself), every other packet goes through the decoder's
buffer.  Whatever the read sizes, RAM ends as the source sent it, nothing is
written outside the block, and a packet cut short counts no page."""
from __future__ import annotations

import random

import numpy as np
import pytest

from livemig.conformance.fuzz import CanaryBlock
from livemig.engine.multifd import MultifdDecoder, hello, page_packet, sync_packet
from livemig.engine.wire import wire_tables
from livemig.errors import StreamError
from livemig.spec import load_profile

P = load_profile("qemu-7.2")
W = wire_tables(P)
PAGE = 4096
NPAGES = 1024


def _block() -> CanaryBlock:
    return CanaryBlock("pc.ram", NPAGES * PAGE, PAGE)


def _packets(block, idx: np.ndarray, data: np.ndarray, number: int = 1) -> bytes:
    return b"".join(bytes(memoryview(b).cast("B")) if not isinstance(b, bytes) else b
                    for b in page_packet(P, block, idx, data, number, PAGE))


def _receive(dec: MultifdDecoder, stream: bytes, rng: random.Random) -> None:
    """What the destination's channel thread does, with reads of random size:
    ``get_buffer``, a ``recv_into`` (here a copy of at most the buffer's
    length), ``buffer_updated``; a SYNC hold is released at once (one channel)."""
    pos = 0
    while pos < len(stream):
        buf = dec.get_buffer(rng.choice([1, 7, 100, 4096, 70000, 1 << 20]))
        n = min(len(buf), len(stream) - pos)
        assert n > 0
        buf[:n] = stream[pos:pos + n]
        pos += n
        dec.buffer_updated(n)
        while dec.held:
            dec.release()


@pytest.mark.parametrize("seed", range(6))
def test_pages_land_as_sent_whatever_the_read_sizes(seed):
    rng = random.Random(seed)
    src = np.random.default_rng(seed).integers(0, 256, (NPAGES, PAGE), dtype=np.uint8)
    block = _block()
    runs = [np.arange(0, 300), np.arange(300, 301),            # contiguous runs
            np.array([900, 5, 77, 512]), np.arange(301, 700),  # scattered, then contiguous
            np.arange(700, 1024)]
    stream = hello(P, 1)
    for number, idx in enumerate(runs, start=1):
        stream += _packets(block, idx, src[idx], number)
        if number == 3:
            stream += sync_packet(P, number)
    dec = MultifdDecoder(P, {"pc.ram": block})
    _receive(dec, stream, rng)
    sent = np.unique(np.concatenate(runs))
    assert np.array_equal(block.pages[sent], src[sent])
    assert dec.pages == sum(len(r) for r in runs)
    assert dec.syncs == 1
    assert block.intact()


def test_a_contiguous_packet_is_received_into_guest_ram_itself():
    block = _block()
    idx = np.arange(10, 20)
    data = np.full((10, PAGE), 0xAB, dtype=np.uint8)
    stream = hello(P, 1) + _packets(block, idx, data)
    head = len(stream) - 10 * PAGE  # hello, packet header, name, offsets
    dec = MultifdDecoder(P, {"pc.ram": block})
    pos = 0
    while pos < head:  # each read stops at the end of the part it is in
        buf = dec.get_buffer()
        assert pos + len(buf) <= head
        buf[:] = stream[pos:pos + len(buf)]
        pos += len(buf)
        dec.buffer_updated(len(buf))
    buf = dec.get_buffer()
    assert len(buf) == 10 * PAGE
    assert np.shares_memory(np.frombuffer(buf, dtype=np.uint8), block.pages[10:20])
    buf[:] = stream[head:]
    dec.buffer_updated(len(buf))
    assert dec.pages == 10
    assert (block.pages[10:20] == 0xAB).all() and not block.pages[20:].any()


def test_offsets_past_the_block_are_refused_before_any_page_is_written():
    block = _block()
    other = CanaryBlock("pc.ram", 2 * NPAGES * PAGE, PAGE)  # a larger source block
    idx = np.arange(NPAGES - 2, NPAGES + 2)  # runs two pages past our block's end
    stream = hello(P, 1) + _packets(other, idx, np.ones((4, PAGE), dtype=np.uint8))
    dec = MultifdDecoder(P, {"pc.ram": block})
    with pytest.raises(StreamError) as err:
        _receive(dec, stream, random.Random(1))
    assert err.value.message == W.error("ram_bad_offset", NPAGES * PAGE)
    assert not block.pages.any() and block.intact()
    assert dec.pages == 0


def test_a_packet_cut_short_counts_no_page():
    block = _block()
    idx = np.arange(0, 64)
    stream = hello(P, 1) + _packets(block, idx, np.ones((64, PAGE), dtype=np.uint8))
    dec = MultifdDecoder(P, {"pc.ram": block})
    _receive(dec, stream[:-PAGE // 2], random.Random(2))  # the channel breaks here
    assert dec.pages == 0  # the packet never completed: none of it counts as loaded
    assert block.intact()
