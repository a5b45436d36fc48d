"""``livemig stream inspect``: decode and check a migration stream file.

Theory of operation
-------------------
:class:`Inspector` is sans-I/O: :meth:`Inspector.feed` takes bytes,
:meth:`Inspector.report` parses everything fed so far and returns a plain
dict (the ``--json`` output).  It reads QEMU 7.2 streams (``migrate
exec:cat > FILE``) and livemig's own (``migrate file:PATH``) with the spec's
compiled layouts (:mod:`livemig.engine.layouts`) and wire constants
(:mod:`livemig.engine.wire`); no byte layout is written here.

What it decodes: the header, the configuration section and its subsections,
every section item (START / PART / END / FULL with id, idstr, instance,
version, offset and body bytes), the RAM records of the ``ram`` section
loaded into one sparse buffer per block declared by MEM_SIZE (pages and zero
pages counted, sha256 of the content after load), every MIG_CMD (PACKAGED
blobs are parsed in line, bounded by their length), EOF, and the vmdesc JSON
QEMU appends after EOF.

Device sections carry no length.  Their body ends at the section footer
(QEMU_VM_SECTION_FOOTER + be32 section id), looked for within the spec's
LIVEMIG_MAX_SECTION_BODY.  When the vmdesc is present, the size it describes
for each device (fields x array length, nested structs, subsections with
their headers) is compared with the bytes up to the footer; a difference is
an error.  Because a body could hold the footer's five bytes by chance, a
second pass splits each section at the vmdesc's size when the footer is
there, so that only a real difference is reported.

What it checks: magic and version, the configuration's presence, section
grammar (PART/END only for a started, not yet ended id; a START id used
once; every footer present and matching), command framing and payloads
(the spec's texts), PING only after OPEN_RETURN_PATH, the MIG_CMD_POSTCOPY_*
order through core's :class:`~livemig.core.cell.PostcopyCell` (the spec's
PostcopyState handlers and texts), RAM records (known block, offset inside
it, known flags) and EOF present.  The first error stops the parse; its
byte offset is reported.  Every length read from the file is bounded by the
bytes present (and by the spec's bounds); nothing raises out of
:meth:`Inspector.report`.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import zlib
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from livemig.core.cell import PostcopyCell
from livemig.engine import xbzrle as xbz
from livemig.engine.layouts import LayoutError, OutOfBounds, ShortInput, layouts
from livemig.engine.stream import CONFIG_CAPS, CONFIG_PAGE_BITS, CONFIG_UUID, RAM_SECTION
from livemig.engine.wire import wire_tables
from livemig.errors import MigrationError

#: blocks longer than this are not hashed (a garbage MEM_SIZE could declare TiB)
DEFAULT_HASH_LIMIT = 64 << 30
#: deepest vmdesc struct nesting followed
_MAX_VMDESC_DEPTH = 32


class _Fail(Exception):
    def __init__(self, offset: int, text: str) -> None:
        super().__init__(text)
        self.offset = offset
        self.text = text


@dataclass
class _Block:
    name: str
    length: int
    pages: dict = field(default_factory=dict)  # page index -> bytes (non-zero content)
    normal: int = 0
    zero: int = 0
    xbzrle: int = 0
    compressed: int = 0

    def sha256(self, page_size: int, limit: int) -> Optional[str]:
        if self.length > limit:
            return None
        h = hashlib.sha256()
        zeros = bytes(1 << 20)
        pos = 0

        def fill(upto: int) -> None:
            nonlocal pos
            while pos < upto:
                n = min(len(zeros), upto - pos)
                h.update(zeros[:n])
                pos += n

        for idx in sorted(self.pages):
            start = idx * page_size
            if start >= self.length:
                break
            fill(start)
            data = self.pages[idx][:self.length - start]
            h.update(data)
            pos += len(data)
        fill(self.length)
        return h.hexdigest()


class _Pass:
    """One parse of the whole buffer; ``hints`` maps (idstr, instance) to the
    body size the vmdesc describes."""

    def __init__(self, profile: Any, data: bytes, hints: dict, hash_limit: int) -> None:
        self.profile = profile
        self.w = wire_tables(profile)
        self.L = layouts(profile)
        self.data = data
        self.hints = hints
        self.hash_limit = hash_limit
        self.ps = self.w.page_size
        self.mask = self.ps - 1
        self.footer_magic = self.w.footer
        self.sections: list[dict] = []
        self.commands: list[dict] = []
        self.blocks: dict[str, _Block] = {}
        self.block_order: list[str] = []
        self.last_block: Optional[_Block] = None
        self.open: dict[int, tuple[str, int, int]] = {}  # START'ed ids
        self.ended: set[int] = set()
        self.started: set[int] = set()
        self.return_path = False
        self.pc = PostcopyCell(profile)
        self.pc.handle("incoming_start")
        self.handlers = {h.command: h.name for h in profile.postcopy_handlers if h.command}
        self.header: Optional[dict] = None
        self.configuration: Optional[dict] = None
        self.vmdesc: Optional[dict] = None
        self.vmdesc_raw: Any = None
        self.eof_offset: Optional[int] = None
        self.warnings: list[str] = []
        self.error: Optional[str] = None
        self.error_offset: Optional[int] = None

    # ------------------------------------------------------------ reading
    def _read(self, name: str, pos: int, end: int) -> tuple[tuple, int]:
        try:
            return self.L[name].unpack_from(self.data, pos, end)
        except ShortInput as exc:
            raise _Fail(pos, self._eof_text(f"{name}: {exc}")) from None
        except OutOfBounds as exc:
            raise _Fail(pos, f"{exc}") from None
        except LayoutError as exc:
            raise _Fail(pos, f"{exc}") from None

    def _eof_text(self, detail: str) -> str:
        return f"{self.w.error('stream_eof')} (stream ends inside {detail})"

    def _peek(self, pos: int, end: int, what: str) -> int:
        if pos >= end:
            raise _Fail(pos, self._eof_text(what))
        return self.data[pos]

    def _take(self, pos: int, n: int, end: int, what: str) -> bytes:
        if end - pos < n:
            raise _Fail(pos, self._eof_text(f"{what}: needs {n} bytes, {max(end - pos, 0)} "
                                            "available"))
        return self.data[pos:pos + n]

    @staticmethod
    def _text(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace")

    # ------------------------------------------------------------ top level
    def run(self) -> None:
        try:
            self._run()
        except _Fail as exc:
            self.error, self.error_offset = exc.text, exc.offset
        except (MigrationError, ValueError, KeyError, IndexError, TypeError, OverflowError,
                RecursionError, MemoryError) as exc:  # a bug here must not look like a crash
            self.error, self.error_offset = f"internal error: {exc!r}", None

    def _run(self) -> None:
        w, end = self.w, len(self.data)
        (magic, version), pos = self._read("STREAM_HEADER", 0, end)
        self.header = {"magic": magic, "version": version}
        if magic != w.magic:
            raise _Fail(0, w.error("not_a_stream"))
        if version == w.version_compat:
            raise _Fail(4, w.error("version_v2"))
        if version != w.version:
            raise _Fail(4, w.error("version_unsupported"))
        if self._peek(pos, end, "CONFIGURATION") != w.configuration:
            raise _Fail(pos, w.error("configuration_missing"))
        pos = self._configuration(pos, end)
        pos = self._items(pos, end, package=False)
        self.eof_offset = pos - 1
        if self.open:
            names = ", ".join(f"{sid} ({v[0]})" for sid, v in sorted(self.open.items()))
            self.warnings.append(f"sections started and never ended: {names}")
        self._after_eof(pos, end)

    def _configuration(self, pos: int, end: int) -> int:
        w = self.w
        start = pos
        try:
            (_k, raw), pos = self.L["CONFIGURATION"].unpack_from(self.data, pos, end)
        except OutOfBounds as exc:
            raise _Fail(start, w.error("machine_name_too_long", exc.value, exc.max)) from None
        except ShortInput as exc:
            raise _Fail(start, self._eof_text(f"CONFIGURATION: {exc}")) from None
        conf: dict[str, Any] = {"offset": start, "machine": self._text(raw), "subsections": [],
                                "uuid": None, "page_bits": None, "capabilities": []}
        while pos < end and self.data[pos] == w.subsection:
            sub_at = pos
            (_k, raw, version), pos = self._read("SUBSECTION", pos, end)
            name = self._text(raw)
            conf["subsections"].append({"name": name, "version": version, "offset": sub_at})
            if name == CONFIG_UUID:
                (uuid,), pos = self._read("CONFIG_UUID", pos, end)
                h = uuid.hex()
                conf["uuid"] = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
            elif name == CONFIG_PAGE_BITS:
                (conf["page_bits"],), pos = self._read("CONFIG_PAGE_BITS", pos, end)
            elif name == CONFIG_CAPS:
                (count,), pos = self._read("CONFIG_CAPABILITIES", pos, end)
                for _ in range(count):  # each one consumes bytes: bounded by the file
                    (cap,), pos = self._read("CAPABILITY", pos, end)
                    conf["capabilities"].append(self._text(cap))
            else:
                raise _Fail(sub_at, w.error("unknown_section", name, 0))
        conf["bytes"] = pos - start
        self.configuration = conf
        return pos

    def _items(self, pos: int, end: int, *, package: bool) -> int:
        """Items until EOF (returns the position after it) or, in a package,
        until ``end``."""
        w = self.w
        while True:
            if package and pos >= end:
                return pos
            kind = self._peek(pos, end, "the next section (no QEMU_VM_EOF)")
            if kind == w.eof:
                if package:
                    self.warnings.append(f"QEMU_VM_EOF inside a package at {pos}")
                return pos + 1
            if kind == w.command:
                pos = self._command(pos, end)
            elif kind in (w.section_start, w.section_full):
                pos = self._section_start(pos, end, kind, package)
            elif kind in (w.section_part, w.section_end):
                pos = self._section_part(pos, end, kind, package)
            else:
                raise _Fail(pos, w.error("unknown_section_type", kind))

    # ------------------------------------------------------------ sections
    def _kind_name(self, kind: int) -> str:
        w = self.w
        return {w.section_start: "START", w.section_part: "PART", w.section_end: "END",
                w.section_full: "FULL"}[kind]

    def _section_start(self, pos: int, end: int, kind: int, package: bool) -> int:
        at = pos
        (_k, sid, raw, instance, version), pos = self._read("SECTION_START", pos, end)
        name = self._text(raw)
        if kind == self.w.section_start:
            if sid in self.started:
                raise _Fail(at, f"Section id {sid} ('{name}') started twice")
            self.started.add(sid)
            self.open[sid] = (name, instance, version)
        entry = {"id": sid, "idstr": name, "instance": instance, "version": version,
                 "kind": self._kind_name(kind), "offset": at, "body_offset": pos,
                 "in_package": package}
        return self._body(entry, pos, end)

    def _section_part(self, pos: int, end: int, kind: int, package: bool) -> int:
        at = pos
        (_k, sid), pos = self._read("SECTION_PART", pos, end)
        if sid not in self.open:
            raise _Fail(at, self.w.error("unknown_section", str(sid), 0))
        name, instance, version = self.open[sid]
        if kind == self.w.section_end:
            del self.open[sid]
            self.ended.add(sid)
        entry = {"id": sid, "idstr": name, "instance": instance, "version": version,
                 "kind": self._kind_name(kind), "offset": at, "body_offset": pos,
                 "in_package": package}
        return self._body(entry, pos, end)

    def _body(self, entry: dict, pos: int, end: int) -> int:
        name, sid = entry["idstr"], entry["id"]
        if name == RAM_SECTION:
            body_end = self._ram(pos, end)
        else:
            body_end = self._split_device(entry, pos, end)
        entry["body_bytes"] = body_end - pos
        self.sections.append(entry)
        return self._footer(body_end, end, name, sid)

    def _footer(self, pos: int, end: int, name: str, sid: int) -> int:
        w = self.w
        if pos >= end or self.data[pos] != w.footer:
            if pos >= end:
                raise _Fail(pos, self._eof_text(f"the footer of section {sid} ('{name}')"))
            raise _Fail(pos, w.error("footer_missing", name))
        (_m, read), p = self._read("SECTION_FOOTER", pos, end)
        if read != sid:
            raise _Fail(pos, w.error("footer_mismatch", name, read, sid))
        return p

    def _split_device(self, entry: dict, pos: int, end: int) -> int:
        """The end of a device body: at the vmdesc's size when the footer is
        there, else at the first footer within the spec's bound."""
        footer = self.L["SECTION_FOOTER"].pack(self.w.footer, entry["id"])
        hint = self.hints.get((entry["idstr"], entry["instance"]))
        if hint is not None and self.data[pos + hint:pos + hint + len(footer)] == footer:
            return pos + hint
        limit = self.w.max_section_body
        found = self.data.find(footer, pos, min(end, pos + limit + len(footer)))
        if found >= 0:
            return found
        if end - pos > limit:
            raise _Fail(entry["offset"], self.w.error("section_too_long", entry["idstr"],
                                                      end - pos, limit))
        raise _Fail(entry["offset"], self.w.error("footer_missing", entry["idstr"])
                    + " (stream ends first)")

    # ------------------------------------------------------------ RAM
    def _block_for(self, flags: int, pos: int, end: int, at: int) -> tuple[_Block, int]:
        w = self.w
        if flags & w.f_continue:
            if self.last_block is None:
                raise _Fail(at, w.error("ram_unknown_block", ""))
            return self.last_block, pos
        (raw,), pos = self._read("RAM_BLOCK_ID", pos, end)
        name = self._text(raw)
        block = self.blocks.get(name)
        if block is None:
            raise _Fail(at, w.error("ram_unknown_block", name))
        return block, pos

    def _page_of(self, block: _Block, addr: int, at: int) -> int:
        if addr >= block.length:
            raise _Fail(at, self.w.error("ram_bad_offset", addr))
        return addr // self.ps

    def _ram(self, pos: int, end: int) -> int:
        """RAM records up to and including EOS; returns the position after EOS."""
        w = self.w
        ps = self.ps
        while True:
            at = pos
            (hdr,), pos = self._read("RAM_RECORD", pos, end)
            flags = hdr & self.mask
            addr = hdr & ~self.mask
            kind = flags & ~w.f_continue
            if kind == w.f_eos:
                return pos
            if kind == w.f_mem_size:
                pos = self._mem_size(addr, pos, end, at)
                continue
            if kind == w.f_zero:
                block, pos = self._block_for(flags, pos, end, at)
                (fill,), pos = self._read("ZERO_PAGE", pos, end)
                page = self._page_of(block, addr, at)
                if fill:
                    block.pages[page] = bytes([fill]) * ps
                else:
                    block.pages.pop(page, None)
                block.zero += 1
            elif kind == w.f_page:
                block, pos = self._block_for(flags, pos, end, at)
                data = self._take(pos, ps, end, "a RAM page")
                pos += ps
                page = self._page_of(block, addr, at)
                if data.count(0) == ps:
                    block.pages.pop(page, None)
                else:
                    block.pages[page] = bytes(data)
                block.normal += 1
            elif kind == w.f_xbzrle:
                block, pos = self._block_for(flags, pos, end, at)
                (enc, data), pos = self._read("XBZRLE_PAGE", pos, end)
                if enc != w.encoding_xbzrle:
                    raise _Fail(at, w.error("xbzrle_bad_flag"))
                if len(data) > ps:
                    raise _Fail(at, w.error("xbzrle_too_long"))
                page = self._page_of(block, addr, at)
                buf = np.frombuffer(bytearray(block.pages.get(page, bytes(ps))), np.uint8)
                try:
                    xbz.decode_into(data, buf)
                except (ValueError, IndexError):
                    raise _Fail(at, w.error("xbzrle_decode")) from None
                block.pages[page] = buf.tobytes()
                block.xbzrle += 1
            elif kind == w.f_compress:
                block, pos = self._block_for(flags, pos, end, at)
                try:
                    (data,), p = self.L["COMPRESSED_PAGE"].unpack_from(self.data, pos, end)
                except OutOfBounds:
                    raise _Fail(at, w.error("decompress_failed")) from None
                except ShortInput as exc:
                    raise _Fail(at, self._eof_text(f"COMPRESSED_PAGE: {exc}")) from None
                pos = p
                page = self._page_of(block, addr, at)
                try:
                    inflater = zlib.decompressobj()
                    raw = inflater.decompress(data, ps + 1)
                except zlib.error:
                    raise _Fail(at, w.error("decompress_failed")) from None
                if len(raw) != ps or not inflater.eof:
                    raise _Fail(at, w.error("decompress_failed"))
                block.pages[page] = raw
                block.compressed += 1
            else:
                raise _Fail(at, w.error("ram_unknown_flags", flags))
            self.last_block = block

    def _mem_size(self, total: int, pos: int, end: int, at: int) -> int:
        declared: list[tuple[str, int]] = []
        remaining = total
        while remaining > 0:
            entry_at = pos
            (raw, length), pos = self._read("RAM_BLOCK_ENTRY", pos, end)
            name = self._text(raw)
            if length > remaining:
                raise _Fail(entry_at, f"MEM_SIZE: block '{name}' of 0x{length:x} bytes exceeds "
                                      f"the 0x{remaining:x} bytes left of the declared total")
            if any(n == name for n, _ in declared):
                raise _Fail(entry_at, f"MEM_SIZE: block '{name}' declared twice")
            declared.append((name, length))
            remaining -= length
            if length == 0:
                raise _Fail(entry_at, f"MEM_SIZE: block '{name}' of 0 bytes")
        if self.blocks:
            old = [(n, self.blocks[n].length) for n in self.block_order]
            if old != declared:
                raise _Fail(at, "MEM_SIZE: a second block list differs from the first")
            return pos
        for name, length in declared:
            self.blocks[name] = _Block(name, length)
            self.block_order.append(name)
        self.mem_size_offset = at
        return pos

    # ------------------------------------------------------------ commands
    def _command(self, pos: int, end: int) -> int:
        w = self.w
        at = pos
        (_k, value, length), pos = self._read("COMMAND_HEADER", pos, end)
        msg = w.cmd_by_value.get(value)
        if msg is None or value == w.cmd["INVALID"].value:
            raise _Fail(at, w.error("cmd_unknown", value, length))
        short = msg.name[len("MIG_CMD_"):]
        if msg.length is not None and length != msg.length:
            raise _Fail(at, w.error("cmd_bad_length", short, msg.length, length))
        payload = self._take(pos, length, end, f"MIG_CMD_{short}")
        pos += length
        entry: dict[str, Any] = {"name": short, "offset": at, "length": length}
        frame = self.L.cmd[short]
        if short == "POSTCOPY_ADVISE" and length not in (0, self.L["CMD_POSTCOPY_ADVISE"].size):
            raise _Fail(at, w.error("advise_bad_length", length))
        if frame.message.payload is not None and length:
            try:
                values = frame.unpack(payload)
            except MigrationError as exc:
                raise _Fail(at, str(exc)) from None
            entry["fields"] = {k: _jsonable(v) for k, v in zip(frame.payload.fields, values)}
        if short == "POSTCOPY_RAM_DISCARD":
            version = entry["fields"]["version"]
            if version != self.profile.wire.const("POSTCOPY_RAM_DISCARD_VERSION"):
                raise _Fail(at, w.error("discard_bad_version", version))
        handler = self.handlers.get(msg.name)
        if handler is not None:
            before = self.pc.state
            try:
                self.pc.handle(handler)
            except MigrationError as exc:
                raise _Fail(at, str(exc)) from None
            entry["postcopy_state"] = [before, self.pc.state]
        if short == "OPEN_RETURN_PATH":
            self.return_path = True
        elif short == "PING" and not self.return_path:
            raise _Fail(at, w.error("ping_no_return_path", entry["fields"]["value"]))
        self.commands.append(entry)
        if short == "PACKAGED":
            blob = entry["fields"]["length"]
            if end - pos < blob:
                raise _Fail(at, self._eof_text(f"a package of {blob} bytes: "
                                               f"{max(end - pos, 0)} available"))
            entry["package"] = {"offset": pos, "bytes": blob}
            pos = self._items(pos, pos + blob, package=True)
        return pos

    # ------------------------------------------------------------ after EOF
    def _after_eof(self, pos: int, end: int) -> None:
        w = self.w
        if pos >= end:
            self.warnings.append("no vmdesc after QEMU_VM_EOF")
            return
        if self.data[pos] != w.vmdescription:
            self.warnings.append(f"Expected vmdescription section, but got {self.data[pos]}")
            return
        at = pos
        (_k, raw), pos = self._read("VMDESCRIPTION", pos, end)  # bounded by the spec
        length = len(raw)
        try:
            desc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise _Fail(pos, f"vmdesc is not JSON: {exc}") from None
        if not isinstance(desc, dict) or not isinstance(desc.get("devices", []), list):
            raise _Fail(pos, "vmdesc has no device list")
        self.vmdesc_raw = desc
        self.vmdesc = {"offset": at, "bytes": length, "page_size": desc.get("page_size"),
                       "devices": [_vmdesc_device(d, self) for d in desc.get("devices", [])
                                   if isinstance(d, dict)]}
        if pos + length < end:
            self.warnings.append(f"{end - pos - length} bytes after the vmdesc")

    # ------------------------------------------------------------ vmdesc sizes
    def vmsd_size(self, desc: Any, depth: int = 0) -> Optional[int]:
        """Bytes of a vmstate described by ``desc`` (a device, struct or
        subsection of the vmdesc), or None when it cannot be told."""
        if not isinstance(desc, dict) or depth > _MAX_VMDESC_DEPTH:
            return None
        total = 0
        for f in desc.get("fields", []) or []:
            size = self._field_size(f, depth)
            if size is None:
                return None
            total += size
        for sub in desc.get("subsections", []) or []:
            if not isinstance(sub, dict):
                return None
            name, version = sub.get("vmsd_name"), sub.get("version")
            if not isinstance(name, str) or not isinstance(version, int):
                return None
            body = self.vmsd_size(sub, depth + 1)
            if body is None:
                return None
            try:
                head = len(self.L["SUBSECTION"].pack(self.w.subsection, name.encode(), version))
            except Exception:  # noqa: BLE001 - a name or version that does not fit
                return None
            total += head + body
        return total

    def _field_size(self, f: Any, depth: int) -> Optional[int]:
        if not isinstance(f, dict):
            return None
        count = f.get("array_len", 1)
        if not isinstance(count, int) or count < 0:
            return None
        if f.get("type") == "struct" and isinstance(f.get("struct"), dict):
            each = self.vmsd_size(f["struct"], depth + 1)
        else:
            each = f.get("size")
        if not isinstance(each, int) or each < 0:
            return None
        return each * count


