"""``query-qmp-schema`` and ``query-commands`` built from the spec.

:func:`schema_info` renders the profile's QAPI table (:mod:`livemig.spec.qapi`)
as QEMU 7.2 answers introspection: a list of SchemaInfo objects in which
commands and events keep their names, builtins keep theirs, arrays are
``[ELEMENT]`` and every other type is masked to a number (QEMU hides type
names so that clients cannot depend on them; the numbers differ between
builds).  :func:`shape` resolves one command or event of any such answer down
to builtins, which is how two answers with different masks are compared.
"""
from __future__ import annotations

from typing import Any, Optional

from livemig.spec.qapi import (
    BUILTINS, JSON_TYPES, QAlternate, QEnum, QObject, element_of, qapi_schema,
)

__all__ = ["schema_info", "command_names", "shape", "same_shape"]


class _Renderer:
    def __init__(self, types: dict[str, Any]) -> None:
        self.types = types
        self.masks: dict[str, str] = {}
        self.entries: dict[str, dict] = {}

    def use(self, type_expr: str) -> str:
        """The introspection name of ``type_expr``, emitting its entry once."""
        element = element_of(type_expr)
        if element is not None:
            name = f"[{self.use(element)}]"
            if name not in self.entries:
                self.entries[name] = {"name": name, "meta-type": "array",
                                      "element-type": name[1:-1]}
            return name
        if type_expr in BUILTINS:
            if type_expr not in self.entries:
                self.entries[type_expr] = {"name": type_expr, "meta-type": "builtin",
                                           "json-type": JSON_TYPES[type_expr]}
            return type_expr
        if type_expr in self.masks:
            return self.masks[type_expr]
        masked = self.masks[type_expr] = str(len(self.masks))
        self.entries[masked] = {}  # reserved before the members: a type may recur
        self.entries[masked] = self._entry(masked, self.types[type_expr])
        return masked

    def _entry(self, masked: str, qtype: Any) -> dict:
        if isinstance(qtype, QEnum):
            features = dict(qtype.member_features)
            members = []
            for value in qtype.values:
                member: dict[str, Any] = {"name": value}
                if features.get(value):
                    member["features"] = list(features[value])
                members.append(member)
            return {"name": masked, "meta-type": "enum", "members": members,
                    "values": list(qtype.values)}
        if isinstance(qtype, QAlternate):
            return {"name": masked, "meta-type": "alternate",
                    "members": [{"type": self.use(t)} for t in qtype.types]}
        assert isinstance(qtype, QObject), qtype
        members = []
        for m in qtype.members:
            member = {"name": m.name, "type": self.use(m.type)}
            if m.optional:
                member["default"] = None
            if m.features:
                member["features"] = list(m.features)
            members.append(member)
        entry: dict[str, Any] = {"name": masked, "meta-type": "object", "members": members}
        if qtype.tag:
            entry["tag"] = qtype.tag
            entry["variants"] = [{"case": case, "type": self.use(t)}
                                 for case, t in qtype.variants]
        return entry


def schema_info(profile: Any) -> tuple[list[dict], dict[str, str]]:
    """(the SchemaInfo list, real type name -> masked name) of ``profile``."""
    types, commands, events = qapi_schema(profile)
    r = _Renderer(types)
    out: list[dict] = []
    for c in commands:
        entry: dict[str, Any] = {"name": c.name, "meta-type": "command",
                                 "arg-type": r.use(c.arg_type or "q_empty"),
                                 "ret-type": r.use(c.ret_type)}
        if c.allow_oob:
            entry["allow-oob"] = True
        if c.features:
            entry["features"] = list(c.features)
        out.append(entry)
    for e in events:
        out.append({"name": e.name, "meta-type": "event", "arg-type": r.use(e.arg_type)})
    return out + list(r.entries.values()), dict(r.masks)


def command_names(profile: Any) -> list[str]:
    """query-commands' names: every command of the schema."""
    return [c.name for c in qapi_schema(profile)[1]]


