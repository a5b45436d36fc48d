"""Kernel memory backend benchmark: postcopy fault round trip with the kernel
backend against the simulated one (and QEMU 7.2's postcopy-blocktime), and
the cost of one dirty-log sync of 1 GiB, in one run.

Run:  .venv/bin/python benchmarks/kernelmem.py [--latency-size 128M]
        [--dirty-size 1G] [--transport unix|tcp] [--skip-qemu]

1. Fault round trip.  For each backend, two ``livemig vm --memory B``
   processes; the source guest (random RAM, idle) is switched to postcopy at
   once, background pages limited to ``--bg-bandwidth``, and the
   destination's vCPU touches one page per step, so it keeps running into
   pages that are not there yet.

   * simulated: the vCPU asks the engine before a touch; the figure is the
     request -> page placed span (``x-livemig-postcopy-latency``);
   * kernel: the vCPU just touches the page and the kernel stops it; the
     figure is the fault message -> UFFDIO_COPY wake-up span (the backend's
     ``blocktime``, what QEMU's postcopy-blocktime measures), and the
     request -> placed span of the same run beside it;
   * QEMU 7.2 (``qemu-system-x86_64`` -> ``qemu-system-x86_64``, ``-M pc -m
     64``, postcopy-blocktime on, the same background limit): QEMU reports
     only sums -- the time its vCPUs were blocked (``postcopy-vcpu-blocktime``,
     ms per vCPU) and the time all were (``postcopy-blocktime``) -- so its row
     shows those and the mean per page request, not percentiles.  Its guest
     is a 54-byte multiboot image that sweeps its RAM (:data:`QEMU_GUEST`).

2. Dirty-tracking cost per sync.  A ``--dirty-size`` guest (every page
   populated), a fraction of its pages written by plain numpy stores between
   two syncs; the time of ``Guest.sync_dirty_log`` (migration_bitmap_sync:
   the kernel's PAGEMAP_SCAN walk that reports and re-protects, then the OR
   into the migration bitmap), median of ``--repeats``; the simulated
   backend's sync (a numpy OR of its own log) beside it.  Every written page
   must be reported: a sync that misses one fails the run.

Prints one table; exits 1 if a migration failed or a check did not hold.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import postcopy as pcbench  # noqa: E402  (benchmarks/postcopy.py)
from postcopy import Node  # noqa: E402

from livemig.engine.guest import Guest, parse_size  # noqa: E402
from livemig.engine.kernelmem import backend  # noqa: E402


def _ms(us: Optional[int]) -> str:
    return "-" if us is None else f"{us / 1000:.3f}"


# ------------------------------------------------------------ fault round trip
def fault_run(tmp: Path, memory: str, size: str, transport: str, *, dst_rate: float,
              bg_bandwidth: int) -> dict[str, Any]:
    """One postcopy migration between two livemig processes with ``memory``:
    benchmarks/postcopy.py's latency run, its processes given ``--memory``."""
    work = tmp / memory
    work.mkdir()
    # postcopy.run names its processes through the module's Node: wrap it
    pcbench.Node = lambda where, name, *extra: Node(where, name, *extra, "--memory", memory)
    try:
        sinfo, dinfo, check = pcbench.run(work, size, transport, src_workload=0,
                                          dst_rate=dst_rate, dst_batch=1,
                                          bg_bandwidth=bg_bandwidth)
    finally:
        pcbench.Node = Node
    req = dinfo.get("x-livemig-postcopy-latency", {})
    row = {"what": f"livemig {memory}", "ok": sinfo["status"] == "completed" and check["ok"],
           "status": sinfo["status"], "check": check["ok"],
           "requests": sinfo.get("ram", {}).get("postcopy-requests", 0),
           "req_n": req.get("count", 0), "req_p50": req.get("p50-us"),
           "req_p99": req.get("p99-us"), "mean": req.get("mean-us")}
    uf = dinfo.get("x-livemig-memory", {}).get("userfaultfd")
    if uf:
        bt = uf["blocktime"]
        row.update(faults=uf["faults"], bt_n=bt.get("count", 0), bt_p50=bt.get("p50-us"),
                   bt_p99=bt.get("p99-us"), mean=bt.get("mean-us"))
    return row


