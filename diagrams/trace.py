"""Read an observed run and lay it over a status diagram.

Two input formats, told apart line by line:

* livemig's NDJSON transition log (written by core's CAS cells)::

      {"t": 0.12, "side": "source", "id": "src.thread.active",
       "old": "setup", "new": "active", "ok": true}

  Only ``ok: true`` lines are state changes (``ok: false`` is a CAS that lost
  and changed nothing).  A line is illegal when its id is not a row of that
  side, or the row does not go from ``old`` to ``new``.

* QMP events as QEMU emits them, one JSON object a line::

      {"event": "MIGRATION", "data": {"status": "active"},
       "timestamp": {"seconds": 1700000000, "microseconds": 1}}

  Events carry only the new status, so the edges are inferred: starting from
  the initial status, each event is matched to a row of the side going from
  the current status to the event's status (a group or ``current`` row
  counts when it can fire from the current status, see
  ``Profile.sources_of``).  An event-only row (no state change) whose
  emitted status is the event's is a legal "self" step.  A plain store row
  (no event, e.g. ``migrate_init``'s reset before the next ``migrate``) may
  silently precede a matched row.  An event that nothing explains is an
  illegal step; the run continues from the event's status.

Other lines (QMP greetings, command returns, other events, blank lines) are
skipped.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

from livemig.diagrams.model import Edge, Item, Model, Node, node_id
from livemig.diagrams.render import Marks
from livemig.spec import CURRENT, Profile, Transition


@dataclass(frozen=True)
class Step:
    """One observed step of one side.

    ``rows`` are the spec rows that explain it (several when a QMP event can
    be explained more than one way; empty when illegal).  ``kind``: "change"
    (the state changed), "event" (event-only, no change), "store" (a silent
    plain store inferred between two events), "illegal".
    """

    side: str
    old: str
    new: str
    rows: tuple[str, ...]
    kind: str
    line: int
    t: Optional[float] = None
    reason: str = ""

    @property
    def legal(self) -> bool:
        return self.kind != "illegal"


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


def _initial(profile: Profile) -> str:
    return min(profile.statuses, key=lambda s: s.value).name


def _row_allows(profile: Profile, row: Transition, old: str, new: str) -> bool:
    if old not in profile.sources_of(row):
        return False
    if row.event_only:
        return new in (old, row.emits)
    return row.new == new


def check_ndjson_line(profile: Profile, obj: dict, line: int) -> Step:
    """One ``ok: true`` NDJSON line as a step, legal or not."""
    side, rid, old, new = obj.get("side"), obj.get("id"), obj.get("old"), obj.get("new")
    t = obj.get("t")
    if not all(isinstance(v, str) for v in (side, rid, old, new)):
        return Step(str(side), str(old), str(new), (), "illegal", line,
                    t if _number(t) else None,
                    "NDJSON fields side, id, old and new must be strings")
    try:
        row = profile.transition(rid)
    except KeyError:
        return Step(side, old, new, (), "illegal", line, t, f"no row {rid!r} in {profile.name}")
    if row.side != side:
        return Step(side, old, new, (), "illegal", line, t,
                    f"row {rid} is a {row.side} row, logged on the {side}")
    if not _row_allows(profile, row, old, new):
        allowed = ", ".join(sorted(profile.sources_of(row)))
        return Step(side, old, new, (rid,), "illegal", line, t,
                    f"row {rid} goes from {{{allowed}}} to {row.new or '(no change)'}, "
                    f"not {old} -> {new}")
    if row.event_only:
        return Step(side, old, old, (rid,), "event", line, t)
    return Step(side, old, new, (rid,), "store" if row.store else "change", line, t)


def infer_steps(profile: Profile, side: str, statuses: Iterable[tuple[int, str, Optional[float]]],
                start: Optional[str] = None) -> list[Step]:
    """Steps explaining a sequence of ``(line, status, t)`` MIGRATION events of one side."""
    rows = profile.rows(side)  # type: ignore[arg-type]
    changing = [r for r in rows if not r.event_only and not r.store]
    events = [r for r in rows if r.event_only]
    stores = [r for r in rows if r.store]
    state = start or _initial(profile)
    steps: list[Step] = []
    for line, status, t in statuses:
        found = [r.id for r in changing if r.new == status and state in profile.sources_of(r)]
        if found:
            steps.append(Step(side, state, status, tuple(found), "change", line, t))
            state = status
            continue
        found = [r.id for r in events if r.emits == status and state in profile.sources_of(r)]
        if found:
            steps.append(Step(side, state, state, tuple(found), "event", line, t))
            continue
        via = None
        for store in stores:
            if state in profile.sources_of(store) and store.new != state:
                after = [r.id for r in changing
                         if r.new == status and store.new in profile.sources_of(r)]
                if after:
                    via = (store, after)
                    break
        if via:
            store, after = via
            steps.append(Step(side, state, store.new, (store.id,), "store", line, t))
            steps.append(Step(side, store.new, status, tuple(after), "change", line, t))
            state = status
            continue
        steps.append(Step(side, state, status, (), "illegal", line, t,
                          f"no {side} row of {profile.name} goes from {state} to {status}"))
        state = status
    return steps


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def qmp_time(obj: dict) -> Optional[float]:
    """A QMP event's timestamp in seconds, or None when it has none (or a
    malformed one: a trace file is user input)."""
    ts = obj.get("timestamp")
    if isinstance(ts, dict) and _number(ts.get("seconds")):
        micro = ts.get("microseconds", 0)
        return ts["seconds"] + (micro if _number(micro) else 0) / 1e6
    return None


def parse_trace(profile: Profile, source: Union[str, Path, Iterable[str]],
                side: str = "source") -> Trace:
    """Read a trace file (or lines) in either format.

    ``side`` names the side of a QMP event log (QEMU's events do not say
    which end they come from); NDJSON lines carry their side.
    """
    if isinstance(source, (str, Path)):
        lines = Path(source).read_text().splitlines()
    else:
        lines = list(source)
    ndjson: list[Step] = []
    qmp: list[tuple[int, str, Optional[float]]] = []
    trace = Trace("ndjson")
    for number, text in enumerate(lines, 1):
        text = text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            trace.skipped += 1
            continue
        if not isinstance(obj, dict):
            trace.skipped += 1
            continue
        if obj.get("event") == "MIGRATION":
            data = obj.get("data")
            status = data.get("status") if isinstance(data, dict) else None
            if isinstance(status, str) and status:
                qmp.append((number, status, qmp_time(obj)))
            else:
                trace.skipped += 1
            continue
        if {"side", "id", "old", "new"} <= obj.keys():
            if obj.get("ok", True):
                ndjson.append(check_ndjson_line(profile, obj, number))
            else:
                trace.failed_cas += 1
            continue
        trace.skipped += 1
    if qmp and ndjson:
        raise ValueError("the file mixes QMP events and NDJSON transition lines")
    if qmp:
        trace.format = "qmp"
        trace.steps = infer_steps(profile, side, qmp)
    else:
        trace.steps = ndjson
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
