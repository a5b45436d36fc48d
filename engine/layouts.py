"""Packers and unpackers compiled from the spec's wire layouts.

Theory of operation
-------------------
The spec declares the byte layout of every wire item as data
(:class:`livemig.spec.schema.Layout`: ordered fields of kind ``u8``,
``be16``.. ``be64``, ``nul``, ``uuid``, ``str8``.. ``str64``, ``rest``,
``array``).  This module is the only place in the engine that turns layouts
into ``struct`` formats.  :func:`layouts` compiles every layout of a profile
once (cached per profile) into:

* a :class:`Codec` per layout: ``pack(*values) -> bytes``,
  ``unpack(data) -> tuple`` (the whole of ``data``), ``unpack_from(buf, pos,
  end) -> (tuple, new_pos)`` (incremental readers);
* a :class:`Frame` per MIG_CMD (``.cmd["PING"]``) and per MIG_RP_MSG
  (``.rp["REQ_PAGES"]``): ``pack(*payload values)`` gives the framed message,
  header included, its length field computed from the layout (REQ_PAGES'
  12, REQ_PAGES_ID's 13 + idlen are nowhere else); ``unpack(payload)`` raises
  the side's error with the spec's text.

Rules of the values: fields are given and returned in layout order; ``nul``
fields are not given (``pack`` writes 0) and not returned (``unpack``
checks the 0); ``str*``, ``uuid`` and ``rest`` are bytes; ``array`` is a
sequence of tuples (one per record) and comes back as a tuple of tuples.

Speed: each run of fixed fields, with the length prefix of the variable
field that ends it, is one precompiled ``struct.Struct``, and ``pack`` /
``unpack_from`` are generated Python functions over those (a fixed layout's
``pack`` *is* the bound ``Struct.pack``), so a framed REQ_PAGES costs one
``Struct.pack`` call.  Callers on hot paths keep the :class:`Frame` or
:class:`Codec` object: looking it up by profile hashes the profile.

Errors: input that does not fit a layout raises a :class:`LayoutError` that
names the layout and the field: :class:`ShortInput` (fewer bytes than the
field needs; an incremental reader waits for more), :class:`OutOfBounds` (a
declared length outside the field's ``min``/``max``, raised before any of
its bytes are awaited), :class:`NonZero` (a ``nul`` field), and
:class:`TrailingBytes` (``unpack`` of more than the layout holds).
"""
from __future__ import annotations

import dataclasses
import functools
import keyword
import struct
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Optional, Sequence

from livemig.engine.wire import WireTables, wire_tables
from livemig.errors import MigrationError, ReturnPathError, StreamError
from livemig.spec.schema import FIELD_SIZES, PREFIX_SIZES, Layout, Profile, WireMessage

#: struct codes of the fixed kinds and of the length prefixes
_CODES = {"u8": "B", "be16": "H", "be32": "I", "be64": "Q", "nul": "B", "uuid": "16s",
          "bytes100": "100s",
          "str8": "B", "str16": "H", "str32": "I", "str64": "Q"}


# ---------------------------------------------------------------------- errors
class LayoutError(MigrationError, ValueError):
    """Bytes that do not fit a layout; names the layout and the field."""

    def __init__(self, layout: str, field: str, detail: str) -> None:
        super().__init__(f"{layout}: field '{field}': {detail}")
        self.layout = layout
        self.field = field


class ShortInput(LayoutError):
    """Fewer bytes than the layout needs (an incremental reader waits)."""

    def __init__(self, layout: str, field: str, need: int, got: int) -> None:
        super().__init__(layout, field, f"needs {need} bytes, {got} available")
        self.need = need
        self.got = got


class OutOfBounds(LayoutError):
    """A declared length (or an array's count) outside the field's min/max."""

    def __init__(self, layout: str, field: str, value: int, low: Optional[int],
                 high: Optional[int]) -> None:
        allowed = f"{low or 0}..{high}" if high is not None else f"at least {low}"
        super().__init__(layout, field, f"length {value}, allowed {allowed}")
        self.value = value
        self.min = low
        self.max = high


class NonZero(LayoutError):
    """A ``nul`` field that is not 0."""

    def __init__(self, layout: str, field: str, value: int) -> None:
        super().__init__(layout, field, f"must be 0, got {value}")
        self.value = value


class TrailingBytes(LayoutError):
    """``unpack`` was given more bytes than the layout holds."""

    def __init__(self, layout: str, field: str, extra: int) -> None:
        super().__init__(layout, field, f"{extra} bytes after the last field")
        self.extra = extra


