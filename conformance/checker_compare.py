"""Replay recorded QEMU answers through livemig's checkers and say where they differ.

Each ``compare_*`` function takes one record written by
:mod:`livemig.conformance.ground_truth` (or produced live by the same code)
and returns ``None`` when livemig's checker gives the same answer as QEMU --
same acceptance, same error text, and for accepted calls the same resulting
state -- or a :class:`Mismatch` describing the difference.

Records the checker API cannot express are *skipped* with a reason (a
:class:`Skip`), never silently passed: e.g. a ``migrate-set-capabilities``
call whose ``arguments`` object itself is malformed (the checker takes the
``capabilities`` list only).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional, Union

from livemig.core.caps import check_set_capabilities
from livemig.core.commands import check_arguments, check_command
from livemig.core.guards import GuardEnv
from livemig.core.params import check_parameters
from livemig.errors import CommandError, ParameterError
from livemig.spec.schema import Profile

ABSENT_MARK = {"$absent": True}


@dataclass(frozen=True)
class Mismatch:
    """QEMU and livemig disagree on one record."""

    record: dict
    what: str  # "ok", "error", "value"
    qemu: Any
    livemig: Any

    def __str__(self) -> str:
        req = json.dumps(self.record.get("request", self.record.get("args")))
        if len(req) > 300:
            req = req[:300] + "..."
        setup = {k: self.record.get(k) for k in ("setup_caps", "setup_params", "context")
                 if self.record.get(k)}
        cmd = self.record.get("cmd", self.record.get("kind"))
        return (f"[{self.record.get('side')}] {cmd} {req}"
                f"{' after ' + json.dumps(setup) if setup else ''}\n"
                f"    {self.what}: QEMU {self.qemu!r}\n"
                f"    {' ' * len(self.what)}  livemig {self.livemig!r}")


@dataclass(frozen=True)
class Skip:
    """A record the checker API cannot express."""

    record: dict
    reason: str


Outcome = Union[None, Mismatch, Skip]


def _caps_dict(profile: Profile, on: Optional[Iterable[str]]) -> dict[str, bool]:
    on = set(on or ())
    return {n: n in on for n in profile.capability_names()}


def params_from_setup(profile: Profile, setup_params: Optional[Mapping[str, Any]]) -> dict:
    """The parameter set after ``setup_params`` was applied to the defaults (via the checker)."""
    result = check_parameters(profile, dict(setup_params or {}), side="source")
    if not result.ok:
        raise ValueError(f"setup parameters {setup_params} are refused by livemig: "
                         f"{result.error}")
    return dict(result.value)


def compare_caps(profile: Profile, rec: dict, host: Optional[Mapping[str, bool]] = None,
                 state: str = "none") -> Outcome:
    """One ``kind: caps`` record against :func:`livemig.core.caps.check_set_capabilities`."""
    current = _caps_dict(profile, rec.get("setup_caps"))
    params = params_from_setup(profile, rec.get("setup_params"))
    got = check_set_capabilities(profile, rec["request"], side=rec["side"], current=current,
                                 host=host, params=params, state=state)
    if got.ok != rec["ok"]:
        return Mismatch(rec, "ok", rec["ok"] or rec["error"], got.ok or got.error)
    if not got.ok:
        if got.error != rec["error"]:
            return Mismatch(rec, "error", rec["error"], got.error)
        return None
    on = sorted(n for n, v in got.value.items() if v)
    if rec.get("after_on") is not None and on != sorted(rec["after_on"]):
        return Mismatch(rec, "value", sorted(rec["after_on"]), on)
    return None


def _full_params(defaults: Mapping[str, Any], diff: Optional[Mapping[str, Any]]) -> dict:
    full = dict(defaults)
    for k, v in (diff or {}).items():
        if v == ABSENT_MARK:
            full.pop(k, None)
        else:
            full[k] = v
    return full


def compare_params(profile: Profile, rec: dict, defaults: Mapping[str, Any],
                   host: Optional[Mapping[str, bool]] = None) -> Outcome:
    """One ``kind: params`` record against :func:`livemig.core.params.check_parameters`.

    ``defaults`` is ``query-migrate-parameters`` of a fresh QEMU on that side
    (the meta line's ``param_defaults``).
    """
    current = _full_params(defaults, rec.get("setup_diff"))
    caps = _caps_dict(profile, rec.get("setup_caps"))
    request = rec["request"]
    if request is None:  # no "arguments" member: QMP treats it as {}
        request = {}
    got = check_parameters(profile, request, side=rec["side"], current=current, caps=caps,
                           host=host)
    if got.ok != rec["ok"]:
        return Mismatch(rec, "ok", rec["ok"] or rec["error"], got.ok or got.error)
    if not got.ok:
        if got.error != rec["error"]:
            return Mismatch(rec, "error", rec["error"], got.error)
        return None
    expected = _full_params(defaults, rec["query_diff"])
    value = dict(got.value)
    if value != expected:
        keys = sorted(set(value) | set(expected))
        diff = {k: (expected.get(k, "<absent>"), value.get(k, "<absent>")) for k in keys
                if expected.get(k, "<absent>") != value.get(k, "<absent>")}
        return Mismatch(rec, "value (QEMU, livemig) per member", diff, None)
    return None


def _qapi_patterns(profile: Profile) -> list[re.Pattern]:
    pats = []
    for _key, text in profile.qapi_errors:
        if "%s" in text:
            pats.append(re.compile("^" + ".*".join(re.escape(p) for p in text.split("%s")) + "$"))
    return pats


def is_qapi_error(profile: Profile, text: Optional[str]) -> bool:
    """Whether ``text`` has the shape of one of the profile's QAPI input errors."""
    return text is not None and any(p.match(text) for p in _qapi_patterns(profile))


def compare_command(profile: Profile, rec: dict, host: Optional[Mapping[str, bool]] = None
                    ) -> Outcome:
    """One ``kind: command`` record against the spec's preconditions (or the checkers).

    The arguments go through ``check_arguments`` first (QMP's input visitor,
    from the spec's member types), then the preconditions.  A call QEMU
    accepted must pass both; a call QEMU refused must fail on the same check
    with the same text.  Skipped: commands the spec does not have, and a URI
    whose protocol QEMU does not know (that error follows a state change: the
    ``src.qmp_migrate.bad_uri`` row).
    """
    ctx = rec["context"]
    if ctx.get("host"):
        host = {**(host or profile.host_defaults()), **ctx["host"]}
    cmd = rec["cmd"]
    args = rec["args"] or {}
    caps = _caps_dict(profile, ctx["caps_on"])
    if cmd == "migrate-set-capabilities" and isinstance(args, dict) and "capabilities" in args:
        sub = {"request": args, "side": rec["side"], "setup_caps": ctx["caps_on"],
               "ok": rec["ok"], "error": rec["error"], "after_on": None}
        out = compare_caps(profile, sub, host=host, state=ctx["states"]["source"])
        if isinstance(out, Mismatch):
            return Mismatch(rec, out.what, out.qemu, out.livemig)
        return out
    if cmd == "migrate-set-parameters":
        got = check_parameters(profile, args, side=rec["side"], caps=caps, host=host)
        if got.ok != rec["ok"] or (not got.ok and got.error != rec["error"]):
            return Mismatch(rec, "ok/error", rec["error"] if not rec["ok"] else True,
                            got.error if not got.ok else True)
        return None
    if cmd not in {c.name for c in profile.commands}:
        return Skip(rec, f"{cmd} is not a spec command")
    try:
        check_arguments(profile, cmd, args)
    except ParameterError as exc:
        if rec["ok"] or exc.message != rec["error"]:
            return Mismatch(rec, "arguments", rec["error"] if not rec["ok"] else True,
                            exc.message)
        return None
    if not rec["ok"] and rec["error"] == profile.qapi_error("bad_uri"):
        # qmp_migrate's own check, after migrate_init: the row
        # src.qmp_migrate.bad_uri (a state change), not a precondition; the
        # engine's scenarios and state machine take it.
        return Skip(rec, "a URI QEMU 7.2 does not know: the src.qmp_migrate.bad_uri row")
    env = GuardEnv(profile=profile, side=rec["side"], states=ctx["states"], caps=caps,
                   was_caps=caps, flags=ctx.get("flags") or {}, host=host,
                   runstate=ctx["runstate"], args=args)
    try:
        check_command(profile, cmd, args, env)
    except CommandError as exc:
        if rec["ok"]:
            return Mismatch(rec, "ok", True, exc.message)
        if exc.message != rec["error"]:
            return Mismatch(rec, "error", rec["error"], exc.message)
        return None
    if not rec["ok"]:
        return Mismatch(rec, "ok", rec["error"], True)
    return None


def _report(mismatches: list[Mismatch], limit: int) -> str:
    if not mismatches:
        return "no mismatches"
    lines = [f"{len(mismatches)} mismatches; the first {min(limit, len(mismatches))}:"]
    lines += [str(m) for m in mismatches[:limit]]
    return "\n".join(lines)


def report(mismatches: list[Mismatch], limit: int = 25) -> str:
    """A readable list of the first ``limit`` mismatches."""
    return _report(mismatches, limit)
