"""``livemig caps check`` and ``livemig params check``.

Both accept one case on the command line or, with ``--batch``, JSON lines on
stdin (one case per line) and answer one JSON line each, so thousands of
cases are checked in one process:

    {"caps": ["postcopy-ram", "compress"], "side": "source"}
    {"caps": [{"capability": "xbzrle", "state": true}], "side": "destination"}
    {"params": {"max-cpu-throttle": 10}, "side": "source"}

Optional keys: "profile", "current" (current caps/params), "state" (source
status), "params" (current parameters, for caps), "caps" (for params),
"host" (host facts), "id" (echoed in the answer).  Each answer:
{"ok": true|false, "error": null|"text"}, with the line's "id" when it has one.
A line that is not such an object is answered {"ok": false, "error": "line N:
why", "input_error": true} and makes the exit status 1.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from livemig.core.caps import check_capabilities
from livemig.core.params import check_parameters
from livemig.cli import UsageError
from livemig.errors import MigrationError
from livemig.spec import DEFAULT_PROFILE, load_profile, profile_names


def cap_request(items: list) -> list:
    """CLI/batch shorthand: "name" means on, "name=off"/"-name" off; dicts pass through."""
    out = []
    for item in items:
        if isinstance(item, dict):
            out.append(item)
        elif isinstance(item, str) and item.startswith("-"):
            out.append({"capability": item[1:], "state": False})
        elif isinstance(item, str) and "=" in item:
            name, value = item.split("=", 1)
            out.append({"capability": name, "state": value.lower() in ("on", "true", "1", "yes")})
        else:
            out.append({"capability": item, "state": True})
    return out


def param_value(text: str) -> Any:
    """NAME=VALUE's value as JSON when it parses (10, true, null, "x"), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


#: the members a --batch line may have, with their JSON types ("id" is any value)
CAPS_CASE = {"profile": str, "caps": list, "side": str, "current": dict, "host": dict,
             "params": dict, "state": str}
PARAMS_CASE = {"profile": str, "params": object, "side": str, "current": dict, "caps": dict,
               "host": dict}
_JSON_TYPE = {str: "a string", list: "an array", dict: "an object"}


def check_case(case: Any, members: dict) -> None:
    """Refuse a --batch line that is not an object of ``members`` (ValueError naming why)."""
    if not isinstance(case, dict):
        raise ValueError("each line must be a JSON object")
    for key, value in case.items():
        if key == "id":
            continue
        if key not in members:
            raise ValueError(f"unknown member {key!r}; expected {', '.join(members)} or id")
        if members[key] is not object and not isinstance(value, members[key]):
            raise ValueError(f"{key!r} must be {_JSON_TYPE[members[key]]}")


def known_status(profile: Any, state: str) -> str:
    """``state`` if it is one of the profile's statuses, else a ValueError naming them."""
    if state not in profile.status_names:
        raise ValueError(f"unknown migration status {state!r} for profile {profile.name}; "
                         f"expected one of {', '.join(profile.status_names)}")
    return state


def _answer_caps(case: dict, default_profile: str) -> dict:
    check_case(case, CAPS_CASE)
    profile = load_profile(case.get("profile", default_profile))
    result = check_capabilities(
        profile, cap_request(case.get("caps", [])), side=case.get("side", "source"),
        current=case.get("current"), host=case.get("host"), params=case.get("params"),
        state=known_status(profile, case.get("state", profile.status_names[0])))
    return result.to_json()


def _answer_params(case: dict, default_profile: str) -> dict:
    check_case(case, PARAMS_CASE)
    profile = load_profile(case.get("profile", default_profile))
    result = check_parameters(profile, case.get("params", {}), side=case.get("side", "source"),
                              current=case.get("current"), caps=case.get("caps"),
                              host=case.get("host"))
    return result.to_json()


def _batch(answer, default_profile: str) -> int:
    malformed = False
    for number, line in enumerate(sys.stdin, 1):
        if not line.strip():
            continue
        case = None
        try:
            case = json.loads(line)
            reply = answer(case, default_profile)
        except (ValueError, MigrationError) as exc:
            malformed = True
            reply = {"ok": False, "error": f"line {number}: {exc}", "input_error": True}
        if isinstance(case, dict) and "id" in case:
            reply["id"] = case["id"]
        sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    return 1 if malformed else 0


def _print(result: dict, as_json: bool) -> int:
    if as_json:
        print(json.dumps(result))
    else:
        print("accepted" if result["ok"] else f"rejected: {result['error']}")
    return 0 if result["ok"] else 1


def _caps(args: argparse.Namespace) -> int:
    if args.batch:
        return _batch(_answer_caps, args.profile)
    try:
        known_status(load_profile(args.profile), args.state)
    except ValueError as exc:
        raise UsageError(f"--state: {exc}") from None
    case = {"caps": args.caps, "side": args.side, "state": args.state}
    return _print(_answer_caps(case, args.profile), args.json)


def _params(args: argparse.Namespace) -> int:
    if args.batch:
        return _batch(_answer_params, args.profile)
    params = {}
    for item in args.assignments:
        if "=" not in item:
            raise UsageError(f"expected NAME=VALUE, got {item!r}")
        name, value = item.split("=", 1)
        params[name] = param_value(value)
    return _print(_answer_params({"params": params, "side": args.side}, args.profile), args.json)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default=DEFAULT_PROFILE, choices=profile_names())
    parser.add_argument("--side", default="source", choices=("source", "destination"),
                        help="source (run state running) or destination (inmigrate)")
    parser.add_argument("--json", action="store_true",
                        help='print {"ok": ..., "error": ...}')
    parser.add_argument("--batch", action="store_true",
                        help="read JSON lines on stdin, answer one JSON line each")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    caps = subparsers.add_parser(
        "caps", help="check capability sets as migrate-set-capabilities would",
        description="Check capability changes with QEMU's rules and exact error texts.")
    caps_sub = caps.add_subparsers(dest="caps_command", metavar="ACTION", required=True)
    check = caps_sub.add_parser(
        "check", help="accept or reject capabilities",
        description="Exit 0 if accepted, 1 if rejected (the message is QEMU's). "
                    "CAP turns a capability on; CAP=off or -CAP turns it off.",
        epilog="example: livemig caps check --profile qemu-3.0 postcopy-ram compress",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(check)
    check.add_argument("--state", default="none",
                       help="the source's migration status (default: none)")
    check.add_argument("caps", nargs="*", metavar="CAP")
    check.set_defaults(func=_caps)

    params = subparsers.add_parser(
        "params", help="check parameter values as migrate-set-parameters would",
        description="Check parameter changes with QAPI's input rules and QEMU's checks.")
    params_sub = params.add_subparsers(dest="params_command", metavar="ACTION", required=True)
    pcheck = params_sub.add_parser(
        "check", help="accept or reject parameter values",
        description="VALUE is JSON when it parses (10, -1, true, null, \"text\"), else a string. "
                    "Exit 0 if accepted, 1 if rejected.",
        epilog="example: livemig params check max-cpu-throttle=10 cpu-throttle-initial=20")
    _common(pcheck)
    pcheck.add_argument("assignments", nargs="*", metavar="NAME=VALUE")
    pcheck.set_defaults(func=_params)
