"""The capability checker: ``migrate-set-capabilities`` as QEMU decides it.

A pure function of the profile, the current capabilities, the requested
change (raw JSON, as QMP receives it), the side, host facts, current
parameters and the source's migration status.  Order of failure, as in QEMU:

1. QAPI input errors (malformed list or members, unknown capability name);
2. the command's precondition (a migration is running on the source object);
3. ``migrate_caps_check``: the request merged into a copy of the current set,
   then the profile's CAP_RULES in order, the first failing rule wins.

A rejection returns QEMU's message and the caller's state is untouched (the
function never mutates its inputs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

from livemig.core.commands import check_command
from livemig.core.guards import GuardEnv, evaluate
from livemig.core.qapi import check_no_extra, require, visit_bool, visit_enum, visit_list, \
    visit_object, visit_str
from livemig.errors import CapabilityError, CommandError, ParameterError
from livemig.spec.schema import Profile

#: the run state each side is in while capabilities are set
SIDE_RUNSTATE = {"source": "running", "destination": "inmigrate"}


@dataclass(frozen=True)
class CheckResult:
    """``ok`` with the new value, or not ok with QEMU's error text."""

    ok: bool
    error: Optional[str] = None
    value: Any = None
    rule: Optional[str] = None  # the id of the rule or precondition that failed

    def to_json(self) -> dict:
        return {"ok": self.ok, "error": self.error}


def default_capabilities(profile: Profile) -> dict[str, bool]:
    return {name: False for name in profile.capability_names()}


def parse_capability_request(profile: Profile, request: Any) -> list[tuple[str, bool]]:
    """Validate the raw ``capabilities`` argument; raise ParameterError with QAPI's text."""
    items = visit_list(profile, "capabilities", request)
    names = profile.capability_names()
    parsed = []
    for index, item in enumerate(items):
        prefix = f"capabilities[{index}]"
        obj = visit_object(profile, prefix, item)
        raw_name = require(profile, f"{prefix}.", obj, "capability")
        # QEMU's type errors name the full path ("capabilities[0].capability"),
        # but its enum error names only the member: observed on 7.2,
        # "Parameter 'capability' does not accept value 'nope'".
        visit_str(profile, f"{prefix}.capability", raw_name)
        name = visit_enum(profile, "capability", raw_name, names)
        state = visit_bool(profile, f"{prefix}.state", require(profile, f"{prefix}.", obj, "state"))
        check_no_extra(profile, f"{prefix}.", obj, ("capability", "state"))
        parsed.append((name, state))
    return parsed


def first_failing_rule(profile: Profile, caps: Mapping[str, bool], *, was: Mapping[str, bool],
                       side: str, host: Optional[Mapping[str, bool]] = None,
                       params: Optional[Mapping[str, Any]] = None):
    """The first CAP_RULES row whose failure condition holds for ``caps``, or None."""
    env = GuardEnv(profile=profile, side=side, caps=caps, was_caps=was, host=host,
                   runstate=SIDE_RUNSTATE[side], params=params or default_params(profile))
    for rule in profile.cap_rules:
        if evaluate(rule.when, env):
            return rule
    return None


def default_params(profile: Profile) -> dict[str, Any]:
    return {p.name: p.default for p in profile.parameters if p.default is not None}


def check_capabilities(profile: Profile, request: Any, *, side: str,
                       current: Optional[Mapping[str, bool]] = None,
                       host: Optional[Mapping[str, bool]] = None,
                       params: Optional[Mapping[str, Any]] = None,
                       state: str = "none") -> CheckResult:
    """Decide ``migrate-set-capabilities`` with arguments ``{"capabilities": request}``.

    ``state`` is the source object's migration status (QEMU checks only that
    one, on either side).  On success ``value`` is the complete new set.
    """
    if side not in SIDE_RUNSTATE:
        raise ValueError(f"side must be 'source' or 'destination', not {side!r}")
    was = dict(default_capabilities(profile))
    was.update(current or {})
    try:
        changes = parse_capability_request(profile, request)
    except ParameterError as exc:
        return CheckResult(False, exc.message, rule="qapi")
    env = GuardEnv(profile=profile, side="source", states={"source": state}, caps=was,
                   runstate=SIDE_RUNSTATE[side], host=host,
                   params=params or default_params(profile))
    try:
        check_command(profile, "migrate-set-capabilities", {"capabilities": request}, env)
    except CommandError as exc:
        return CheckResult(False, exc.message, rule=getattr(exc, "rule", None))
    merged = dict(was)
    for name, value in changes:
        merged[name] = value
    rule = first_failing_rule(profile, merged, was=was, side=side, host=host, params=params)
    if rule is not None:
        return CheckResult(False, rule.error, rule=rule.id)
    return CheckResult(True, None, merged)


def check_set_capabilities(profile: Profile, arguments: Any, **kwargs: Any) -> CheckResult:
    """Decide ``migrate-set-capabilities`` given its whole QMP ``arguments`` object.

    Adds what :func:`check_capabilities` (which takes the list) cannot see:
    a non-object ``arguments`` (JSON null counts as absent, as in QMP), a
    missing ``capabilities`` member, and unknown top-level members — reported
    after the list was read, as QEMU's visitor does.
    """
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        return CheckResult(False, profile.qapi_error("arguments_not_object"), rule="qapi")
    try:
        request = require(profile, "", arguments, "capabilities")
        parse_capability_request(profile, request)
        check_no_extra(profile, "", arguments, ("capabilities",))
    except ParameterError as exc:
        return CheckResult(False, exc.message, rule="qapi")
    return check_capabilities(profile, request, **kwargs)


def apply_capabilities(profile: Profile, request: Any, **kwargs: Any) -> dict[str, bool]:
    """Like :func:`check_capabilities` but returns the new set or raises CapabilityError."""
    result = check_capabilities(profile, request, **kwargs)
    if not result.ok:
        raise CapabilityError(result.error or "rejected")
    return result.value
