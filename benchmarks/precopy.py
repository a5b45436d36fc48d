"""Precopy benchmark: livemig against QEMU 7.2 on the same migration.

Run:  python benchmarks/precopy.py [--size 1G] [--runs 3] [--multifd 2] [--tls]
                                   [--transport tcp|unix] [--json FILE]

For each case (1 GiB of random RAM, 1 GiB of zero RAM) and each engine, two
processes on this machine migrate over loopback TCP:

* livemig: ``livemig vm --qmp ... -S --workload 0`` (source; RAM from a file in
  /dev/shm prefilled with the case's content) and ``livemig vm --qmp ...
  --incoming defer`` (destination), driven with qemu.qmp;
* QEMU: ``qemu-system-x86_64 -S`` with RAM from ``memory-backend-file`` on the
  same prefilled file, and a destination with ``-incoming defer``.

Both engines preallocate guest RAM (QEMU: ``prealloc=on``; livemig maps with
MAP_POPULATE for file-backed and incoming RAM), so page faults happen before
the migration starts, not during it.

Both get ``max-bandwidth`` set very high; the time is query-migrate's
``total-time`` on the source (migrate to completed).  One warm-up run per
engine and case, then the median of ``--runs`` runs.  Prints both times and
the ratio QEMU time / livemig time (> 1 means livemig is faster).  With
``--multifd N`` livemig also runs with the multifd capability and N channels
(QEMU too, for comparison).  With ``--tls`` every case also runs over TLS
(x509 certificates made for the run, the destination verifying the client,
``tls-creds`` on both sides): TLS throughput against QEMU's TLS (GnuTLS).
With ``--transport unix`` both engines migrate over a unix socket instead.

The physical limit is measured in the same run (:mod:`limit`, i.e.
benchmarks/limit.py): a plain Python sender and receiver, two processes,
moving the same number of bytes (the RAM size, read from the same RAM file)
over the same transport with one connection per channel; each engine's
*fraction* of it is limit time / engine time (1.0: as fast as the plain
pair; a zero-RAM case sends almost nothing, so it can exceed 1).

Peak RSS: ``VmHWM`` of each process (livemig and QEMU, source and
destination) from /proc/PID/status, read after the migration completed and
just before the process is told to quit, the largest over the measured
runs.  A source's RSS counts the pages of the shared RAM file it has touched
(the whole file after a migration), as the kernel accounts a mapping; the
RssAnon/RssShmem split at that moment is kept in the JSON.  Goal: livemig's
source and destination each within RAM size + 10%.

``--json FILE`` writes every figure (samples, medians, ratios, limit,
fractions, RSS) as one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import limit  # noqa: E402  (benchmarks/limit.py: the plain sender/receiver pair)

from livemig.engine.qmpprocess import QMPProcess  # noqa: E402

QEMU = shutil.which("qemu-system-x86_64")
BIG = 1 << 40


def Node(argv: list[str], qmp_path: str) -> QMPProcess:
    """One VM process (livemig or QEMU) with a synchronous QMP client."""
    return QMPProcess(argv, qmp_path, name="bench")


def make_file(path: Path, size: int, kind: str) -> None:
    with open(path, "wb") as f:
        if kind == "zero":
            f.truncate(size)
            return
        rng = np.random.default_rng(1)
        step = 64 << 20
        for _ in range(0, size, step):
            f.write(rng.integers(0, 256, step, dtype=np.uint8).tobytes())


def argv_for(engine: str, tmp: Path, name: str, size: int, *, mem: str | None,
             incoming: bool) -> tuple[list[str], str]:
    qmp = str(tmp / f"{engine}-{name}.qmp")
    mib = size >> 20
    if engine == "livemig":
        argv = [sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{qmp}",
                "--ram", f"{mib}M", "--workload", "0"]
        if incoming:
            argv += ["--incoming", "defer"]
        else:
            argv += ["-S", "--mem-path", str(mem)]
        return argv, qmp
    argv = [QEMU, "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
            "-serial", "none", "-monitor", "none", "-m", f"{mib}M",
            "-qmp", f"unix:{qmp},server=on,wait=off"]
    if incoming:
        # Same RAM block name ("mem") as the source; fresh anonymous memory.
        argv += ["-incoming", "defer", "-object", f"memory-backend-ram,id=mem,size={mib}M,prealloc=on",
                 "-machine", "memory-backend=mem"]
    else:
        argv += ["-S", "-object",
                 f"memory-backend-file,id=mem,size={mib}M,mem-path={mem},share=on,prealloc=on",
                 "-machine", "memory-backend=mem"]
    return argv, qmp


def _tls(src: QMPProcess, dst: QMPProcess, pki: dict) -> None:
    """x509 credentials on both sides (the destination verifies the client)."""
    for node, endpoint in ((src, "client"), (dst, "server")):
        node.cmd("object-add", **{"qom-type": "tls-creds-x509", "id": "tls0",
                                  "dir": str(pki[endpoint]), "endpoint": endpoint})
        node.cmd("migrate-set-parameters", **{"tls-creds": "tls0"})


RSS_FIELDS = ("VmHWM", "VmRSS", "RssAnon", "RssFile", "RssShmem")


def rss(pid: int) -> dict[str, int]:
    """Peak (VmHWM) and current RSS of ``pid`` and its split, in bytes."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in RSS_FIELDS:
                out[key] = int(value.split()[0]) * 1024  # kB
    return out


