"""The spec's wire layouts and the packers compiled from them.

Sizes are QEMU's (facts §7); round trips and short inputs are checked for
every layout of every profile; and no engine module but the compiler writes
a ``struct`` format.
"""
from __future__ import annotations

import ast
import re
import struct
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from livemig.core.params import param
from livemig.engine.layouts import (
    Codec, LayoutError, NonZero, OutOfBounds, ShortInput, TrailingBytes, layouts,
)
from livemig.engine.rows import unimplemented_capabilities
from livemig.errors import ReturnPathError, SpecError, StreamError
from livemig.spec import load_all, load_profile

P = load_profile("qemu-7.2")
L = layouts(P)
ENGINE = Path(__file__).resolve().parent.parent / "engine"


# ------------------------------------------------------------------ sizes
@pytest.mark.parametrize("name,size", [
    ("STREAM_HEADER", 8), ("COMMAND_HEADER", 5), ("RP_HEADER", 4), ("SECTION_PART", 5),
    ("SECTION_FOOTER", 5), ("RAM_RECORD", 8), ("CONFIG_UUID", 16), ("MULTIFD_HELLO", 9),
    ("MULTIFD_PACKET_HEADER", 17), ("DISCARD_RANGE", 16), ("CHANNEL_MAGIC", 4),
    ("RP_REQ_PAGES", 12), ("RP_SHUT", 4), ("RP_PONG", 4), ("RP_RESUME_ACK", 4),
    ("CMD_PING", 4), ("CMD_POSTCOPY_ADVISE", 16), ("CMD_PACKAGED", 4),
])
def test_fixed_layouts_have_qemus_sizes(name, size):
    assert L[name].size == size
    assert P.wire.layout(name).size == size


@pytest.mark.parametrize("name,least", [
    ("RP_REQ_PAGES_ID", 14),  # 13 + an idstr of at least one byte
    ("CMD_POSTCOPY_RAM_DISCARD", 20),  # QEMU: 1 + 1 + 1 + 1 + 2 * 8
    ("RECV_BITMAP_TRAILER", 16), ("SECTION_START", 14), ("DEVICE_BODY", 4 + 8),
    ("XBZRLE_PAGE", 3), ("COMPRESSED_PAGE", 4), ("CMD_RECV_BITMAP", 1),
])
def test_variable_layouts_have_qemus_minimum(name, least):
    assert L[name].size is None
    assert L[name].min_size == least


def test_message_lengths_come_from_the_layouts():
    """The framing's fixed lengths (facts §7.1, §7.2) are the layouts' sizes."""
    rp = {m.name[len("MIG_RP_MSG_"):]: m for m in P.wire.return_path}
    cmd = {m.name[len("MIG_CMD_"):]: m for m in P.wire.commands}
    assert {k: m.length for k, m in rp.items()} == {
        "INVALID": None, "SHUT": 4, "PONG": 4, "REQ_PAGES_ID": None, "REQ_PAGES": 12,
        "RECV_BITMAP": None, "RESUME_ACK": 4}
    assert rp["REQ_PAGES_ID"].min_length == 14
    assert {k: m.length for k, m in cmd.items()} == {
        "INVALID": None, "OPEN_RETURN_PATH": 0, "PING": 4, "POSTCOPY_ADVISE": None,
        "POSTCOPY_LISTEN": 0, "POSTCOPY_RUN": 0, "POSTCOPY_RAM_DISCARD": None, "PACKAGED": 4,
        "ENABLE_COLO": 0, "POSTCOPY_RESUME": 0, "RECV_BITMAP": None}
    assert cmd["POSTCOPY_RAM_DISCARD"].min_length == 20


def test_framed_lengths_are_computed():
    """REQ_PAGES says 12 and REQ_PAGES_ID 13 + idlen in their headers, from
    the layout, and the bytes are QEMU's."""
    req = L.rp["REQ_PAGES"].pack(0x5000, 0x1000)
    assert req == struct.pack(">HHQI", 4, 12, 0x5000, 0x1000)
    for name in (b"a", b"pc.ram", b"x" * 255):
        raw = L.rp["REQ_PAGES_ID"].pack(0x5000, 0x1000, name)
        assert raw == struct.pack(">HHQIB", 3, 13 + len(name), 0x5000, 0x1000, len(name)) + name
    assert L.cmd["PING"].pack(3) == bytes([8]) + struct.pack(">HHI", 2, 4, 3)
    assert L.cmd["POSTCOPY_LISTEN"].pack() == bytes([8]) + struct.pack(">HH", 4, 0)
    discard = L.cmd["POSTCOPY_RAM_DISCARD"].pack(0, b"pc.ram", [(0, 4096), (8192, 4096)])
    assert discard == (bytes([8]) + struct.pack(">HH", 6, 2 + 6 + 1 + 32) + bytes([0, 6])
                       + b"pc.ram\0" + struct.pack(">QQQQ", 0, 4096, 8192, 4096))
    assert L["MULTIFD_HELLO"].pack(0x11223344, 1, 3) == struct.pack(">IIB", 0x11223344, 1, 3)


