"""Postcopy benchmark: fault round-trip latency and the time of a postcopy
migration, between two ``livemig vm`` processes over loopback.

Run:  .venv/bin/python benchmarks/postcopy.py [--size 1G] [--latency-size 256M]
                                                [--transport tcp|unix] [--skip-qemu]
                                                [--json FILE]

1. Fault latency.  The source guest (``--latency-size`` of random RAM) is
   switched to postcopy at once (``migrate-start-postcopy`` right after
   ``migrate``), so almost every page travels after the switch; background
   pages are limited with ``max-postcopy-bandwidth`` (``--bg-bandwidth``) so
   that the destination's vCPU, touching one page per step
   (``x-livemig-set-workload {"rate": R, "batch": 1}``), keeps running into
   pages that are not there yet.  Each fault asks for its page on the return
   path; the destination measures request -> page placed (its
   ``x-livemig-postcopy-latency`` in query-migrate).  Prints count, p50, p99,
   max.  Goal: p50 <= 0.5 ms, p99 <= 5 ms.
2. Total time.  ``--size`` of random RAM, postcopy started at once, no
   bandwidth limit: the source's ``total-time`` (migrate -> completed) and
   ``downtime``, and the memory check on the destination.
3. QEMU 7.2 on the same size, same transport, in the same run: a QEMU source
   whose RAM is a ``memory-backend-file`` prefilled with random bytes (as in
   benchmarks/precopy.py), a QEMU destination on fresh anonymous RAM, both
   with ``postcopy-ram`` and ``postcopy-blocktime``, postcopy started at
   once, no bandwidth limit: the source's ``total-time`` and ``downtime``,
   and the destination's ``postcopy-blocktime`` (ms during which all its
   vCPUs were blocked on missing pages) and ``postcopy-vcpu-blocktime`` (ms
   per vCPU).  Its guest has no OS (BIOS only, no boot device), so it barely
   touches RAM and faults on almost nothing: its blocktime is what QEMU
   reports for such a guest, not a fault latency to set beside livemig's
   percentiles (benchmarks/kernelmem.py runs a QEMU guest that sweeps RAM).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from livemig.engine.qmpprocess import QMPProcess


def Node(tmp: Path, name: str, *extra: str) -> QMPProcess:
    """A ``livemig vm`` process named ``name`` with its QMP socket in ``tmp``."""
    qmp = str(tmp / f"{name}.qmp")
    return QMPProcess([sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{qmp}", *extra],
                      qmp, name=name)


def postcopy_at_once(src: QMPProcess, dst: QMPProcess, tmp: Path,
                     transport: str) -> tuple[dict, dict]:
    """Listen on ``dst`` (loopback TCP on a free port, or a unix socket in
    ``tmp``), migrate ``src`` to it and switch to postcopy at once, so almost
    every page travels after the switch; both sides' info at the end."""
    uri = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp}/mig.sock"
    dst.cmd("migrate-incoming", uri=uri)
    if transport == "tcp":
        addr = dst.cmd("query-migrate")["socket-address"][0]
        uri = f"tcp:{addr['host']}:{addr['port']}"
    src.cmd("migrate", uri=uri)
    src.cmd("migrate-start-postcopy")
    return src.wait_status({"completed", "failed"}), dst.wait_status({"completed", "failed"})


def run(tmp: Path, size: str, transport: str, *, src_workload: float, dst_rate: float,
        dst_batch: int, bg_bandwidth: int) -> tuple[dict, dict, dict]:
    dst = Node(tmp, "dst", "--ram", size, "--incoming", "defer")
    src = Node(tmp, "src", "--ram", size, "--workload", str(src_workload))
    try:
        caps = [{"capability": c, "state": True} for c in ("events", "postcopy-ram")]
        for n in (src, dst):
            n.cmd("migrate-set-capabilities", capabilities=caps)
        params = {"max-bandwidth": 1 << 40}
        if bg_bandwidth:
            params["max-postcopy-bandwidth"] = bg_bandwidth
        src.cmd("migrate-set-parameters", **params)
        dst.cmd("x-livemig-set-workload", rate=dst_rate, batch=dst_batch)
        sinfo, dinfo = postcopy_at_once(src, dst, tmp, transport)
        dst.cmd("stop")
        check = dst.cmd("x-livemig-check-memory")
        return sinfo, dinfo, check
    finally:
        src.close()
        dst.close()


