"""Postcopy benchmark: fault round-trip latency and the time of a postcopy
migration, between two ``livemig vm`` processes over loopback.

Run:  .venv/bin/python benchmarks/postcopy.py [--size 1G] [--latency-size 256M]
                                                [--transport tcp|unix]

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
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from livemig.engine.qmpprocess import QMPProcess


def Node(tmp: Path, name: str, *extra: str) -> QMPProcess:
    """A ``livemig vm`` process named ``name`` with its QMP socket in ``tmp``."""
    qmp = str(tmp / f"{name}.qmp")
    return QMPProcess([sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{qmp}", *extra],
                      qmp, name=name)


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
        uri = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp}/mig.sock"
        dst.cmd("migrate-incoming", uri=uri)
        if transport == "tcp":
            addr = dst.cmd("query-migrate")["socket-address"][0]
            uri = f"tcp:{addr['host']}:{addr['port']}"
        src.cmd("migrate", uri=uri)
        src.cmd("migrate-start-postcopy")
        sinfo = src.wait_status({"completed", "failed"})
        dinfo = dst.wait_status({"completed", "failed"})
        dst.cmd("stop")
        check = dst.cmd("x-livemig-check-memory")
        return sinfo, dinfo, check
    finally:
        src.close()
        dst.close()


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
    args = ap.parse_args()
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
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