def _vmdesc_device(d: dict, p: _Pass) -> dict:
    fields = []
    for f in d.get("fields", []) or []:
        if isinstance(f, dict):
            fields.append({k: f[k] for k in ("name", "type", "size", "array_len") if k in f})
    subs = [s.get("vmsd_name") for s in d.get("subsections", []) or [] if isinstance(s, dict)]
    return {"name": d.get("name"), "instance_id": d.get("instance_id"),
            "vmsd_name": d.get("vmsd_name"), "version": d.get("version"),
            "size": p.vmsd_size(d), "fields": fields, "subsections": subs}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
        return text if text.isprintable() else value.hex()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------- public
class Inspector:
    """Feed a stream's bytes, then ask for the :meth:`report`."""

    def __init__(self, profile: Any, *, hash_limit: int = DEFAULT_HASH_LIMIT) -> None:
        if isinstance(profile, str):
            from livemig.spec import load_profile
            profile = load_profile(profile)
        self.profile = profile
        self.hash_limit = hash_limit
        self._buf = bytearray()

    def feed(self, data: bytes) -> None:
        self._buf += data

    def report(self) -> dict:
        data = bytes(self._buf)
        p = _Pass(self.profile, data, {}, self.hash_limit)
        p.run()
        sizes = _device_sizes(p)
        mismatch = any(s.get("vmdesc_size") not in (None, s["body_bytes"]) for s in sizes)
        if mismatch and p.error is None:
            # split again where the vmdesc says, when the footer is there
            hints = {(s["idstr"], s["instance"]): s["vmdesc_size"] for s in sizes
                     if s.get("vmdesc_size") is not None}
            p2 = _Pass(self.profile, data, hints, self.hash_limit)
            p2.run()
            if p2.error is None:
                p, sizes = p2, _device_sizes(p2)
        return _report(p, sizes, len(data))