# ---------------------------------------------------------------------- codecs
class Codec:
    """One compiled layout (see the module docstring for the value rules)."""

    __slots__ = ("layout", "name", "fields", "size", "min_size", "struct", "prefix",
                 "pack", "unpack_from", "_unpack_fixed")

    def __init__(self, layout: Layout, const: Callable[[str], int]) -> None:
        self.layout = layout
        self.name = layout.name
        #: names of the values ``pack`` takes and ``unpack`` returns
        self.fields: tuple[str, ...] = tuple(f.name for f in layout.fields if f.kind != "nul")
        #: bytes of a fixed layout, None for a variable one
        self.size: Optional[int] = layout.size
        #: the fewest bytes of a valid item
        self.min_size: int = layout.min_size(const)
        segments = _segments(layout)
        #: the Struct of a fixed layout (None for a variable one)
        self.struct: Optional[struct.Struct] = (
            struct.Struct(segments[0].fmt) if self.size is not None else None)
        #: the leading fixed fields and the first variable field's length
        #: prefix, as a Struct: what a reader needs to see before it knows the
        #: item's size (RECV_BITMAP_TRAILER: the be64 size)
        self.prefix: struct.Struct = struct.Struct(segments[0].fmt)
        self.pack, self.unpack_from = _generate(layout, segments, const)
        nul = any(f.kind == "nul" for f in layout.fields)
        self._unpack_fixed = (self.struct.unpack
                              if self.struct is not None and not nul else None)

    def unpack(self, data: Any) -> tuple:
        """The values of ``data``, which must hold exactly one item."""
        if self._unpack_fixed is not None and len(data) == self.size:
            return self._unpack_fixed(data)
        values, pos = self.unpack_from(data, 0, len(data))
        if pos != len(data):
            raise TrailingBytes(self.name, self.layout.fields[-1].name, len(data) - pos)
        return values

    def __repr__(self) -> str:
        return f"<Codec {self.name} {self.fields} size={self.size}>"


class Frame:
    """A MIG_CMD or MIG_RP_MSG with its framing header, compiled."""

    __slots__ = ("message", "short", "value", "payload", "header_size", "pack", "pack_payload",
                 "_w", "_side")

    def __init__(self, message: WireMessage, short: str, side: str, header: Layout,
                 header_values: dict[str, Any], w: WireTables,
                 const: Callable[[str], int]) -> None:
        self.message = message
        self.short = short
        self.value = message.value
        self._w = w
        self._side = side
        layout = message.payload or Layout(short, ())
        #: the payload's codec
        self.payload = Codec(layout, const)
        self.pack_payload = self.payload.pack
        self.header_size = header.size or 0
        # header fields renamed so that they never meet a payload field's name
        hdr = tuple(dataclasses.replace(f, name="hdr_" + f.name) for f in header.fields)
        framed = Layout(f"{header.name}+{layout.name}", hdr + layout.fields)
        fixed = {"hdr_" + k: v for k, v in header_values.items()}
        #: ``pack(*payload values)``: header and payload in one piece
        segments = _segments(framed)
        if layout.size is not None and not any(f.kind == "nul" for f in layout.fields):
            # a fixed message: the Struct's own pack with the header bound
            # (REQ_PAGES on the fault path: one C call)
            lead = [layout.size if f.name == "hdr_length" else fixed[f.name] for f in hdr]
            self.pack = functools.partial(struct.Struct(segments[0].fmt).pack, *lead)
        else:
            self.pack = _generate(framed, segments, const, fixed=fixed,
                                  length_of=layout, length_field="hdr_length")[0]

    def unpack(self, payload: Any) -> tuple:
        """The payload's values; a payload that does not fit raises the side's
        error (StreamError for a MIG_CMD, ReturnPathError for a MIG_RP_MSG)
        with the spec's text."""
        try:
            return self.payload.unpack(payload)
        except LayoutError as exc:
            raise self.error(exc, len(payload)) from None

    def error(self, exc: LayoutError, got: int) -> MigrationError:
        """The spec's error for a payload of ``got`` bytes that raised ``exc``."""
        w = self._w
        if self._side == "rp":
            return ReturnPathError(w.error("rp_malformed", self.short, self.value, exc))
        if isinstance(exc, (ShortInput, TrailingBytes)):
            want = self.payload.size if self.payload.size is not None else self.payload.min_size
            return StreamError(w.error("cmd_bad_length", self.short, want, got))
        return StreamError(w.error("cmd_malformed", self.short, self.value, exc))

    def __repr__(self) -> str:
        return f"<Frame {self._side} {self.short} fields={self.payload.fields}>"


