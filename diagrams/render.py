"""Render a drawing model (``livemig.diagrams.model``) as a ``graphviz.Digraph``.

Looks are decided here and only here: shapes, colours, line styles, labels.
A :class:`Marks` object (built by ``trace`` for an overlay or by ``diff`` for a
profile comparison) recolours nodes, edges and single label lines, and may add
edges that are not in the spec (an observed step, an illegal step).

Legend of the plain diagrams:

* rounded box: a status; double border: terminal; bold border: initial;
* solid black edge: a row with one exact OLD state; heavy: the main path
  (shortest way from the initial state to the first terminal state);
* dashed blue edge from "any of <group>": a row whose OLD is a group;
* dashed purple edge from "current ∈ {...}": a row passing the state it read
  earlier (QEMU defeats its own CAS there);
* dashed grey: a plain store (no CAS, no event);
* dotted teal self-loop: an event-only row (an event, no state change).
"""
from __future__ import annotations

import html
import textwrap
from dataclasses import dataclass, field
from typing import Optional

import graphviz

from livemig.diagrams.model import Edge, Item, Model, Node, build_model
from livemig.spec import Profile

FONT = "Helvetica"

#: base colours of edge kinds
KIND_COLOUR = {
    "exact": "#222222",
    "group": "#1f5fa8",
    "current": "#7b3fa0",
    "store": "#888888",
    "event": "#00838f",
    "conflict": "#c62828",
    "requires": "#1f5fa8",
    "handler": "#222222",
    "error": "#c62828",
}
KIND_STYLE = {
    "exact": "solid",
    "group": "dashed",
    "current": "dashed",
    "store": "dashed",
    "event": "dotted",
    "conflict": "solid",
    "requires": "solid",
    "handler": "solid",
    "error": "dashed",
}
#: mark -> colour (overlay and diff)
MARK_COLOUR = {
    "visited": "#1a7f37",
    "illegal": "#d01010",
    "added": "#1a7f37",
    "removed": "#d01010",
    "changed": "#d97706",
    "faded": "#b8b8b8",
}
MARK_FILL = {
    "visited": "#d8f5df",
    "illegal": "#ffd6d6",
    "added": "#d8f5df",
    "removed": "#ffd6d6",
    "changed": "#ffedd1",
    "faded": "#ffffff",
}


@dataclass
class Marks:
    """Highlights laid over a model: by node id, edge key, or (edge key, item id)."""

    nodes: dict[str, str] = field(default_factory=dict)
    node_counts: dict[str, int] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], str] = field(default_factory=dict)
    edge_counts: dict[tuple[str, str, str], int] = field(default_factory=dict)
    items: dict[tuple[tuple[str, str, str], str], str] = field(default_factory=dict)
    item_notes: dict[tuple[tuple[str, str, str], str], str] = field(default_factory=dict)
    #: edges not in the spec model: (edge, mark, count)
    extra_edges: list[tuple[Edge, str, int]] = field(default_factory=list)
    #: layout links of the model (state -> wildcard node) to draw, with a count
    links: dict[tuple[str, str], int] = field(default_factory=dict)
    #: extra nodes (e.g. a state the trace reached but the side cannot)
    extra_nodes: list[tuple[Node, str]] = field(default_factory=list)
    #: draw everything not marked in grey
    fade_unmarked: bool = False
    #: lines for the title block
    caption: list[str] = field(default_factory=list)
    #: (mark, meaning) pairs for the legend
    legend: list[tuple[str, str]] = field(default_factory=list)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _wrap(text: str, width: int = 34) -> list[str]:
    out: list[str] = []
    for line in text.split("\n"):
        out.extend(textwrap.wrap(line, width, break_on_hyphens=False) or [""])
    return out


def _small(text: str, colour: str = "#555555", size: int = 9) -> str:
    lines = "<BR/>".join(_e(t) for t in _wrap(text))
    return f'<FONT POINT-SIZE="{size}" COLOR="{colour}">{lines}</FONT>'