def _device_sizes(p: _Pass) -> list[dict]:
    """Attach the vmdesc's size to each device section; the list of those
    that have a vmdesc entry."""
    if p.vmdesc is None:
        return []
    by_key = {}
    for d in p.vmdesc["devices"]:
        by_key.setdefault((d["name"], d["instance_id"]), d)
    out = []
    for s in p.sections:
        if s["idstr"] == RAM_SECTION or s["kind"] != "FULL":
            continue
        d = by_key.get((s["idstr"], s["instance"]))
        if d is None:
            s["vmdesc_size"] = None
            continue
        s["vmdesc_size"] = d["size"]
        s["vmdesc_match"] = d["size"] == s["body_bytes"] if d["size"] is not None else None
        out.append(s)
    return out


def _report(p: _Pass, sizes: list[dict], total: int) -> dict:
    error, offset = p.error, p.error_offset
    if error is None:
        for s in sizes:
            if s.get("vmdesc_match") is False:
                error = (f"Section '{s['idstr']}' instance {s['instance']}: {s['body_bytes']} "
                         f"bytes up to its footer, the vmdesc describes {s['vmdesc_size']}")
                offset = s["offset"]
                break
    blocks = []
    for name in p.block_order:
        b = p.blocks[name]
        blocks.append({"id": name, "length": b.length, "pages": b.normal, "zero": b.zero,
                       "xbzrle": b.xbzrle, "compressed": b.compressed,
                       "sha256": b.sha256(p.ps, p.hash_limit)})
    ram = {"blocks": blocks,
           "pages": sum(b["pages"] for b in blocks), "zero": sum(b["zero"] for b in blocks),
           "xbzrle": sum(b["xbzrle"] for b in blocks),
           "compressed": sum(b["compressed"] for b in blocks)}
    return {"bytes": total, "header": p.header, "configuration": p.configuration,
            "sections": p.sections, "ram": ram, "commands": p.commands,
            "eof_offset": p.eof_offset, "vmdesc": p.vmdesc,
            "vmdesc_checked": sum(1 for s in sizes if s.get("vmdesc_match") is not None),
            "vmdesc_matched": sum(1 for s in sizes if s.get("vmdesc_match")),
            "postcopy_state": p.pc.state, "warnings": p.warnings,
            "ok": error is None, "error": error, "error_offset": offset}


