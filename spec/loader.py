"""Resolve profile modules into complete :class:`Profile` objects.

A profile module defines upper-case tables.  A table is either a tuple (the
whole table) or, in a profile that ``EXTENDS`` another, a :class:`Patch`
against the parent's table.  Rows are keyed by ``id`` or ``name``; a patch
that removes or replaces a missing key, or adds an existing one, is an error:
silent drift between profiles is exactly what the spec must not allow.
"""
from __future__ import annotations

import dataclasses
import importlib
from functools import lru_cache
from typing import Any

from livemig.errors import SpecError
from livemig.spec.schema import CURRENT, Patch, Profile

#: profile name -> module (under livemig.spec.profiles)
PROFILE_MODULES = {
    "qemu-3.0": "qemu_3_0",
    "qemu-7.2": "qemu_7_2",
}

# module attribute -> Profile field
_TABLES = {
    "STATUSES": "statuses",
    "GROUPS": "groups",
    "TERMINAL": "terminal",
    "ACTORS": "actors",
    "FLAGS": "flags",
    "TRANSITIONS": "transitions",
    "UNREACHABLE": "unreachable",
    "POSTCOPY_STATES": "postcopy_states",
    "POSTCOPY_HANDLERS": "postcopy_handlers",
    "CAPABILITIES": "capabilities",
    "HOST_FACTS": "host_facts",
    "CAP_RULES": "cap_rules",
    "PARAMETERS": "parameters",
    "PARAM_RULES": "param_rules",
    "QAPI_ERRORS": "qapi_errors",
    "COMMANDS": "commands",
}
# optional in a base profile: tables or values with a default in Profile
_SCALARS = {"PARAM_ERROR_FORMAT": "param_error_format", "WIRE": "wire",
            "TARGET_PAGE_SIZE": "target_page_size", "ALIAS_MAP_RULES": "alias_map_rules",
            "MIGRATION_INFO": "migration_info",
            "ENGINE_UNIMPLEMENTED": "engine_unimplemented", "MACHINES": "machines",
            "OBJECT_TYPES": "object_types", "OBJECT_ERRORS": "object_errors",
            "MONITOR": "monitor", "BITMAP_SYNC": "bitmap_sync"}


def profile_names() -> tuple[str, ...]:
    return tuple(PROFILE_MODULES)


def _key(row: Any) -> str:
    if isinstance(row, str):
        return row
    if isinstance(row, tuple):  # (key, text) pairs
        return row[0]
    if hasattr(row, "id"):
        return row.id
    if hasattr(row, "status") and hasattr(row, "side"):  # Unreachable
        return f"{row.side}:{row.status}"
    return row.name


def _apply_patch(profile: str, table: str, base: tuple, patch: Patch) -> tuple:
    rows = list(base)
    keys = [_key(r) for r in rows]
    for key in patch.remove:
        if key not in keys:
            raise SpecError(f"profile {profile}: {table}: cannot remove {key!r}: "
                            f"not in the parent profile")
        index = keys.index(key)
        del rows[index], keys[index]
    for row in patch.replace:
        key = _key(row)
        if key not in keys:
            raise SpecError(f"profile {profile}: {table}: cannot replace {key!r}: "
                            f"not in the parent profile")
        rows[keys.index(key)] = row
    insert_at = len(rows)
    if patch.after is not None:
        if patch.after not in keys:
            raise SpecError(f"profile {profile}: {table}: 'after' names unknown {patch.after!r}")
        insert_at = keys.index(patch.after) + 1
    for row in patch.add:
        key = _key(row)
        if key in keys:
            raise SpecError(f"profile {profile}: {table}: cannot add {key!r}: already present")
        rows.insert(insert_at, row)
        keys.insert(insert_at, key)
        insert_at += 1
    return tuple(rows)


def _raw(name: str) -> dict[str, Any]:
    if name not in PROFILE_MODULES:
        raise SpecError(f"unknown profile {name!r}; known profiles: {', '.join(PROFILE_MODULES)}")
    module = importlib.import_module(f"livemig.spec.profiles.{PROFILE_MODULES[name]}")
    parent = getattr(module, "EXTENDS", None)
    fields: dict[str, Any] = _raw(parent) if parent else {}
    fields = dict(fields)
    fields.update(name=module.NAME, title=module.TITLE, extends=parent,
                  sources=tuple(getattr(module, "SOURCES", ())))
    if module.NAME != name:
        raise SpecError(f"profile module {module.__name__} declares NAME={module.NAME!r}, "
                        f"expected {name!r}")
    for attr, field in {**_TABLES, **_SCALARS}.items():
        if not hasattr(module, attr):
            if field not in fields and attr in _TABLES:
                raise SpecError(f"profile {name}: missing table {attr}")
            continue
        value = getattr(module, attr)
        if isinstance(value, Patch):
            if field not in fields:
                raise SpecError(f"profile {name}: {attr} is a Patch but nothing is extended")
            value = _apply_patch(name, attr, fields[field], value)
        fields[field] = value
    return fields


@lru_cache(maxsize=None)
def load_profile(name: str) -> Profile:
    """The complete profile ``name`` (e.g. ``"qemu-7.2"``).  Cached: profiles are immutable."""
    fields = _raw(name)
    statuses = {s.name for s in fields["statuses"]}
    fields["transitions"] = tuple(
        dataclasses.replace(t, old_is_state=t.old in statuses and t.old != CURRENT)
        for t in fields["transitions"]
    )
    try:
        return Profile(**fields)
    except TypeError as exc:  # a table missing from the base profile
        raise SpecError(f"profile {name}: {exc}") from exc


def load_all() -> tuple[Profile, ...]:
    return tuple(load_profile(n) for n in PROFILE_MODULES)
