"""``livemig check-trace`` and ``livemig monitor``.

Exit status: 0 legal, 1 illegal, 2 usage or input error (the message names
the bad line or what could not be reached).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from livemig.spec import DEFAULT_PROFILE, SIDES, load_profile, profile_names

LEGAL, ILLEGAL, INPUT_ERROR = 0, 1, 2


def _profile(name: str):
    if name not in profile_names():
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(profile_names())}")
    return load_profile(name)


def cmd_check_trace(args: argparse.Namespace) -> int:
    from livemig.conformance.trace import TraceInputError, check_trace

    try:
        profile = _profile(args.profile)
        verdict = check_trace(profile, args.file, args.side, args.start)
    except (TraceInputError, ValueError) as exc:
        print(f"livemig check-trace: {args.file}: {exc}", file=sys.stderr)
        return INPUT_ERROR
    if verdict.format == "empty":
        print(f"livemig check-trace: {args.file}: no MIGRATION event or NDJSON transition "
              f"line found", file=sys.stderr)
        return INPUT_ERROR
    if args.verbose:
        for step in verdict.steps:
            print(f"  line {step.line}: {step.old} -> {step.new} ({step.kind}: "
                  f"{', '.join(step.rows)})")
    print("\n".join(verdict.lines()))
    return LEGAL if verdict.legal else ILLEGAL


def cmd_monitor(args: argparse.Namespace) -> int:
    from livemig.conformance.monitor import monitor, write_overlay
    from livemig.conformance.qmpsession import QMPSessionError
    from livemig.conformance.trace import TraceInputError

    try:
        profile = _profile(args.profile)
        until = [s.strip() for s in args.until.split(",")] if args.until else None
        for s in until or ():
            if s not in profile.status_names:
                raise ValueError(f"--until: unknown status {s!r}")
        ndjson = open(args.ndjson, "w") if args.ndjson else None
        try:
            result = monitor(profile, args.qmp, args.side, args.start, until, args.timeout,
                             ndjson)
        finally:
            if ndjson is not None:
                ndjson.close()
    except (QMPSessionError, TraceInputError, ValueError, OSError) as exc:
        print(f"livemig monitor: {exc}", file=sys.stderr)
        return INPUT_ERROR
    if args.overlay:
        path = write_overlay(profile, result.side, result.steps, Path(args.overlay),
                             caption=f"livemig monitor {args.qmp}")
        print(f"monitor: wrote {path}")
    return ILLEGAL if result.illegal else LEGAL


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``check-trace`` and ``monitor``."""
    p = subparsers.add_parser(
        "check-trace", help="is a transition log or QMP event log a legal path of one side?",
        description="Check a livemig NDJSON transition log or a QMP event log (one JSON object "
                    "a line, as QEMU emits them) against one side of a profile. Exit 0 legal, "
                    "1 illegal (the first illegal step and what the spec allowed there), "
                    "2 unreadable input.")
    p.add_argument("file", help="the log file")
    p.add_argument("--side", required=True, choices=SIDES)
    p.add_argument("--profile", default=DEFAULT_PROFILE)
    p.add_argument("--from", dest="start", metavar="STATE",
                   help="the state the log starts in (default: the profile's initial status)")
    p.add_argument("-v", "--verbose", action="store_true", help="print every step")
    p.set_defaults(func=cmd_check_trace)

    m = subparsers.add_parser(
        "monitor", help="attach to a running QEMU and check its MIGRATION events live",
        description="Attach to a QMP socket with qemu.qmp, turn the events capability on, "
                    "check every MIGRATION event against the spec as it arrives. Exit 0 if "
                    "every step was legal, 1 if one was not, 2 if the socket is unusable.")
    m.add_argument("--qmp", required=True, metavar="unix:PATH|PATH")
    m.add_argument("--side", choices=SIDES,
                   help="default: destination if the VM is in run state inmigrate")
    m.add_argument("--profile", default=DEFAULT_PROFILE)
    m.add_argument("--from", dest="start", metavar="STATE",
                   help="default: query-migrate's status when attaching")
    m.add_argument("--ndjson", metavar="OUT", help="write the steps as NDJSON transition lines")
    m.add_argument("--overlay", metavar="OUT.svg", help="draw the run over the status diagram")
    m.add_argument("--until", metavar="S1,S2",
                   help="stop at these statuses (default: the profile's terminal ones)")
    m.add_argument("--timeout", type=float, default=600.0, metavar="S")
    m.set_defaults(func=cmd_monitor)