@dataclass(frozen=True)
class Layouts:
    """Every compiled layout of a profile: ``codecs`` by layout name (also
    ``L["MULTIFD_HELLO"]``), ``cmd`` and ``rp`` frames by short name."""

    codecs: dict[str, Codec]
    cmd: dict[str, Frame]
    rp: dict[str, Frame]

    def __getitem__(self, name: str) -> Codec:
        return self.codecs[name]


@lru_cache(maxsize=None)
def layouts(profile: Profile) -> Layouts:
    """The compiled layouts of ``profile`` (cached: compile once per profile)."""
    wire = profile.wire
    w = wire_tables(profile)
    const = wire.const
    codecs = {lay.name: Codec(lay, const) for lay in wire.layouts}
    cmd_header = wire.layout("COMMAND_HEADER")
    rp_header = wire.layout("RP_HEADER")
    cmd = {}
    for m in wire.commands:
        short = m.name[len("MIG_CMD_"):]
        cmd[short] = Frame(m, short, "cmd", cmd_header,
                           {"section": w.command, "cmd": m.value}, w, const)
    rp = {}
    for m in wire.return_path:
        short = m.name[len("MIG_RP_MSG_"):]
        rp[short] = Frame(m, short, "rp", rp_header, {"type": m.value}, w, const)
    # message payloads also by layout name, as Wire.layout names them
    for prefix, frames in (("CMD_", cmd), ("RP_", rp)):
        for short, frame in frames.items():
            if frame.message.payload is not None:
                codecs[prefix + short] = frame.payload
    return Layouts(codecs, cmd, rp)


# ---------------------------------------------------------------------- compiler
@dataclass
class _Segment:
    """Fixed fields read with one Struct, ending (maybe) with the length
    prefix of ``var`` (a variable field) or at ``var`` (rest/array)."""

    fields: list  # the fixed Fields, the var field's prefix last if it has one
    fmt: str
    var: Any = None  # the variable Field that follows, or None


def _segments(layout: Layout) -> list[_Segment]:
    out: list[_Segment] = []
    fields: list = []
    fmt = ">"
    for f in layout.fields:
        if f.kind in FIELD_SIZES:
            fields.append(f)
            fmt += _CODES[f.kind]
            continue
        if f.kind in PREFIX_SIZES:
            fields.append(f)
            fmt += _CODES[f.kind]
        out.append(_Segment(fields, fmt, f))
        fields, fmt = [], ">"
    if fields or not out:
        out.append(_Segment(fields, fmt))
    return out


def _ident(name: str) -> str:
    ident = "".join(c if c.isalnum() else "_" for c in name)
    if not ident or ident[0].isdigit() or keyword.iskeyword(ident):
        ident = "f_" + ident
    return ident


def _bound(value: Any, const: Callable[[str], int]) -> Optional[int]:
    return const(value) if isinstance(value, str) else value


