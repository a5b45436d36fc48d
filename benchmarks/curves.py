"""Cost curves as PNG plots (matplotlib), written to docs/benchmarks/.

Run:  .venv/bin/python benchmarks/curves.py [--max-size 4G] [--runs 1]
        [--only sizes,dirty,postcopy] [--out docs/benchmarks] [--json FILE]

Needs the ``bench`` extra (``pip install -e .[bench]``: matplotlib); the
test suite does not.  Progress goes to stderr (a full sweep is long).

1. ``sizes.png`` -- total time (query-migrate's ``total-time``) against RAM
   size, 64 MiB doubling up to ``--max-size`` (4 GiB at most), random RAM,
   for livemig and QEMU 7.2, one channel and multifd x2, over loopback TCP:
   benchmarks/precopy.py's runs (its command lines, RAM files and timing),
   the median of ``--runs`` (no warm-up run), with the plain-pair limit of
   benchmarks/limit.py (one and two connections) drawn beside them.
2. ``dirty.png`` -- livemig's completion time and downtime against the
   guest's dirty rate: a ``--dirty-ram`` guest whose vCPU writes
   ``--rates`` pages per second (``livemig vm --workload R``; its workload
   sweeps RAM from 1 MiB up to 100 MiB), ``max-bandwidth`` set to
   ``--bandwidth`` and ``downtime-limit`` to ``--downtime-limit``, with
   auto-converge off and on.  The convergence threshold is bandwidth x
   downtime-limit: the bytes that may remain when the guest is stopped.  A
   pass of D dirty bytes takes D / bandwidth, in which the guest dirties
   rate x D / bandwidth, so the dirty set only shrinks below the threshold
   while the dirty rate is below the bandwidth: that rate is drawn as a
   vertical line (rate x downtime-limit = bandwidth x downtime-limit), and
   the downtime-limit as a horizontal one.  A run that has not completed
   after ``--dirty-timeout`` s is cancelled and drawn at the timeout.
3. ``postcopy.png`` -- livemig's postcopy page-fault latency distribution
   (request -> page placed, the destination's ``x-livemig-postcopy-latency``
   buckets) as a histogram and its CDF, from benchmarks/postcopy.py's
   latency run (its ``run``, imported, same defaults).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).parent))
import limit  # noqa: E402  (benchmarks/limit.py)
import postcopy as pcbench  # noqa: E402  (benchmarks/postcopy.py)
import precopy  # noqa: E402  (benchmarks/precopy.py)

from livemig.engine.guest import parse_size  # noqa: E402

PAGE = 4096
MIB = 1 << 20
T0 = time.monotonic()


def progress(msg: str) -> None:
    """One progress line on stderr, with the seconds since the start."""
    print(f"[{time.monotonic() - T0:7.1f} s] {msg}", file=sys.stderr, flush=True)


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise SystemExit("benchmarks/curves.py needs matplotlib: pip install -e '.[bench]'")
    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    return plt


def _save(fig: Any, path: Path) -> None:
    # Small PNGs (they are committed): modest dpi, no metadata timestamps.
    fig.savefig(path, dpi=90, metadata={"Software": None})
    progress(f"wrote {path} ({path.stat().st_size // 1024} KiB)")


# ------------------------------------------------------------ 1. sizes
def size_sweep(sizes: list[int], runs: int, transport: str) -> list[dict[str, Any]]:
    """Median total time of each engine and mode at each size, and the limit."""
    points = []
    tmp = Path(tempfile.mkdtemp(prefix="livemig-curves-", dir="/dev/shm"))
    try:
        for size in sizes:
            mem = tmp / "random.ram"
            progress(f"sizes: making {size >> 20} MiB of random RAM")
            precopy.make_file(mem, size, "random")
            for mode, mf in (("single", 0), ("multifd x2", 2)):
                streams = mf or 1
                lim, _ = limit.median_limit(size, transport, streams, runs, mem)
                points.append({"size": size, "mode": mode, "engine": "limit", "median": lim})
                progress(f"sizes: {size >> 20} MiB {mode} limit {lim:.3f} s")
                for engine in ("qemu", "livemig"):
                    m = precopy.measure(engine, tmp, size, mem, mf, runs, transport=transport,
                                        warmup=False)
                    points.append({"size": size, "mode": mode, "engine": engine, **m})
                    progress(f"sizes: {size >> 20} MiB {mode} {engine} {m['median']:.3f} s")
            mem.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return points


def plot_sizes(points: list[dict[str, Any]], path: Path, runs: int) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    style = {"livemig": ("tab:blue", "o"), "qemu": ("tab:red", "s"), "limit": ("0.5", "")}
    for engine in ("livemig", "qemu", "limit"):
        for mode, line in (("single", "-"), ("multifd x2", "--")):
            pts = [p for p in points if p["engine"] == engine and p["mode"] == mode]
            if not pts:
                continue
            color, marker = style[engine]
            name = {"qemu": "QEMU 7.2", "limit": "plain pair (limit)"}.get(engine, engine)
            ax.plot([p["size"] / MIB for p in pts], [p["median"] for p in pts], line,
                    color=color, marker=marker, label=f"{name}, {mode}")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("guest RAM (MiB), random content")
    ax.set_ylabel("total time (s)")
    ax.set_title(f"Precopy total time against RAM size (loopback TCP, median of {runs})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ------------------------------------------------------------ 2. dirty rate
def dirty_run(tmp: Path, ram: str, rate: float, auto_converge: bool, bandwidth: int,
              downtime_ms: int, timeout: float) -> dict[str, Any]:
    """One precopy of a guest dirtying ``rate`` pages/s; its outcome."""
    dst = pcbench.Node(tmp, "dirty-dst", "--ram", ram, "--incoming", "defer")
    src = pcbench.Node(tmp, "dirty-src", "--ram", ram, "--workload", str(rate))
    try:
        caps = [{"capability": "auto-converge", "state": auto_converge}]
        src.cmd("migrate-set-capabilities", capabilities=caps)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": bandwidth,
                                             "downtime-limit": downtime_ms})
        dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
        addr = dst.cmd("query-migrate")["socket-address"][0]
        src.cmd("migrate", uri=f"tcp:{addr['host']}:{addr['port']}")
        deadline = time.monotonic() + timeout
        throttle = 0
        while True:
            info = src.cmd("query-migrate")
            throttle = max(throttle, info.get("cpu-throttle-percentage", 0))
            if info.get("status") in ("completed", "failed") or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        out = {"rate": rate, "auto_converge": auto_converge, "status": info.get("status"),
               "throttle_max": throttle,
               "passes": info.get("ram", {}).get("dirty-sync-count", 0)}
        if info.get("status") == "completed":
            out.update(total_s=info["total-time"] / 1000.0, downtime_ms=info.get("downtime"))
        else:
            # Not converged in time: give up so the next point starts clean.
            src.cmd("migrate_cancel")
            src.wait_status({"cancelled", "failed"}, 60)
            out.update(total_s=None, downtime_ms=None)
        return out
    finally:
        src.close()
        dst.close()


def dirty_sweep(rates: list[float], ram: str, bandwidth: int, downtime_ms: int,
                timeout: float) -> list[dict[str, Any]]:
    points = []
    tmp = Path(tempfile.mkdtemp(prefix="livemig-curves-dirty-"))
    try:
        for ac in (False, True):
            for rate in rates:
                p = dirty_run(tmp, ram, rate, ac, bandwidth, downtime_ms, timeout)
                points.append(p)
                what = (f"{p['total_s']:.2f} s, downtime {p['downtime_ms']} ms"
                        if p["total_s"] is not None else f"not converged in {timeout:g} s")
                progress(f"dirty: {rate * PAGE / MIB:5.1f} MiB/s auto-converge "
                         f"{'on' if ac else 'off'}: {what}, throttle max {p['throttle_max']}%, "
                         f"{p['passes']} passes")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return points


def plot_dirty(points: list[dict[str, Any]], path: Path, ram: str, bandwidth: int,
               downtime_ms: int, timeout: float) -> None:
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7.5, 6.4), sharex=True)
    bw = bandwidth / MIB
    for ac, color in ((False, "tab:red"), (True, "tab:blue")):
        pts = [p for p in points if p["auto_converge"] == ac]
        label = f"auto-converge {'on' if ac else 'off'}"
        done = [p for p in pts if p["total_s"] is not None]
        stuck = [p for p in pts if p["total_s"] is None]
        xs = [p["rate"] * PAGE / MIB for p in done]
        top.plot(xs, [p["total_s"] for p in done], "-o", color=color, label=label)
        if stuck:
            top.plot([p["rate"] * PAGE / MIB for p in stuck], [timeout] * len(stuck), "x",
                     color=color, markersize=10, label=f"{label}: not converged in {timeout:g} s")
        bottom.plot(xs, [p["downtime_ms"] for p in done], "-o", color=color, label=label)
    for ax, label in ((top, f"dirty rate = bandwidth: beyond it the dirty set never shrinks "
                            f"to the threshold {bw:g} MiB/s x {downtime_ms} ms = "
                            f"{bw * downtime_ms / 1000:.1f} MiB"), (bottom, None)):
        ax.axvline(bw, color="k", linestyle=":", label=label)
        ax.grid(True, alpha=0.3)
    bottom.axhline(downtime_ms, color="0.4", linestyle="--", label=f"downtime-limit {downtime_ms} ms")
    top.set_ylabel("completion time (s)")
    bottom.set_ylabel("downtime (ms)")
    bottom.set_xlabel("guest dirty rate (MiB/s)")
    top.set_title(f"livemig precopy of a {ram} guest, max-bandwidth {bw:g} MiB/s, "
                  f"downtime-limit {downtime_ms} ms", fontsize=10)
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ------------------------------------------------------------ 3. postcopy faults
def postcopy_latency(size: str, transport: str, dst_rate: float,
                     bg_bandwidth: int) -> dict[str, Any]:
    """benchmarks/postcopy.py's latency run; the destination's histogram."""
    tmp = Path(tempfile.mkdtemp(prefix="livemig-curves-pc-"))
    try:
        sinfo, dinfo, check = pcbench.run(tmp, size, transport, src_workload=0,
                                          dst_rate=dst_rate, dst_batch=1,
                                          bg_bandwidth=bg_bandwidth)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lat = dinfo.get("x-livemig-postcopy-latency", {})
    progress(f"postcopy: {lat.get('count', 0)} faults, p50 {lat.get('p50-us')} us, "
             f"p99 {lat.get('p99-us')} us, status {sinfo['status']}, "
             f"memory check {'ok' if check['ok'] else 'FAILED'}")
    return {"size": size, "transport": transport, "histogram": lat,
            "status": sinfo["status"], "memory_check": check["ok"]}


def plot_postcopy(result: dict[str, Any], path: Path) -> None:
    plt = _pyplot()
    lat = result["histogram"]
    buckets = lat.get("buckets", [])
    fig, ax = plt.subplots(figsize=(7.5, 4.4))
    labels, counts = [], []
    low = 0
    for b in buckets:
        hi = b["le-us"]
        labels.append(f"{low / 1000:g}-{hi / 1000:g}" if hi is not None else f">{low / 1000:g}")
        counts.append(b["count"])
        low = hi if hi is not None else low
    n = max(1, sum(counts))
    xs = range(len(counts))
    ax.bar(xs, [100 * c / n for c in counts], color="tab:blue", label="faults in bucket (%)")
    ax.set_xticks(list(xs), labels, rotation=35, fontsize=8)
    ax.set_xlabel("fault round trip, request -> page placed (ms)")
    ax.set_ylabel("faults (%)")
    cdf = ax.twinx()
    acc, ys = 0, []
    for c in counts:
        acc += c
        ys.append(100 * acc / n)
    # The cumulative share at each bucket's upper bound: the bars' right edges.
    cdf.plot([-0.5] + [i + 0.5 for i in xs], [0.0] + ys, "-", color="tab:red",
             marker=".", label="cumulative (%), at each bucket's upper bound")
    cdf.set_ylim(0, 101)
    cdf.set_ylabel("cumulative (%)")
    p50, p99 = lat.get("p50-us"), lat.get("p99-us")
    ax.set_title(f"livemig postcopy page faults ({result['size']}, {result['transport']}): "
                 f"{lat.get('count', 0)} faults, p50 {(p50 or 0) / 1000:.3f} ms, "
                 f"p99 {(p99 or 0) / 1000:.3f} ms", fontsize=10)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = cdf.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, fontsize=8, loc="center right")
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


# ------------------------------------------------------------ main
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--max-size", default="4G", help="largest RAM of the size sweep (<= 4G)")
    ap.add_argument("--runs", type=int, default=1, help="runs per point (median)")
    ap.add_argument("--only", default="sizes,dirty,postcopy")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent.parent / "docs" / "benchmarks")
    ap.add_argument("--json", type=Path, default=None,
                    help="all figures (default: OUT/curves.json)")
    ap.add_argument("--transport", default="tcp", choices=("tcp", "unix"),
                    help="transport of the size sweep and the postcopy run")
    ap.add_argument("--dirty-ram", default="64M")
    ap.add_argument("--bandwidth", default="32M", help="max-bandwidth of the dirty sweep, bytes/s")
    ap.add_argument("--downtime-limit", type=int, default=300, help="ms")
    ap.add_argument("--rates", default="0,2048,4096,6144,8192,10240,12288,16384",
                    help="guest dirty rates of the sweep, pages/s")
    ap.add_argument("--dirty-timeout", type=float, default=30.0)
    ap.add_argument("--latency-size", default="256M")
    args = ap.parse_args()
    _pyplot()  # fail before a long sweep if matplotlib is missing
    only = set(args.only.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    out_json = args.json or args.out / "curves.json"
    figures: dict[str, Any] = json.loads(out_json.read_text()) if out_json.exists() else {}

    def step(name: str, work: Callable[[], None]) -> None:
        if name in only:
            progress(f"{name}: start")
            work()
            out_json.write_text(json.dumps(figures, indent=1))  # after each part: keep what ran

    def sizes() -> None:
        top = min(parse_size(args.max_size), 4 << 30)
        ladder = [64 * MIB << i for i in range(7) if 64 * MIB << i <= top]
        figures["sizes"] = {"runs": args.runs, "transport": args.transport,
                            "points": size_sweep(ladder, args.runs, args.transport)}
        plot_sizes(figures["sizes"]["points"], args.out / "sizes.png", args.runs)

    def dirty() -> None:
        bw = parse_size(args.bandwidth)
        rates = [float(r) for r in args.rates.split(",")]
        figures["dirty"] = {"ram": args.dirty_ram, "bandwidth": bw,
                            "downtime_limit_ms": args.downtime_limit,
                            "timeout_s": args.dirty_timeout,
                            "points": dirty_sweep(rates, args.dirty_ram, bw, args.downtime_limit,
                                                  args.dirty_timeout)}
        plot_dirty(figures["dirty"]["points"], args.out / "dirty.png", args.dirty_ram, bw,
                   args.downtime_limit, args.dirty_timeout)

    def postcopy() -> None:
        figures["postcopy"] = postcopy_latency(args.latency_size, args.transport,
                                               dst_rate=20000.0, bg_bandwidth=32 << 20)
        plot_postcopy(figures["postcopy"], args.out / "postcopy.png")

    step("sizes", sizes)
    step("dirty", dirty)
    step("postcopy", postcopy)
    progress(f"figures in {out_json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
