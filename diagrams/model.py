"""Build a drawing model of each state machine from a spec profile.

The model sits between the spec and Graphviz: it says *what* is drawn (nodes,
edges, clusters, notes), never *how* it looks.  ``render`` turns a model into a
``graphviz.Digraph``; ``trace`` and ``diff`` mark a model's nodes and edges
(visited, illegal, added, removed) before it is rendered.  Keeping the three
apart is what lets an overlay or a diff reuse the exact layout of the plain
diagram.

Rules of the drawing, all read from the profile (no state name, group or
capability is written here):

* A status machine has one node per status reachable on that side; statuses
  the spec declares unreachable on the side are left out and listed in a note.
* Groups are drawn as clusters when they nest (Graphviz clusters cannot
  overlap): the largest groups are taken first and a group that would cut
  across a chosen one is listed in the legend instead.  Groups with the same
  members on a side become one cluster.
* A row whose ``old`` is a single status is a plain edge.  A row whose ``old``
  is a group starts at one small "any of <group>" node; a ``current`` row
  (QEMU passes the state it read earlier) starts at a "current ∈ {...}" node,
  or at the state itself when it can read only one state.  This keeps the
  wildcard rows visible without one edge per member.
* Rows with the same tail, head and kind share one edge with one label line
  per row: the trigger (the QEMU function) and the actor.
* Event-only rows (no state change) are dotted self-loops on the states they
  can fire from.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Literal, Optional

from livemig.spec import CURRENT, Profile, Transition
from livemig.spec.expr import TRUE, All, AnyOf, Cap, Const, Expr, Not, to_text

Machine = Literal["source", "destination", "postcopy", "caps"]
#: every machine drawn for a profile, in the order the index page shows them
MACHINES: tuple[str, ...] = ("source", "destination", "postcopy", "caps")

MACHINE_TITLES = {
    "source": "source MigrationStatus",
    "destination": "destination MigrationStatus",
    "postcopy": "destination PostcopyState",
    "caps": "capability rules",
}


def node_id(kind: str, name: str) -> str:
    """A DOT-safe node id (no ':' which DOT reads as a port)."""
    return f"{kind}__{re.sub(r'[^A-Za-z0-9_]', '_', name)}"


@dataclass
class Item:
    """One spec row contributing a line to an edge label."""

    id: str
    text: str  # main line: the trigger / handler / rule
    sub: str = ""  # small line: actor, op, condition
    detail: str = ""  # tooltip: guard, doc, error text
    fingerprint: tuple = ()  # what a diff compares to call the row "changed"
    guard: str = ""  # the row's guard as text ("" when always true)


@dataclass
class Node:
    """One drawn node."""

    id: str
    label: str
    kind: str  # status | group | current | cap | pstate | any | note
    sub: str = ""
    cluster: Optional[str] = None
    tooltip: str = ""
    terminal: bool = False
    initial: bool = False
    fingerprint: tuple = ()


@dataclass
class Edge:
    """One drawn edge; ``items`` are the spec rows it stands for."""

    tail: str
    head: str
    kind: str  # exact | group | current | store | event | conflict | requires | handler | error
    items: list[Item] = field(default_factory=list)
    main: bool = False  # on the main path: drawn heavier, weighted for layout

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tail, self.head, self.kind)


@dataclass
class Cluster:
    """A group drawn as a box around its members."""

    id: str
    label: str
    parent: Optional[str]
    tooltip: str = ""
    members: tuple[str, ...] = ()


@dataclass
class Model:
    """Everything needed to draw one machine of one profile."""

    profile: str
    machine: str
    title: str
    nodes: dict[str, Node] = field(default_factory=dict)
    edges: dict[tuple[str, str, str], Edge] = field(default_factory=dict)
    clusters: dict[str, Cluster] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    rankdir: str = "TB"
    #: spec row id -> the edge keys that row is drawn as
    row_edges: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    #: status name -> node id (status machines only)
    status_nodes: dict[str, str] = field(default_factory=dict)
    #: layout links (state -> the wildcard node it can fire through), not spec rows
    links: set[tuple[str, str]] = field(default_factory=set)
    #: the links on the main path: drawn, the others are invisible
    main_links: set[tuple[str, str]] = field(default_factory=set)
    #: node ids that must follow each other left-to-right / top-down (declared order)
    chain: list[str] = field(default_factory=list)
    #: node ids of everything the profile declares, drawn or not (a diff calls a
    #: node "added" only when the older profile does not declare it at all)
    universe: set[str] = field(default_factory=set)

    def add_node(self, node: Node) -> Node:
        return self.nodes.setdefault(node.id, node)

    def add_item(self, tail: str, head: str, kind: str, item: Item) -> Edge:
        edge = self.edges.setdefault((tail, head, kind), Edge(tail, head, kind))
        edge.items.append(item)
        self.row_edges.setdefault(item.id, []).append(edge.key)
        return edge


# ------------------------------------------------------------ status machines
def _laminar_groups(profile: Profile, visible: set[str]) -> list[tuple[tuple[str, ...], frozenset[str]]]:
    """Groups (merged when equal on this side) that can be clusters: nested or disjoint.

    Returns (names, members) pairs, largest first; ties keep declaration order.
    """
    merged: dict[frozenset[str], list[str]] = {}
    for group in profile.groups:
        members = frozenset(group.members) & visible
        if members:
            merged.setdefault(members, []).append(group.name)
    ordered = sorted(merged.items(), key=lambda kv: -len(kv[0]))
    chosen: list[tuple[tuple[str, ...], frozenset[str]]] = []
    for members, names in ordered:
        if all(members <= other or members >= other or not (members & other)
               for _, other in chosen):
            chosen.append((tuple(names), members))
    return chosen


def _row_item(profile: Profile, row: Transition) -> Item:
    marks = []
    if row.retry:
        marks.append("retries CAS")
    if row.store:
        marks.append("plain store, no event")
    if row.event_only:
        marks.append(f"emits '{row.emits}', no state change")
    sub = row.actor + (f" · {', '.join(marks)}" if marks else "")
    guard = to_text(row.guard)
    detail = f"{row.id}: {row.old} -> {row.new or '(no change)'}"
    if row.guard != TRUE:
        detail += f"\nguard: {guard}"
    if row.within:
        detail += f"\nreads one of: {', '.join(row.within)}"
    if row.doc:
        detail += f"\n{row.doc}"
    return Item(
        id=row.id, text=row.trigger, sub=sub, detail=detail,
        fingerprint=(row.actor, row.trigger, guard, row.retry, row.store, row.emits,
                     row.event_needs_cap, row.within),
        guard="" if row.guard == TRUE else guard,
    )


def status_model(profile: Profile, side: str) -> Model:
    """The MigrationStatus machine of one side (``"source"`` or ``"destination"``)."""
    model = Model(profile.name, side, f"{profile.name}: {MACHINE_TITLES[side]}")
    rows = profile.rows(side)  # type: ignore[arg-type]
    unreachable = {u.status: u.reason for u in profile.unreachable if u.side == side}
    visible = [s.name for s in profile.statuses if s.name not in unreachable]
    initial = min(profile.statuses, key=lambda s: s.value).name
    order = {s.name: s.value for s in profile.statuses}

    # clusters
    cluster_of: dict[str, str] = {}
    # a group holding both the initial and a terminal state would pull the start
    # and the end of a run into one box: list it instead of drawing a cluster
    chosen = [(names, members) for names, members in _laminar_groups(profile, set(visible))
              if not (initial in members and members & set(profile.terminal))]
    for names, members in chosen:  # largest first, so parents come before children
        cid = "cluster_" + re.sub(r"[^A-Za-z0-9_]", "_", "__".join(names))
        parents = [cluster_of[m] for m in members if m in cluster_of]
        parent = parents[0] if parents else None
        predicates = "; ".join(profile.group(n).predicate for n in names)
        model.clusters[cid] = Cluster(cid, " = ".join(names), parent, predicates,
                                      tuple(sorted(members)))
        for m in members:
            cluster_of[m] = cid
        for n in names:
            cluster_of[f"group:{n}"] = cid
    drawn_groups = {n for names, _ in chosen for n in names}
    for group in profile.groups:
        if group.name not in drawn_groups:
            members = [m for m in group.members if m in visible]
            model.notes.append(f"group {group.name} = {{{', '.join(members)}}} "
                               f"({group.predicate})")

    for name in visible:
        status = next(s for s in profile.statuses if s.name == name)
        nid = node_id("st", name)
        model.status_nodes[name] = nid
        in_groups = [g.name for g in profile.groups if name in g.members]
        tooltip = f"{name} ({status.value}) {status.doc}".strip()
        if in_groups:
            tooltip += "\nin: " + ", ".join(in_groups)
        model.add_node(Node(nid, name, "status", cluster=cluster_of.get(name),
                            tooltip=tooltip,
                            terminal=name in profile.terminal, initial=name == initial,
                            fingerprint=(status.value, name in profile.terminal)))
    if unreachable:
        model.notes.append("not reachable on this side: " + ", ".join(unreachable))
    model.universe = {node_id("st", s.name) for s in profile.statuses}

    def status_node(name: str) -> str:
        if name not in model.status_nodes:  # a row names a state declared unreachable
            nid = node_id("st", name)
            model.status_nodes[name] = nid
            model.add_node(Node(nid, name, "status", terminal=name in profile.terminal))
        return model.status_nodes[name]

    for row in rows:
        item = _row_item(profile, row)
        sources = sorted(profile.sources_of(row), key=order.__getitem__)
        if row.event_only:
            if len(sources) <= 3:
                for s in sources:
                    model.add_item(status_node(s), status_node(s), "event", item)
                continue
            tail = _wild_node(model, profile, row, sources, cluster_of)
            head = model.add_node(Node(node_id("ev", row.id), f"event '{row.emits}'", "any",
                                       sub="no state change")).id
            model.add_item(tail, head, "event", item)
            continue
        head = status_node(row.new)  # type: ignore[arg-type]
        if row.store:
            kind = "store"
        elif row.old_is_state:
            kind = "exact"
        elif row.old == CURRENT:
            kind = "current"
        else:
            kind = "group"
        if row.old_is_state:
            tail = status_node(row.old)
        elif row.old == CURRENT and len(sources) == 1:
            tail = status_node(sources[0])
        else:
            tail = _wild_node(model, profile, row, sources, cluster_of)
            if row.old == CURRENT:
                model.links.update((status_node(s), tail) for s in sources)
        model.add_item(tail, head, kind, item)

    _mark_main_path(model, initial, profile, rows)
    return model


def _wild_node(model: Model, profile: Profile, row: Transition, sources: list[str],
               cluster_of: dict[str, str]) -> str:
    """The 'any of <group>' or 'current ∈ {...}' node a wildcard row starts at."""
    if row.old != CURRENT:
        nid = node_id("grp", row.old)
        members = ", ".join(sources)
        model.add_node(Node(nid, f"any of {row.old}", "group", sub=members,
                            cluster=cluster_of.get(f"group:{row.old}"),
                            tooltip=f"{row.old} ({profile.group(row.old).predicate}): {members}",
                            fingerprint=tuple(sources)))
        return nid
    nid = node_id("cur", "_".join(sources))
    model.add_node(Node(nid, "current ∈", "current", sub=", ".join(sources),
                        tooltip="QEMU passes the state it read earlier as OLD: the row fires "
                                "from whichever of these it read",
                        fingerprint=tuple(sources)))
    return nid


def _mark_main_path(model: Model, initial: str, profile: Profile,
                    rows: tuple[Transition, ...]) -> None:
    """Mark the main path: how a run normally goes from the initial state to
    the first terminal state (QEMU's ``completed``), precopy and postcopy.

    The spec does not say which rows are "normal", so this is derived: QEMU
    declares MigrationStatus in lifecycle order, so the main path is made of
    rows that move *forward* in the enum (value grows) on a forward path from
    the initial state to that terminal.  Rows by the actor that leaves the
    initial state are left out after the first step: that actor is the
    command that starts a run, and a later step of its own is a synchronous
    shortcut (HMP savevm), not the migration.  Wildcard (``current``) rows
    count from each state they can read.
    """
    if not profile.terminal:
        return
    goal = profile.terminal[0]
    value = {s.name: s.value for s in profile.statuses}
    starters = {r.actor for r in rows if r.old_is_state and r.old == initial and not r.store}
    def needs(r: Transition) -> int:  # capabilities every way through the guard switches on
        conjs = _dnf(r.guard)
        return min((sum(isinstance(lit, Cap) for lit in c) for c in conjs), default=0)

    steps: list[tuple[str, str, Transition]] = []
    for r in rows:
        if r.store or r.event_only or r.new is None:
            continue
        if r.old_is_state:
            sources = [r.old]
        elif r.old == CURRENT:
            sources = sorted(profile.sources_of(r))
        else:
            continue
        for s in sources:
            if value[s] < value[r.new] and (s == initial or r.actor not in starters):
                steps.append((s, r.new, r))
    # of several rows for one step, keep those needing the fewest capabilities:
    # the plain migration completes through migration_completion, not the
    # background-snapshot thread
    fewest: dict[tuple[str, str], int] = {}
    for s, n, r in steps:
        fewest[(s, n)] = min(fewest.get((s, n), 99), needs(r))
    steps = [(s, n, r) for s, n, r in steps if needs(r) == fewest[(s, n)]]
    # states from which the goal is reachable going forward, and reachable from the start
    to_goal = {goal}
    changed = True
    while changed:
        changed = False
        for s, n, _ in steps:
            if n in to_goal and s not in to_goal:
                to_goal.add(s)
                changed = True
    from_start = {initial}
    changed = True
    while changed:
        changed = False
        for s, n, _ in steps:
            if s in from_start and n not in from_start and n in to_goal:
                from_start.add(n)
                changed = True
    for s, n, r in steps:
        if s in from_start and n in to_goal:
            for key in model.row_edges.get(r.id, []):
                edge = model.edges[key]
                edge.main = True
                if edge.tail != model.status_nodes.get(s):
                    model.main_links.add((model.status_nodes[s], edge.tail))


# ------------------------------------------------------------ PostcopyState
def postcopy_model(profile: Profile) -> Model:
    """The destination's PostcopyState and the handlers that move it."""
    model = Model(profile.name, "postcopy", f"{profile.name}: {MACHINE_TITLES['postcopy']}")
    model.rankdir = "LR"
    states = list(profile.postcopy_states)
    model.chain = [node_id("ps", s) for s in states]
    for i, s in enumerate(states):
        model.add_node(Node(node_id("ps", s), s, "pstate", initial=i == 0,
                            terminal=i == len(states) - 1,
                            tooltip=f"PostcopyState {s} = {i}", fingerprint=(i,)))
    for h in profile.postcopy_handlers:
        sub = h.op + (f" · {h.command}" if h.command else "")
        detail = f"{h.name}: {h.trigger} ({h.op}); accepts {', '.join(h.accepted)}"
        if h.error:
            detail += f"\nerror: {h.error}"
        if h.doc:
            detail += f"\n{h.doc}"
        fp = (h.trigger, h.command, h.op, h.accepted, h.new, h.error, h.set_new_from)
        item = Item(h.name, h.trigger, sub, detail, fp)
        accepted = [s for s in states if s in h.accepted]
        if h.new is None:
            for s in accepted:
                model.add_item(node_id("ps", s), node_id("ps", s), "handler", item)
            continue
        new = node_id("ps", h.new)
        if len(accepted) == len(states):  # any state: one edge from an "any" node
            tail = model.add_node(Node(node_id("psany", "any"), "any state", "any",
                                       fingerprint=("any",))).id
            model.add_item(tail, new, "handler", item)
        else:
            for s in accepted:
                if h.set_new_from is not None and s not in h.set_new_from:
                    model.add_item(node_id("ps", s), node_id("ps", s), "handler", item)
                else:
                    model.add_item(node_id("ps", s), new, "handler", item)
        rejected = [s for s in states if s not in h.accepted]
        if rejected and h.error:
            text = h.error.replace("%d", "n")
            if h.op == "xchg":
                # xchg-then-check: the state is already `new` when the error is raised
                tail = model.add_node(Node(node_id("psrej", h.name), "any other", "any",
                                           sub=", ".join(rejected),
                                           fingerprint=tuple(rejected))).id
                err = Item(h.name + ".error", h.trigger, "error after xchg: state already " + h.new,
                           text, fp)
                model.add_item(tail, new, "error", err)
            else:
                model.notes.append(f"{h.name} from {', '.join(rejected)}: \"{text}\", "
                                   "state unchanged")
    return model


# ------------------------------------------------------------ capabilities
def _dnf(expr: Expr) -> list[list[Expr]]:
    """``expr`` as a disjunction of conjunctions of literals (atoms or Not(atom))."""
    if isinstance(expr, Const):
        return [[]] if expr.value else []
    if isinstance(expr, All):
        out: list[list[Expr]] = [[]]
        for arg in expr.args:
            out = [a + b for a in out for b in _dnf(arg)]
        return out
    if isinstance(expr, AnyOf):
        return [c for arg in expr.args for c in _dnf(arg)]
    if isinstance(expr, Not):
        inner = expr.arg
        if isinstance(inner, Not):
            return _dnf(inner.arg)
        if isinstance(inner, All):
            return _dnf(AnyOf(*[Not(a) for a in inner.args]))
        if isinstance(inner, AnyOf):
            return _dnf(All(*[Not(a) for a in inner.args]))
        if isinstance(inner, Const):
            return _dnf(Const(not inner.value))
        return [[expr]]
    return [[expr]]


def caps_model(profile: Profile) -> Model:
    """Capability rules of migrate_caps_check as a graph.

    Each rule's failure condition is expanded into conjunctions.  Two positive
    capabilities: a conflict (undirected).  One positive and one negated: a
    requirement (arrow).  Anything else in the conjunction (host facts, run
    state, parameters, the previous set) is written on the edge as a
    condition; a conjunction with only one capability annotates that node.
    """
    model = Model(profile.name, "caps", f"{profile.name}: {MACHINE_TITLES['caps']}")
    model.rankdir = "LR"
    used: set[str] = set()
    annotations: dict[str, list[str]] = {}
    for rule in profile.cap_rules:
        for conj in _dnf(rule.when):
            pos = [lit.name for lit in conj if isinstance(lit, Cap)]
            neg = [lit.arg.name for lit in conj if isinstance(lit, Not) and isinstance(lit.arg, Cap)]
            other = [lit for lit in conj
                     if not isinstance(lit, Cap)
                     and not (isinstance(lit, Not) and isinstance(lit.arg, Cap))]
            cond = " & ".join(to_text(o) for o in other)
            detail = f"{rule.id}: fails when {to_text(rule.when)}\n\"{rule.error}\""
            fp = (to_text(rule.when), rule.error)
            if len(pos) == 2 and not neg:
                a, b = sorted(pos)
                item = Item(rule.id, "", f"if {cond}" if cond else "", detail, fp)
                model.add_item(node_id("cap", a), node_id("cap", b), "conflict", item)
                used.update(pos)
            elif len(pos) == 1 and len(neg) == 1:
                item = Item(rule.id, "", f"if {cond}" if cond else "", detail, fp)
                model.add_item(node_id("cap", pos[0]), node_id("cap", neg[0]), "requires", item)
                used.update(pos + neg)
            elif len(pos) == 1 and not neg:
                annotations.setdefault(pos[0], []).append(f"✗ if {cond}" if cond else "✗ always")
                model.row_edges.setdefault(rule.id, [])
                used.add(pos[0])
            else:
                model.notes.append(f"{rule.id}: fails when {to_text(rule.when)}")
    for cap in profile.capabilities:
        if cap.name not in used:
            continue
        notes = annotations.get(cap.name, [])
        model.add_node(Node(node_id("cap", cap.name), cap.name, "cap",
                            sub="\n".join(notes),
                            tooltip=f"{cap.name} (since {cap.since})"
                                    + (" unstable" if cap.unstable else "")
                                    + ("\n" + "\n".join(notes) if notes else ""),
                            fingerprint=(cap.since, cap.unstable, tuple(notes))))
    model.universe = {node_id("cap", c.name) for c in profile.capabilities}
    free = [c.name for c in profile.capabilities if c.name not in used]
    if free:
        model.notes.append("no rule: " + ", ".join(free))
    return model


def build_model(profile: Profile, machine: str) -> Model:
    """The model of one machine: ``source``, ``destination``, ``postcopy`` or ``caps``."""
    if machine in ("source", "destination"):
        return status_model(profile, machine)
    if machine == "postcopy":
        return postcopy_model(profile)
    if machine == "caps":
        return caps_model(profile)
    raise ValueError(f"unknown machine {machine!r}; known: {', '.join(MACHINES)}")