def _generate(layout: Layout, segments: list[_Segment], const: Callable[[str], int], *,
              fixed: Optional[dict[str, Any]] = None, length_of: Optional[Layout] = None,
              length_field: str = "length") -> tuple[Callable, Callable]:
    """Generate ``pack`` and ``unpack_from`` for ``layout``.

    With ``fixed`` (a frame), the named header fields are constants and the
    field ``length_field`` is the byte length of the ``length_of`` part,
    computed as its fixed size plus the lengths of its variable fields."""
    fixed = fixed or {}
    env: dict[str, Any] = {"ShortInput": ShortInput, "OutOfBounds": OutOfBounds,
                           "NonZero": NonZero, "_bytes": bytes, "_len": len, "_tuple": tuple}
    name = layout.name
    computed = set(fixed) | ({length_field} if length_of is not None else set())
    params = [_ident(f.name) for f in layout.fields
              if f.kind != "nul" and f.name not in computed]
    # ---- pack
    length_expr = None
    if length_of is not None:
        parts = [str(sum(f.size or PREFIX_SIZES.get(f.kind, 0) for f in length_of.fields))]
        for f in length_of.fields:
            if f.kind in PREFIX_SIZES or f.kind == "rest":
                parts.append(f"_len({_ident(f.name)})")
            elif f.kind == "array":
                parts.append(f"{f.item.size} * _len({_ident(f.name)})")
        length_expr = " + ".join(parts)
    pieces = []
    for k, seg in enumerate(segments):
        args = []
        for f in seg.fields:
            if f.kind == "nul":
                args.append("0")
            elif f is seg.var:
                args.append(f"_len({_ident(f.name)})")
            elif f.name in fixed:
                args.append(repr(int(fixed[f.name])))
            elif length_expr is not None and f.name == length_field:
                args.append(length_expr)
            else:
                args.append(_ident(f.name))
        if seg.fields:
            env[f"_s{k}"] = struct.Struct(seg.fmt).pack
            pieces.append(f"_s{k}({', '.join(args)})")
        if seg.var is not None:
            v = seg.var
            if v.kind == "array":
                env[f"_i{k}"] = struct.Struct(_segments(v.item)[0].fmt).pack
                pieces.append(f"b''.join([_i{k}(*r) for r in {_ident(v.name)}])")
            else:
                pieces.append(_ident(v.name))
    if length_of is None and len(segments) == 1 and segments[0].var is None and not any(
            f.kind == "nul" for f in layout.fields):
        pack = struct.Struct(segments[0].fmt).pack  # a fixed layout: Struct.pack itself
    else:
        body = " + ".join(pieces) if pieces else "b''"
        src = f"def pack({', '.join(params)}):\n    return {body}\n"
        exec(compile(src, f"<layout {name} pack>", "exec"), env)  # noqa: S102 - generated
        pack = env["pack"]
    # ---- unpack_from
    lines = ["def unpack_from(buf, pos=0, end=None):", "    if end is None:",
             "        end = _len(buf)"]
    out_names = []
    for k, seg in enumerate(segments):
        size = struct.calcsize(seg.fmt)
        if seg.fields:
            env[f"_u{k}"] = struct.Struct(seg.fmt).unpack_from
            env[f"_f{k}"] = _field_at(seg.fields)
            names = [f"v{k}_{j}" for j in range(len(seg.fields))]
            lines += [f"    if end - pos < {size}:",
                      f"        raise ShortInput({name!r}, _f{k}(end - pos), {size}, end - pos)",
                      f"    {', '.join(names)}{',' if len(names) == 1 else ''} = "
                      f"_u{k}(buf, pos)",
                      f"    pos += {size}"]
            for j, f in enumerate(seg.fields):
                if f.kind == "nul":
                    lines += [f"    if {names[j]}:",
                              f"        raise NonZero({name!r}, {f.name!r}, {names[j]})"]
                elif f is not seg.var:
                    out_names.append(names[j])
        v = seg.var
        if v is None:
            continue
        low, high = _bound(v.min, const), _bound(v.max, const)
        if v.kind in PREFIX_SIZES:
            n = f"v{k}_{len(seg.fields) - 1}"
            lines += _bounds_check(name, v.name, n, low, high)
            lines += [f"    if end - pos < {n}:",
                      f"        raise ShortInput({name!r}, {v.name!r}, {n}, end - pos)",
                      f"    s{k} = _bytes(buf[pos:pos + {n}])",
                      f"    pos += {n}"]
            out_names.append(f"s{k}")
        elif v.kind == "rest":
            lines += [f"    n{k} = end - pos"]
            lines += _bounds_check(name, v.name, f"n{k}", low, high)
            lines += [f"    s{k} = _bytes(buf[pos:end])", "    pos = end"]
            out_names.append(f"s{k}")
        else:  # array
            item = struct.Struct(_segments(v.item)[0].fmt)
            env[f"_a{k}"] = item.iter_unpack
            lines += [f"    n{k}, r{k} = divmod(end - pos, {item.size})",
                      f"    if r{k}:",
                      f"        raise ShortInput({name!r}, {v.name!r}, "
                      f"(n{k} + 1) * {item.size}, end - pos)"]
            lines += _bounds_check(name, v.name, f"n{k}", low, high)
            lines += [f"    s{k} = _tuple(_a{k}(_bytes(buf[pos:end])))", "    pos = end"]
            out_names.append(f"s{k}")
    lines.append(f"    return ({', '.join(out_names)}{',' if len(out_names) == 1 else ''}), pos")
    exec(compile("\n".join(lines) + "\n", f"<layout {name} unpack>", "exec"), env)  # noqa: S102
    return pack, env["unpack_from"]


def _bounds_check(layout: str, field: str, var: str, low: Optional[int],
                  high: Optional[int]) -> list[str]:
    conds = []
    if low:
        conds.append(f"{var} < {low}")
    if high is not None:
        conds.append(f"{var} > {high}")
    if not conds:
        return []
    return [f"    if {' or '.join(conds)}:",
            f"        raise OutOfBounds({layout!r}, {field!r}, {var}, {low!r}, {high!r})"]


def _field_at(fields: Sequence) -> Callable[[int], str]:
    """For a short-input error: the name of the field cut at byte ``have``."""
    ends = []
    total = 0
    for f in fields:
        total += f.size if f.size is not None else PREFIX_SIZES[f.kind]
        ends.append((total, f.name))

    def field_at(have: int) -> str:
        for end, fname in ends:
            if have < end:
                return fname
        return ends[-1][1]

    return field_at
