"""``livemig stream inspect``: decode and check a migration stream file.

Theory of operation
-------------------
:class:`Inspector` is sans-I/O: :meth:`Inspector.feed` takes bytes,
:meth:`Inspector.report` parses everything fed so far and returns a plain
dict (the ``--json`` output).  It reads QEMU 7.2 streams (``migrate
exec:cat > FILE``) and livemig's own (``migrate file:PATH``) with the spec's
compiled layouts (:mod:`livemig.engine.layouts`) and wire constants
(:mod:`livemig.engine.wire`); no byte layout is written here.  Its error and
warning texts are the spec's (``wire_tables(profile).error(key, ...)``).

What it decodes: the header, the configuration section and its subsections,
every section item (START / PART / END / FULL with id, idstr, instance,
version, offset and body bytes), the RAM records of the ``ram`` section
loaded into one sparse buffer per block declared by MEM_SIZE (pages and zero
pages counted, sha256 of the content after load), every MIG_CMD (PACKAGED
blobs are parsed in line, bounded by their length), EOF, and the vmdesc JSON
QEMU appends after EOF.

MEM_SIZE entries may carry two more be64 fields after used_length (QEMU 7.2's
ram_save_setup): the block's page size, with postcopy-ram, when it is not the
host's; the block's GPA, with x-ignore-shared.  The second is told by the
configuration's capabilities subsection.  For the first, the
POSTCOPY_ADVISE before the RAM section gives the OR of the source's page
sizes: the target page alone means no block has one; otherwise each entry
is looked at (the next entry's idstr length is never 0, a page size starts
with 00; after the last entry comes EOS, which is no page size).  What
cannot be told is an error at its offset.

Device sections carry no length.  Their body ends at the section footer
(QEMU_VM_SECTION_FOOTER + be32 section id), looked for within the spec's
LIVEMIG_MAX_SECTION_BODY.  The vmdesc is first looked for from the end of
the file (a complete stream file ends with it); the size it describes for
each device (fields x array length, nested structs, subsections with their
headers) is where a body is split when the footer is there, so that a
body holding the footer's five bytes by chance is not cut short; a
difference from the bytes up to the footer is an error.  (When the vmdesc is
not at the very end, a second pass uses the one parsed after EOF.)  Machine
types before pc-i440fx-2.4 send no footers (and before 2.9 no configuration):
when the first section body is followed by the next item instead of a
footer, device bodies are split at the vmdesc's sizes, and the report says
so (``footers``: false, a warning, ``split``: "vmdesc"); a device the vmdesc
gives no size for is an error.

Multifd (:meth:`Inspector.feed_channel`, ``--channel``): each channel file
(livemig's packets, :mod:`livemig.engine.multifd`) is decoded after the
main stream, against the blocks MEM_SIZE declared, and its pages loaded in
SYNC order.  A page that also came on the main channel, or on two channels
between the same SYNCs, has no order in the files: the channels' copy is
kept and a warning counts them.

What it checks: magic and version, the configuration's presence (its
absence is only a warning when a section follows, as old machine types send), section
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
from livemig.engine.multifd import FLAG_SYNC
from livemig.engine.stream import CONFIG_CAPS, CONFIG_PAGE_BITS, CONFIG_UUID, RAM_SECTION
from livemig.engine.wire import wire_tables
from livemig.errors import MigrationError

#: blocks longer than this are not hashed (a garbage MEM_SIZE could declare TiB)
DEFAULT_HASH_LIMIT = 64 << 30
#: deepest vmdesc struct nesting followed
_MAX_VMDESC_DEPTH = 32
#: the capability that adds a be64 GPA to each MEM_SIZE entry (facts §7.3);
#: the configuration's capabilities subsection names it when it is on
IGNORE_SHARED = "x-ignore-shared"
#: how many 0x06 bytes, read from the end, may be the vmdesc's marker: the
#: JSON holds no raw control byte, so only the marker and its be32 length can
_TAIL_CANDIDATES = 5

# The optional fields ram_save_setup writes after a MEM_SIZE entry's
# used_length (facts §7.3).  They belong in spec/profiles/wire.py's LAYOUTS;
# until they are there, they are declared here with the spec's own types.
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
    multifd: int = 0
    page_size: Optional[int] = None  # the MEM_SIZE entry's, when it carries one
    addr: Optional[int] = None  # the MEM_SIZE entry's GPA (x-ignore-shared)
    touched: Optional[set] = None  # page indexes the main stream wrote (with --channel)

    def put(self, page: int, data: Optional[bytes]) -> None:
        """Page ``page`` now holds ``data`` (None: zeros)."""
        if data is None:
            self.pages.pop(page, None)
        else:
            self.pages[page] = data
        if self.touched is not None:
            self.touched.add(page)

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


class _Reader:
    """Bounded reads of one byte string with the spec's layouts; every
    failure is a :class:`_Fail` at the offset where the item starts."""

    def __init__(self, profile: Any, data: bytes) -> None:
        self.profile = profile
        self.w = wire_tables(profile)
        self.L = layouts(profile)
        self.data = data

    def _read(self, name: str, pos: int, end: int) -> tuple[tuple, int]:
        codec = self.L[name]
        try:
            return codec.unpack_from(self.data, pos, end)
        except ShortInput as exc:
            raise _Fail(pos, self._eof_text(f"{name}: {exc}")) from None
        except LayoutError as exc:  # OutOfBounds and the rest: the layout's own text
            raise _Fail(pos, str(exc)) from None

    def _eof_text(self, where: str) -> str:
        return self.w.error("stream_ends_inside", self.w.error("stream_eof"), where)

    def _peek(self, pos: int, end: int, what: str) -> int:
        if pos >= end:
            raise _Fail(pos, self._eof_text(what))
        return self.data[pos]

    def _take(self, pos: int, n: int, end: int, what: str, at: Optional[int] = None) -> bytes:
        """``n`` bytes at ``pos``; a short file fails at ``at`` (default ``pos``)."""
        if end - pos < n:
            raise _Fail(pos if at is None else at, self.w.error("stream_ends_short", self.w.error("stream_eof"), what,
                                          n, max(end - pos, 0)))
        return self.data[pos:pos + n]

    @staticmethod
    def _text(raw: bytes) -> str:
        return raw.decode("utf-8", errors="replace")


class _Pass(_Reader):
    """One parse of the whole buffer; ``hints`` maps (idstr, instance) to the
    body size the vmdesc describes."""

    def __init__(self, profile: Any, data: bytes, hints: dict, hash_limit: int, *,
                 track_pages: bool = False) -> None:
        super().__init__(profile, data)
        self.hints = hints
        self.hash_limit = hash_limit
        self.track_pages = track_pages
        self.ps = self.w.page_size
        self.mask = self.ps - 1
        w = self.w
        #: bytes that may start the item after a section body
        self.item_kinds = {w.eof, w.section_start, w.section_part, w.section_end,
                           w.section_full, w.command}
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
        #: POSTCOPY_ADVISE's page-size summary (None: no 16-byte ADVISE seen)
        self.pagesize_summary: Optional[int] = None
        #: None until the first section body shows whether footers follow
        self.footers: Optional[bool] = None
        self.header: Optional[dict] = None
        self.configuration: Optional[dict] = None
        self.vmdesc: Optional[dict] = None
        self.vmdesc_raw: Any = None
        self.eof_offset: Optional[int] = None
        self.warnings: list[str] = []
        self.error: Optional[str] = None
        self.error_offset: Optional[int] = None

    # ------------------------------------------------------------ top level
    def run(self) -> None:
        try:
            self._run()
        except _Fail as exc:
            self.error, self.error_offset = exc.text, exc.offset
        except (MigrationError, ValueError, KeyError, IndexError, TypeError, OverflowError,
                RecursionError, MemoryError) as exc:  # a bug here must not look like a crash
            self.error, self.error_offset = self.w.error("inspect_internal", repr(exc)), None

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
        kind = self._peek(pos, end, "CONFIGURATION")
        if kind == w.configuration:
            pos = self._configuration(pos, end)
        elif kind in (w.section_start, w.section_full, w.command):
            # machine types before 2.9 send no configuration: go on without
            self.warnings.append(w.error("configuration_absent"))
        else:
            raise _Fail(pos, w.error("configuration_missing"))
        pos = self._items(pos, end, package=False)
        self.eof_offset = pos - 1
        if self.open:
            names = ", ".join(f"{sid} ({v[0]})" for sid, v in sorted(self.open.items()))
            self.warnings.append(w.error("sections_not_ended", names))
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

    @property
    def ignore_shared(self) -> bool:
        return bool(self.configuration) and IGNORE_SHARED in self.configuration["capabilities"]

    def _items(self, pos: int, end: int, *, package: bool) -> int:
        """Items until EOF (returns the position after it) or, in a package,
        until ``end``."""
        w = self.w
        while True:
            if package and pos >= end:
                return pos
            if pos >= end:
                raise _Fail(pos, w.error("stream_ends_before", w.error("stream_eof"),
                                         "QEMU_VM_EOF"))
            kind = self.data[pos]
            if kind == w.eof:
                if package:
                    self.warnings.append(w.error("eof_in_package", pos))
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
                raise _Fail(at, self.w.error("section_started_twice", sid, name))
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
        after = self._footer(body_end, end, name, sid)
        if name != RAM_SECTION:
            entry["split"] = "footer" if self.footers else "vmdesc"
        return after

    def _footer(self, pos: int, end: int, name: str, sid: int) -> int:
        w = self.w
        if self.footers is None and pos < end and self.data[pos] != w.footer \
                and self.data[pos] in self.item_kinds:
            # the first body is followed by the next item: a machine type
            # that sends no footers (send-section-footer off before 2.4)
            self.footers = False
            self.warnings.append(w.error("no_footers"))
        if self.footers is False:
            return pos
        if pos >= end:
            raise _Fail(pos, self._eof_text(f"SECTION_FOOTER {sid} ('{name}')"))
        if self.data[pos] != w.footer:
            raise _Fail(pos, w.error("footer_missing", name))
        (_m, read), p = self._read("SECTION_FOOTER", pos, end)
        if read != sid:
            raise _Fail(pos, w.error("footer_mismatch", name, read, sid))
        self.footers = True
        return p

    def _split_device(self, entry: dict, pos: int, end: int) -> int:
        """The end of a device body: at the vmdesc's size when the footer is
        there (or the stream has no footers), else at the first footer within
        the spec's bound."""
        w, name, sid = self.w, entry["idstr"], entry["id"]
        hint = self.hints.get((name, entry["instance"]))
        fits = hint is not None and hint <= end - pos
        if self.footers is False:
            if not fits:
                raise _Fail(entry["offset"], w.error("section_no_size", name, sid))
            return pos + hint
        footer = self.L["SECTION_FOOTER"].pack(w.footer, sid)
        if fits and self.data[pos + hint:pos + hint + len(footer)] == footer:
            return pos + hint
        limit = w.max_section_body
        found = self.data.find(footer, pos, min(end, pos + limit + len(footer)))
        if found >= 0:
            return found
        if self.footers is None and fits and self.data[pos + hint:pos + hint + 1] \
                and self.data[pos + hint] in self.item_kinds:
            return pos + hint  # no footer anywhere: _footer tells the stream has none
        if end - pos > limit:
            raise _Fail(entry["offset"], w.error("foreign_section_no_footer", name, sid, limit))
        raise _Fail(entry["offset"], w.error("footer_missing_at_end", name))

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
                block.put(self._page_of(block, addr, at), bytes([fill]) * ps if fill else None)
                block.zero += 1
            elif kind == w.f_page:
                block, pos = self._block_for(flags, pos, end, at)
                data = self._take(pos, ps, end, "RAM_SAVE_FLAG_PAGE")
                pos += ps
                block.put(self._page_of(block, addr, at),
                          None if data.count(0) == ps else bytes(data))
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
                block.put(page, buf.tobytes())
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
                block.put(page, raw)
                block.compressed += 1
            else:
                raise _Fail(at, w.error("ram_unknown_flags", flags))
            self.last_block = block

    def _mem_size(self, total: int, pos: int, end: int, at: int) -> int:
        w = self.w
        declared: list[_Block] = []
        remaining = total
        while remaining > 0:
            entry_at = pos
            (raw, length), pos = self._read("RAM_BLOCK_ENTRY", pos, end)
            name = self._text(raw)
            if length > remaining:
                raise _Fail(entry_at, w.error("mem_size_overrun", name, length, remaining))
            if any(b.name == name for b in declared):
                raise _Fail(entry_at, w.error("mem_size_twice", name))
            if length == 0:
                raise _Fail(entry_at, w.error("mem_size_empty", name))
            remaining -= length
            block = _Block(name, length, touched=set() if self.track_pages else None)
            pos = self._block_extras(block, pos, end, last=remaining == 0)
            declared.append(block)
        if self.blocks:
            if [self._declared(self.blocks[n]) for n in self.block_order] \
                    != [self._declared(b) for b in declared]:
                raise _Fail(at, w.error("mem_size_differs"))
            return pos
        for block in declared:
            self.blocks[block.name] = block
            self.block_order.append(block.name)
        return pos

    @staticmethod
    def _declared(b: _Block) -> tuple:
        return b.name, b.length, b.page_size, b.addr

    # The fields after a MEM_SIZE entry's used_length (facts §7.3): a be64
    # page size with postcopy-ram when the block's page size is not the
    # host's, then a be64 GPA with x-ignore-shared.
    def _block_extras(self, block: _Block, pos: int, end: int, *, last: bool) -> int:
        summary = self.pagesize_summary
        # the summary ORs every block's page size: the target page alone
        # means every block has it, which is the host's, so none carries one
        if summary is not None and summary != self.ps:
            if self.ignore_shared:  # QEMU refuses the pair; both fields start 00
                raise _Fail(pos, self.w.error("mem_size_page_size_and_addr", summary,
                                              block.name))
            pos = self._block_page_size(block, pos, end, last, summary)
        if self.ignore_shared:
            (block.addr,), pos = self._read("RAM_BLOCK_ADDR", pos, end)
        return pos

    def _block_page_size(self, block: _Block, pos: int, end: int, last: bool,
                         summary: int) -> int:
        """Whether a page size follows, told from the bytes: the next entry
        starts with its idstr's length (never 0), a page size (< 2^56) with
        00; after the last entry comes the setup's EOS record, never a page
        size (those are at least the target page and a bit of the summary)."""
        first = self._peek(pos, end, "RAM_BLOCK_ENTRY")
        if not last and first != 0:
            return pos
        (value,), after = self._read("RAM_BLOCK_PAGE_SIZE", pos, end)
        if value > self.ps and value & (value - 1) == 0 and value & summary:
            block.page_size = value
            return after
        if last and value == self.w.f_eos:
            return pos
        raise _Fail(pos, self.w.error("mem_size_page_size_unknown", block.name, summary, value))

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
        if short == "POSTCOPY_ADVISE" and length:  # postcopy-ram: MEM_SIZE may carry page sizes
            self.pagesize_summary = entry["fields"]["pagesize_summary"]
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
            self._take(pos, blob, end, "MIG_CMD_PACKAGED", at=at)
            entry["package"] = {"offset": pos, "bytes": blob}
            pos = self._items(pos, pos + blob, package=True)
        return pos

    # ------------------------------------------------------------ after EOF
    def _after_eof(self, pos: int, end: int) -> None:
        w = self.w
        if pos >= end:
            self.warnings.append(w.error("vmdesc_absent"))
            return
        if self.data[pos] != w.vmdescription:
            self.warnings.append(w.error("vmdesc_unexpected", self.data[pos]))
            return
        at = pos
        try:
            (_k, raw), pos = self.L["VMDESCRIPTION"].unpack_from(self.data, pos, end)
        except OutOfBounds as exc:
            raise _Fail(at, w.error("section_too_long", "vmdesc", exc.value, exc.max)) from None
        except ShortInput as exc:
            raise _Fail(at, self._eof_text(f"VMDESCRIPTION: {exc}")) from None
        try:
            desc = json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise _Fail(at, w.error("vmdesc_not_json", exc)) from None
        if not isinstance(desc, dict) or not isinstance(desc.get("devices", []), list):
            raise _Fail(at, w.error("vmdesc_no_devices"))
        self.vmdesc_raw = desc
        self.vmdesc = {"offset": at, "bytes": len(raw), "page_size": desc.get("page_size"),
                       "devices": [_vmdesc_device(d, self) for d in desc.get("devices", [])
                                   if isinstance(d, dict)]}
        if pos < end:
            self.warnings.append(w.error("vmdesc_trailing", end - pos))