def _node_label(node: Node, mark: Optional[str], count: Optional[int]) -> str:
    colour = MARK_COLOUR.get(mark or "", "#000000") if mark else "#000000"
    if node.kind in ("status", "pstate", "cap"):
        head = f'<B>{_e(node.label)}</B>'
    else:
        head = _e(node.label)
    if mark == "faded":
        head = f'<FONT COLOR="{colour}">{head}</FONT>'
    parts = [head]
    if count:
        parts.append(f'<FONT POINT-SIZE="10" COLOR="{MARK_COLOUR["visited"] if mark != "illegal" else MARK_COLOUR["illegal"]}">×{count}</FONT>')
    if node.sub:
        parts.append(_small(node.sub, colour if mark == "faded" else "#555555", size=8))
    return "<" + "<BR/>".join(parts) + ">"


def _edge_label(edge: Edge, marks: Marks, count: Optional[int],
                edge_mark: Optional[str] = None, guards: str = "auto") -> str:
    rows = []
    seen: dict[tuple[str, str], int] = {}
    for item in edge.items:
        seen[(item.text, item.sub)] = seen.get((item.text, item.sub), 0) + 1
    for item in edge.items:
        mark = marks.items.get((edge.key, item.id))
        if mark is None and edge_mark in ("added", "removed", "illegal"):
            mark = edge_mark
        elif mark is None and (marks.fade_unmarked or edge_mark == "faded"):
            mark = "faded"
        colour = MARK_COLOUR.get(mark, "#000000") if mark else "#000000"
        sub_colour = colour if mark else "#666666"
        text = _e(item.text)
        if mark == "removed":
            text = "− " + text
        elif mark == "added":
            text = "+ " + text
        elif mark == "changed":
            text = "~ " + text
        line = f'<FONT COLOR="{colour}">{text}</FONT>' if item.text else ""
        sub = item.sub
        if sub:
            small = _small(sub, sub_colour, 8)
            line = f"{line}<BR/>{small}" if line else small
        note = marks.item_notes.get((edge.key, item.id))
        if note:
            small = _small(note, colour, 8)
            line = f"{line}<BR/>{small}" if line else small
        # rows with the same trigger and actor on one edge differ by their guard: show it
        if item.guard and (guards == "all" or (guards == "auto" and seen[(item.text, item.sub)] > 1)):
            small = _small(f"[{item.guard}]", colour if mark else "#7a5c00", 8)
            line = f"{line}<BR/>{small}" if line else small
        if line:
            rows.append(line)
    if count:
        colour = MARK_COLOUR["illegal"] if edge_mark == "illegal" else MARK_COLOUR["visited"]
        rows.append(f'<FONT POINT-SIZE="11" COLOR="{colour}"><B>×{count}</B></FONT>')
    if not rows:
        return ""
    return "<" + "<BR/>".join(rows) + ">"


def _node_attrs(node: Node, mark: Optional[str]) -> dict[str, str]:
    attrs: dict[str, str] = {"tooltip": node.tooltip or node.label}
    if node.kind in ("status", "pstate"):
        attrs.update(shape="box", style="rounded,filled", fillcolor="#ffffff",
                     margin="0.12,0.05")
        if node.terminal:
            attrs.update(peripheries="2", fillcolor="#eeeeee")
        if node.initial:
            attrs["penwidth"] = "2.2"
    elif node.kind == "cap":
        attrs.update(shape="box", style="rounded,filled", fillcolor="#ffffff")
    elif node.kind == "group":
        attrs.update(shape="box", style="dashed,rounded", color=KIND_COLOUR["group"],
                     fontcolor=KIND_COLOUR["group"], fontsize="10", margin="0.06,0.03")
    elif node.kind == "current":
        attrs.update(shape="box", style="dashed,rounded", color=KIND_COLOUR["current"],
                     fontcolor=KIND_COLOUR["current"], fontsize="10", margin="0.06,0.03")
    else:  # any / note
        attrs.update(shape="box", style="dashed,rounded", color="#777777",
                     fontcolor="#444444", fontsize="10", margin="0.06,0.03")
    if mark:
        colour = MARK_COLOUR[mark]
        attrs["color"] = colour
        if "filled" in attrs.get("style", ""):
            attrs["fillcolor"] = MARK_FILL[mark]
        if mark == "faded":
            attrs["fontcolor"] = colour
        elif node.kind in ("status", "pstate", "cap"):
            attrs["penwidth"] = "2.5"
        else:
            attrs["penwidth"] = "1.8"
    return attrs