def inspect_bytes(data: bytes, profile: Any = "qemu-7.2", **kw: Any) -> dict:
    """The report of one whole stream."""
    ins = Inspector(profile, **kw)
    ins.feed(data)
    return ins.report()


# ---------------------------------------------------------------------- CLI
HELP = """\
Decode a QEMU 7.2 or livemig migration stream file (QEMU: `migrate "exec:cat >
FILE"`; livemig: `migrate file:FILE`) and check it against the spec profile.

Prints the header, the configuration (machine type, subsections), every
section (id, idstr, instance, version, START/PART/END/FULL, byte offset, body
bytes), each RAM block (length, normal and zero pages, sha256 of its content
after load), every MIG_CMD, and the vmdesc JSON QEMU appends after EOF.
Device sections are split at their footer; with a vmdesc, each one's size
is checked against the size the vmdesc describes.  Checks: section grammar,
footers, command framing, the MIG_CMD_POSTCOPY_* order the PostcopyState
handlers allow, RAM records, EOF present.

Exit 0 when the stream is fine; 1 with one line naming the byte offset of the
first error; 2 when the file cannot be read.
"""


def add_parser(subparsers: Any) -> None:
    """Register ``stream inspect``."""
    p = subparsers.add_parser("stream", help="migration stream files: inspect")
    sub = p.add_subparsers(dest="stream_command", metavar="SUBCOMMAND")
    q = sub.add_parser("inspect", help="decode and check a migration stream file",
                       description=HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("path", metavar="PATH", help="the stream file")
    q.add_argument("--json", action="store_true", help="print the whole report as JSON")
    q.add_argument("--profile", default="qemu-7.2", help="spec profile; default qemu-7.2")
    q.set_defaults(func=cmd_inspect)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        with open(args.path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        print(f"livemig: error: {exc}", file=sys.stderr)
        return 2
    report = inspect_bytes(data, args.profile)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_summary(report)
    if not report["ok"]:
        off = report["error_offset"]
        where = f"at byte {off} (0x{off:x})" if off is not None else "at an unknown offset"
        print(f"error {where}: {report['error']}", file=sys.stderr)
        return 1
    return 0


def print_summary(r: dict) -> None:
    out = print
    h = r["header"] or {}
    out(f"{r['bytes']} bytes; magic 0x{h.get('magic', 0):08x} version {h.get('version')}")
    c = r["configuration"]
    if c:
        subs = ", ".join(s["name"] for s in c["subsections"]) or "none"
        out(f"configuration: machine {c['machine']!r}; subsections: {subs}")
    devices = [s for s in r["sections"] if s["idstr"] != RAM_SECTION]
    ram = [s for s in r["sections"] if s["idstr"] == RAM_SECTION]
    out(f"sections: {len(r['sections'])} items ({len(ram)} ram, {len(devices)} device)")
    for s in r["sections"]:
        extra = ""
        if s.get("vmdesc_size") is not None:
            extra = "  vmdesc " + ("ok" if s.get("vmdesc_match") else f"{s['vmdesc_size']}!")
        out(f"  0x{s['offset']:06x} {s['kind'].ljust(5)} id {str(s['id']).ljust(3)} {s['idstr']} "
            f"{s['instance']}/{s['version']}: {s['body_bytes']} bytes{extra}")
    out(f"ram: {r['ram']['pages']} pages, {r['ram']['zero']} zero pages")
    for b in r["ram"]["blocks"]:
        out(f"  {b['id'].ljust(24)} 0x{b['length']:x}  pages {b['pages']} zero {b['zero']}  "
            f"sha256 {b['sha256']}")
    out(f"commands: {len(r['commands'])}")
    for cmd in r["commands"]:
        out(f"  0x{cmd['offset']:06x} MIG_CMD_{cmd['name']} ({cmd['length']} bytes)"
            + (f" {cmd['fields']}" if cmd.get("fields") else ""))
    if r["eof_offset"] is not None:
        out(f"EOF at 0x{r['eof_offset']:x}")
    v = r["vmdesc"]
    if v:
        out(f"vmdesc: {len(v['devices'])} devices, {v['bytes']} bytes; sizes matched "
            f"{r['vmdesc_matched']}/{r['vmdesc_checked']} sections")
    for warn in r["warnings"]:
        out(f"warning: {warn}")
    out("ok" if r["ok"] else "NOT ok")