# ---------------------------------------------------------------------- vmdesc sizes
def vmsd_size(r: _Reader, desc: Any, depth: int = 0) -> Optional[int]:
    """Bytes of a vmstate described by ``desc`` (a device, struct or
    subsection of the vmdesc), or None when it cannot be told."""
    if not isinstance(desc, dict) or depth > _MAX_VMDESC_DEPTH:
        return None
    total = 0
    for f in desc.get("fields", []) or []:
        size = _field_size(r, f, depth)
        if size is None:
            return None
        total += size
    for sub in desc.get("subsections", []) or []:
        if not isinstance(sub, dict):
            return None
        name, version = sub.get("vmsd_name"), sub.get("version")
        if not isinstance(name, str) or not isinstance(version, int):
            return None
        body = vmsd_size(r, sub, depth + 1)
        if body is None:
            return None
        try:
            head = len(r.L["SUBSECTION"].pack(r.w.subsection, name.encode(), version))
        except Exception:  # noqa: BLE001 - a name or version that does not fit
            return None
        total += head + body
    return total


def _field_size(r: _Reader, f: Any, depth: int) -> Optional[int]:
    if not isinstance(f, dict):
        return None
    count = f.get("array_len", 1)
    if not isinstance(count, int) or count < 0:
        return None
    if f.get("type") == "struct" and isinstance(f.get("struct"), dict):
        each = vmsd_size(r, f["struct"], depth + 1)
    else:
        each = f.get("size")
    if not isinstance(each, int) or each < 0:
        return None
    return each * count