def qemu_run(tmp: Path, size: int, transport: str) -> dict[str, Any]:
    """QEMU 7.2 -> QEMU 7.2 postcopy of ``size`` random RAM (section 3 of the
    doc); the source's and the destination's query-migrate at completion."""
    sys.path.insert(0, str(Path(__file__).parent))
    import precopy  # benchmarks/precopy.py: the same QEMU command lines and RAM file

    if precopy.QEMU is None:
        return {"skipped": "qemu-system-x86_64 not found"}
    work = Path(tempfile.mkdtemp(prefix="livemig-pcbench-qemu-", dir="/dev/shm"))
    try:
        mem = work / "random.ram"
        precopy.make_file(mem, size, "random")
        sa, sq = precopy.argv_for("qemu", work, "src", size, mem=str(mem), incoming=False)
        sa.remove("-S")  # postcopy runs the guest on the destination; the source runs too
        da, dq = precopy.argv_for("qemu", work, "dst", size, mem=None, incoming=True)
        dst = precopy.Node(da, dq)
        src = precopy.Node(sa, sq)
        try:
            caps = [{"capability": c, "state": True}
                    for c in ("events", "postcopy-ram", "postcopy-blocktime")]
            for n in (src, dst):
                n.cmd("migrate-set-capabilities", capabilities=caps)
            src.cmd("migrate-set-parameters", **{"max-bandwidth": precopy.BIG})
            sinfo, dinfo = postcopy_at_once(src, dst, work, transport)
            return {"src": precopy.settled(src, sinfo), "dst": dinfo}
        finally:
            src.close()
            dst.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", default="1G", help="RAM of the total-time run (default 1G)")
    ap.add_argument("--latency-size", default="256M", help="RAM of the latency run")
    ap.add_argument("--transport", default="tcp", choices=("tcp", "unix"))
    ap.add_argument("--bg-bandwidth", type=int, default=32 << 20,
                    help="max-postcopy-bandwidth of the latency run, bytes/s")
    ap.add_argument("--dst-rate", type=float, default=20000.0,
                    help="destination vCPU pages/s in the latency run")
    ap.add_argument("--skip-total", action="store_true")
    ap.add_argument("--skip-qemu", action="store_true", help="no QEMU 7.2 comparison")
    ap.add_argument("--json", default=None, metavar="FILE", help="write all figures here")
    args = ap.parse_args()
    figures: dict[str, Any] = {"transport": args.transport}
    tmp = Path(tempfile.mkdtemp(prefix="livemig-pcbench-"))
    ok = True

    sinfo, dinfo, check = run(tmp, args.latency_size, args.transport, src_workload=0,
                              dst_rate=args.dst_rate, dst_batch=1,
                              bg_bandwidth=args.bg_bandwidth)
    lat = dinfo.get("x-livemig-postcopy-latency", {})
    n = lat.get("count", 0)
    print(f"fault round trip ({args.transport}, {args.latency_size}, one page per fault, "
          f"background {args.bg_bandwidth >> 20} MiB/s): {n} faults, "
          f"p50 {lat.get('p50-us', 0) / 1000:.3f} ms, p99 {lat.get('p99-us', 0) / 1000:.3f} ms, "
          f"max {lat.get('max-us', 0) / 1000:.3f} ms; status {sinfo['status']}, "
          f"postcopy-requests {sinfo['ram']['postcopy-requests']}, memory check "
          f"{'ok' if check['ok'] else 'FAILED'}")
    ok &= check["ok"] and sinfo["status"] == "completed"
    figures["latency"] = {"size": args.latency_size, "bg_bandwidth": args.bg_bandwidth,
                          "dst_rate": args.dst_rate, "histogram": lat,
                          "status": sinfo["status"], "memory_check": check["ok"]}

    if not args.skip_total:
        sinfo, dinfo, check = run(tmp, args.size, args.transport, src_workload=20000,
                                  dst_rate=20000, dst_batch=64, bg_bandwidth=0)
        ram = sinfo["ram"]
        print(f"postcopy migration of {args.size} ({args.transport}): total-time "
              f"{sinfo['total-time'] / 1000:.2f} s, downtime {sinfo.get('downtime', 0)} ms, "
              f"postcopy-bytes {ram['postcopy-bytes'] >> 20} MiB, postcopy-requests "
              f"{ram['postcopy-requests']}, status {sinfo['status']}, memory check "
              f"{'ok' if check['ok'] else 'FAILED'}")
        ok &= check["ok"] and sinfo["status"] == "completed"
        figures["livemig"] = {"size": args.size, "total_time_ms": sinfo["total-time"],
                              "downtime_ms": sinfo.get("downtime"),
                              "postcopy_bytes": ram["postcopy-bytes"],
                              "postcopy_requests": ram["postcopy-requests"],
                              "status": sinfo["status"], "memory_check": check["ok"]}

    if not args.skip_qemu:
        from livemig.engine.guest import parse_size
        q = qemu_run(tmp, parse_size(args.size), args.transport)
        if "skipped" in q:
            print(f"QEMU 7.2 postcopy: skipped ({q['skipped']})")
        else:
            qs, qd = q["src"], q["dst"]
            qram = qs.get("ram", {})
            print(f"QEMU 7.2 postcopy migration of {args.size} ({args.transport}): total-time "
                  f"{qs.get('total-time', 0) / 1000:.2f} s, downtime {qs.get('downtime', 0)} ms, "
                  f"postcopy-requests {qram.get('postcopy-requests', 0)}, postcopy-blocktime "
                  f"{qd.get('postcopy-blocktime')} ms, postcopy-vcpu-blocktime "
                  f"{qd.get('postcopy-vcpu-blocktime')} ms, status {qs['status']} "
                  "(a guest with no OS: it barely faults)")
            ok &= qs["status"] == "completed"
            figures["qemu"] = {"size": args.size, "total_time_ms": qs.get("total-time"),
                               "downtime_ms": qs.get("downtime"),
                               "postcopy_requests": qram.get("postcopy-requests", 0),
                               "postcopy_blocktime_ms": qd.get("postcopy-blocktime"),
                               "postcopy_vcpu_blocktime_ms": qd.get("postcopy-vcpu-blocktime"),
                               "status": qs["status"]}
            if "livemig" in figures and qs.get("total-time"):
                ratio = qs["total-time"] / figures["livemig"]["total_time_ms"]
                figures["ratio"] = ratio
                print(f"total time ratio QEMU / livemig: {ratio:.2f}x (> 1: livemig faster)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
        print(f"figures written to {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
