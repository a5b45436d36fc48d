"""Regenerate the fuzz seeds: ``python conformance/fuzz_corpus/make_corpus.py``.

Seeds (``seed-*``) are real streams made by livemig's own engine, sans-I/O,
source and destination joined in memory (no threads, no clock-dependent
passes: the vCPU is stepped by hand): precopy plain, with return path +
xbzrle, with compress, with multifd (the main channel and every multifd
channel captured separately), postcopy (ADVISE, DISCARD, PACKAGED, LISTEN,
RUN, PINGs, postcopy pages); the destination's return-path bytes; a
recovery's RECV_BITMAP answer and RESUME_ACK; livemig NDJSON and QMP event
logs.  With ``qemu-system-x86_64`` on PATH, ``seed-qemu-7.2-head`` is the first
4 KiB of a real QEMU 7.2 precopy stream (``-M pc -m 16``, ``exec:cat``).

The RAM is ``fuzz.RAM_LAYOUT`` (pc.ram 64 KiB, small.ram 8 KiB) with a
couple of non-zero pages, so every seed stays a few KiB.  Regression inputs
(``regress-*``) are not touched by this script.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

from livemig.conformance.fuzz import CORPUS, RAM_LAYOUT
from livemig.core.caps import default_capabilities, default_params
from livemig.core.cell import StatusCell, TransitionLog
from livemig.engine import multifd as mfd
from livemig.engine.destination import DestinationMigration
from livemig.engine.guest import Guest
from livemig.engine.postcopy import (
    PostcopyDestination, PostcopySource, StartPostcopy, encode_received_bitmap,
)
from livemig.engine.returnpath import encode_rp, encode_u32
from livemig.engine.source import Converged, Send, Wait
from livemig.engine.source import SourceMigration
from livemig.engine.stream import buffers_len
from livemig.spec import load_profile

P = load_profile("qemu-7.2")


def _raw(buffers) -> bytes:
    return b"".join(bytes(memoryview(b).cast("B")) for b in buffers)


def _guest(fill_pages: bool) -> Guest:
    extra = {k: v for k, v in RAM_LAYOUT.items() if k != "pc.ram"}
    g = Guest(RAM_LAYOUT["pc.ram"], fill="zero", extra_blocks=extra, vcpu_thread=False,
              workload_start=0, workload_end=2 * 4096, batch=2)
    g.device_state = b"livemig-device-v1:fuzz-seed"
    if fill_pages:
        rng = np.random.default_rng(11)
        g.blocks["pc.ram"].pages[5] = rng.integers(0, 256, 4096, dtype=np.uint8)
        g.blocks["small.ram"].pages[1, :64] = np.arange(64, dtype=np.uint8)
    return g


class Capture:
    """One migration, source and destination in memory; records every channel."""

    def __init__(self, caps=(), params=None, postcopy=False) -> None:
        c = default_capabilities(P)
        for name in caps:
            c[name] = True
        p = default_params(P)
        p["max-bandwidth"] = 1 << 40
        p.update(params or {})
        self.sg, self.dg = _guest(True), _guest(False)
        log = TransitionLog()
        scell, dcell = StatusCell(P, "source", log=log), StatusCell(P, "destination", log=log)
        if postcopy:
            self.src = PostcopySource(P, self.sg, scell, caps=c, params=p)
            self.dst = PostcopyDestination(P, self.dg, dcell, caps=c)
        else:
            self.src = SourceMigration(P, self.sg, scell, caps=c, params=p)
            self.dst = DestinationMigration(P, self.dg, dcell, caps=c)
        self.main = bytearray()
        self.rp = bytearray()
        self.channels: dict[int, bytearray] = {}

    def push(self, buffers, extra=()) -> None:
        raw = _raw(buffers)
        self.main += raw
        for ch, bufs in extra:
            if ch not in self.channels:
                self.channels[ch] = bytearray(mfd.hello(P, ch))
            self.channels[ch] += _raw(bufs)
        if raw:
            self.dst.feed(raw)
        rp = self.dst.data_to_send()
        if rp:
            self.rp += rp
            self.src.receive_rp(rp)

    def precopy(self, passes: int = 3, postcopy_after: int = 0) -> None:
        s, d = self.src, self.dst
        t = 0.0
        s.begin(t)
        d.listening()
        d.accepted()
        self.sg.vm_start()
        self.push(s.setup(t))
        sends = 0
        for _ in range(200):
            t += 0.2
            if postcopy_after and sends >= postcopy_after:
                s.start_postcopy = True
            step = s.poll(t)
            if isinstance(step, Send):
                sends += 1
                self.push(step.buffers, step.extra)
                s.sent(buffers_len(step.buffers), t)
                if s.passes_done < passes:
                    self.sg.step_workload(1)
            elif isinstance(step, Wait):
                t = max(t, step.until)
            elif isinstance(step, (Converged, StartPostcopy)):
                break
        return step

    def complete(self) -> None:
        s, d = self.src, self.dst
        self.sg.vm_stop("finish-migrate")
        if s.switchover():
            s.continue_switchover()
        for step in s.completion(100.0):
            self.push(step.buffers, step.extra)
        d.load_finished()
        self.push([])


def precopy(name: str, caps=(), params=None) -> Capture:
    cap = Capture(caps, params)
    cap.precopy()
    cap.complete()
    return cap


def postcopy() -> Capture:
    cap = Capture(("postcopy-ram", "return-path"), postcopy=True)
    step = cap.precopy(postcopy_after=1)
    assert isinstance(step, StartPostcopy), step
    s = cap.src
    s.postcopy_start()
    cap.sg.step_workload(1)  # dirty pages: DISCARD commands in the package
    cap.sg.vm_stop("finish-migrate")
    cap.push(s.package(50.0))
    for _ in range(100):
        step = s.poll_postcopy(60.0)
        if not isinstance(step, Send):
            break
        cap.push(step.buffers)
    cap.push(s.postcopy_complete(70.0))
    cap.dst.load_finished()
    cap.push([])
    return cap


def qemu_head(limit: int = 4096) -> bytes | None:
    """The first ``limit`` bytes of a real QEMU 7.2 precopy stream, or None."""
    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return None
    work = Path(tempfile.mkdtemp(prefix="livemig-qemu-seed-"))
    qmp_path, out = work / "qmp.sock", work / "stream.bin"
    proc = subprocess.Popen([qemu, "-M", "pc", "-m", "16", "-nodefaults", "-display", "none",
                             "-S", "-qmp", f"unix:{qmp_path},server=on,wait=off"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            if qmp_path.exists():
                break
            time.sleep(0.05)
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(qmp_path))
        f = sock.makefile("rw")
        f.readline()

        def cmd(name, args=None):
            f.write(json.dumps({"execute": name, "arguments": args or {}}) + "\n")
            f.flush()
            while True:
                msg = json.loads(f.readline())
                if "return" in msg or "error" in msg:
                    return msg

        cmd("qmp_capabilities")
        cmd("migrate", {"uri": f"exec:cat > {out}"})
        for _ in range(200):
            st = cmd("query-migrate")["return"].get("status")
            if st in ("completed", "failed"):
                break
            time.sleep(0.05)
        cmd("quit")
        return out.read_bytes()[:limit] if out.exists() else None
    except OSError:
        return None
    finally:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


def shrink_channel(data: bytes, packets: int = 4, pages: int = 2) -> bytes:
    """The hello and the first ``packets`` packets of a channel capture, each
    page packet cut to its first ``pages`` pages (a seed of a few KiB)."""
    import struct
    hdr = struct.Struct(">IIQB")
    out = bytearray(data[:9])
    pos = 9
    while pos + hdr.size <= len(data) and packets:
        flags, n, number, idlen = hdr.unpack_from(data, pos)
        name = data[pos + hdr.size:pos + hdr.size + idlen]
        offs = data[pos + hdr.size + idlen:pos + hdr.size + idlen + 8 * n]
        body = pos + hdr.size + idlen + 8 * n
        k = min(n, pages)
        out += hdr.pack(flags, k, number, idlen) + name + offs[:8 * k] + data[body:body + 4096 * k]
        pos = body + 4096 * n
        packets -= 1
    return bytes(out)


def write(target: str, name: str, data: bytes) -> None:
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(bytes(data))
    print(f"{target}/{name}: {len(data)} bytes")


def main() -> int:
    plain = precopy("plain")
    write("precopy-stream", "seed-plain", plain.main)
    rpx = precopy("rp-xbzrle", ("return-path", "xbzrle"), {"xbzrle-cache-size": 1 << 20})
    write("precopy-stream", "seed-return-path-xbzrle", rpx.main)
    write("return-path", "seed-precopy-capture", rpx.rp)
    comp = precopy("compress", ("compress",), {"compress-threads": 1, "compress-level": 1})
    write("precopy-stream", "seed-compress", comp.main)
    multi = precopy("multifd", ("multifd",), {"multifd-channels": 2})
    write("precopy-stream", "seed-multifd-main", multi.main)
    for ch, data in sorted(multi.channels.items()):
        write("multifd", f"seed-channel-{ch}", shrink_channel(bytes(data)))
    pc = postcopy()
    write("postcopy-stream", "seed-postcopy", pc.main)
    write("postcopy-stream", "seed-precopy-plain", plain.main)
    write("return-path", "seed-postcopy-capture", pc.rp)

    # a recovery's answers: RECV_BITMAP + bitmap + end mark, RESUME_ACK, page requests
    from livemig.engine.wire import wire_tables
    import struct
    w = wire_tables(P)
    rp = b""
    for name, size in RAM_LAYOUT.items():
        received = np.zeros(size // 4096, dtype=bool)
        received[::2] = True
        bm = encode_received_bitmap(received)
        raw = name.encode()
        rp += (encode_rp(P, "RECV_BITMAP", bytes([len(raw)]) + raw) + struct.pack(">Q", len(bm))
               + bm + struct.pack(">Q", w.recv_bitmap_ending))
    rp += encode_u32(P, "RESUME_ACK", w.resume_ack_value)
    rp += encode_rp(P, "REQ_PAGES_ID", struct.pack(">QIB", 4096, 8192, 6) + b"pc.ram")
    rp += encode_rp(P, "REQ_PAGES", struct.pack(">QI", 0, 4096))
    rp += encode_u32(P, "PONG", 3) + encode_u32(P, "SHUT", 0)
    write("return-path", "seed-recovery", rp)

    # compressed and xbzrle payloads
    page = np.zeros(4096, np.uint8)
    page[100:200] = 7
    write("compressed-page", "seed-zlib-page", zlib.compress(page.tobytes(), 1))
    write("compressed-page", "seed-zlib-zero", zlib.compress(bytes(4096), 9))
    from livemig.engine import xbzrle
    new = page.copy()
    new[0:3] = 1
    new[150:160] = 9
    new[4000:4096] = 5
    write("xbzrle-page", "seed-delta", xbzrle.encode(page, new, 4096))
    write("xbzrle-page", "seed-one-run", xbzrle.encode(page, page + 1, 8192) or b"")

    # logs: livemig NDJSON transition logs and QMP events
    lines = [json.dumps({"t": i * 0.01, "side": a.side, "id": a.id, "old": a.old,
                         "new": a.new, "ok": a.ok})
             for i, a in enumerate(TransitionLogOf(pc))]
    write("trace-file", "seed-ndjson-postcopy", "\n".join(lines).encode() + b"\n")
    events = [{"event": "MIGRATION", "data": {"status": s},
               "timestamp": {"seconds": 1700000000 + i, "microseconds": 5}}
              for i, s in enumerate(["setup", "active", "postcopy-active", "postcopy-paused",
                                     "postcopy-recover", "postcopy-active", "completed"])]
    events.insert(2, {"event": "MIGRATION_PASS", "data": {"pass": 1},
                      "timestamp": {"seconds": 1700000001, "microseconds": 9}})
    qmp = [json.dumps({"QMP": {"version": {}, "capabilities": ["oob"]}}),
           json.dumps({"return": {}})] + [json.dumps(e) for e in events]
    write("trace-file", "seed-qmp-events", ("\r\n".join(qmp) + "\r\n").encode())

    write("qmp-input", "seed-session",
          b'{"execute": "qmp_capabilities"}\r\n'
          b'{"execute": "migrate-set-capabilities", "arguments": {"capabilities": '
          b'[{"capability": "events", "state": true}]}, "id": 1}'
          b'{"execute": "query-migrate", "id": "two"}\n'
          b'{"exec-oob": "migrate-pause"}  {"execute": "migrate", "arguments": '
          b'{"uri": "unix:/tmp/x.sock"}}\n')

    head = qemu_head()
    if head:
        write("precopy-stream", "seed-qemu-7.2-head", head)
    return 0


def TransitionLogOf(cap: Capture):
    return cap.src.cell.log.attempts if cap.src.cell.log is not None else []


if __name__ == "__main__":
    sys.exit(main())
