"""The vmdesc after a QEMU machine's EOF (issue 12): the destination reads
it before it reports completed -- as QEMU's loader does, so that the source
is not cut off while still writing it (a QEMU source then failed the
migration now and then) -- and checks that it describes the FULL sections
the stream carried, in order: the check that the device sections kept
opaque were split where QEMU's devices end.  Like QEMU, it does not need
the vmdesc: a channel that ends after EOF ends the stream."""
from __future__ import annotations

import json

import pytest
from qemuproc import record_qemu_stream

from livemig.engine.layouts import layouts
from livemig.engine.stream import EndOfStream, StreamDecoder
from livemig.engine.wire import wire_tables
from livemig.errors import StreamError
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")
W = layouts(PROFILE)
MACHINE = "pc-i440fx-7.2"


@pytest.fixture(scope="module")
def stream(tmp_path_factory) -> tuple[bytes, int]:
    """A real QEMU 7.2 stream and the offset of its vmdesc (just after EOF)."""
    data = record_qemu_stream(tmp_path_factory.mktemp("qemu"))[0]
    decoder = StreamDecoder(PROFILE, {}, machine=MACHINE)
    decoder.feed(data)
    assert decoder.finished and decoder.vmdesc is not None
    return data, _vmdesc_offset(data)


def _vmdesc_offset(data: bytes) -> int:
    """Where QEMU_VM_VMDESCRIPTION starts: it runs to the end of the file."""
    section = wire_tables(PROFILE).vmdescription
    for at in range(len(data) - 5, 0, -1):  # u8 section + be32 length + the JSON to the end
        if data[at] == section and int.from_bytes(data[at + 1:at + 5], "big") == len(data) - at - 5:
            return at
    raise AssertionError("no vmdesc in the stream")


def _decode(data: bytes, chunk: int = 0) -> StreamDecoder:
    decoder = StreamDecoder(PROFILE, {}, machine=MACHINE)
    if chunk:
        for at in range(0, len(data), chunk):
            decoder.feed(data[at:at + chunk])
    else:
        decoder.feed(data)
    return decoder


def test_the_vmdesc_describes_every_full_section(stream):
    data, _at = stream
    decoder = _decode(data)
    assert decoder.finished
    names = [d["name"] for d in decoder.vmdesc["devices"]]
    assert len(names) >= 29 and "globalstate" in names and "cpu" in names
    assert [(d["name"], d["instance_id"]) for d in decoder.vmdesc["devices"]] == \
        decoder.full_sections


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_in_pieces_the_same(stream, chunk):
    data, _at = stream
    tail = data[-20000:]  # RAM first in one go, then the devices and vmdesc in pieces
    decoder = StreamDecoder(PROFILE, {}, machine=MACHINE)
    decoder.feed(data[:-20000])
    for at in range(0, len(tail), chunk):
        assert not decoder.finished
        decoder.feed(tail[at:at + chunk])
    assert decoder.finished and decoder.vmdesc == _decode(data).vmdesc


def test_waits_for_the_vmdesc_then_ends_without_it(stream):
    data, at = stream
    decoder = _decode(data[:at])  # everything up to EOF
    assert not decoder.finished  # the vmdesc may still come
    assert decoder.input_ended() == [EndOfStream()]  # QEMU carries on without it
    assert decoder.finished and decoder.vmdesc is None
    half = _decode(data[:at + 100])  # cut inside the vmdesc
    assert half.input_ended() == [EndOfStream()] and half.finished


def test_a_channel_that_ends_before_eof_is_an_error(stream):
    data, at = stream
    decoder = _decode(data[:at - 1])
    with pytest.raises(StreamError, match="^Input/output error$"):
        decoder.input_ended()


def test_another_byte_after_eof_ends_the_stream(stream):
    data, at = stream
    decoder = _decode(data[:at] + b"\x00")
    assert decoder.finished and decoder.vmdesc is None


def _with_vmdesc(data: bytes, at: int, text: bytes) -> bytes:
    return data[:at] + W["VMDESCRIPTION"].pack(data[at], text)


def test_a_vmdesc_that_describes_other_sections_is_refused(stream):
    data, at = stream
    desc = json.loads(data[at + 5:])
    desc["devices"][3], desc["devices"][4] = desc["devices"][4], desc["devices"][3]
    with pytest.raises(StreamError, match=r"^livemig: the vmdesc describes device 3 as "
                                          r"\('.+', \d+\), but the stream carried"):
        _decode(_with_vmdesc(data, at, json.dumps(desc).encode()))
    desc = json.loads(data[at + 5:])
    del desc["devices"][-1]
    with pytest.raises(StreamError, match=r"describes device \d+ as nothing"):
        _decode(_with_vmdesc(data, at, json.dumps(desc).encode()))


@pytest.mark.parametrize("text, error", [
    (b"{not json", r"^vmdesc is not JSON: "),
    (b'{"page_size": 4096}', r"^vmdesc has no device list$"),
    (b"[1, 2]", r"^vmdesc has no device list$"),
])
def test_a_vmdesc_that_is_not_qemus_json_is_refused(stream, text, error):
    data, at = stream
    with pytest.raises(StreamError, match=error):
        _decode(_with_vmdesc(data, at, text))


@pytest.mark.parametrize("chunk", [64, 1000, 4096])
def test_each_full_section_is_counted_once_whatever_the_chunks(stream, chunk):
    """A FULL section whose body arrives in pieces is re-parsed from its
    header: it must still be listed once (a loaded CI saw a QEMU source
    fail when a section was listed twice and the vmdesc check refused)."""
    data, _at = stream
    decoder = _decode(data, chunk)  # the whole stream in pieces, as a socket gives it
    assert decoder.finished
    assert decoder.full_sections == _decode(data).full_sections
    assert len(decoder.full_sections) == len(set(decoder.full_sections))
