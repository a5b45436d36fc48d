"""What changed between two profiles, drawn per machine.

The two models of a machine are merged by node id and edge key (tail, head,
kind).  A spec row is an edge label line, compared by row id: a row only in
the newer profile is *added*, only in the older *removed*, in both with a
different trigger, actor, guard, ``within`` ... *changed* (the line says what
it was).  A row whose OLD or NEW changed is both: removed from its old edge
and added to its new one.  Unchanged parts are drawn in grey so the change
stands out; the layout is the newer profile's, with removed states and edges
added to it.  Group membership changes are listed in the title.
"""
from __future__ import annotations

from typing import Optional

from livemig.diagrams.model import Edge, Item, Model, Node, build_model
from livemig.diagrams.render import Marks
from livemig.spec import Profile


def _what_changed(a: Item, b: Item) -> str:
    if a.text != b.text:
        return f"was {a.text}"
    if a.sub != b.sub:
        return f"was {a.sub}"
    old_lines = a.detail.split("\n")
    new_lines = b.detail.split("\n")
    for i, line in enumerate(old_lines):
        if i >= len(new_lines) or new_lines[i] != line:
            return "was " + (line if len(line) <= 70 else line[:67] + "...")
    return "changed"


def _group_changes(a: Profile, b: Profile) -> list[str]:
    out = []
    old = {g.name: g.members for g in a.groups}
    new = {g.name: g.members for g in b.groups}
    for name, members in new.items():
        if name not in old:
            out.append(f"group {name} added: {{{', '.join(members)}}}")
            continue
        plus = [m for m in members if m not in old[name]]
        minus = [m for m in old[name] if m not in members]
        if plus or minus:
            out.append(f"group {name}: " + ", ".join([f"+{m}" for m in plus] + [f"−{m}" for m in minus]))
    for name in old:
        if name not in new:
            out.append(f"group {name} removed")
    if tuple(a.terminal) != tuple(b.terminal):
        out.append(f"terminal: {', '.join(a.terminal)} → {', '.join(b.terminal)}")
    return out


def diff_model(a: Profile, b: Profile, machine: str) -> tuple[Model, Marks]:
    """The merged model of ``machine`` in profiles ``a`` (older) and ``b`` (newer), and its marks."""
    ma, mb = build_model(a, machine), build_model(b, machine)
    merged = Model(b.name, machine, f"{a.name} → {b.name}: {mb.title.split(': ', 1)[1]}")
    merged.rankdir = mb.rankdir
    merged.clusters = dict(mb.clusters)
    merged.links = set(mb.links) | set(ma.links)
    merged.main_links = set(mb.main_links)
    merged.chain = list(mb.chain)
    merged.status_nodes = {**ma.status_nodes, **mb.status_nodes}
    marks = Marks(fade_unmarked=True)
    marks.legend = [("added", f"only in {b.name}"), ("removed", f"only in {a.name}"),
                    ("changed", "changed (the label says what it was)")]

    for nid, node in mb.nodes.items():
        merged.nodes[nid] = node
        old = ma.nodes.get(nid)
        if old is None:
            if nid not in ma.universe:
                marks.nodes[nid] = "added"
            elif node.sub:  # declared before, but its own annotations (rules) are new
                marks.nodes[nid] = "changed"
        elif old.fingerprint != node.fingerprint or old.sub != node.sub:
            marks.nodes[nid] = "changed"
    for nid, node in ma.nodes.items():
        if nid not in mb.nodes:
            cluster = node.cluster if node.cluster in merged.clusters else None
            merged.nodes[nid] = Node(node.id, node.label, node.kind, node.sub, cluster,
                                     node.tooltip, node.terminal, node.initial, node.fingerprint)
            if nid not in mb.universe:
                marks.nodes[nid] = "removed"

    counts = {"added": 0, "removed": 0, "changed": 0}
    for key in list(mb.edges) + [k for k in ma.edges if k not in mb.edges]:
        ea: Optional[Edge] = ma.edges.get(key)
        eb: Optional[Edge] = mb.edges.get(key)
        base = eb or ea
        assert base is not None
        edge = Edge(base.tail, base.head, base.kind, main=bool(eb and eb.main))
        old_items = {i.id: i for i in (ea.items if ea else [])}
        new_items = {i.id: i for i in (eb.items if eb else [])}
        item_marks = []
        for item in (eb.items if eb else []):
            edge.items.append(item)
            if item.id not in old_items:
                mark = "added"
            elif old_items[item.id].fingerprint != item.fingerprint:
                mark = "changed"
                marks.item_notes[(key, item.id)] = _what_changed(old_items[item.id], item)
            else:
                mark = None
            item_marks.append(mark)
            if mark:
                marks.items[(key, item.id)] = mark
        for item in (ea.items if ea else []):
            if item.id not in new_items:
                edge.items.append(item)
                marks.items[(key, item.id)] = "removed"
                item_marks.append("removed")
        merged.edges[key] = edge
        for m in item_marks:
            if m:
                counts[m] += 1
        if item_marks and all(m == "added" for m in item_marks) or (eb and not ea):
            marks.edges[key] = "added"
        elif item_marks and all(m == "removed" for m in item_marks) or (ea and not eb):
            marks.edges[key] = "removed"
        elif any(item_marks):
            marks.edges[key] = "changed"

    notes_a, notes_b = set(ma.notes), set(mb.notes)
    merged.notes = [n for n in mb.notes] + [f"(was) {n}" for n in ma.notes if n not in notes_b]
    marks.caption = [f"rows/rules: +{counts['added']} added, −{counts['removed']} removed, "
                     f"~{counts['changed']} changed"]
    if machine in ("source", "destination"):
        marks.caption += _group_changes(a, b)
        gone = [n for n in ma.status_nodes if n not in mb.status_nodes]
        new = [n for n in mb.status_nodes if n not in ma.status_nodes]
        if new or gone:
            marks.caption.append("states: " + ", ".join([f"+{n}" for n in new] + [f"−{n}" for n in gone]))
    del notes_a
    return merged, marks


def has_changes(marks: Marks) -> bool:
    """True when the diff marked anything."""
    return any(m != "faded" for m in marks.nodes.values()) or bool(marks.edges) or bool(marks.items)
