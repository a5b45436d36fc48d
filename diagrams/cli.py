"""``livemig diagram``: draw the spec's state machines, a run over them, or a profile diff."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from livemig.diagrams.model import MACHINES
from livemig.diagrams.output import FORMATS, write_all, write_diff, write_profile, write_trace
from livemig.diagrams.trace import summary
from livemig.errors import SpecError
from livemig.spec import DEFAULT_PROFILE, profile_names

EPILOG = """\
machines:
  source        source MigrationStatus (migrate_set_state rows of the source)
  destination   destination MigrationStatus (incoming side)
  postcopy      destination PostcopyState and its handlers
  caps          capability rules of migrate_caps_check (conflicts, requirements)

examples:
  livemig diagram                                   # qemu-7.2, all machines, into ./out/diagrams
  livemig diagram --all --out /tmp/d                # every profile, the diffs and an index
  livemig diagram --profile qemu-3.0 --machine source --format svg
  livemig diagram --diff qemu-3.0 qemu-7.2          # what changed, one diagram per machine
  livemig diagram --trace events.jsonl --side destination
        # a QMP event log ({"event": "MIGRATION", "data": {"status": ...}} per line)
  livemig diagram --trace run.ndjson                # a livemig CAS log (both sides)

A trace overlay colours visited states and edges green with counts and draws
illegal steps in red; the exit status is 1 when the trace has an illegal step.
"""


def _formats(text: str) -> list[str]:
    formats = [f.strip() for f in text.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise argparse.ArgumentTypeError(
            f"unknown format {', '.join(bad)}; known: {', '.join(FORMATS)}")
    return formats


def _check_profile(name: str) -> str:
    if name not in profile_names():
        raise SpecError(f"unknown profile {name!r}; known profiles: {', '.join(profile_names())}")
    return name


def run(args: argparse.Namespace) -> int:
    """Carry out ``livemig diagram``; returns the exit status."""
    out = Path(args.out)
    machines = list(MACHINES) if args.machine == "all" else [args.machine]
    formats = args.format
    status = 0
    if args.diff:
        a, b = (_check_profile(n) for n in args.diff)
        written = write_diff(a, b, out, machines, formats, guards=args.guards)
    elif args.trace:
        profile = _check_profile(args.profile)
        trace = Path(args.trace)
        if not trace.is_file():
            raise SpecError(f"trace file {str(trace)!r} does not exist")
        written, observed = write_trace(profile, trace, out / f"trace-{trace.stem}",
                                        side=args.side, formats=formats, guards=args.guards)
        for line in summary(observed):
            print(line)
        if observed.illegal:
            status = 1
    elif args.all:
        written = write_all(out, formats)
    else:
        profile = _check_profile(args.profile)
        written = write_profile(profile, out, machines, formats, guards=args.guards)
    for path in written:
        print(path)
    print(f"wrote {len(written)} files under {out}", file=sys.stderr)
    return status


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``diagram`` with the main CLI."""
    p = subparsers.add_parser(
        "diagram", help="draw state diagrams (DOT/SVG/PNG) from the spec, a trace, or a diff",
        description="Draw the spec's state machines with Graphviz: per profile the source "
                    "and destination MigrationStatus, PostcopyState and the capability "
                    "rules; or an observed run laid over them; or what changed between "
                    "two profiles.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    which = p.add_mutually_exclusive_group()
    which.add_argument("--all", action="store_true",
                       help="every profile, every profile diff and an index page")
    which.add_argument("--diff", nargs=2, metavar=("A", "B"),
                       help="what changed from profile A to profile B")
    which.add_argument("--trace", metavar="FILE",
                       help="overlay a run: a livemig NDJSON transition log or a QMP event log")
    p.add_argument("--profile", default=DEFAULT_PROFILE,
                   help=f"profile to draw (default {DEFAULT_PROFILE}; one of "
                        f"{', '.join(profile_names())})")
    p.add_argument("--machine", default="all", choices=[*MACHINES, "all"],
                   help="which machine (default all)")
    p.add_argument("--format", default=list(FORMATS), type=_formats,
                   help="comma-separated formats among svg,png,dot (default all three)")
    p.add_argument("--side", choices=["source", "destination"],
                   help="the side a QMP event log comes from (default source); for an "
                        "NDJSON log, draw only this side")
    p.add_argument("--guards", default="auto", choices=["auto", "all", "off"],
                   help="write row guards under the labels: auto (only where two rows on one "
                        "edge would read the same), all, off; SVG tooltips always have them")
    p.add_argument("--out", default="out/diagrams",
                   help="output directory (default ./out/diagrams)")
    p.set_defaults(func=run)


__all__ = ["add_parser", "run"]