def _edge_attrs(edge: Edge, mark: Optional[str], model: Model) -> dict[str, str]:
    colour = KIND_COLOUR[edge.kind]
    attrs = {"color": colour, "style": KIND_STYLE[edge.kind], "fontsize": "10",
             "tooltip": "\n\n".join(i.detail for i in edge.items) or edge.kind}
    if edge.kind == "conflict":
        attrs["dir"] = "none"
    if edge.kind == "requires":
        attrs["arrowhead"] = "vee"
    if edge.main:
        attrs.update(penwidth="2.4", weight="8")
    elif edge.kind in ("group", "current", "store"):
        attrs["weight"] = "1"
    if mark:
        attrs["color"] = MARK_COLOUR[mark]
        if mark == "faded":
            attrs["penwidth"] = "1"
        else:
            attrs["penwidth"] = "3"
            if mark in ("illegal", "removed", "added", "changed"):
                attrs["fontcolor"] = MARK_COLOUR[mark]
    return attrs


def to_digraph(model: Model, marks: Optional[Marks] = None, guards: str = "auto") -> graphviz.Digraph:
    """The Graphviz graph of a model, with optional overlay/diff marks.

    ``guards``: "auto" writes a row's guard under its label only where rows
    on one edge would otherwise read the same; "all" always; "off" never
    (the SVG tooltips always carry them).
    """
    marks = marks or Marks()
    name = f"{model.profile}-{model.machine}"
    g = graphviz.Digraph(name=name, engine="dot")
    title_html = f'<FONT POINT-SIZE="16"><B>{_e(model.title)}</B></FONT><BR ALIGN="LEFT"/>'
    for line in marks.caption:
        title_html += f'<FONT POINT-SIZE="11">{_e(line)}</FONT><BR ALIGN="LEFT"/>'
    title_html += _legend_html(model, marks)
    for note in model.notes:
        for line in _wrap(note, 110):
            title_html += f'<FONT POINT-SIZE="10" COLOR="#444444">{_e(line)}</FONT><BR ALIGN="LEFT"/>'
    g.attr(rankdir=model.rankdir, fontname=FONT, labelloc="t", labeljust="l",
           label=f"<{title_html}>", nodesep="0.35", ranksep="0.45",
           pad="0.25", bgcolor="white", tooltip=model.title)
    g.attr("node", fontname=FONT, fontsize="12")
    g.attr("edge", fontname=FONT, fontsize="10", arrowsize="0.8")

    def mark_of_node(node: Node) -> Optional[str]:
        m = marks.nodes.get(node.id)
        if m is None and marks.fade_unmarked:
            return "faded"
        return m

    all_nodes = list(model.nodes.values()) + [n for n, _ in marks.extra_nodes]
    extra_marks = {n.id: m for n, m in marks.extra_nodes}

    # clusters, nested: emit each cluster with its nodes and child clusters
    children: dict[Optional[str], list[str]] = {}
    for cid, cl in model.clusters.items():
        children.setdefault(cl.parent, []).append(cid)

    def emit_nodes(graph: graphviz.Digraph, cluster: Optional[str]) -> None:
        for node in all_nodes:
            if node.cluster == cluster:
                mark = extra_marks.get(node.id) or mark_of_node(node)
                graph.node(node.id, _node_label(node, mark, marks.node_counts.get(node.id)),
                           **_node_attrs(node, mark))

    def emit_cluster(graph: graphviz.Digraph, cid: str) -> None:
        cl = model.clusters[cid]
        with graph.subgraph(name=cid) as sub:
            sub.attr(label=f"<<I>{_e(cl.label)}</I>>", tooltip=cl.tooltip or cl.label,
                     style="rounded,filled", fillcolor=_cluster_fill(model, cid),
                     color="#b0b8c8", fontcolor="#38465a", fontsize="11", labeljust="l",
                     margin="10")
            emit_nodes(sub, cid)
            for child in children.get(cid, []):
                emit_cluster(sub, child)

    emit_nodes(g, None)
    for cid in children.get(None, []):
        emit_cluster(g, cid)

    for edge in model.edges.values():
        mark = marks.edges.get(edge.key)
        if mark is None and marks.fade_unmarked:
            mark = "faded"
        count = marks.edge_counts.get(edge.key)
        g.edge(edge.tail, edge.head, _edge_label(edge, marks, count, mark, guards),
               **_edge_attrs(edge, mark, model))
    for edge, mark, count in marks.extra_edges:
        attrs = _edge_attrs(edge, mark, model)
        attrs["constraint"] = "false"
        g.edge(edge.tail, edge.head,
               _edge_label(edge, marks, count, mark, guards) if (edge.items or count) else "",
               **attrs)

    for tail, head in sorted(model.links):
        main = (tail, head) in model.main_links
        tip = "the state this wildcard row reads"
        if (tail, head) in marks.links:
            colour = MARK_COLOUR["visited"]
            count = marks.links[(tail, head)]
            g.edge(tail, head, f'<<FONT COLOR="{colour}"><B>×{count}</B></FONT>>', color=colour,
                   penwidth="3", arrowhead="none", style="dashed", weight="8" if main else "1",
                   tooltip=tip)
        elif main:
            colour = MARK_COLOUR["faded"] if marks.fade_unmarked else KIND_COLOUR["current"]
            g.edge(tail, head, color=colour, penwidth="2.4", arrowhead="none",
                   style="dashed", weight="8", tooltip=tip)
        else:
            g.edge(tail, head, style="invis", weight="1")
    for tail, head in zip(model.chain, model.chain[1:]):
        g.edge(tail, head, style="invis", weight="10")

    return g


