"""``livemig stream inspect`` (issue 12), continued: texts from the spec,
MEM_SIZE entries with a page size or a GPA, streams without section footers,
and multifd channels (``--channel``)."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import struct
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qemuproc import pc_args, qemu, why_not_qemu_72

from livemig.engine import inspect as inspect_mod
from livemig.engine import multifd as mfd
from livemig.engine.guest import RAMBlock
from livemig.engine.inspect import Inspector, inspect_bytes
from livemig.engine.layouts import layouts
from livemig.engine.stream import StreamEncoder
from livemig.engine.wire import wire_tables
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")
W = wire_tables(PROFILE)
L = layouts(PROFILE)
ENC = StreamEncoder(PROFILE)
PS = W.page_size
HUGE = 2 << 20


def be64(value: int) -> bytes:
    return struct.pack(">Q", value)


# ---------------------------------------------------------------- texts
def _calls(tree: ast.AST, attr: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call)
            and isinstance(n.func, ast.Attribute) and n.func.attr == attr]


def test_texts_are_the_specs():
    """Every error and warning the inspector makes is a key of the spec's
    table: no _Fail and no warning is given a literal text."""
    tree = ast.parse(Path(inspect_mod.__file__).read_text())
    keys = [c.args[0].value for c in _calls(tree, "error")
            if c.args and isinstance(c.args[0], ast.Constant)]
    assert len(keys) > 30
    assert not [k for k in keys if k not in W.errors]
    fails = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "_Fail"]
    literal = (ast.Constant, ast.JoinedStr, ast.BinOp)
    assert [ast.unparse(f) for f in fails if isinstance(f.args[1], literal)] == []
    warns = [c for c in _calls(tree, "append")
             if isinstance(c.func.value, ast.Attribute) and c.func.value.attr == "warnings"]
    assert warns and [ast.unparse(c) for c in warns if isinstance(c.args[0], literal)] == []


# ---------------------------------------------------------------- MEM_SIZE extras
def _ram_start(entries: bytes, total: int) -> bytes:
    return (ENC.section_start(2, "ram", 0, 4) + L["RAM_RECORD"].pack(total | W.f_mem_size)
            + entries + ENC.eos() + ENC.footer(2))


def _entry(name: str, length: int, *extra: int) -> bytes:
    return L["RAM_BLOCK_ENTRY"].pack(name.encode(), length) + b"".join(map(be64, extra))


def _page(name: str, index: int, fill: int) -> bytes:
    return (L["RAM_RECORD"].pack(index * PS | W.f_page) + L["RAM_BLOCK_ID"].pack(name.encode())
            + bytes([fill]) * PS)


def _postcopy_stream(entries: bytes, total: int, summary: int, caps=()) -> bytes:
    head = ENC.header() + ENC.configuration("pc-i440fx-7.2", capabilities=caps)
    return (head + L.cmd["POSTCOPY_ADVISE"].pack(summary, PS) + _ram_start(entries, total)
            + ENC.section_part(2, end=True) + _page("mem", 0, 7) + ENC.eos() + ENC.footer(2)
            + ENC.eof())


@pytest.mark.parametrize("huge_last", [False, True])
def test_mem_size_page_sizes(huge_last):
    """postcopy-ram: the block on huge pages carries its page size, the
    others none; first or last in the list."""
    small = _entry("pc.rom", PS)
    huge = _entry("mem", HUGE, HUGE)
    entries = small + huge if huge_last else huge + small
    r = inspect_bytes(_postcopy_stream(entries, HUGE + PS, HUGE | PS))
    assert r["ok"], (r["error"], r["error_offset"])
    blocks = {b["id"]: b for b in r["ram"]["blocks"]}
    assert blocks["mem"]["page_size"] == HUGE and "page_size" not in blocks["pc.rom"]
    assert r["ram"]["pagesize_summary"] == HUGE | PS
    assert blocks["mem"]["pages"] == 1
    expect = hashlib.sha256(bytes([7]) * PS + bytes(HUGE - PS)).hexdigest()
    assert blocks["mem"]["sha256"] == expect


def test_mem_size_page_size_cannot_be_told():
    # 00 after the first entry, but no page size of the summary's
    entries = _entry("mem", HUGE, 0x3000) + _entry("pc.rom", PS)
    data = _postcopy_stream(entries, HUGE + PS, HUGE | PS)
    at = data.index(_entry("mem", HUGE)) + len(_entry("mem", HUGE))
    r = inspect_bytes(data)
    assert (r["ok"], r["error_offset"]) == (False, at)
    assert r["error"] == W.error("mem_size_page_size_unknown", "mem", HUGE | PS, 0x3000)
    # postcopy-ram's summary says 4096: an extra field is not looked for,
    # so its 00 bytes are read as the next entry's idstr length
    r = inspect_bytes(_postcopy_stream(_entry("mem", HUGE, HUGE), HUGE, PS))
    assert not r["ok"]
    # with x-ignore-shared too, a page size and a GPA both start with 00
    data = _postcopy_stream(_entry("mem", HUGE, HUGE, 0), HUGE, HUGE | PS,
                            caps=["x-ignore-shared"])
    r = inspect_bytes(data)
    assert (r["ok"], r["error_offset"]) == (False, data.index(_entry("mem", HUGE))
                                            + len(_entry("mem", HUGE)))
    assert r["error"] == W.error("mem_size_page_size_and_addr", HUGE | PS, "mem")


def test_mem_size_addresses():
    head = ENC.header() + ENC.configuration("pc-i440fx-7.2", capabilities=["x-ignore-shared"])
    entries = _entry("mem", HUGE, 0) + _entry("pc.bios", PS, 0xFFFFF000)
    data = head + _ram_start(entries, HUGE + PS) + ENC.eof()
    r = inspect_bytes(data)
    assert r["ok"], r["error"]
    assert [(b["id"], b["addr"]) for b in r["ram"]["blocks"]] == [("mem", 0),
                                                                  ("pc.bios", 0xFFFFF000)]
    # a file cut inside the GPA: the error names the field's offset
    cut = data.index(be64(0xFFFFF000)) + 3
    r = inspect_bytes(data[:cut])
    assert (r["ok"], r["error_offset"]) == (False, cut - 3)
    assert r["error"].startswith(W.error("stream_eof"))


# ---------------------------------------------------------------- no footers
def _device(sid: int, name: str, body: bytes, footer: bool) -> bytes:
    return ENC.section_start(sid, name, 0, 1, full=True) + body + (
        ENC.footer(sid) if footer else b"")


def _vmdesc(devices: dict[str, int]) -> bytes:
    described = [{"name": n, "instance_id": 0, "vmsd_name": n, "version": 1,
                  "fields": [{"name": "blob", "type": "buffer", "size": size}]}
                 for n, size in devices.items()]
    return L["VMDESCRIPTION"].pack(W.vmdescription, json.dumps({"devices": described}).encode())


CHANCE_FOOTER = b"\x7e\x00\x00\x00\x03\x00"  # timer's id in a footer, by chance


def _old_stream(footer: bool, vmdesc: bool, timer: bytes = CHANCE_FOOTER) -> bytes:
    # no configuration either (machine types before 2.9)
    ram = (ENC.section_start(2, "ram", 0, 4) + L["RAM_RECORD"].pack(PS | W.f_mem_size)
           + _entry("pc.ram", PS) + ENC.eos() + (ENC.footer(2) if footer else b""))
    # the first body holds a footer-like run of bytes by chance
    devs = (_device(3, "timer", timer, footer)
            + _device(4, "cpu", bytes(range(40)), footer))
    return (ENC.header() + ram + devs + ENC.eof()
            + (_vmdesc({"timer": 6, "cpu": 40}) if vmdesc else b""))


def test_stream_without_footers():
    r = inspect_bytes(_old_stream(footer=False, vmdesc=True))
    assert r["ok"], (r["error"], r["error_offset"])
    assert r["footers"] is False and r["configuration"] is None
    assert [(s["idstr"], s["body_bytes"], s["split"]) for s in r["sections"][1:]] == [
        ("timer", 6, "vmdesc"), ("cpu", 40, "vmdesc")]
    assert W.error("no_footers") in r["warnings"]
    assert W.error("configuration_absent") in r["warnings"]
    assert r["vmdesc_checked"] == 0  # split at the vmdesc's sizes: nothing to compare
    # with footers, the chance footer inside timer's body is passed over
    r = inspect_bytes(_old_stream(footer=True, vmdesc=True))
    assert r["ok"] and r["footers"] is True
    assert [(s["body_bytes"], s["split"]) for s in r["sections"][1:]] == [(6, "footer"),
                                                                           (40, "footer")]
    assert r["vmdesc_matched"] == 2


def test_stream_without_footers_nor_vmdesc():
    data = _old_stream(footer=False, vmdesc=False)
    timer = data.index(ENC.section_start(3, "timer", 0, 1, full=True))
    r = inspect_bytes(data)
    # timer's body holds 7e 00000003 at its start: split there, then the
    # cpu section has neither a footer nor a size
    assert not r["ok"] and r["error_offset"] is not None and r["error_offset"] >= timer
    data = _old_stream(footer=False, vmdesc=True)[:-1]  # the vmdesc cut: not found
    r = inspect_bytes(data)
    assert not r["ok"] and r["error_offset"] >= timer


def test_vmdesc_not_at_the_end():
    # the vmdesc is not found from the end: the one after EOF is read
    data = _old_stream(footer=True, vmdesc=True, timer=bytes(6)) + b"\x00\x01"
    r = inspect_bytes(data)
    assert r["ok"] and W.error("vmdesc_trailing", 2) in r["warnings"]
    assert [s["body_bytes"] for s in r["sections"][1:]] == [6, 40]


# ---------------------------------------------------------------- multifd
def _mf_main(block: RAMBlock) -> bytes:
    enc = StreamEncoder(PROFILE)
    out = bytearray(ENC.header() + ENC.configuration("pc-i440fx-7.2"))
    out += enc.section_start(2, "ram", 0, 4) + enc.ram_setup([block]) + enc.footer(2)
    out += enc.section_part(2, end=True)
    for piece in enc.normal_pages(block, np.array([1])) + enc.zero_pages(block,
                                                                         np.array([5])):
        out += memoryview(piece).cast("B")
    return bytes(out + enc.eos() + enc.footer(2) + enc.eof())


def _mf_channel(block: RAMBlock, channel: int, pages: list[int], fill: int) -> bytes:
    idx = np.array(pages)
    data = np.full((len(pages), PS), fill, dtype=np.uint8)
    out = bytearray(mfd.hello(PROFILE, channel) + mfd.sync_packet(PROFILE, 0))
    for piece in mfd.page_packet(PROFILE, block, idx, data, 1, PS):
        out += memoryview(piece).cast("B")
    return bytes(out)


@pytest.fixture
def mf_block():
    block = RAMBlock("pc.ram", 8 * PS)
    block.pages[1] = 9
    yield block
    block.close()


def _expected(pages: dict[int, int], n: int = 8) -> str:
    return hashlib.sha256(b"".join(bytes([pages.get(i, 0)]) * PS for i in range(n))).hexdigest()


def test_multifd_channels(mf_block):
    main = _mf_main(mf_block)
    ch1 = _mf_channel(mf_block, 1, [2, 3], 0x11)
    ch2 = _mf_channel(mf_block, 2, [4], 0x22)
    r = inspect_bytes(main, channels={"c1": ch1, "c2": ch2})
    assert r["ok"], (r["error"], r["error_offset"])
    assert [(c["file"], c["channel"], c["packets"], c["syncs"], c["pages"])
            for c in r["channels"]] == [("c1", 1, 2, 1, 2), ("c2", 2, 2, 1, 1)]
    block = r["ram"]["blocks"][0]
    assert (block["pages"], block["multifd"], block["zero"]) == (4, 3, 1)
    assert block["sha256"] == _expected({1: 9, 2: 0x11, 3: 0x11, 4: 0x22})
    assert r["warnings"] == [W.error("vmdesc_absent")]
    # the same page on two channels between the same SYNCs: told, not hidden
    r = inspect_bytes(main, channels={"c1": ch1, "c2": _mf_channel(mf_block, 2, [3], 0x22)})
    assert r["ok"] and W.error("channel_overlap", 1) in r["warnings"]


def test_multifd_channel_errors(mf_block):
    main = _mf_main(mf_block)
    ch = _mf_channel(mf_block, 1, [2, 3], 0x11)
    second = len(mfd.hello(PROFILE, 1) + mfd.sync_packet(PROFILE, 0))
    r = inspect_bytes(main, channels={"c1": ch[:-1]})
    assert (r["ok"], r["error_offset"], r["error_channel"]) == (False, second, 1)
    assert r["error"].startswith("multifd channel 1 (c1): " + W.error("stream_eof"))
    other = RAMBlock("pc.rom", 8 * PS)
    try:
        r = inspect_bytes(main, channels={"c1": _mf_channel(other, 1, [2], 1)})
    finally:
        other.close()
    assert (r["error_offset"], r["error"]) == (
        second, W.error("channel_error", 1, "c1", W.error("ram_unknown_block", "pc.rom")))
    big = RAMBlock("pc.ram", 64 * PS)
    try:
        r = inspect_bytes(main, channels={"c1": _mf_channel(big, 1, [9], 1)})
    finally:
        big.close()
    assert r["error"].endswith(W.error("ram_bad_offset", 9 * PS))
    r = inspect_bytes(main, channels={"c1": b"QEVM" + ch[4:]})
    assert (r["error_offset"], r["error"]) == (0, W.error("channel_error", 1, "c1",
                                                          W.error("not_a_stream")))


def test_cli_channel(mf_block, tmp_path):
    (tmp_path / "main.mig").write_bytes(_mf_main(mf_block))
    (tmp_path / "c1").write_bytes(_mf_channel(mf_block, 1, [2], 3))
    cmd = [sys.executable, "-m", "livemig", "stream", "inspect", str(tmp_path / "main.mig"),
           "--channel", str(tmp_path / "c1")]
    out = subprocess.run(cmd + ["--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["ram"]["multifd"] == 1 and r["channels"][0]["file"] == str(tmp_path / "c1")
    (tmp_path / "c1").write_bytes(_mf_channel(mf_block, 1, [2], 3)[:-5])
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "of channel 1" in out.stderr
    out = subprocess.run(cmd + ["--channel", str(tmp_path / "absent")], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2


# ---------------------------------------------------------------- garbage
def _check(data: bytes, channels=None) -> None:
    ins = Inspector(PROFILE, hash_limit=1 << 20)
    ins.feed(data)
    for name, chunk in (channels or {}).items():
        ins.feed_channel(name, chunk)
    r = ins.report()  # must not raise
    json.dumps(r)
    assert r["ok"] or (isinstance(r["error"], str) and r["error"])
    if r["error"] is not None:
        assert "internal error" not in r["error"], r["error"]


def _mutate(data, raw: bytes) -> bytes:
    raw = bytearray(raw)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    return bytes(raw[:data.draw(st.integers(0, len(raw)))])


GARBAGE_SEEDS = [
    _postcopy_stream(_entry("pc.rom", PS) + _entry("mem", HUGE, HUGE), HUGE + PS, HUGE | PS),
    _old_stream(footer=False, vmdesc=True),
    ENC.header() + ENC.configuration("m", capabilities=["x-ignore-shared"])
    + _ram_start(_entry("mem", PS, 0), PS) + ENC.eof(),
]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_garbage_never_raises_extras(data):
    _check(_mutate(data, data.draw(st.sampled_from(GARBAGE_SEEDS))))


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_garbage_channels_never_raise(data):
    block = RAMBlock("pc.ram", 8 * PS)
    try:
        main = _mf_main(block)
        chan = _mf_channel(block, 1, [2, 3, 7], 5)
    finally:
        block.close()
    _check(main, {"c1": _mutate(data, chan)})


# ---------------------------------------------------------------- real QEMU
def _record(workdir: Path, qemu_args: list[str], caps: list[str]) -> tuple[bytes, dict]:
    """A stream of QEMU 7.2 with ``qemu_args`` (paused) and ``caps`` on,
    read from a FIFO until ``cat`` closes it: (stream, query-migrate)."""
    why = why_not_qemu_72()
    if why:
        pytest.skip(why)
    fifo = workdir / "stream.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []

    def drain() -> None:
        with open(fifo, "rb") as fh:
            got.append(fh.read())

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    with qemu(workdir, [*qemu_args, "-S"]) as (_proc, qmp):
        qmp.command("migrate-set-capabilities", {"capabilities": [
            {"capability": c, "state": True} for c in ["events", *caps]]})
        qmp.command("migrate", {"uri": f"exec:cat > {fifo}"})
        qmp.wait_status("completed", 60)
        info = qmp.command("query-migrate")
    reader.join(60)
    assert got, "cat did not close the stream"
    return got[0], info


def test_real_qemu_ignore_shared(tmp_path):
    data, info = _record(tmp_path, pc_args(tmp_path / "ram.bin", "ram0"), ["x-ignore-shared"])
    r = inspect_bytes(data)
    assert r["ok"], (r["error"], r["error_offset"])
    assert "x-ignore-shared" in r["configuration"]["capabilities"]
    addr = {b["id"]: b["addr"] for b in r["ram"]["blocks"]}
    # facts §11's blocks, each with its GPA; the shared RAM is not sent
    assert addr["ram0"] == 0 and addr["pc.bios"] == 0x100000000 - 0x40000
    assert addr["pc.rom"] == 0xC0000 and len(addr) == 6
    ram0 = r["ram"]["blocks"][0]
    assert (ram0["pages"], ram0["zero"]) == (0, 0)
    assert r["ram"]["pages"] == info["ram"]["normal"]
    assert r["vmdesc_matched"] == r["vmdesc_checked"] == 30


def test_real_qemu_old_machine_without_footers(tmp_path):
    args = ["-M", "pc-i440fx-2.3", "-m", "64", "-display", "none", "-nodefaults"]
    data, info = _record(tmp_path, args, [])
    r = inspect_bytes(data)
    assert r["ok"], (r["error"], r["error_offset"])
    assert r["configuration"] is None and r["footers"] is False
    devices = [s for s in r["sections"] if s["idstr"] != "ram"]
    assert len(devices) > 20 and {s["split"] for s in devices} == {"vmdesc"}
    assert {s["idstr"] for s in devices} >= {"timer", "cpu", "globalstate"}
    assert r["ram"]["pages"] == info["ram"]["normal"]
    assert r["ram"]["zero"] == info["ram"]["duplicate"]
    # no vmdesc at the end (cut): the device sections cannot be split
    r = inspect_bytes(data[:r["vmdesc"]["offset"]])
    assert not r["ok"] and r["error_offset"] == devices[0]["offset"]
    assert r["error"] == W.error("section_no_size", devices[0]["idstr"], devices[0]["id"])
