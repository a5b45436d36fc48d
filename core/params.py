"""The parameter checker: ``migrate-set-parameters`` as QEMU decides it.

Order, as in QEMU:

1. QAPI input: each member of the request, in the schema's order (the
   profile's PARAMETERS order), is read with its type's visitor; the first
   bad one fails; then the first unknown member is "unexpected".
2. ``migrate_params_test_apply``: the request is merged into a copy of the
   current parameters.  Parameters marked ``applied_by_set=False`` are read
   (and type-checked) but not merged: 7.2 silently ignores
   multifd-zlib-level and multifd-zstd-level here.
3. ``migrate_params_check`` on the merged set: the profile's PARAM_RULES in
   order, the first failing rule wins (range rules may bound by another
   parameter's merged value, e.g. max-cpu-throttle >= cpu-throttle-initial;
   cross rules read the capabilities in force).

``migrate-set-parameters`` has no migration-state precondition in 3.0 or 7.2.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Mapping, Optional

from livemig.core.caps import CheckResult, default_params
from livemig.core.guards import GuardEnv, evaluate
from livemig.core.qapi import (
    check_no_extra, require, visit_bool, visit_enum, visit_int64, visit_list, visit_object,
    visit_str, visit_str_or_null, visit_unsigned,
)
from livemig.errors import ParameterError, SpecError
from livemig.spec.schema import Parameter, ParamRef, ParamRule, Profile


def _visit_bitmap_mapping(profile: Profile, name: str, value: Any) -> list:
    """BitmapMigrationNodeAliasList: [{node-name, alias, bitmaps: [{name, alias, transform?}]}]."""
    nodes = visit_list(profile, name, value)
    out = []
    for i, node in enumerate(nodes):
        prefix = f"{name}[{i}]"
        obj = visit_object(profile, prefix, node)
        entry = {
            "node-name": visit_str(profile, f"{prefix}.node-name",
                                   require(profile, f"{prefix}.", obj, "node-name")),
            "alias": visit_str(profile, f"{prefix}.alias",
                               require(profile, f"{prefix}.", obj, "alias")),
        }
        bitmaps = visit_list(profile, f"{prefix}.bitmaps",
                             require(profile, f"{prefix}.", obj, "bitmaps"))
        entry["bitmaps"] = []
        for j, bitmap in enumerate(bitmaps):
            bprefix = f"{prefix}.bitmaps[{j}]"
            bobj = visit_object(profile, bprefix, bitmap)
            item = {
                "name": visit_str(profile, f"{bprefix}.name",
                                  require(profile, f"{bprefix}.", bobj, "name")),
                "alias": visit_str(profile, f"{bprefix}.alias",
                                   require(profile, f"{bprefix}.", bobj, "alias")),
            }
            if "transform" in bobj:
                transform = visit_object(profile, f"{bprefix}.transform", bobj["transform"])
                # An empty transform object is kept: 7.2's query echoes "transform": {}.
                item["transform"] = {}
                if "persistent" in transform:
                    item["transform"]["persistent"] = visit_bool(
                        profile, f"{bprefix}.transform.persistent", transform["persistent"])
                check_no_extra(profile, f"{bprefix}.transform.", transform, ("persistent",))
            check_no_extra(profile, f"{bprefix}.", bobj, ("name", "alias", "transform"))
            entry["bitmaps"].append(item)
        check_no_extra(profile, f"{prefix}.", obj, ("node-name", "alias", "bitmaps"))
        out.append(entry)
    return out


def visit_parameter(profile: Profile, param: Parameter, value: Any) -> Any:
    """One member read by its QAPI type's visitor; raises ParameterError."""
    name = param.name
    if param.type == "bool":
        return visit_bool(profile, name, value)
    if param.type in ("uint8", "uint32", "uint64", "size"):
        return visit_unsigned(profile, name, value, param.type)
    if param.type == "int64":
        return visit_int64(profile, name, value)
    if param.type == "str":
        return visit_str(profile, name, value)
    if param.type == "StrOrNull":
        return visit_str_or_null(profile, name, value)
    if param.type == "enum":
        return visit_enum(profile, name, value, param.enum or ())
    if param.type == "BitmapMigrationNodeAliasList":
        return _visit_bitmap_mapping(profile, name, value)
    raise ParameterError(f"parameter {name}: unsupported QAPI type {param.type!r}")


def parse_parameter_request(profile: Profile, request: Any) -> dict[str, Any]:
    """The request's members, type-checked, in schema order."""
    if not isinstance(request, dict):
        # QMP's dispatcher refuses a non-object "arguments" before visiting it.
        raise ParameterError(profile.qapi_error("arguments_not_object"))
    parsed: dict[str, Any] = {}
    settable = [p for p in profile.parameters if p.in_set_command]
    for param in settable:
        if param.name in request:
            parsed[param.name] = visit_parameter(profile, param, request[param.name])
    check_no_extra(profile, "", request, tuple(p.name for p in settable))
    return parsed


def alias_map_error(profile: Profile, mapping: list) -> Optional[str]:
    """The first failing ALIAS_MAP_RULES text for a block-bitmap-mapping value, or None."""
    directions = list(dict.fromkeys(r.direction for r in profile.alias_map_rules))
    for direction in directions:  # QEMU's passes: by name, then by alias
        rules = [r for r in profile.alias_map_rules if r.direction == direction]
        error = _alias_pass(rules, mapping)
        if error is not None:
            return error
    return None


