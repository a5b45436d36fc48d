"""Codec round trips and malformed inputs: QEMU's error texts, no write outside a block."""
from __future__ import annotations

import struct

import numpy as np
import pytest

from livemig.engine.guest import RAMBlock
from livemig.engine.stream import (
    CommandReceived, Configuration, EndOfStream, Header, RamSetup, StreamDecoder, StreamEncoder,
)
from livemig.engine.wire import wire_tables
from livemig.engine import xbzrle
from livemig.errors import StreamError
from livemig.spec import load_profile

P = load_profile("qemu-7.2")
W = wire_tables(P)
PS = W.page_size


def blocks(n=64):
    b = RAMBlock("pc.ram", n * PS)
    s = RAMBlock("small.ram", 4 * PS)
    return {"pc.ram": b, "small.ram": s}


def stream_of(src, pages, *, machine="m", zero=(), chunks=1):
    enc = StreamEncoder(P)
    out = [enc.header(), enc.configuration(machine), enc.section_start(0, "ram", 0, 4),
           enc.ram_setup(list(src.values())), enc.footer(0)]
    blk = src["pc.ram"]
    for part in np.array_split(np.asarray(pages), chunks):
        if len(part) == 0:
            continue
        enc.reset_continue()
        out.append(enc.section_part(0))
        out += enc.normal_pages(blk, part)
        out.append(enc.eos())
        out.append(enc.footer(0))
    if len(zero):
        enc.reset_continue()
        out.append(enc.section_part(0))
        out += enc.zero_pages(blk, np.asarray(zero))
        out += [enc.eos(), enc.footer(0)]
    out += [enc.section_part(0, end=True), enc.eos(), enc.footer(0), enc.eof()]
    return b"".join(memoryview(b).cast("B").tobytes() for b in out)


def test_round_trip_byte_by_byte_and_in_chunks():
    src = blocks()
    rng = np.random.default_rng(1)
    src["pc.ram"].pages[:] = rng.integers(0, 256, src["pc.ram"].pages.shape, dtype=np.uint8)
    data = stream_of(src, np.arange(0, 64), chunks=3)
    for step in (1, 7, 4105, len(data)):
        dst = blocks()
        dec = StreamDecoder(P, dst, machine="m")
        events = []
        for i in range(0, len(data), step):
            events += dec.feed(data[i:i + step])
        assert isinstance(events[0], Header)
        assert isinstance(events[1], Configuration)
        assert any(isinstance(e, RamSetup) for e in events)
        assert isinstance(events[-1], EndOfStream)
        assert (dst["pc.ram"].pages == src["pc.ram"].pages).all()
        assert dec.counters.normal == 64


def test_zero_pages_clear_touched_pages():
    src = blocks()
    dst = blocks()
    dst["pc.ram"].pages[3] = 9
    dec = StreamDecoder(P, dst, machine="m")
    dec._touched["pc.ram"][:] = True  # not pristine
    dec.feed(stream_of(src, [], zero=[1, 2, 3]))
    assert not dst["pc.ram"].pages[3].any()
    assert dec.counters.duplicate == 3


def _header_config():
    enc = StreamEncoder(P)
    return enc.header() + enc.configuration("m")


@pytest.mark.parametrize("data,key,args", [
    (b"XXXX\0\0\0\3", "not_a_stream", ()),
    (struct.pack(">II", W.magic, 2), "version_v2", ()),
    (struct.pack(">II", W.magic, 9), "version_unsupported", ()),
    (struct.pack(">II", W.magic, W.version) + b"\x01", "configuration_missing", ()),
])
def test_header_errors(data, key, args):
    dec = StreamDecoder(P, blocks(), machine="m")
    with pytest.raises(StreamError) as exc:
        dec.feed(data)
    assert exc.value.message == W.error(key, *args)


def test_machine_mismatch():
    enc = StreamEncoder(P)
    dec = StreamDecoder(P, blocks(), machine="local")
    with pytest.raises(StreamError, match="Machine type received is 'other' and local is 'local'"):
        dec.feed(enc.header() + enc.configuration("other") + b"\0")


def test_uuid_mismatch():
    enc = StreamEncoder(P)
    dec = StreamDecoder(P, blocks(), machine="m", uuid=b"\x11" * 16)
    with pytest.raises(StreamError, match="UUID received is 22222222-2222"):
        dec.feed(enc.header() + enc.configuration("m", uuid=b"\x22" * 16) + b"\0")


def _ram_start():
    enc = StreamEncoder(P)
    return enc, _header_config() + enc.section_start(0, "ram", 0, 4)


def test_unknown_block_and_length_mismatch():
    enc, head = _ram_start()
    bad = struct.pack(">Q", PS | W.f_mem_size) + bytes([3]) + b"foo" + struct.pack(">Q", PS)
    with pytest.raises(StreamError) as exc:
        StreamDecoder(P, blocks(), machine="m").feed(head + bad)
    assert exc.value.message == 'Unknown ramblock "foo", cannot accept migration'
    bad = struct.pack(">Q", PS | W.f_mem_size) + bytes([6]) + b"pc.ram" + struct.pack(">Q", PS)
    with pytest.raises(StreamError) as exc:
        StreamDecoder(P, blocks(), machine="m").feed(head + bad)
    # QEMU 7.2's text (facts §11); 3.0 said "Length mismatch: ... in != ..."
    assert exc.value.message == "Size mismatch: pc.ram: 0x1000 != 0x40000: Invalid argument"
    p30 = load_profile("qemu-3.0")
    enc30 = StreamEncoder(p30)
    head30 = enc30.header() + enc30.configuration("m") + enc30.section_start(0, "ram", 0, 4)
    with pytest.raises(StreamError) as exc:
        StreamDecoder(p30, blocks(), machine="m").feed(head30 + bad)
    assert exc.value.message == "Length mismatch: pc.ram: 0x1000 in != 0x40000: Invalid argument"