def test_every_profile_has_the_same_layouts():
    """The guest's device-state packer reads the default profile's."""
    first, *rest = load_all()
    for p in rest:
        assert p.wire.layouts == first.wire.layouts
        assert [m.payload for m in p.wire.commands] == [m.payload for m in first.wire.commands]


# ------------------------------------------------------------------ round trips
def _bound(value, default):
    if isinstance(value, str):
        value = P.wire.const(value)
    return default if value is None else value


def _field_strategy(f):
    ints = {"u8": 8, "be16": 16, "be32": 32, "be64": 64}
    if f.kind in ints:
        return st.integers(0, (1 << ints[f.kind]) - 1)
    if f.kind in ("uuid", "bytes100"):  # fixed-size bytes
        return st.binary(min_size=f.size, max_size=f.size)
    if f.kind == "array":
        item = st.tuples(*[_field_strategy(g) for g in f.item.fields])
        return st.lists(item, min_size=_bound(f.min, 0), max_size=min(_bound(f.max, 20), 20))
    cap = {"str8": 255, "str16": 600, "str32": 600, "str64": 600, "rest": 600}[f.kind]
    low = _bound(f.min, 0)
    return st.binary(min_size=low, max_size=max(low, min(_bound(f.max, cap), cap)))


def _values(codec: Codec):
    fields = [f for f in codec.layout.fields if f.kind != "nul"]
    return st.tuples(*[_field_strategy(f) for f in fields])


def _normal(values):
    return tuple(tuple(tuple(r) for r in v) if isinstance(v, list) else v for v in values)


ALL_CODECS = sorted(L.codecs)


@pytest.mark.parametrize("name", ALL_CODECS)
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_pack_unpack_round_trip(name, data):
    codec = L[name]
    values = data.draw(_values(codec))
    raw = codec.pack(*values)
    if codec.size is not None:
        assert len(raw) == codec.size
    assert len(raw) >= codec.min_size
    assert codec.unpack(raw) == _normal(values)
    # incremental readers: at an offset, bounded by ``end``, in a bytearray
    pad = data.draw(st.binary(max_size=5))
    buf = bytearray(pad + raw + b"\xff\xff")
    assert codec.unpack_from(buf, len(pad), len(pad) + len(raw)) == (_normal(values),
                                                                    len(pad) + len(raw))


@pytest.mark.parametrize("side,short", [("rp", s) for s in L.rp] + [("cmd", s) for s in L.cmd])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_frames_round_trip(side, short, data):
    frame = getattr(L, side)[short]
    values = data.draw(_values(frame.payload))
    raw = frame.pack(*values)
    header = L["RP_HEADER" if side == "rp" else "COMMAND_HEADER"]
    head = header.unpack(raw[:header.size])
    assert head[-2:] == (frame.value, len(raw) - header.size)
    assert frame.unpack(raw[header.size:]) == _normal(values)


# ------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name", ALL_CODECS)
def test_short_input_names_a_field(name):
    codec = L[name]
    values = [0 if f.kind in ("u8", "be16", "be32", "be64") else
              b"\0" * f.size if f.kind in ("uuid", "bytes100") else
              [(1,) * len(f.item.fields)] * max(1, _bound(f.min, 0)) if f.kind == "array" else
              b"n" * max(1, _bound(f.min, 0))
              for f in codec.layout.fields if f.kind != "nul"]
    raw = codec.pack(*values)
    field_names = {f.name for f in codec.layout.fields}
    # a 'rest' field may be shorter: only cuts below the minimum are refused
    cuts = range(codec.min_size if codec.layout.fields[-1].kind == "rest" else len(raw))
    for cut in cuts:
        try:
            codec.unpack(raw[:cut])
        except ShortInput as exc:
            assert exc.field in field_names and exc.layout == codec.name
            assert f"field '{exc.field}'" in str(exc)
        except OutOfBounds as exc:  # a 'rest'/'array' shorter than its minimum
            assert exc.field in field_names
        else:
            raise AssertionError(f"{name}: {cut} of {len(raw)} bytes accepted")
    if codec.size is not None or codec.layout.fields[-1].kind not in ("rest", "array"):
        with pytest.raises(TrailingBytes):
            codec.unpack(raw + b"\0")