#: QEMU's guest: a multiboot image (written for this benchmark) that adds one
#: to the first byte of every page from 4 MiB to 60 MiB, round and round, so
#: that its postcopy destination faults on page after page.  Assembled from
#:         .long 0x1BADB002, 0x00010000, -(0x1BADB002 + 0x00010000)
#:         .long 0x100000, 0x100000, end, end, start   # a.out kludge, at 1 MiB
#: start:  cli
#: sweep:  movl $0x400000, %eax
#: page:   incb (%eax); addl $4096, %eax; cmpl $0x3C00000, %eax; jb page
#:         jmp sweep
#: end:
QEMU_GUEST = bytes.fromhex(
    "02b0ad1b00000100fe4f51e40000100000001000360010003600100020001000"
    "fab800004000fe0005001000003d0000c00372f2ebeb")


def _wait_sweeping(qmp: Any, timeout: float = 60.0) -> None:
    """Until the QEMU guest has swept its RAM twice (its pages are not zero
    pages any more: a migration before that moves a blank guest)."""
    deadline = time.monotonic() + timeout
    while True:
        out = qmp.command("human-monitor-command", {"command-line": "x /1xb 0x3bff000"})
        if int(out.split(":")[1].split()[0], 16) >= 2:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the QEMU guest did not sweep its RAM in {timeout:g} s: {out}")
        time.sleep(0.05)


