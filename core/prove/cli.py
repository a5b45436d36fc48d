"""``livemig prove``: run the invariant catalogue, print/export the results.

    livemig prove [--profile P | --all] [--json] [--junit FILE] [--mutants]
                  [--write-tests DIR] [--traces {refuted,none,all}]

Exit status 0 only if every result equals its expectation (and, with
``--mutants``, the kill rate reaches the threshold).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from xml.sax.saxutils import escape

from livemig.core.prove.catalogue import BMC_DEPTH, MAX_K, Result, RunStats, prove_all
from livemig.core.prove.counterexample import expectation_source, pytest_source, render
from livemig.spec import load_profile, profile_names
from livemig.spec.invariants import INVARIANTS


def result_table(results: list[Result]) -> str:
    """The proof table: one line per (profile, invariant)."""
    head = ("profile", "invariant", "expected", "result", "method", "k", "s", "")
    cells = [head] + [(r.profile, r.invariant, r.expected, r.result, r.method, str(r.k),
                       f"{r.seconds:.2f}", "ok" if r.ok else "MISMATCH") for r in results]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head))]
    lines = []
    for n, c in enumerate(cells):
        lines.append("  ".join(c[i].ljust(widths[i]) for i in range(len(head))).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def junit_xml(results: list[Result], stats: list[RunStats]) -> str:
    """JUnit XML: one suite per profile, one case per invariant."""
    out = ['<?xml version="1.0" encoding="utf-8"?>', "<testsuites>"]
    for prof in sorted({r.profile for r in results}):
        rs = [r for r in results if r.profile == prof]
        secs = sum(s.seconds for s in stats if s.profile == prof)
        fails = sum(not r.ok for r in rs)
        out.append(f'  <testsuite name="prove.{escape(prof)}" tests="{len(rs)}" '
                   f'failures="{fails}" time="{secs:.3f}">')
        for r in rs:
            out.append(f'    <testcase classname="prove.{escape(prof)}" '
                       f'name="{escape(r.invariant)}" time="{r.seconds:.3f}">')
            if not r.ok:
                msg = f"expected {r.expected}, got {r.result} ({r.method}, k={r.k})"
                body = "\n".join(r.details)
                if r.counterexample:
                    body += "\n" + render(r.counterexample)
                out.append(f'      <failure message="{escape(msg)}">{escape(body)}</failure>')
            out.append(f"      <system-out>{escape(r.reason)}</system-out>")
            out.append("    </testcase>")
        out.append("  </testsuite>")
    out.append("</testsuites>")
    return "\n".join(out) + "\n"


def write_tests(results: list[Result], directory: str) -> list[str]:
    """Write one replay test per refuted result with a counterexample; return the paths."""
    os.makedirs(directory, exist_ok=True)
    by_name = {inv.name: inv for inv in INVARIANTS}
    paths = []
    for r in results:
        if r.result != "refuted" or not r.counterexample:
            continue
        inv = by_name[r.invariant]
        name = "".join(c if c.isalnum() else "_" for c in f"{r.profile}_{r.invariant}")
        path = os.path.join(directory, f"test_replay_{name}.py")
        with open(path, "w") as fh:
            fh.write(pytest_source(r.counterexample, r.invariant, expectation_source(inv)))
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    names = list(profile_names()) if args.all or not args.profile else [args.profile]
    for n in names:
        load_profile(n)  # unknown names fail here with SpecError
    stats: list[RunStats] = []
    t0 = time.perf_counter()
    results = prove_all(names, jobs=args.jobs, bmc_depth=args.depth, max_k=args.k, stats=stats)
    total = time.perf_counter() - t0
    ok = all(r.ok for r in results)
    mutant_report = None
    if args.mutants:
        from livemig.core.prove.mutants import run_mutants
        mutant_report = run_mutants(names, jobs=args.jobs, limit=args.mutant_limit)
        ok = ok and mutant_report.passed
    if args.junit:
        with open(args.junit, "w") as fh:
            fh.write(junit_xml(results, stats))
    if args.write_tests:
        for path in write_tests(results, args.write_tests):
            print(f"wrote {path}", file=sys.stderr)
    if args.json:
        doc = {"ok": ok, "seconds": round(total, 3),
               "profiles": [{"profile": s.profile, "seconds": round(s.seconds, 3),
                             "sides": s.per_side} for s in stats],
               "results": [r.to_json() for r in results]}
        if mutant_report is not None:
            doc["mutants"] = mutant_report.to_json()
        json.dump(doc, sys.stdout, indent=2)
        print()
        return 0 if ok else 1
    print(result_table(results))
    if args.traces != "none":
        for r in results:
            if r.counterexample and (args.traces == "all" or r.result == "refuted"):
                print()
                print(render(r.counterexample, f"{r.profile} {r.invariant}: {r.result} "
                                               f"(expected {r.expected})"))
                if r.reason:
                    print(f"  why: {r.reason}")
    for r in results:
        if r.details and not r.ok:
            print(f"\n{r.profile} {r.invariant}:\n  " + "\n  ".join(r.details))
    good = sum(r.ok for r in results)
    print(f"\n{good}/{len(results)} results as expected; {len(names)} profile(s) in "
          f"{total:.2f} s")
    if mutant_report is not None:
        print()
        print(mutant_report.render())
    return 0 if ok else 1


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``livemig prove``."""
    p = subparsers.add_parser(
        "prove", help="prove or refute the invariant catalogue with Z3",
        description="Prove or refute every entry of the invariant catalogue "
                    "(livemig.spec.invariants) for a profile with Z3: BMC finds "
                    "counterexamples, k-induction proves; 'unknown' is a failure.")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--profile", help="one profile (default: all)")
    who.add_argument("--all", action="store_true", help="every profile")
    p.add_argument("--json", action="store_true", help="machine-readable results")
    p.add_argument("--junit", metavar="FILE", help="also write JUnit XML")
    p.add_argument("--mutants", action="store_true",
                   help="also generate spec mutants and show that the catalogue kills them")
    p.add_argument("--mutant-limit", type=int, default=None,
                   help="at most this many mutants per profile (default: all)")
    p.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                   help="processes (profile sides, and mutants) (default: 2)")
    p.add_argument("--write-tests", metavar="DIR",
                   help="write a replayable pytest file per counterexample")
    p.add_argument("--traces", choices=("refuted", "none", "all"), default="refuted",
                   help="which counterexample traces to print")
    p.add_argument("--depth", type=int, default=BMC_DEPTH, help="BMC depth (steps)")
    p.add_argument("--k", type=int, default=MAX_K, help="largest k for k-induction")
    p.set_defaults(func=run)
