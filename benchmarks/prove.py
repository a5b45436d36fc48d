"""Time the whole invariant catalogue for every profile (``livemig prove --all``).

    python benchmarks/prove.py [--runs N]

Each run proves or refutes every catalogue entry for every profile in a
fresh process (so Z3's and the loader's caches start cold); the script
prints each run, the median, and per-profile medians.  The goal is under
10 s on the project's 2-core machine.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

ONE_RUN = """
import json, sys, time
from livemig.core.prove.catalogue import prove_all
stats, out = [], {}
t0 = time.perf_counter()
rs = prove_all(jobs=int(sys.argv[1]), stats=stats)
out["total"] = time.perf_counter() - t0
for s in stats:
    out[s.profile] = s.seconds
out["ok"] = all(r.ok for r in rs)
print(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--jobs", type=int, default=2,
                    help="processes (as `livemig prove --all`, default 2; 1 = serial)")
    args = ap.parse_args(argv)
    runs = []
    for i in range(args.runs):
        t = time.perf_counter()
        done = subprocess.run([sys.executable, "-c", ONE_RUN, str(args.jobs)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stderr, file=sys.stderr)
            return done.returncode
        wall = time.perf_counter() - t
        data = json.loads(done.stdout.strip().splitlines()[-1])
        data["wall"] = wall
        runs.append(data)
        profiles = ", ".join(f"{k} {v:.2f} s of work" for k, v in data.items()
                             if k not in ("total", "ok", "wall"))
        print(f"run {i + 1}: catalogue {data['total']:.2f} s ({profiles}); process "
              f"{wall:.2f} s; all as expected: {data['ok']}")
    med = statistics.median(r["total"] for r in runs)
    wall = statistics.median(r["wall"] for r in runs)
    print(f"median of {len(runs)} (jobs={args.jobs}): catalogue {med:.2f} s, whole process "
          f"{wall:.2f} s (goal < 10 s)")
    return 0 if all(r["ok"] for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