def qemu_run(tmp: Path, bg_bandwidth: int) -> dict[str, Any]:
    """QEMU 7.2 -> QEMU 7.2 postcopy with postcopy-blocktime (see the doc)."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from qemuproc import QEMU, qemu, why_not_qemu_72  # tests/qemuproc.py
    why = why_not_qemu_72()
    if why:
        return {"what": "QEMU 7.2", "skipped": why}
    assert QEMU is not None
    image = tmp / "qemu-guest.bin"
    image.write_bytes(QEMU_GUEST)
    base = ["-M", "pc", "-accel", "tcg", "-m", "64", "-display", "none", "-nodefaults",
            "-kernel", str(image)]
    sock = tmp / "qemu-mig.sock"
    dwork, swork = tmp / "qdst", tmp / "qsrc"
    dwork.mkdir()
    swork.mkdir()
    caps = {"capabilities": [{"capability": c, "state": True}
                             for c in ("events", "postcopy-ram", "postcopy-blocktime")]}
    with qemu(dwork, base + ["-incoming", "defer"]) as (_dp, dq), \
            qemu(swork, base) as (_sp, sq):
        dq.command("migrate-set-capabilities", caps)
        sq.command("migrate-set-capabilities", caps)
        sq.command("migrate-set-parameters", {"max-postcopy-bandwidth": bg_bandwidth})
        dq.command("migrate-incoming", {"uri": f"unix:{sock}"})
        _wait_sweeping(sq)
        sq.command("migrate", {"uri": f"unix:{sock}"})
        sq.command("migrate-start-postcopy")
        sq.wait_status("completed", 120)
        dq.wait_status("completed", 120)
        sinfo = sq.command("query-migrate")
        dinfo = dq.command("query-migrate")
    requests = sinfo.get("ram", {}).get("postcopy-requests", 0)
    vcpu = dinfo.get("postcopy-vcpu-blocktime") or []
    total_vcpu_ms = sum(vcpu)
    return {"what": "QEMU 7.2", "ok": True, "requests": requests,
            "blocktime_ms": dinfo.get("postcopy-blocktime"), "vcpu_ms": vcpu,
            "mean_ms": total_vcpu_ms / requests if requests else None}


# ------------------------------------------------------------ dirty tracking
def sync_cost(memory: str, size: int, fractions: list[float], repeats: int,
              seed: int = 1) -> list[dict[str, Any]]:
    """Median sync time of a ``size`` guest for each fraction of pages written."""
    guest = Guest(size, memory=memory, fill="zero", extra_blocks={}, vcpu_thread=False)
    try:
        ram = guest.ram
        ram.pages[:, 0] = 1  # populate every page (a guest that has run)
        bitmaps = {"pc.ram": np.zeros(ram.npages, dtype=bool)}
        guest.clear_dirty_log()  # the migration's setup: the log starts now
        rng = np.random.default_rng(seed)
        rows = []
        for frac in fractions:
            times, missed = [], 0
            n = int(ram.npages * frac)
            for _ in range(repeats):
                idx = np.sort(rng.choice(ram.npages, size=n, replace=False)) if n else \
                    np.zeros(0, dtype=np.int64)
                if memory == "kernel":
                    ram.pages[idx, 8] += 1  # plain stores: only the kernel sees them
                else:
                    ram.pages[idx, 8] += 1
                    with guest.dirty_lock:  # the simulated vCPU logs what it wrote
                        ram.dirty_log[idx] = True
                t0 = time.perf_counter()
                guest.sync_dirty_log(bitmaps)
                times.append(time.perf_counter() - t0)
                got = bitmaps["pc.ram"]
                missed += int((~got[idx]).sum())
                extra = int(got.sum()) - n
                got[:] = False
            rows.append({"memory": memory, "fraction": frac, "pages": n,
                         "median_ms": statistics.median(times) * 1000,
                         "max_ms": max(times) * 1000, "missed": missed, "extra": extra})
        return rows
    finally:
        guest.shutdown()


# ------------------------------------------------------------ main
#: (flag, default, type, help) of the valued options
OPTIONS = (
    ("--latency-size", "128M", str, "RAM of the fault runs"),
    ("--dirty-size", "1G", str, "RAM of the sync-cost runs"),
    ("--bg-bandwidth", 32 << 20, int, "max-postcopy-bandwidth of the fault runs, bytes/s"),
    ("--dst-rate", 20000.0, float, "destination vCPU pages/s in the fault runs"),
    ("--repeats", 5, int, "syncs per dirty fraction"),
)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default, kind, text in OPTIONS:
        ap.add_argument(flag, default=default, type=kind, help=text)
    ap.add_argument("--transport", default="unix", choices=("tcp", "unix"))
    ap.add_argument("--skip-qemu", action="store_true")
    ap.add_argument("--skip-faults", action="store_true")
    args = ap.parse_args()
    avail = backend.available()
    if not avail:
        print(f"kernel memory backend unavailable: {avail.reason}")
        return 1
    tmp = Path(tempfile.mkdtemp(prefix="livemig-kmbench-"))
    ok = True
    print(f"kernel {os.uname().release}, dirty log {backend.dirty_log_kind()}, "
          f"{os.cpu_count()} CPUs")

    if not args.skip_faults:
        rows = [fault_run(tmp, m, args.latency_size, args.transport, dst_rate=args.dst_rate,
                          bg_bandwidth=args.bg_bandwidth) for m in ("simulated", "kernel")]
        print(f"\nfault round trip: postcopy of {args.latency_size} over {args.transport}, "
              f"one page per vCPU step, background {args.bg_bandwidth >> 20} MiB/s")
        print(f"{'':<18} {'faults':>7} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}   "
              f"{'request->placed':>16} {'p50':>7} {'p99':>7}  check")
        for r in rows:
            ok &= r["ok"]
            if "bt_n" in r:
                lead = f"{r['bt_n']:>7} {_ms(r['bt_p50']):>8} {_ms(r['bt_p99']):>8}"
            else:
                lead = f"{r['req_n']:>7} {_ms(r['req_p50']):>8} {_ms(r['req_p99']):>8}"
            print(f"{r['what']:<18} {lead} {_ms(r['mean']):>8}   {r['req_n']:>16} "
                  f"{_ms(r['req_p50']):>7} "
                  f"{_ms(r['req_p99']):>7}  {'ok' if r['check'] else 'FAILED'} "
                  f"({r['status']})")
        print("  (simulated: request -> placed; kernel: fault message -> UFFDIO_COPY wake)")
        if not args.skip_qemu:
            q = qemu_run(tmp, args.bg_bandwidth)
            if "skipped" in q:
                print(f"QEMU 7.2           skipped: {q['skipped']}")
            else:
                mean = "-" if q["mean_ms"] is None else f"{q['mean_ms']:.3f}"
                print(f"QEMU 7.2 (-m 64)   postcopy-requests {q['requests']}, "
                      f"postcopy-blocktime {q['blocktime_ms']} ms, vcpu-blocktime "
                      f"{q['vcpu_ms']} ms, mean per request {mean} ms "
                      f"(QEMU gives sums, not percentiles)")

    size = parse_size(args.dirty_size)
    fractions = [0.0, 0.001, 0.01, 0.1, 1.0]
    print(f"\ndirty-tracking cost per sync (migration_bitmap_sync) of {args.dirty_size}, "
          f"median of {args.repeats}")
    print(f"{'written':>9} {'pages':>8}   {'kernel ms':>10} {'max':>8}   "
          f"{'simulated ms':>12} {'max':>8}")
    kernel = sync_cost("kernel", size, fractions, args.repeats)
    simulated = sync_cost("simulated", size, fractions, args.repeats)
    for k, s in zip(kernel, simulated):
        good = k["missed"] == 0 and k["extra"] == 0 and s["missed"] == 0
        ok &= good
        print(f"{k['fraction'] * 100:>8g}% {k['pages']:>8}   {k['median_ms']:>10.2f} "
              f"{k['max_ms']:>8.2f}   {s['median_ms']:>12.2f} {s['max_ms']:>8.2f}"
              f"{'' if good else '  MISSED ' + str(k['missed']) + ' EXTRA ' + str(k['extra'])}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