def settled(src: QMPProcess, info: dict) -> dict:
    """The source's completed query-migrate once its total-time is set: QEMU
    7.2 shows 'completed' a moment before its migration thread computes
    total-time, and query-migrate reads 0 in that moment (bounded: 5 s)."""
    for _ in range(500):
        if info.get("status") != "completed" or info.get("total-time"):
            break
        time.sleep(0.01)
        info = src.cmd("query-migrate")
    return info


def one_run(engine: str, tmp: Path, size: int, mem: Path, multifd: int,
            pki: dict | None = None, transport: str = "tcp") -> dict:
    """One migration; its total time (s) and both processes' RSS."""
    sa, sq = argv_for(engine, tmp, "src", size, mem=str(mem), incoming=False)
    da, dq = argv_for(engine, tmp, "dst", size, mem=None, incoming=True)
    src = Node(sa, sq)
    dst = Node(da, dq)
    try:
        if pki is not None:
            _tls(src, dst, pki)
        caps = [{"capability": "multifd", "state": True}] if multifd else []
        for node in (src, dst):
            if caps:
                node.cmd("migrate-set-capabilities", capabilities=caps)
                node.cmd("migrate-set-parameters", **{"multifd-channels": multifd})
        src.cmd("migrate-set-parameters", **{"max-bandwidth": BIG, "downtime-limit": 300})
        if transport == "unix":
            uri = f"unix:{tmp}/{engine}-mig.sock"
            dst.cmd("migrate-incoming", uri=uri)
        else:
            dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
            addr = dst.cmd("query-migrate")["socket-address"][0]
            uri = f"tcp:{addr['host']}:{addr['port']}"
        src.cmd("migrate", uri=uri)
        deadline = time.monotonic() + 600
        while True:
            info = src.cmd("query-migrate")
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("migration timed out")
            time.sleep(float(os.environ.get("BENCH_POLL", "0.01")))
        if info["status"] != "completed":
            raise RuntimeError(f"{engine}: {info}")
        info = settled(src, info)
        # The destination must have loaded everything too.
        for _ in range(3000):
            if dst.cmd("query-migrate").get("status") == "completed":
                break
            time.sleep(0.01)
        # Both still run: VmHWM now is the peak of the whole migration.
        return {"time": info["total-time"] / 1000.0,
                "rss": {"src": rss(src.proc.pid), "dst": rss(dst.proc.pid)}}
    finally:
        src.close()
        dst.close()


def measure(engine: str, tmp: Path, size: int, mem: Path, multifd: int, runs: int, *,
            pki: dict | None = None, transport: str = "tcp", warmup: bool = True) -> dict:
    """An optional warm-up, then ``runs`` runs: samples, median time, and the
    largest peak RSS of each side over the measured runs."""
    if warmup:
        one_run(engine, tmp, size, mem, multifd, pki, transport)
    results = [one_run(engine, tmp, size, mem, multifd, pki, transport) for _ in range(runs)]
    samples = [r["time"] for r in results]
    peak = {side: max((r["rss"][side] for r in results), key=lambda x: x.get("VmHWM", 0))
            for side in ("src", "dst")}
    return {"samples": samples, "median": statistics.median(samples), "rss": peak}


