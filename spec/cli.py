"""``livemig spec``: show, diff and check profiles."""
from __future__ import annotations

import argparse
import json

from livemig.spec import DEFAULT_PROFILE
from livemig.spec.consistency import check_profile
from livemig.spec.diff import diff_data, diff_text
from livemig.spec.loader import load_profile, profile_names
from livemig.spec.render import profile_data, profile_text


def _show(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    if args.json:
        print(json.dumps(profile_data(profile), indent=2))
    else:
        print(profile_text(profile))
    return 0


def _diff(args: argparse.Namespace) -> int:
    a, b = load_profile(args.a), load_profile(args.b)
    print(json.dumps(diff_data(a, b, args.docs), indent=2) if args.json
          else diff_text(a, b, args.docs))
    return 0


def _check(args: argparse.Namespace) -> int:
    bad = 0
    for name in (profile_names() if args.all or not args.profile else [args.profile]):
        problems = check_profile(load_profile(name))
        print(f"{name}: {'consistent' if not problems else f'{len(problems)} problem(s)'}")
        for problem in problems:
            print(f"  - {problem}")
        bad += bool(problems)
    return 1 if bad else 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    names = ", ".join(profile_names())
    spec = subparsers.add_parser(
        "spec", help="show, diff and check the spec profiles",
        description=f"The spec: QEMU's migration control plane as data. Profiles: {names}.")
    sub = spec.add_subparsers(dest="spec_command", metavar="ACTION", required=True)
    show = sub.add_parser("show", help="print a profile's tables",
                          description="Print every table of a profile: statuses, groups, "
                                      "transition rows, PostcopyState handlers, capabilities "
                                      "and rules, parameters and rules, QMP preconditions.")
    show.add_argument("--profile", default=DEFAULT_PROFILE, choices=profile_names())
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_show)
    diff = sub.add_parser("diff", help="what changed between two profiles",
                          description="Rows removed (-), added (+) and changed (~) per table.")
    diff.add_argument("a", choices=profile_names())
    diff.add_argument("b", choices=profile_names())
    diff.add_argument("--json", action="store_true")
    diff.add_argument("--docs", action="store_true", help="also compare prose doc fields")
    diff.set_defaults(func=_diff)
    check = sub.add_parser("check", help="self-consistency check of profiles",
                           description="Every name a row uses is declared; every status is "
                                       "in a row or declared unreachable. Exit 1 on problems.")
    check.add_argument("--profile", choices=profile_names())
    check.add_argument("--all", action="store_true")
    check.set_defaults(func=_check)
