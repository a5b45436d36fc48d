"""Profiles as JSON-ready data and as text, for ``livemig spec show`` and ``diff``."""
from __future__ import annotations

import dataclasses
from typing import Any

from livemig.spec import expr as E
from livemig.spec.schema import Profile

#: tables shown and diffed, in reading order: (field, title)
TABLES = (
    ("statuses", "MigrationStatus"),
    ("groups", "Groups"),
    ("terminal", "Terminal statuses"),
    ("actors", "Actors"),
    ("flags", "Flags"),
    ("transitions", "Transitions"),
    ("unreachable", "Declared unreachable"),
    ("postcopy_states", "PostcopyState"),
    ("postcopy_handlers", "PostcopyState handlers"),
    ("capabilities", "Capabilities"),
    ("host_facts", "Host facts"),
    ("cap_rules", "Capability rules (first failure wins)"),
    ("parameters", "Parameters"),
    ("param_rules", "Parameter rules (first failure wins)"),
    ("qapi_errors", "QAPI input errors"),
    ("commands", "QMP commands"),
    ("migration_info", "query-migrate members (source)"),
    ("engine_unimplemented", "Capabilities livemig's engine refuses at migrate"),
)


def to_data(value: Any) -> Any:
    """Any spec value as JSON-ready data (guards in their JSON form)."""
    if isinstance(value, (E.Const, E.Cap, E.WasCap, E.Flag, E.Host, E.Runstate, E.InState,
                          E.PostcopyIs, E.ArgState, E.Arg, E.Param, E.Not, E.All, E.AnyOf)):
        return E.to_json(value)
    if dataclasses.is_dataclass(value):
        return {f.name: to_data(getattr(value, f.name)) for f in dataclasses.fields(value)
                if f.compare}
    if isinstance(value, (tuple, list)):
        return [to_data(v) for v in value]
    return value


def profile_data(profile: Profile) -> dict:
    data = {"name": profile.name, "title": profile.title, "extends": profile.extends,
            "sources": list(profile.sources)}
    for field, _title in TABLES:
        data[field] = to_data(getattr(profile, field))
    data["wire"] = to_data(profile.wire)
    data["param_error_format"] = profile.param_error_format
    return data


def row_key(row: Any) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, (tuple, list)):
        return str(row[0])
    for attr in ("id", "name"):
        if hasattr(row, attr):
            return getattr(row, attr)
    return f"{row.side}:{row.status}"


def _row_line(field: str, row: Any) -> str:
    if field == "transitions":
        old = row.old if row.old != "current" or not row.within else \
            f"current{{{','.join(row.within)}}}"
        new = row.new if not row.event_only else f"(event {row.emits})"
        marks = "".join(m for m, on in ((" retry", row.retry), (" store", row.store)) if on)
        guard = "" if row.guard == E.TRUE else f"  if {E.to_text(row.guard)}"
        return (f"{row.id:38} {row.side[:3]} {row.actor:20} {old} -> {new}{marks}{guard}"
                f"   [{row.trigger}]")
    if field == "cap_rules":
        return f"{row.id:42} when {E.to_text(row.when)}\n{'':44}\"{row.error}\""
    if field == "param_rules":
        cond = E.to_text(row.when) if row.when is not None else \
            f"{row.param} in [{row.min}, {row.max}]" + (" power of 2" if row.power_of_two else "")
        return f"{row.id:36} {cond}\n{'':38}\"{row.error}\""
    if field == "groups":
        return f"{row.name:18} {', '.join(row.members)}   [{row.predicate}]"
    if field == "statuses":
        return f"{row.value:3} {row.name}"
    if field == "parameters":
        return f"{row.name:28} {row.type:10} default {row.default!r}" + (
            "  (ignored by migrate-set-parameters)" if not row.applied_by_set else "")
    if field == "capabilities":
        return f"{row.name:26} since {row.since}" + ("  (unstable)" if row.unstable else "")
    if field == "postcopy_handlers":
        return (f"{row.name:15} {row.op:15} accepts {','.join(row.accepted)} -> {row.new}"
                + (f"  \"{row.error}\"" if row.error else ""))
    if field == "commands":
        pres = "; ".join(f"{p.id.split('.', 1)[1]}: \"{p.error}\"" for p in row.preconditions)
        return f"{row.name:26} {pres or '(no precondition)'}"
    if field == "unreachable":
        return f"{row.side:12} {row.status:16} {row.reason}"
    if field == "flags":
        return f"{row.name:24} {row.kind:12} {row.doc}"
    if field == "actors":
        return f"{row.name:22} {row.doc}"
    if field == "host_facts":
        return f"{row.name:24} default {row.default}   {row.doc}"
    if field == "qapi_errors":
        return f"{row[0]:18} \"{row[1]}\""
    return str(row)


def profile_text(profile: Profile) -> str:
    lines = [f"profile {profile.name}: {profile.title}"]
    if profile.extends:
        lines.append(f"extends {profile.extends}")
    for field, title in TABLES:
        rows = getattr(profile, field)
        lines.append(f"\n== {title} ({len(rows)})")
        lines += [_row_line(field, row) for row in rows]
    return "\n".join(lines)


def profile_summary(profile: Profile) -> dict[str, int]:
    return {
        "statuses": len(profile.statuses),
        "source rows": len(profile.rows("source")),
        "destination rows": len(profile.rows("destination")),
        "wildcard rows": sum(1 for t in profile.transitions if t.reads_state),
        "postcopy handlers": len(profile.postcopy_handlers),
        "capabilities": len(profile.capabilities),
        "capability rules": len(profile.cap_rules),
        "parameters": len(profile.parameters),
        "parameter rules": len(profile.param_rules),
        "commands": len(profile.commands),
        "MIG_CMD": len(profile.wire.commands),
        "MIG_RP_MSG": len(profile.wire.return_path),
    }
