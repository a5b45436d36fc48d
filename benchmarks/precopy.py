"""Precopy benchmark: livemig against QEMU 7.2 on the same migration.

Run:  python benchmarks/precopy.py [--size 1G] [--runs 3] [--multifd 2] [--tls]

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
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from livemig.engine.qmpprocess import QMPProcess

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


def one_run(engine: str, tmp: Path, size: int, mem: Path, multifd: int,
            pki: dict | None = None) -> float:
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
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        addr = dst.cmd("query-migrate")["socket-address"][0]
        src.cmd("migrate", uri=f"tcp:{addr['host']}:{addr['port']}")
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
        # The destination must have loaded everything too.
        for _ in range(3000):
            if dst.cmd("query-migrate").get("status") == "completed":
                break
            time.sleep(0.01)
        return info["total-time"] / 1000.0
    finally:
        src.close()
        dst.close()


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
                times = {}
                for engine in ("qemu", "livemig"):
                    one_run(engine, tmp, size, mem, mf, tls_pki)  # warm-up
                    samples = [one_run(engine, tmp, size, mem, mf, tls_pki)
                               for _ in range(args.runs)]
                    times[engine] = statistics.median(samples)
                    print(f"{case:6} {label:12} {engine:8} median {times[engine]:.3f} s  "
                          f"runs {', '.join(f'{x:.3f}' for x in samples)}", flush=True)
                ratio = times["qemu"] / times["livemig"]
                rows.append((case, label, times["qemu"], times["livemig"], ratio))
            mem.unlink()
        print()
        print(f"{'case':6} {'mode':12} {'QEMU s':>8} {'livemig s':>10} {'ratio':>7}  "
              "(ratio = QEMU time / livemig time; > 1: livemig faster)")
        for case, label, q, l, r in rows:
            print(f"{case:6} {label:12} {q:8.3f} {l:10.3f} {r:7.2f}x")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