def _vmdesc_device(d: dict, r: _Reader) -> dict:
    fields = []
    for f in d.get("fields", []) or []:
        if isinstance(f, dict):
            fields.append({k: f[k] for k in ("name", "type", "size", "array_len") if k in f})
    subs = [s.get("vmsd_name") for s in d.get("subsections", []) or [] if isinstance(s, dict)]
    return {"name": d.get("name"), "instance_id": d.get("instance_id"),
            "vmsd_name": d.get("vmsd_name"), "version": d.get("version"),
            "size": vmsd_size(r, d), "fields": fields, "subsections": subs}


def _tail_vmdesc(r: _Reader) -> Optional[dict]:
    """The vmdesc of a complete stream file, found from its end (QEMU_VM_EOF,
    QEMU_VM_VMDESCRIPTION, be32 length, JSON up to the last byte), or None.
    A stream without footers needs it before its device sections."""
    data, w, end = r.data, r.w, len(r.data)
    marker = bytes([w.vmdescription])
    lo = max(1, end - w.max_section_body - r.L["VMDESCRIPTION"].min_size)
    hi = end
    for _ in range(_TAIL_CANDIDATES):
        at = data.rfind(marker, lo, hi)
        if at < 0:
            return None
        hi = at
        try:
            (_k, raw), after = r.L["VMDESCRIPTION"].unpack_from(data, at, end)
            desc = json.loads(raw) if after == end and data[at - 1] == w.eof else None
        except (LayoutError, ValueError, RecursionError):
            continue
        if isinstance(desc, dict) and isinstance(desc.get("devices"), list):
            return desc
    return None