def test_offsets_outside_a_block_are_refused_and_nothing_is_written():
    enc, head = _ram_start()
    dst = blocks()
    before = {k: v.bytes.copy() for k, v in dst.items()}
    page = b"\xAA" * PS
    # first record names the block, then a CONTINUE run whose 2nd page is out of range
    recs = (struct.pack(">Q", 0 | W.f_page) + bytes([9]) + b"small.ram" + page
            + struct.pack(">Q", 4 * PS | W.f_page | W.f_continue) + page)
    dec = StreamDecoder(P, dst, machine="m")
    with pytest.raises(StreamError) as exc:
        dec.feed(head + recs)
    assert exc.value.message == W.error("ram_bad_offset", 4 * PS)
    assert (dst["small.ram"].pages[0] == 0xAA).all()  # the valid page loaded
    assert (dst["pc.ram"].bytes == before["pc.ram"]).all()
    # a CONTINUE run past the end: vectorised path
    dst = blocks()
    recs = (struct.pack(">Q", 0 | W.f_page) + bytes([9]) + b"small.ram" + page
            + b"".join(struct.pack(">Q", o * PS | W.f_page | W.f_continue) + page
                       for o in (1, 2, 3, 4, 5)))
    with pytest.raises(StreamError, match="Illegal RAM offset 4000"):
        StreamDecoder(P, dst, machine="m").feed(head + recs)
    assert (dst["small.ram"].pages == 0xAA).all()
    # and the decoder refuses further input
    with pytest.raises(StreamError):
        dec.feed(b"\0")


def test_unknown_flags_compressed_and_continue_without_block():
    enc, head = _ram_start()
    with pytest.raises(StreamError, match="Unknown combination of migration flags: 0x1"):
        StreamDecoder(P, blocks(), machine="m").feed(head + struct.pack(">Q", W.f_full))
    with pytest.raises(StreamError, match="Received an unexpected compressed page"):
        StreamDecoder(P, blocks(), machine="m").feed(head + struct.pack(">Q", W.f_compress))
    with pytest.raises(StreamError, match='Unknown ramblock ""'):
        StreamDecoder(P, blocks(), machine="m").feed(
            head + struct.pack(">Q", W.f_page | W.f_continue) + b"\0" * PS)


def test_footer_errors():
    enc = StreamEncoder(P)
    b = blocks()
    data = _header_config() + enc.section_start(5, "ram", 0, 4) + enc.ram_setup(list(b.values()))
    with pytest.raises(StreamError, match="Missing section footer for ram"):
        StreamDecoder(P, blocks(), machine="m").feed(data + b"\x00")
    with pytest.raises(StreamError, match="Mismatched section id in footer for ram - read 0x6 "
                                          "expected 0x5"):
        StreamDecoder(P, blocks(), machine="m").feed(data + enc.footer(6))


def test_commands():
    enc = StreamEncoder(P)
    dec = StreamDecoder(P, blocks(), machine="m")
    with pytest.raises(StreamError, match=r"CMD_PING \(0x7\) received with no return path"):
        dec.feed(_header_config() + enc.command("PING", struct.pack(">I", 7)))
    dec = StreamDecoder(P, blocks(), machine="m")
    events = dec.feed(_header_config() + enc.command("OPEN_RETURN_PATH"))
    assert events[-1] == CommandReceived("OPEN_RETURN_PATH", b"")
    with pytest.raises(StreamError, match="MIG_CMD 0x63 unknown"):
        StreamDecoder(P, blocks(), machine="m").feed(_header_config() + b"\x08\x00\x63\x00\x00")
    with pytest.raises(StreamError, match="PING received with bad length - expecting 4, got 1"):
        StreamDecoder(P, blocks(), machine="m").feed(_header_config() + b"\x08\x00\x02\x00\x01x")
    with pytest.raises(StreamError, match="Unknown savevm section type 99"):
        StreamDecoder(P, blocks(), machine="m").feed(_header_config() + b"\x63")
    with pytest.raises(StreamError, match="Unknown savevm section or instance 'bogus' 0"):
        StreamDecoder(P, blocks(), machine="m").feed(
            _header_config() + enc.section_start(1, "bogus", 0, 1, full=True))


def test_xbzrle_round_trip_and_errors():
    rng = np.random.default_rng(3)
    old = rng.integers(0, 256, PS, dtype=np.uint8)
    new = old.copy()
    new[[0, 1, 100, 4095]] += 1
    new[2000:2100] = 7
    enc = xbzrle.encode(old, new, PS)
    assert enc and len(enc) < 300
    page = old.copy()
    xbzrle.decode_into(enc, page)
    assert (page == new).all()
    assert xbzrle.encode(old, old, PS) == b""
    assert xbzrle.encode(old, rng.integers(0, 256, PS, dtype=np.uint8), 100) is None
    with pytest.raises(ValueError):
        xbzrle.decode_into(b"\x80\x80\x80\x80\x80\x80", page)
    with pytest.raises(ValueError):
        xbzrle.decode_into(bytes([0xff, 0x3f, 5]) + b"x" * 5, page)  # beyond the page
