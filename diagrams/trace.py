"""Lay an observed run over a status diagram.

Job: turn the steps of a run into :class:`~livemig.diagrams.render.Marks`
(visited states and edges with counts, illegal steps in red) and a short
summary.  Reading the log and matching its steps to spec rows is not done
here: it is :mod:`livemig.core.tracelog`'s (the reader that
``livemig check-trace`` uses too), read leniently so that the picture shows
what it can: lines of neither kind (QMP greetings, command returns, other
events, malformed lines) are skipped and counted, NDJSON lines with
non-string fields are drawn as illegal steps, and only a file that mixes
the two kinds is refused.

Two input kinds (see :mod:`livemig.core.tracelog` for the matching rules):
livemig's NDJSON transition log, whose ``ok: true`` lines are the steps
(``ok: false`` lines are counted as failed CAS attempts), and QMP events
as QEMU emits them, whose steps are inferred from the ``MIGRATION``
statuses of the one side the caller names.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from livemig.core.tracelog import LogSource, Step, check_ndjson_line, infer_steps, read_log
from livemig.diagrams.model import Edge, Item, Model, Node, node_id
from livemig.diagrams.render import Marks
from livemig.spec import Profile

# Step is the core reader's; it is named here too because the overlay's
# callers (``livemig monitor``, the package's __init__) take it from here.
__all__ = ["Step", "Trace", "overlay_marks", "parse_trace", "summary"]


@dataclass
class Trace:
    """The steps of an observed run, per side, and what the file was."""

    format: str  # "ndjson" | "qmp"
    steps: list[Step] = field(default_factory=list)
    failed_cas: int = 0  # NDJSON lines with ok=false
    skipped: int = 0  # lines that were neither format

    def side(self, side: str) -> list[Step]:
        return [s for s in self.steps if s.side == side]

    @property
    def sides(self) -> list[str]:
        return sorted({s.side for s in self.steps})

    @property
    def illegal(self) -> list[Step]:
        return [s for s in self.steps if not s.legal]


def parse_trace(profile: Profile, source: LogSource, side: str = "source") -> Trace:
    """Read a trace file (or lines) of either kind, leniently, as steps.

    ``side`` names the side of a QMP event log (QEMU's events do not say
    which end they come from); NDJSON lines carry their side.  Raises
    :class:`~livemig.core.tracelog.TraceInputError` (a ``ValueError``) for a
    file that mixes the two kinds or cannot be read.
    """
    log = read_log(source, strict=False)
    # MIGRATION_PASS events are neither kind for the picture: skipped, as before.
    trace = Trace("qmp" if log.format == "qmp" else "ndjson",
                  skipped=log.skipped + log.passes)
    if log.format == "qmp":
        trace.steps = infer_steps(profile, side, [(r.line, r.new, r.t) for r in log.records])
        return trace
    for record in log.records:
        if not record.ok:
            trace.failed_cas += 1
        else:
            assert record.raw is not None  # NDJSON records keep their line
            trace.steps.append(check_ndjson_line(profile, record.raw, record.line))
    return trace


def overlay_marks(model: Model, profile: Profile, steps: list[Step]) -> Marks:
    """Marks that highlight the visited states and edges of ``steps`` (one side).

    Counts: a state counts each time it is entered (the initial state once
    for the start); an edge counts each step it explains.  A step explained
    by a group or ``current`` row also draws the link from the actual state to
    the wildcard node.  Illegal steps become red edges from the state before
    to the state after.  Everything not visited is greyed.
    """
    marks = Marks(fade_unmarked=True)
    node_counts: Counter[str] = Counter()
    edge_counts: Counter[tuple[str, str, str]] = Counter()
    link_counts: Counter[tuple[str, str]] = Counter()
    illegal: Counter[tuple[str, str]] = Counter()
    reasons: dict[tuple[str, str], list[str]] = {}
    extra_nodes: dict[str, Node] = {}

    def status_node(name: str) -> str:
        nid = model.status_nodes.get(name)
        if nid is None:
            nid = node_id("st", name)
            extra_nodes.setdefault(nid, Node(nid, name, "status",
                                             tooltip=f"{name}: not drawn on this side"))
        return nid

    if steps:
        node_counts[status_node(steps[0].old)] += 1
    for step in steps:
        if step.kind == "illegal":
            illegal[(step.old, step.new)] += 1
            if step.reason not in reasons.setdefault((step.old, step.new), []):
                reasons[(step.old, step.new)].append(step.reason)
            node_counts[status_node(step.new)] += 1
            continue
        row = profile.transition(step.rows[0])
        keys = model.row_edges.get(row.id, [])
        old_node = status_node(step.old)
        if step.kind == "event":
            key = next((k for k in keys if k[0] == old_node), keys[0] if keys else None)
        else:
            new_node = status_node(step.new)
            node_counts[new_node] += 1
            key = next((k for k in keys if k[1] == new_node), None)
        if key is None:
            continue
        edge_counts[key] += 1
        marks.items[(key, row.id)] = "visited"
        if key[0] != old_node:  # through a group/current node: show where it came from
            link_counts[(old_node, key[0])] += 1
            marks.nodes[key[0]] = "visited"
    for nid, count in node_counts.items():
        marks.nodes[nid] = "illegal" if nid in extra_nodes else "visited"
        marks.node_counts[nid] = count
    for key, count in edge_counts.items():
        marks.edges[key] = "visited"
        marks.edge_counts[key] = count
    for (tail, head), count in sorted(link_counts.items()):
        if (tail, head) in model.links:  # a current row: the layout link is drawn
            marks.links[(tail, head)] = count
        else:  # a group row: an extra edge into the "any of" node
            marks.extra_edges.append((Edge(tail, head, "group"), "visited", count))
    for (old, new), count in sorted(illegal.items()):
        item = Item("illegal", "illegal step", "; ".join(reasons[(old, new)]))
        marks.extra_edges.append((Edge(status_node(old), status_node(new), "exact", [item]),
                                  "illegal", count))
        marks.nodes[status_node(new)] = "illegal"
    marks.extra_nodes = [(n, "illegal") for n in extra_nodes.values()]
    return marks


def summary(trace: Trace) -> list[str]:
    """Human lines: steps per side, illegal steps with their reasons."""
    out = []
    for side in trace.sides:
        steps = trace.side(side)
        bad = [s for s in steps if not s.legal]
        out.append(f"{side}: {len(steps)} steps ({trace.format}), "
                   f"{len(bad)} illegal")
        for s in bad:
            out.append(f"  line {s.line}: {s.old} -> {s.new}: {s.reason}")
    if trace.failed_cas:
        out.append(f"{trace.failed_cas} failed CAS attempts (ok=false) not drawn")
    return out