#: legend entries per machine: (edge kind or None for the main path, text)
_KIND_LEGEND = {
    "status": [("main", "main path"), ("exact", "CAS from one state"),
               ("group", "from any state of a group"),
               ("current", "from the state read earlier (current)"),
               ("store", "plain store"), ("event", "event only, no state change")],
    "postcopy": [("handler", "handler moves the state"),
                 ("error", "xchg, then error: the state has already moved")],
    "caps": [("conflict", "both on: refused"), ("requires", "requires")],
}


def _legend_html(model: Model, marks: Marks) -> str:
    kind = "status" if model.machine in ("source", "destination") else model.machine
    parts = []
    for k, text in _KIND_LEGEND.get(kind, []):
        if k == "main":
            glyph, colour = "━━━", KIND_COLOUR["exact"]
        else:
            glyph = {"solid": "───", "dashed": "╌╌╌", "dotted": "┈┈┈"}[KIND_STYLE[k]]
            colour = KIND_COLOUR[k]
        parts.append(f'<FONT COLOR="{colour}" POINT-SIZE="13"><B>{glyph}</B></FONT> {_e(text)}')
    if kind == "status":
        parts.append("double border: terminal")
    for m, text in marks.legend:
        parts.append(f'<FONT COLOR="{MARK_COLOUR[m]}"><B>■</B></FONT> {_e(text)}')
    if not parts:
        return ""
    return f'<FONT POINT-SIZE="10">{"   ".join(parts)}</FONT><BR ALIGN="LEFT"/>'


def _cluster_fill(model: Model, cid: str) -> str:
    depth = 0
    parent = model.clusters[cid].parent
    while parent:
        depth += 1
        parent = model.clusters[parent].parent
    return ("#f3f6fb", "#e6edf7", "#d9e3f2", "#ccd9ed")[min(depth, 3)]


def machine_graph(profile: Profile, machine: str) -> graphviz.Digraph:
    """The plain diagram of one machine of a profile."""
    return to_digraph(build_model(profile, machine))
