"""What changed between two profiles, table by table.

``diff_profiles(a, b)`` returns, per table, the keys only in A (removed), only
in B (added), and the rows whose data differs (changed, with the differing
fields).  Order changes are reported for ordered tables whose key sequence
differs (capability order is QEMU's enum order; rule order decides which
error wins).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from livemig.spec.render import TABLES, row_key, to_data
from livemig.spec.schema import Profile


@dataclass
class TableDiff:
    table: str
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)
    changed: dict[str, dict[str, tuple[Any, Any]]] = field(default_factory=dict)
    reordered: bool = False

    @property
    def empty(self) -> bool:
        return not (self.removed or self.added or self.changed or self.reordered)


def _fields(row: Any, docs: bool) -> dict:
    data = to_data(row)
    data = data if isinstance(data, dict) else {"value": data}
    if not docs:
        data.pop("doc", None)
    return data


def diff_profiles(a: Profile, b: Profile, docs: bool = False) -> list[TableDiff]:
    """Per-table differences; ``docs`` also compares the prose ``doc`` fields."""
    out = []
    for name, _title in (*TABLES, ("wire_commands", "MIG_CMD"), ("wire_return_path", "MIG_RP"),
                         ("wire_ram_flags", "RAM flags"), ("wire_errors", "stream errors")):
        rows_a = getattr(a.wire, name[5:]) if name.startswith("wire_") else getattr(a, name)
        rows_b = getattr(b.wire, name[5:]) if name.startswith("wire_") else getattr(b, name)
        map_a = {row_key(r): r for r in rows_a}
        map_b = {row_key(r): r for r in rows_b}
        d = TableDiff(name)
        d.removed = [k for k in map_a if k not in map_b]
        d.added = [k for k in map_b if k not in map_a]
        for key in map_a:
            if key in map_b:
                fa, fb = _fields(map_a[key], docs), _fields(map_b[key], docs)
                delta = {f: (fa.get(f), fb.get(f)) for f in sorted(set(fa) | set(fb))
                         if fa.get(f) != fb.get(f)}
                if delta:
                    d.changed[key] = delta
        common_a = [k for k in map_a if k in map_b]
        common_b = [k for k in map_b if k in map_a]
        d.reordered = common_a != common_b
        out.append(d)
    return out


def diff_text(a: Profile, b: Profile, docs: bool = False) -> str:
    lines = [f"--- {a.name}", f"+++ {b.name}"]
    for d in diff_profiles(a, b, docs):
        if d.empty:
            continue
        lines.append(f"\n== {d.table}")
        lines += [f"- {k}" for k in d.removed]
        lines += [f"+ {k}" for k in d.added]
        for key, delta in d.changed.items():
            lines.append(f"~ {key}")
            for fname, (va, vb) in delta.items():
                lines.append(f"    {fname}: {va!r}\n    {'':{len(fname)}}  -> {vb!r}")
        if d.reordered:
            lines.append("~ (order of common rows changed)")
    if len(lines) == 2:
        lines.append("(no differences)")
    return "\n".join(lines)


def diff_data(a: Profile, b: Profile, docs: bool = False) -> dict:
    return {"a": a.name, "b": b.name, "tables": {
        d.table: {"removed": d.removed, "added": d.added, "reordered": d.reordered,
                  "changed": {k: {f: list(v) for f, v in delta.items()}
                              for k, delta in d.changed.items()}}
        for d in diff_profiles(a, b, docs) if not d.empty}}