def test_short_payloads_raise_the_sides_errors_with_the_spec_text():
    with pytest.raises(ReturnPathError, match=r"^Received malformed 'REQ_PAGES' message "
                                              r"\(0x0004\): REQ_PAGES: field 'length'"):
        L.rp["REQ_PAGES"].unpack(b"\0" * 9)
    with pytest.raises(ReturnPathError, match="field 'start'"):
        L.rp["REQ_PAGES"].unpack(b"\0" * 3)
    with pytest.raises(StreamError,
                       match=r"^PING received with bad length - expecting 4, got 3$"):
        L.cmd["PING"].unpack(b"\0" * 3)
    with pytest.raises(StreamError, match="expecting 20, got 5"):
        L.cmd["POSTCOPY_RAM_DISCARD"].unpack(b"\0\3abc")
    assert issubclass(ShortInput, LayoutError)


def test_bounds_are_checked_before_the_bytes_arrive():
    """A declared length beyond the spec's bound fails on the prefix alone."""
    limit = P.wire.const("LIVEMIG_MAX_MACHINE_NAME")
    prefix = bytes([7]) + struct.pack(">I", limit + 1)
    with pytest.raises(OutOfBounds) as exc:
        L["CONFIGURATION"].unpack_from(prefix)
    assert (exc.value.field, exc.value.value, exc.value.max) == ("machine", limit + 1, limit)
    with pytest.raises(OutOfBounds) as exc:
        L["DEVICE_BODY"].unpack_from(struct.pack(">I", 3))
    assert exc.value.min == P.wire.const("LIVEMIG_MIN_DEVICE_STATE")


def test_nul_fields_are_checked():
    raw = L.cmd["POSTCOPY_RAM_DISCARD"].pack(0, b"pc.ram", [(0, 4096)])[5:]
    bad = raw[:8] + b"\5" + raw[9:]
    with pytest.raises(NonZero) as exc:
        L["CMD_POSTCOPY_RAM_DISCARD"].unpack(bad)
    assert (exc.value.field, exc.value.value) == ("nul", 5)
    with pytest.raises(StreamError, match="malformed 'POSTCOPY_RAM_DISCARD'.*'nul'"):
        L.cmd["POSTCOPY_RAM_DISCARD"].unpack(bad)


# ------------------------------------------------------------------ other spec data
def test_parameter_defaults_come_from_the_spec():
    assert param(P, {}, "compress-threads") == 8
    assert param(P, {}, "max-bandwidth") == 128 << 20
    assert param(P, {"max-bandwidth": 5}, "max-bandwidth") == 5
    with pytest.raises(SpecError, match="no parameter 'no-such-thing'"):
        param(P, {}, "no-such-thing")
    with pytest.raises(SpecError):
        param(load_profile("qemu-3.0"), {}, "multifd-channels")  # x-multifd-channels in 3.0


def test_unimplemented_capabilities_are_spec_data():
    assert list(unimplemented_capabilities(P)) == ["x-colo", "background-snapshot"]
    assert list(unimplemented_capabilities(load_profile("qemu-3.0"))) == ["x-colo"]
    for p in load_all():
        assert set(unimplemented_capabilities(p)) <= set(p.capability_names())


# ------------------------------------------------------------------ drift
#: engine modules that still write struct formats (none since issue 13: a
#: file listed here must say why)
NOT_YET_CONVERTED: set[str] = set()
_STRUCT_FORMAT = re.compile(r"^[<>!=@][0-9xcbB?hHiIlLqQnNefdspP]+$")


def _struct_sites(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names]
            module = getattr(node, "module", None)
            if "struct" in names or module == "struct":
                found.append(f"{path.name}:{node.lineno}: imports struct")
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _STRUCT_FORMAT.match(node.value):
            found.append(f"{path.name}:{node.lineno}: struct format {node.value!r}")
    return found


def test_no_struct_format_outside_the_layouts_compiler():
    sites = []
    for path in sorted(ENGINE.glob("*.py")):
        if path.name == "layouts.py" or path.name in NOT_YET_CONVERTED:
            continue
        sites += _struct_sites(path)
    assert not sites, "write layouts in the spec, pack with engine.layouts:\n" + "\n".join(sites)


def test_the_drift_check_sees_struct_formats(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text('import struct\nstruct.pack(">HHQI", 1, 2, 3, 4)\nx = ">u8"\n')
    assert len(_struct_sites(sample)) == 2
