"""Fast local tables of the wire constants, read once from a spec profile.

Theory of operation.  The spec (``livemig.spec.profiles.wire``) is the only
place where a magic number, a section type, a RAM flag, a MIG_CMD or a
MIG_RP_MSG value is written.  The engine's hot paths cannot afford a table
lookup per record, so :func:`wire_tables` turns a profile's :class:`Wire`
into one frozen object of plain ints and dicts, cached per profile.  The
engine names constants only through this object.

:func:`qemu_text` fills one of QEMU's printf-style error texts (``%s``,
``%d``, ``%x``, ``%zd``, ``%zu``, ``%04x``...) so that a StreamError carries
exactly the message QEMU prints.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from livemig.spec.schema import Profile, WireMessage

_PRINTF = re.compile(r"%(-?\d*)(?:z|l|ll|PRI)?([sdux])")


def qemu_text(template: str, *args: Any) -> str:
    """Fill a QEMU printf template with ``args`` (``%zd`` and friends included)."""
    values = list(args)

    def repl(match: re.Match) -> str:
        width, conv = match.group(1), match.group(2)
        if not values:
            return match.group(0)
        value = values.pop(0)
        if conv == "s":
            return f"%{width}s" % (value,)
        if conv == "x":
            return f"%{width}x" % (int(value),)
        return f"%{width}d" % (int(value),)

    return _PRINTF.sub(repl, template)


@dataclass(frozen=True)
class WireTables:
    """Every wire constant the engine uses, as plain attributes."""

    magic: int
    version: int
    version_compat: int
    # section types
    eof: int
    section_start: int
    section_part: int
    section_end: int
    section_full: int
    subsection: int
    vmdescription: int
    configuration: int
    command: int
    footer: int
    # RAM flags
    f_full: int
    f_zero: int
    f_mem_size: int
    f_page: int
    f_eos: int
    f_continue: int
    f_xbzrle: int
    f_hook: int
    f_compress: int
    flag_limit: int
    page_size: int
    encoding_xbzrle: int
    multifd_magic: int
    multifd_version: int
    recv_bitmap_ending: int
    resume_ack_value: int
    max_rp_length: int
    max_machine_name: int
    max_section_body: int
    min_device_state: int
    max_multifd_pages: int
    ping_after_open_return_path: int
    # messages
    cmd: dict[str, WireMessage]  # short name ("PING") -> message
    cmd_by_value: dict[int, WireMessage]
    rp: dict[str, WireMessage]  # short name ("PONG") -> message
    rp_by_value: dict[int, WireMessage]
    errors: dict[str, str]

    def error(self, key: str, *args: Any) -> str:
        """QEMU's text for error ``key`` filled with ``args``."""
        return qemu_text(self.errors[key], *args)


def _short(name: str, prefix: str) -> str:
    return name[len(prefix):] if name.startswith(prefix) else name


@lru_cache(maxsize=None)
def wire_tables(profile: Profile) -> WireTables:
    """The wire constants of ``profile`` as a :class:`WireTables` (cached)."""
    w = profile.wire
    c = w.const
    cmds = {_short(m.name, "MIG_CMD_"): m for m in w.commands}
    rps = {_short(m.name, "MIG_RP_MSG_"): m for m in w.return_path}
    return WireTables(
        magic=c("QEMU_VM_FILE_MAGIC"), version=c("QEMU_VM_FILE_VERSION"),
        version_compat=c("QEMU_VM_FILE_VERSION_COMPAT"),
        eof=c("QEMU_VM_EOF"), section_start=c("QEMU_VM_SECTION_START"),
        section_part=c("QEMU_VM_SECTION_PART"), section_end=c("QEMU_VM_SECTION_END"),
        section_full=c("QEMU_VM_SECTION_FULL"), subsection=c("QEMU_VM_SUBSECTION"),
        vmdescription=c("QEMU_VM_VMDESCRIPTION"), configuration=c("QEMU_VM_CONFIGURATION"),
        command=c("QEMU_VM_COMMAND"), footer=c("QEMU_VM_SECTION_FOOTER"),
        f_full=c("RAM_SAVE_FLAG_FULL"), f_zero=c("RAM_SAVE_FLAG_ZERO"),
        f_mem_size=c("RAM_SAVE_FLAG_MEM_SIZE"), f_page=c("RAM_SAVE_FLAG_PAGE"),
        f_eos=c("RAM_SAVE_FLAG_EOS"), f_continue=c("RAM_SAVE_FLAG_CONTINUE"),
        f_xbzrle=c("RAM_SAVE_FLAG_XBZRLE"), f_hook=c("RAM_SAVE_FLAG_HOOK"),
        f_compress=c("RAM_SAVE_FLAG_COMPRESS_PAGE"), flag_limit=c("RAM_SAVE_FLAG_LIMIT"),
        page_size=c("TARGET_PAGE_SIZE"), encoding_xbzrle=c("ENCODING_FLAG_XBZRLE"),
        multifd_magic=c("MULTIFD_MAGIC"), multifd_version=c("MULTIFD_VERSION"),
        recv_bitmap_ending=c("RECV_BITMAP_ENDING"),
        resume_ack_value=c("MIGRATION_RESUME_ACK_VALUE"),
        max_rp_length=c("MAX_RP_MESSAGE_LENGTH"),
        max_machine_name=c("LIVEMIG_MAX_MACHINE_NAME"),
        max_section_body=c("LIVEMIG_MAX_SECTION_BODY"),
        min_device_state=c("LIVEMIG_MIN_DEVICE_STATE"),
        max_multifd_pages=c("LIVEMIG_MAX_MULTIFD_PAGES"),
        ping_after_open_return_path=c("PING_AFTER_OPEN_RETURN_PATH"),
        cmd=cmds, cmd_by_value={m.value: m for m in w.commands},
        rp=rps, rp_by_value={m.value: m for m in w.return_path},
        errors=dict(w.errors),
    )
