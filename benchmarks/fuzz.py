"""The long fuzz run: every target for N inputs (default 1,000,000 each).

    python benchmarks/fuzz.py [--inputs N] [--seed S] [--targets a,b] [--save-crashes DIR]
                              [--engine mutate|atheris] [--json]

Prints per target: inputs, inputs/s, crashes, hangs, out-of-block writes,
unbounded buffers, peak buffered bytes (bound: fuzz.PENDING_BOUND) and peak
traced memory; then the distinct finding signatures with one input each.
Exit status 1 when anything was found.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from livemig.conformance import fuzz as F


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--inputs", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--targets", default="all")
    ap.add_argument("--save-crashes", type=Path)
    ap.add_argument("--engine", choices=("mutate", "atheris"), default="mutate")
    ap.add_argument("--json", action="store_true", help="one JSON line per target")
    args = ap.parse_args()
    names = list(F.FACTORIES) if args.targets == "all" else args.targets.split(",")
    rows, found = [], []
    for name in names:
        if args.engine == "atheris":
            cmd = [sys.executable, "-m", "livemig.conformance.fuzz", name, "--engine",
                   "atheris", "--inputs", str(args.inputs), "--seed", str(args.seed), "--json"]
            if args.save_crashes:
                cmd += ["--save-crashes", str(args.save_crashes)]
            p = subprocess.run(cmd, capture_output=True, text=True)
            j = json.loads((p.stdout.strip().splitlines() or ["{}"])[-1])
        else:
            res = F.fuzz(F.get_target(name), args.inputs, args.seed, save=args.save_crashes,
                         on_finding=None)
            j = res.to_json()
            seen = set()
            for f in res.findings:
                if f.signature not in seen:
                    seen.add(f.signature)
                    found.append(f)
        rows.append(j)
        if args.json:
            print(json.dumps(j), flush=True)
        else:
            if j.get("skipped"):
                print(f"{name:16} skipped: {j['skipped']}", flush=True)
                continue
            print(f"{name:16} {j['inputs']:>9} inputs {j['inputs_per_second']:>9.0f}/s "
                  f"crashes {j['crashes']:>5} hangs {j['hangs']:>3} "
                  f"oob-writes {j['out_of_block_writes']:>3} "
                  f"unbounded {j['unbounded_buffers']:>3} "
                  f"peak-buffered {j['peak_buffered_bytes']:>8} B "
                  f"peak-traced {j['peak_traced_bytes'] / 2**20:6.1f} MiB", flush=True)
    if not args.json:
        for f in found:
            print(f"\n{f.target}: {f.kind} [{f.signature}] {f.error}\n"
                  f"  input ({len(f.data)} B): {f.data[:128].hex()}")
    return 1 if any(r.get("crashes") or r.get("hangs") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