def _hints(r: _Reader, desc: Optional[dict]) -> dict:
    """(idstr, instance) -> the body size the vmdesc describes."""
    out: dict = {}
    for d in (desc or {}).get("devices", []):
        if isinstance(d, dict):
            size = vmsd_size(r, d)
            if size is not None:
                out.setdefault((d.get("name"), d.get("instance_id")), size)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes):
        text = value.decode("utf-8", errors="replace")
        return text if text.isprintable() else value.hex()
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


# ---------------------------------------------------------------------- multifd channels
class _Channel(_Reader):
    """One multifd channel file (livemig's packets, :mod:`livemig.engine.multifd`):
    the hello, then packets.  Its pages are collected with their SYNC epoch
    (SYNCs seen before them on this channel) and applied by
    :func:`_apply_channels`, once every channel is read."""

    def __init__(self, profile: Any, data: bytes, number: int, name: str,
                 blocks: dict[str, _Block]) -> None:
        super().__init__(profile, data)
        self.blocks = blocks
        self.ps = self.w.page_size
        self.writes: list[tuple[int, _Block, int, Optional[bytes]]] = []
        self.info: dict[str, Any] = {"number": number, "file": name, "bytes": len(data),
                                     "channel": None, "packets": 0, "syncs": 0, "pages": 0,
                                     "ok": True, "error": None, "error_offset": None}

    def run(self) -> dict:
        try:
            self._run()
        except _Fail as exc:
            self.info.update(ok=False, error=exc.text, error_offset=exc.offset)
        except (MigrationError, ValueError, KeyError, IndexError, TypeError, OverflowError,
                MemoryError) as exc:  # a bug here must not look like a crash
            self.info.update(ok=False, error=self.w.error("inspect_internal", repr(exc)))
        return self.info

    def _run(self) -> None:
        w, end = self.w, len(self.data)
        (magic, version, channel), pos = self._read("MULTIFD_HELLO", 0, end)
        if magic != w.multifd_magic or version != w.multifd_version:
            raise _Fail(0, w.error("not_a_stream"))
        self.info["channel"] = channel
        while pos < end:
            pos = self._packet(pos, end)

    def _packet(self, pos: int, end: int) -> int:
        w, ps, at = self.w, self.ps, pos
        (flags, npages, _number, idlen), pos = self._read("MULTIFD_PACKET_HEADER", pos, end)
        if npages > w.max_multifd_pages:  # bound what one packet may make us hold
            raise _Fail(at, w.error("multifd_too_many_pages", npages, w.max_multifd_pages))
        what = "MULTIFD_PACKET_HEADER"
        name = self._text(self._take(pos, idlen, end, what, at))
        pos += idlen
        # the header's layout describes them: npages x be64 offset, npages x page
        offsets = np.frombuffer(self._take(pos, 8 * npages, end, what, at), ">u8")
        pos += 8 * npages
        pages = self._take(pos, npages * ps, end, what, at)
        pos += npages * ps
        self.info["packets"] += 1
        if npages:
            self._collect(at, name, offsets, pages)
        if flags & FLAG_SYNC:
            self.info["syncs"] += 1
        return pos

    def _collect(self, at: int, name: str, offsets: np.ndarray, pages: bytes) -> None:
        block = self.blocks.get(name)
        if block is None:
            raise _Fail(at, self.w.error("ram_unknown_block", name))
        ps, epoch = self.ps, self.info["syncs"]
        for i, offset in enumerate(offsets.tolist()):
            if offset >= block.length or offset % ps:
                raise _Fail(at, self.w.error("ram_bad_offset", offset))
            data = pages[i * ps:(i + 1) * ps]
            self.writes.append((epoch, block, offset // ps, None if data.count(0) == ps else data))
        block.multifd += len(offsets)
        self.info["pages"] += len(offsets)


def _apply_channels(channels: list[_Channel]) -> int:
    """Load the channels' pages in SYNC order (each channel's pages before
    its k-th SYNC come before every channel's after it); the number of pages
    whose newest copy the files do not tell: also on the main channel, or on
    two channels between the same SYNCs."""
    order = sorted(((epoch, n, block, page, data) for n, ch in enumerate(channels)
                    for epoch, block, page, data in ch.writes), key=lambda t: (t[0], t[1]))
    last: dict[tuple[int, int], tuple[int, int]] = {}  # (block, page) -> (epoch, channel)
    unsure: set[tuple[int, int]] = set()
    for epoch, n, block, page, data in order:
        key = (id(block), page)
        seen = last.get(key)
        if (block.touched is not None and page in block.touched) or \
                (seen is not None and seen[0] == epoch and seen[1] != n):
            unsure.add(key)
        last[key] = (epoch, n)
        if data is None:
            block.pages.pop(page, None)
        else:
            block.pages[page] = data
    return len(unsure)


# ---------------------------------------------------------------------- public
class Inspector:
    """Feed a stream's bytes (and, for multifd, each channel's with
    :meth:`feed_channel`), then ask for the :meth:`report`."""

    def __init__(self, profile: Any, *, hash_limit: int = DEFAULT_HASH_LIMIT) -> None:
        if isinstance(profile, str):
            from livemig.spec import load_profile
            profile = load_profile(profile)
        self.profile = profile
        self.hash_limit = hash_limit
        self._buf = bytearray()
        self._channels: dict[str, bytearray] = {}

    def feed(self, data: bytes) -> None:
        self._buf += data

    def feed_channel(self, name: str, data: bytes) -> None:
        """Bytes of the multifd channel ``name`` (channels keep their first
        feed's order)."""
        self._channels.setdefault(name, bytearray()).extend(data)

    def report(self) -> dict:
        data = bytes(self._buf)
        reader = _Reader(self.profile, data)
        hints = _hints(reader, _tail_vmdesc(reader))
        p = self._pass(data, hints)
        sizes = _device_sizes(p)
        mismatch = any(s.get("vmdesc_size") not in (None, s["body_bytes"]) for s in sizes)
        again = _hints(p, p.vmdesc_raw)
        if mismatch and p.error is None and again != hints:
            # the vmdesc is not at the file's end: split again where it says,
            # when the footer is there
            p2 = self._pass(data, again)
            if p2.error is None:
                p, sizes = p2, _device_sizes(p2)
        channels = [_Channel(self.profile, bytes(buf), n, name, p.blocks)
                    for n, (name, buf) in enumerate(self._channels.items(), 1)]
        infos = [ch.run() for ch in channels]
        unsure = _apply_channels(channels)
        if unsure:
            p.warnings.append(p.w.error("channel_overlap", unsure))
        return _report(p, sizes, len(data), infos)

    def _pass(self, data: bytes, hints: dict) -> _Pass:
        p = _Pass(self.profile, data, hints, self.hash_limit, track_pages=bool(self._channels))
        p.run()
        return p


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
        # split at the vmdesc's size, a section matches by construction
        checked = d["size"] is not None and s.get("split") != "vmdesc"
        s["vmdesc_match"] = d["size"] == s["body_bytes"] if checked else None
        out.append(s)
    return out


def _first_error(p: _Pass, sizes: list[dict],
                 channels: list[dict]) -> tuple[Optional[str], Optional[int], Optional[int]]:
    """(text, byte offset, channel number or None) of the first error."""
    if p.error is not None:
        return p.error, p.error_offset, None
    for s in sizes:
        if s.get("vmdesc_match") is False:
            return (p.w.error("vmdesc_size_mismatch", s["idstr"], s["instance"],
                              s["body_bytes"], s["vmdesc_size"]), s["offset"], None)
    for ch in channels:
        if not ch["ok"]:
            text = p.w.error("channel_error", ch["number"], ch["file"], ch["error"])
            return text, ch["error_offset"], ch["number"]
    return None, None, None


def _block_report(p: _Pass, b: _Block) -> dict:
    out = {"id": b.name, "length": b.length, "pages": b.normal + b.multifd, "zero": b.zero,
           "xbzrle": b.xbzrle, "compressed": b.compressed, "multifd": b.multifd,
           "sha256": b.sha256(p.ps, p.hash_limit)}
    if b.page_size is not None:
        out["page_size"] = b.page_size
    if b.addr is not None:
        out["addr"] = b.addr
    return out


def _report(p: _Pass, sizes: list[dict], total: int, channels: list[dict]) -> dict:
    error, offset, channel = _first_error(p, sizes, channels)
    blocks = [_block_report(p, p.blocks[name]) for name in p.block_order]
    ram = {"blocks": blocks, "pagesize_summary": p.pagesize_summary,
           **{k: sum(b[k] for b in blocks)
              for k in ("pages", "zero", "xbzrle", "compressed", "multifd")}}
    return {"bytes": total, "header": p.header, "configuration": p.configuration,
            "sections": p.sections, "ram": ram, "commands": p.commands,
            "eof_offset": p.eof_offset, "vmdesc": p.vmdesc, "footers": p.footers,
            "vmdesc_checked": sum(1 for s in sizes if s.get("vmdesc_match") is not None),
            "vmdesc_matched": sum(1 for s in sizes if s.get("vmdesc_match")),
            "channels": channels, "postcopy_state": p.pc.state, "warnings": p.warnings,
            "ok": error is None, "error": error, "error_offset": offset,
            "error_channel": channel}


def inspect_bytes(data: bytes, profile: Any = "qemu-7.2", *,
                  channels: Optional[dict[str, bytes]] = None, **kw: Any) -> dict:
    """The report of one whole stream (and its multifd ``channels``, by name)."""
    ins = Inspector(profile, **kw)
    ins.feed(data)
    for name, chunk in (channels or {}).items():
        ins.feed_channel(name, chunk)
    return ins.report()


# ---------------------------------------------------------------------- CLI
HELP = """\
Decode a QEMU 7.2 or livemig migration stream file (QEMU: `migrate "exec:cat >
FILE"`; livemig: `migrate file:FILE`) and check it against the spec profile.

Prints the header, the configuration (machine type, subsections), every
section (id, idstr, instance, version, START/PART/END/FULL, byte offset, body
bytes), each RAM block (length, normal and zero pages, sha256 of its content
after load; the page size and address MEM_SIZE carries with postcopy-ram or
x-ignore-shared), every MIG_CMD, and the vmdesc JSON QEMU appends after EOF.
Device sections are split at their footer; with a vmdesc, each one's size
is checked against the size the vmdesc describes.  A stream without footers
(machine types before pc-i440fx-2.4) is split at the vmdesc's sizes, the
vmdesc being found from the file's end.  With --channel, the pages of multifd
channels (livemig's packets) are loaded too.  Checks: section grammar,
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
    q.add_argument("--channel", action="append", default=[], metavar="FILE",
                   help="the bytes of one multifd channel of this migration (livemig's "
                        "packets, from the MULTIFD hello on); repeat for each channel")
    q.set_defaults(func=cmd_inspect)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def cmd_inspect(args: argparse.Namespace) -> int:
    try:
        data = _read_file(args.path)
        channels = {path: _read_file(path) for path in args.channel}
    except OSError as exc:
        print(f"livemig: error: {exc}", file=sys.stderr)
        return 2
    report = inspect_bytes(data, args.profile, channels=channels)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_summary(report)
    if not report["ok"]:
        off = report["error_offset"]
        where = f"at byte {off} (0x{off:x})" if off is not None else "at an unknown offset"
        if report["error_channel"] is not None:
            where += f" of channel {report['error_channel']}"
        print(f"error {where}: {report['error']}", file=sys.stderr)
        return 1
    return 0


def _read_file(path: str) -> bytes:
    with open(path, "rb") as fh:
        return fh.read()


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
        extra = "".join(f"  {k} 0x{b[k]:x}" for k in ("page_size", "addr") if k in b)
        out(f"  {b['id'].ljust(24)} 0x{b['length']:x}  pages {b['pages']} zero {b['zero']}  "
            f"sha256 {b['sha256']}{extra}")
    for ch in r["channels"]:
        out(f"channel {ch['number']} {ch['file']}: multifd channel {ch['channel']}, "
            f"{ch['packets']} packets, {ch['syncs']} SYNC, {ch['pages']} pages")
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