def _alias_pass(rules: list, mapping: list) -> Optional[str]:
    node_rules = [r for r in rules if r.check.startswith("node_")]
    bitmap_rules = [r for r in rules if r.check.startswith("bitmap_")]
    names_seen: set[str] = set()
    aliases_seen: set[str] = set()
    for node in mapping:
        name, alias = node["node-name"], node["alias"]
        for rule in node_rules:
            failed = (
                (rule.check == "node_alias_form"
                 and not re.fullmatch(rule.pattern or "", alias))
                or (rule.check == "node_alias_length" and len(alias.encode()) > rule.limit)
                or (rule.check == "node_name_unique" and name in names_seen)
                or (rule.check == "node_alias_unique" and alias in aliases_seen))
            if failed:
                value = name if rule.check == "node_name_unique" else alias
                return rule.error.replace("%s", value, 1)
        names_seen.add(name)
        aliases_seen.add(alias)
        bitmap_names: set[str] = set()
        bitmap_aliases: set[str] = set()
        for bitmap in node["bitmaps"]:
            for rule in bitmap_rules:
                if rule.check == "bitmap_alias_length" and \
                        len(bitmap["alias"].encode()) > rule.limit:
                    return rule.error.replace("%s", bitmap["alias"], 1)
                if rule.check == "bitmap_name_unique" and bitmap["name"] in bitmap_names:
                    return rule.error.replace("%s", name, 1).replace("%s", bitmap["name"], 1)
                if rule.check == "bitmap_alias_unique" and bitmap["alias"] in bitmap_aliases:
                    return rule.error.replace("%s", alias, 1).replace("%s", bitmap["alias"], 1)
            bitmap_names.add(bitmap["name"])
            bitmap_aliases.add(bitmap["alias"])
    return None


def _bound(bound: Any, merged: Mapping[str, Any]) -> Optional[int]:
    if isinstance(bound, ParamRef):
        return merged.get(bound.name)
    return bound


def rule_fails(profile: Profile, rule: ParamRule, merged: Mapping[str, Any],
               caps: Mapping[str, bool], host: Optional[Mapping[str, bool]] = None) -> bool:
    """Whether ``rule`` rejects the merged parameter set."""
    if rule.alias_map:
        value = merged.get(rule.param)
        return value is not None and alias_map_error(profile, value) is not None
    if rule.param is not None:
        value = merged.get(rule.param)
        if value is None:  # e.g. block-bitmap-mapping never set
            return False
        low, high = _bound(rule.min, merged), _bound(rule.max, merged)
        if low is not None and value < low:
            return True
        if high is not None and value > high:
            return True
        if rule.power_of_two and (value <= 0 or value & (value - 1)):
            return True
    if rule.when is not None:
        env = GuardEnv(profile=profile, caps=caps, params=merged, host=host)
        return evaluate(rule.when, env)
    return False


def check_parameters(profile: Profile, request: Any, *, side: str = "source",
                     current: Optional[Mapping[str, Any]] = None,
                     caps: Optional[Mapping[str, bool]] = None,
                     host: Optional[Mapping[str, bool]] = None) -> CheckResult:
    """Decide ``migrate-set-parameters`` with the raw JSON arguments ``request``.

    On success ``value`` is the complete parameter set afterwards (what
    query-migrate-parameters shows).  ``side`` does not change the outcome in
    3.0 or 7.2 (there is no state precondition) but is accepted for symmetry.
    """
    merged = default_params(profile)
    merged.update(current or {})
    try:
        parsed = parse_parameter_request(profile, request)
    except ParameterError as exc:
        return CheckResult(False, exc.message, rule="qapi")
    for name, value in parsed.items():
        if profile.parameter(name).applied_by_set:
            merged[name] = value
    for rule in profile.param_rules:
        if rule_fails(profile, rule, merged, caps or {}, host):
            error = rule.error
            if rule.alias_map:
                error += alias_map_error(profile, merged[rule.param]) or ""
            return CheckResult(False, error, rule=rule.id)
    return CheckResult(True, None, merged)


def apply_parameters(profile: Profile, request: Any, **kwargs: Any) -> dict[str, Any]:
    """Like :func:`check_parameters` but returns the new set or raises ParameterError."""
    result = check_parameters(profile, request, **kwargs)
    if not result.ok:
        raise ParameterError(result.error or "rejected")
    return result.value


@lru_cache(maxsize=None)
def _defaults(profile: Profile) -> dict[str, Any]:
    return {p.name: p.default for p in profile.parameters}


def param(profile: Profile, params: Mapping[str, Any], name: str) -> Any:
    """``params[name]``, or the spec's default when ``params`` lacks it (never
    a fallback written in engine code).  A parameter the profile does not
    declare raises SpecError: ``param(p, {}, "compress-threads")`` is 8, as
    QEMU's default."""
    if name in params:
        return params[name]
    defaults = _defaults(profile)
    if name not in defaults:
        raise SpecError(f"profile {profile.name} declares no parameter {name!r}")
    return defaults[name]
