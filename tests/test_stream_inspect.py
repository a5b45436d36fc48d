"""``livemig stream inspect`` (engine/inspect.py, issue 12): a real QEMU 7.2
stream and a livemig stream decoded and checked, errors with their byte
offset, garbage never raising, and the CLI."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from qemuproc import record_qemu_stream

from livemig.engine.inspect import Inspector, inspect_bytes
from livemig.engine.layouts import layouts
from livemig.engine.stream import StreamEncoder
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")

#: facts §11: the blocks MEM_SIZE declares for `-M pc -m 64` (pc.ram is named
#: after the memory backend's id when one is given)
QEMU_BLOCKS = [("ram0", 0x4000000), ("/rom@etc/acpi/tables", 0x20000), ("pc.bios", 0x40000),
               ("pc.rom", 0x20000), ("/rom@etc/table-loader", 0x1000),
               ("/rom@etc/acpi/rsdp", 0x1000)]


@pytest.fixture(scope="module")
def qemu_stream(tmp_path_factory):
    """A real QEMU 7.2 stream: (stream bytes, RAM file sha256, query-migrate)."""
    return record_qemu_stream(tmp_path_factory.mktemp("qemu"))


# ---------------------------------------------------------------- real QEMU
def test_real_qemu_stream(qemu_stream):
    data, ram_sha, info = qemu_stream
    r = inspect_bytes(data)
    assert r["ok"], (r["error"], r["error_offset"])
    assert r["header"] == {"magic": 0x5145564D, "version": 3}
    assert r["configuration"]["machine"] == "pc-i440fx-7.2"
    ram = [s for s in r["sections"] if s["idstr"] == "ram"]
    assert {s["id"] for s in ram} == {2}
    assert [s["kind"] for s in ram][0] == "START" and ram[-1]["kind"] == "END"
    blocks = r["ram"]["blocks"]
    assert [(b["id"], b["length"]) for b in blocks] == QEMU_BLOCKS
    assert r["ram"]["pages"] == info["ram"]["normal"]
    assert r["ram"]["zero"] == info["ram"]["duplicate"]
    assert blocks[0]["sha256"] == ram_sha
    devices = [s for s in r["sections"] if s["idstr"] != "ram"]
    assert len(devices) == 30 and all(s["kind"] == "FULL" for s in devices)
    assert all(s["vmdesc_match"] for s in devices)
    assert r["vmdesc_checked"] == r["vmdesc_matched"] == 30
    assert {d["name"] for d in r["vmdesc"]["devices"]} >= {"timer", "cpu", "globalstate"}
    glob = next(s for s in devices if s["idstr"] == "globalstate")
    assert glob["body_bytes"] == 104
    cpu = next(d for d in r["vmdesc"]["devices"] if d["name"] == "cpu")
    assert cpu["fields"][0] == {"name": "env.regs", "type": "uint64", "size": 8,
                                "array_len": 16}
    assert r["eof_offset"] is not None and r["commands"] == []


def test_real_qemu_errors(qemu_stream):
    data = qemu_stream[0]
    r = inspect_bytes(data)
    # truncated inside the RAM PART section
    cut = inspect_bytes(data[:100000])
    assert not cut["ok"] and cut["error_offset"] is not None
    assert cut["error"].startswith("Input/output error")
    # the START section's footer names another id
    start = r["sections"][0]
    at = start["body_offset"] + start["body_bytes"]
    bad = bytearray(data)
    bad[at + 4] ^= 0x01
    m = inspect_bytes(bytes(bad))
    assert (m["ok"], m["error_offset"]) == (False, at)
    assert m["error"] == "Mismatched section id in footer for ram - read 0x3 expected 0x2"
    # a vmdesc that describes one more byte of timer than the stream holds
    i = data.index(b'"name": "cpu_ticks_offset", "type": "int64", "size": 8')
    bad = bytearray(data)
    j = i + len(b'"name": "cpu_ticks_offset", "type": "int64", "size": ')
    bad[j:j + 1] = b"9"
    m = inspect_bytes(bytes(bad))
    timer = next(s for s in r["sections"] if s["idstr"] == "timer")
    assert (m["ok"], m["error_offset"]) == (False, timer["offset"])
    assert "timer" in m["error"] and "25" in m["error"] and "24" in m["error"]


def test_cli_json_and_exit_status(qemu_stream, tmp_path):
    path = tmp_path / "s.mig"
    path.write_bytes(qemu_stream[0])
    out = subprocess.run([sys.executable, "-m", "livemig", "stream", "inspect", str(path),
                          "--json"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    for key in ("configuration", "sections", "ram", "commands", "vmdesc", "ok", "error",
                "error_offset"):
        assert key in r
    assert r["configuration"]["machine"] == "pc-i440fx-7.2"
    assert set(r["sections"][0]) >= {"id", "idstr", "instance", "version", "kind", "offset",
                                     "body_bytes"}
    assert set(r["ram"]["blocks"][0]) >= {"id", "length", "pages", "zero", "sha256"}
    path.write_bytes(qemu_stream[0][:5000])
    out = subprocess.run([sys.executable, "-m", "livemig", "stream", "inspect", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "at byte " in out.stderr
    assert "pc-i440fx-7.2" in out.stdout


# ---------------------------------------------------------------- livemig
def test_livemig_stream_hashes(tmp_path):
    from livemig.engine.vm import VM
    path = tmp_path / "lm.mig"
    vm = VM(ram_size=4 << 20)
    try:
        vm.execute("migrate", {"uri": f"file:{path}"})
        assert vm.wait_for_status({"completed", "failed"}, 60)
        assert vm.query_migrate()["status"] == "completed"
        ram = vm.execute("x-livemig-query-ram")
    finally:
        vm.close()
    r = inspect_bytes(path.read_bytes())
    assert r["ok"], (r["error"], r["error_offset"])
    assert [{"id": b["id"], "length": b["length"], "sha256": b["sha256"]}
            for b in r["ram"]["blocks"]] == ram
    assert r["vmdesc"] is None and r["eof_offset"] is not None


# ---------------------------------------------------------------- built streams
ENC = StreamEncoder(PROFILE)
L = layouts(PROFILE)
HEAD = ENC.header() + ENC.configuration("pc-i440fx-7.2")


def test_part_for_unknown_section():
    data = HEAD + ENC.section_part(7) + ENC.eos() + ENC.footer(7) + ENC.eof()
    r = inspect_bytes(data)
    assert (r["ok"], r["error_offset"]) == (False, len(HEAD))
    assert r["error"].startswith("Unknown savevm section or instance '7' 0")


def test_postcopy_listen_before_advise():
    data = HEAD + L.cmd["POSTCOPY_LISTEN"].pack() + ENC.eof()
    r = inspect_bytes(data)
    assert (r["ok"], r["error_offset"]) == (False, len(HEAD))
    assert r["error"] == "CMD_POSTCOPY_LISTEN in wrong postcopy state (0)"


def test_postcopy_order_in_a_package():
    blob = L.cmd["POSTCOPY_LISTEN"].pack() + L.cmd["POSTCOPY_RUN"].pack()
    data = (HEAD + L.cmd["OPEN_RETURN_PATH"].pack() + L.cmd["PING"].pack(1)
            + L.cmd["POSTCOPY_ADVISE"].pack(4096, 4096)
            + L.cmd["PACKAGED"].pack(len(blob)) + blob + ENC.eof())
    r = inspect_bytes(data)
    assert r["ok"], r["error"]
    assert [c["name"] for c in r["commands"]] == [
        "OPEN_RETURN_PATH", "PING", "POSTCOPY_ADVISE", "PACKAGED", "POSTCOPY_LISTEN",
        "POSTCOPY_RUN"]
    assert r["postcopy_state"] == "RUNNING"
    # RUN twice: the second finds RUNNING
    data = data[:-1] + L.cmd["POSTCOPY_RUN"].pack() + ENC.eof()
    r = inspect_bytes(data)
    assert r["error"] == "CMD_POSTCOPY_RUN in wrong postcopy state (4)"


def test_ping_without_return_path_and_missing_eof():
    r = inspect_bytes(HEAD + L.cmd["PING"].pack(1) + ENC.eof())
    assert r["error"] == "CMD_PING (0x1) received with no return path"
    r = inspect_bytes(HEAD)
    assert (r["ok"], r["error_offset"]) == (False, len(HEAD))
    assert "no QEMU_VM_EOF" in r["error"]
    r = inspect_bytes(b"QEVX" + HEAD[4:])
    assert (r["error"], r["error_offset"]) == ("Not a migration stream", 0)


# ---------------------------------------------------------------- garbage
def _small_stream() -> bytes:
    from livemig.engine.guest import RAMBlock
    import numpy as np
    block = RAMBlock("pc.ram", 8 * 4096)
    block.pages[1] = 7
    enc = StreamEncoder(PROFILE)
    out = bytearray(HEAD)
    out += enc.section_start(2, "ram", 0, 4) + enc.ram_setup([block]) + enc.footer(2)
    out += enc.section_part(2)
    for piece in (enc.normal_pages(block, np.array([1, 2]))
                  + enc.zero_pages(block, np.array([3, 4, 5]))):
        out += memoryview(piece).cast("B")
    out += enc.eos() + enc.footer(2)
    out += enc.section_part(2, end=True) + enc.eos() + enc.footer(2)
    out += enc.section_start(3, "dev", 0, 1, full=True) + b"\x01\x02\x03" + enc.footer(3)
    out += L.cmd["POSTCOPY_ADVISE"].pack(4096, 4096)
    out += enc.eof()
    block.close()
    return bytes(out)


SMALL = _small_stream()


def test_small_stream_is_fine():
    r = inspect_bytes(SMALL)
    assert r["ok"], r["error"]
    assert r["ram"]["blocks"][0]["pages"] == 2 and r["ram"]["blocks"][0]["zero"] == 3


def _check(data: bytes) -> None:
    ins = Inspector(PROFILE, hash_limit=1 << 20)
    ins.feed(data)
    r = ins.report()  # must not raise
    json.dumps(r)
    assert r["ok"] or (isinstance(r["error"], str) and r["error"])
    if r["error"] is not None:
        assert not r["error"].startswith("internal error"), r["error"]


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_garbage_never_raises_small(data):
    raw = bytearray(SMALL)
    for _ in range(data.draw(st.integers(0, 4))):
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    raw = raw[:data.draw(st.integers(0, len(raw)))]
    _check(bytes(raw))


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.data())
def test_garbage_never_raises_real(qemu_stream, data):
    stream = qemu_stream[0]
    r = inspect_bytes(stream, hash_limit=1 << 20)
    regions = [(0, 400)] + [(s["offset"], s["offset"] + 40) for s in r["sections"][-30:]]
    regions.append((r["vmdesc"]["offset"], r["vmdesc"]["offset"] + 64))
    raw = bytearray(stream)
    for _ in range(data.draw(st.integers(1, 3))):
        lo, hi = data.draw(st.sampled_from(regions))
        i = data.draw(st.integers(lo, min(hi, len(raw)) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = raw[:data.draw(st.integers(0, len(raw)))]
    _check(bytes(raw))


def test_start_twice_and_short_package():
    start = ENC.section_start(2, "ram", 0, 4) + ENC.eos() + ENC.footer(2)
    r = inspect_bytes(HEAD + start + start + ENC.eof())
    assert (r["ok"], r["error_offset"]) == (False, len(HEAD) + len(start))
    assert "started twice" in r["error"]
    at = len(HEAD) + len(L.cmd["POSTCOPY_ADVISE"].pack(4096, 4096))
    data = HEAD + L.cmd["POSTCOPY_ADVISE"].pack(4096, 4096) + L.cmd["PACKAGED"].pack(100)
    r = inspect_bytes(data + L.cmd["POSTCOPY_LISTEN"].pack())
    assert (r["ok"], r["error_offset"]) == (False, at)
    assert r["error"].startswith("Input/output error")