def _frac(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):7.0f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--multifd", type=int, default=0, metavar="N",
                    help="also run with multifd and N channels")
    ap.add_argument("--cases", default="random,zero")
    ap.add_argument("--tls", action="store_true",
                    help="also run every case over TLS (x509, peer verified)")
    ap.add_argument("--transport", default="tcp", choices=("tcp", "unix"),
                    help="migrate (and measure the limit) over loopback TCP or a unix socket")
    ap.add_argument("--json", default=None, metavar="FILE", help="write all figures here")
    args = ap.parse_args()
    from livemig.engine.guest import parse_size
    size = parse_size(args.size)
    if QEMU is None:
        print("qemu-system-x86_64 not found", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="livemig-bench-", dir="/dev/shm"))
    rows = []
    pki = None
    if args.tls:
        from livemig.conformance.tlscerts import make_pki
        pki = make_pki(tmp / "tls")
    try:
        for case in args.cases.split(","):
            mem = tmp / f"{case}.ram"
            make_file(mem, size, case)
            variants = [("single", 0, None)] + (
                [("multifd", args.multifd, None)] if args.multifd else [])
            if args.tls:
                variants += [(f"{label}+tls", mf, pki) for label, mf, _ in variants]
            for label, mf, tls_pki in variants:
                # The limit with as many plain connections as the engines' channels.
                streams = mf or 1
                lim, lim_samples = limit.median_limit(size, args.transport, streams,
                                                      args.runs, mem)
                print(f"{case:6} {label:12} {'limit':8} median {lim:.3f} s  runs "
                      f"{', '.join(f'{x:.3f}' for x in lim_samples)}  "
                      f"({streams} plain {args.transport} connection(s))", flush=True)
                row = {"case": case, "mode": label, "transport": args.transport,
                       "size": size, "multifd": mf, "limit": {"median": lim,
                                                             "samples": lim_samples,
                                                             "streams": streams}}
                for engine in ("qemu", "livemig"):
                    m = measure(engine, tmp, size, mem, mf, args.runs, pki=tls_pki,
                                transport=args.transport)
                    m["fraction"] = lim / m["median"] if m["median"] > 0 else None
                    row[engine] = m
                    print(f"{case:6} {label:12} {engine:8} median {m['median']:.3f} s  "
                          f"runs {', '.join(f'{x:.3f}' for x in m['samples'])}  "
                          f"limit fraction {_frac(m['fraction'])}", flush=True)
                row["ratio"] = (row["qemu"]["median"] / row["livemig"]["median"]
                                if row["livemig"]["median"] > 0 else None)
                rows.append(row)
            mem.unlink()
        print()
        print(f"{size >> 20} MiB over {args.transport}; ratio = QEMU time / livemig time "
              "(> 1: livemig faster); fraction = limit time / engine time")
        print(f"{'case':6} {'mode':12} {'QEMU s':>8} {'livemig s':>10} {'ratio':>7} "
              f"{'limit s':>8} {'QEMU frac':>10} {'livemig frac':>13}")
        for r in rows:
            print(f"{r['case']:6} {r['mode']:12} {r['qemu']['median']:8.3f} "
                  f"{r['livemig']['median']:10.3f} {_frac(r['ratio']):>7}x "
                  f"{r['limit']['median']:8.3f} {_frac(r['qemu']['fraction']):>10} "
                  f"{_frac(r['livemig']['fraction']):>13}")
        print()
        goal = size * 1.1
        print(f"peak RSS (VmHWM, MiB) against RAM {size >> 20} MiB; goal: livemig source and "
              f"destination each <= {goal / (1 << 20):.0f} MiB (RAM + 10%)")
        print(f"{'case':6} {'mode':12} {'livemig src':>11} {'livemig dst':>11} "
              f"{'QEMU src':>9} {'QEMU dst':>9}  goal")
        all_ok = True
        for r in rows:
            hwm = {(e, side): r[e]["rss"][side].get("VmHWM", 0)
                   for e in ("livemig", "qemu") for side in ("src", "dst")}
            ok = hwm["livemig", "src"] <= goal and hwm["livemig", "dst"] <= goal
            all_ok &= ok
            r["rss_goal_met"] = ok
            print(f"{r['case']:6} {r['mode']:12} {_mib(hwm['livemig', 'src']):>11} "
                  f"{_mib(hwm['livemig', 'dst']):>11} {_mib(hwm['qemu', 'src']):>9} "
                  f"{_mib(hwm['qemu', 'dst']):>9}  "
                  f"{'met' if ok else 'NOT met'} (livemig {hwm['livemig', 'src'] / size:.2f}x / "
                  f"{hwm['livemig', 'dst'] / size:.2f}x RAM)")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"size": size, "runs": args.runs, "transport": args.transport,
                           "rows": rows, "rss_goal": goal, "rss_goal_met": all_ok}, f, indent=1)
            print(f"figures written to {args.json}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