def shape(entries: list[dict], name: str, partial: frozenset[str] = frozenset()) -> Any:
    """The command, event or type ``name`` of a SchemaInfo list, resolved to
    builtins: objects as ``{"members": {...}, "tag", "variants": {...}}``,
    enums as ``("enum", values)``.  Types named in ``partial`` carry
    ``"partial": True`` (for :func:`same_shape`)."""
    by_name = {e["name"]: e for e in entries}

    def walk(n: str, depth: int) -> Any:
        if depth > 40:
            raise ValueError(f"schema: type {n!r} nests too deep")
        e = by_name[n]
        meta = e["meta-type"]
        if meta == "builtin":
            return n
        if meta == "array":
            return ["array", walk(e["element-type"], depth + 1)]
        if meta == "enum":
            features = {m["name"]: tuple(m.get("features", ())) for m in e.get("members", [])}
            return {"enum": list(e["values"]), "features": features, "partial": n in partial}
        if meta == "alternate":
            return {"alternate": [walk(m["type"], depth + 1) for m in e["members"]]}
        if meta in ("command", "event"):
            out = {"arg": walk(e["arg-type"], depth + 1)}
            if meta == "command":
                out.update(ret=walk(e["ret-type"], depth + 1),
                           oob=bool(e.get("allow-oob")), features=e.get("features", []))
            return out
        members = {m["name"]: (walk(m["type"], depth + 1), "default" in m,
                               tuple(m.get("features", ()))) for m in e["members"]}
        return {"members": members, "order": [m["name"] for m in e["members"]],
                "tag": e.get("tag"),
                "variants": {v["case"]: walk(v["type"], depth + 1)
                             for v in e.get("variants", [])},
                "partial": n in partial}

    return walk(name, 0)


def same_shape(ours: Any, theirs: Any, where: str = "") -> Optional[str]:
    """None when ``ours`` is ``theirs`` (or, for a partial type, a part of
    it); else the first difference, named by its path."""
    if isinstance(ours, dict) and "members" in ours and isinstance(theirs, dict):
        names = list(ours["members"])
        if not ours["partial"]:
            if ours["order"] != theirs.get("order"):
                return f"{where}: members {ours['order']} != {theirs.get('order')}"
        for m in names:
            if m not in theirs["members"]:
                return f"{where}: member {m!r} is not QEMU's"
            diff = same_shape(ours["members"][m], theirs["members"][m], f"{where}.{m}")
            if diff:
                return diff
        if ours["tag"] != theirs["tag"]:
            return f"{where}: tag {ours['tag']!r} != {theirs['tag']!r}"
        cases = set(ours["variants"])
        if not ours["partial"] and cases != set(theirs["variants"]):
            return f"{where}: variants {sorted(cases)} != {sorted(theirs['variants'])}"
        for case in ours["variants"]:
            if case not in theirs["variants"]:
                return f"{where}: variant {case!r} is not QEMU's"
            diff = same_shape(ours["variants"][case], theirs["variants"][case], f"{where}/{case}")
            if diff:
                return diff
        return None
    if isinstance(ours, dict) and "enum" in ours and isinstance(theirs, dict):
        if ours["partial"]:
            extra = set(ours["enum"]) - set(theirs.get("enum", ()))
            return f"{where}: values {sorted(extra)} are not QEMU's" if extra else None
        if ours["enum"] != theirs.get("enum") or ours["features"] != theirs.get("features"):
            return f"{where}: enum {ours['enum']} != {theirs.get('enum')}"
        return None
    if isinstance(ours, dict) and isinstance(theirs, dict):
        if set(ours) != set(theirs):
            return f"{where}: keys {sorted(ours)} != {sorted(theirs)}"
        for k in ours:
            diff = same_shape(ours[k], theirs[k], f"{where}.{k}")
            if diff:
                return diff
        return None
    if isinstance(ours, (list, tuple)) and isinstance(theirs, (list, tuple)):
        if len(ours) != len(theirs):
            return f"{where}: {ours!r} != {theirs!r}"
        for i, (a, b) in enumerate(zip(ours, theirs)):
            diff = same_shape(a, b, f"{where}[{i}]")
            if diff:
                return diff
        return None
    return None if ours == theirs else f"{where}: {ours!r} != {theirs!r}"
