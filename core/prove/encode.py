"""A profile as a symbolic transition system for Z3.

Everything here is read from the profile (``livemig.spec``) and the
catalogue's :data:`~livemig.spec.invariants.MODEL`; no status, capability or
rule is written in this module.

The state (one copy per step)
  * ``st[side]``: the MigrationStatus of the source and of the destination,
    one Z3 ``EnumSort`` generated from ``profile.statuses``;
  * ``pc``: the destination's PostcopyState (``EnumSort`` of
    ``profile.postcopy_states``) and ``cursor``, how far the destination has
    read the stream of postcopy commands (see below);
  * ``caps[side][name]``: each side's capability set;
  * ``params[side][atom]``: the truth of each ``Param`` atom any rule or guard
    reads (initially its value on the parameter defaults);
  * ``cmd[flag]``: flags of kind "command" (set by the QMP command that names
    them in ``sets_flags``, cleared by a store row of their side, i.e.
    migrate_init); ``thr[flag]``: flags of kind "thread" (set/cleared by the
    rows the flag names, cleared by a store row of their side);
  * per (side, actor) that has read-then-CAS rows: ``pend`` (idle, or the row
    whose CAS is pending) and ``seen`` (the status it read);
  * one history bit per "never_after" invariant.

Host facts are free but frozen for a whole run (any host, one host at a time).

The steps (one per time step, interleaving; ``act`` names it)
  * an exact-CAS row fires when its side's status equals ``old`` and its
    guard holds (a CAS that would fail changes nothing: a stutter, left out);
  * a row that reads its old state (``old`` a group or "current", or
    ``retry``) is two steps of its actor: ``R@read`` latches the status (it
    must be in ``sources_of(R)`` and the guard must hold at that moment), and
    ``R`` is the CAS with the latched value: it succeeds only if the status
    still equals it; a failed CAS changes nothing and emits nothing, except
    that a ``retry`` row re-reads and stays pending while the status is still
    one of its sources (migrate_fd_cancel's loop).  The window between the two
    steps is where other actors' steps interleave;
  * while an actor has a CAS pending, it fires nothing else;
  * store rows are plain stores (no event) and reset the side's command and
    thread flags; event-only rows emit without a state change;
  * every QMP command that sets flags is a step of its side (the side of its
    preconditions' ``state_side``), enabled when no precondition fails for
    some choice of its arguments; it sets its flags.  The capability command
    (``MODEL.caps_command``) runs on both sides: its preconditions read the
    side's own outgoing status (a destination process never migrates out, so
    there it is the initial status), and it installs any new set for which no
    ``CAP_RULES`` entry fails (``Cap`` = new, ``WasCap`` = old).  The
    parameter command changes ``Param`` atoms for which no ``PARAM_RULES``
    condition fails;
  * PostcopyState handlers are destination steps that run in the order of
    ``POSTCOPY_HANDLERS`` (the order in which the source writes the postcopy
    commands into the stream): handler *j* may run once the cursor is at most
    *j* and sets the cursor to *j*; any command may be missing, one may
    repeat.  Each handler applies its ``op`` (xchg stores even when the check
    then fails).

Inputs (fresh each step): environment flags, the run state of each side
(from ``MODEL.runstates``) and command arguments.

Abstractions, on purpose:
  * source and destination are coupled only loosely: through their own
    guards (PostcopyState for the destination's postcopy rows) and the free
    environment flags; the destination reads any well-ordered stream, so its
    behaviour over-approximates that of any source;
  * a command sets a flag whatever the arguments unless the flag declares
    ``set_when`` (``resume_requested`` needs ``migrate``'s resume=true); the
    arguments are free inputs, constrained only by the preconditions;
  * run states other than the side's own are false; parameters are reduced to
    the atoms the rules read.
A proof in this model therefore holds for every behaviour the spec allows;
a counterexample is a sequence of spec rows, commands and inputs.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Iterable, Optional

import z3

from livemig.spec import expr as E
from livemig.spec.invariants import MODEL
from livemig.spec.schema import SIDES, Profile, ProverModel, Transition

_serial = itertools.count()

Key = tuple  # a state-variable key such as ("st", "source")


def _ident(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", text)


@dataclass
class Action:
    """One kind of step of the transition system."""

    name: str
    kind: str  # "cas" | "read" | "pending" | "store" | "event" | "command" | "caps" | "params" | "postcopy"
    side: str
    actor: str
    row: Optional[Transition] = None
    command: Optional[str] = None
    handler: Optional[str] = None


@dataclass
class Step:
    """The inputs of one step."""

    act: z3.ExprRef
    env: dict[str, z3.BoolRef]
    runstate: dict[str, z3.ExprRef]
    args: dict[str, z3.BoolRef]
    argstate: dict[str, z3.ExprRef]


@dataclass
class State:
    """The state variables of one step (see the module docstring)."""

    vars: dict[Key, z3.ExprRef] = field(default_factory=dict)

    def __getitem__(self, key: Key) -> z3.ExprRef:
        return self.vars[key]


def _flatten_ite(v: z3.ExprRef, cond: Optional[z3.BoolRef] = None
                 ) -> list[tuple[Optional[z3.BoolRef], z3.ExprRef]]:
    """An ``If`` tree as guarded leaves (the finite-domain solver wants no
    ``If`` over enumeration sorts)."""
    if z3.is_app_of(v, z3.Z3_OP_ITE) and not z3.is_bool(v):
        c, a, b = v.children()
        ca = c if cond is None else z3.And(cond, c)
        cb = z3.Not(c) if cond is None else z3.And(cond, z3.Not(c))
        return _flatten_ite(a, ca) + _flatten_ite(b, cb)
    return [(cond, v)]


class Encoding:
    """The transition system of ``profile``; invariants are judged against ``reference``.

    ``reference`` is the unmutated profile when ``profile`` is a mutant: the
    catalogue's rule-based invariants read the reference's rules.
    """

    def __init__(self, profile: Profile, *, reference: Optional[Profile] = None,
                 history: Iterable[tuple[str, str, str]] = (),
                 sides: tuple[str, ...] = SIDES,
                 model: ProverModel = MODEL) -> None:
        self.profile = profile
        self.sides = tuple(x for x in SIDES if x in sides)
        self.reference = reference or profile
        self.model = model
        self.uid = next(_serial)
        p = profile
        self.status_sort, consts = z3.EnumSort(
            f"Status{self.uid}", [f"S_{_ident(s)}" for s in p.status_names])
        self.status = dict(zip(p.status_names, consts))
        self.status_name = {str(c): n for n, c in self.status.items()}
        self.pc_sort, pcs = z3.EnumSort(f"Postcopy{self.uid}",
                                        [f"PC_{_ident(s)}" for s in p.postcopy_states])
        self.pc = dict(zip(p.postcopy_states, pcs))
        self.pc_name = {str(c): n for n, c in self.pc.items()}
        self.initial_status = p.statuses[0].name
        self.flag_kind = {f.name: f.kind for f in p.flags}
        self.flag_decl = {f.name: f for f in p.flags}
        self.host = {h.name: z3.Bool(f"host{self.uid}_{_ident(h.name)}") for h in p.host_facts}
        self.caps = p.capability_names()
        self._collect_atoms()
        self._command_sides()
        self._build_actions()
        self.history = tuple(h for h in history if h[1] in self.sides)  # (name, side, status)
        self._states: dict[tuple[str, int], State] = {}
        self._steps: dict[tuple[str, int], Step] = {}
        self._emission_cache: dict[int, list] = {}

    # ------------------------------------------------------------ collection
    def _all_exprs(self) -> Iterable[E.Expr]:
        p = self.profile
        for t in p.transitions:
            yield t.guard
        for r in (*p.cap_rules, *self.reference.cap_rules):
            yield r.when
        for r in p.param_rules:
            if r.when is not None:
                yield r.when
        for c in p.commands:
            for pre in c.preconditions:
                yield pre.when

    def _collect_atoms(self) -> None:
        params: dict[tuple, tuple[str, str, object]] = {}
        args: set[str] = set()
        argstates: set[str] = set()
        for ex in self._all_exprs():
            for node in E.walk(ex):
                if isinstance(node, E.Param):
                    params[self._param_key(node)] = (node.name, node.op, node.value)
                elif isinstance(node, E.Arg):
                    args.add(node.name)
                elif isinstance(node, E.ArgState):
                    argstates.add(node.name)
        self.param_atoms = params
        self.arg_names = sorted(args)
        self.argstate_names = sorted(argstates)

    @staticmethod
    def _param_key(node: E.Param) -> tuple:
        if node.op in ("eq", "ne"):
            return ("eq", node.name, repr(node.value))
        return (node.op, node.name)

    def _param_default(self, key: tuple) -> bool:
        op, name = key[0], key[1]
        default = self.profile.parameter(name).default
        if op == "eq":
            return repr(default) == key[2]
        if op == "nonempty":
            return bool(default)
        raise ValueError(key)

    def _command_sides(self) -> None:
        """The side each command runs on: the ``state_side`` of its preconditions."""
        self.command_side: dict[str, str] = {}
        for c in self.profile.commands:
            sides = {pre.state_side for pre in c.preconditions}
            self.command_side[c.name] = "destination" if sides == {"destination"} else "source"
        self.flag_side: dict[str, str] = {}
        for c in self.profile.commands:
            for f in c.sets_flags:
                self.flag_side[f] = self.command_side[c.name]
        for f in self.profile.flags:
            if f.kind == "thread" and f.set_by:
                self.flag_side[f.name] = self.profile.transition(f.set_by).side

    def _build_actions(self) -> None:
        p = self.profile
        acts: list[Action] = []
        self.reader_actors: set[tuple[str, str]] = set()
        for t in p.transitions:
            if t.side not in self.sides:
                continue
            if t.store:
                acts.append(Action(t.id, "store", t.side, t.actor, row=t))
            elif t.event_only:
                acts.append(Action(t.id, "event", t.side, t.actor, row=t))
            elif t.reads_state:
                acts.append(Action(t.id + "@read", "read", t.side, t.actor, row=t))
                acts.append(Action(t.id, "pending", t.side, t.actor, row=t))
                self.reader_actors.add((t.side, t.actor))
            else:
                acts.append(Action(t.id, "cas", t.side, t.actor, row=t))
        for c in p.commands:
            if c.name == self.model.caps_command:
                for side in self.sides:
                    acts.append(Action(f"{side}:{c.name}", "caps", side,
                                       self.model.command_actor, command=c.name))
            elif c.name == self.model.params_command:
                for side in self.sides:
                    acts.append(Action(f"{side}:{c.name}", "params", side, self.model.command_actor,
                                       command=c.name))
            elif c.sets_flags and self.command_side[c.name] in self.sides:
                acts.append(Action(c.name, "command", self.command_side[c.name],
                                   self.model.command_actor,
                                   command=c.name))
        # A step that changes nothing keeps the relation total (BMC paths of a
        # fixed length then contain every shorter path).
        acts.append(Action("idle", "idle", self.sides[0], "none"))
        for h in (p.postcopy_handlers if "destination" in self.sides else ()):
            acts.append(Action(f"postcopy:{h.name}", "postcopy", "destination", "stream",
                               handler=h.name))
        self.actions = acts
        self.action_sort, aconsts = z3.EnumSort(
            f"Action{self.uid}", [f"A_{_ident(a.name)}" for a in acts])
        self.action_const = {a.name: c for a, c in zip(acts, aconsts)}
        self.action_by_const = {str(c): a for a, c in zip(acts, aconsts)}
        pend_rows = [t.id for t in p.transitions if t.reads_state and not t.store
                     and not t.event_only and t.side in self.sides]
        self.pend_sort, pconsts = z3.EnumSort(
            f"Pend{self.uid}", ["P_idle"] + [f"P_{_ident(r)}" for r in pend_rows])
        self.pend_idle = pconsts[0]
        self.pend = dict(zip(pend_rows, pconsts[1:]))
        self.pend_name = {str(c): r for r, c in self.pend.items()}
        self.handler_index = {h.name: j for j, h in enumerate(p.postcopy_handlers)}

    def own_flags(self) -> list:
        """The command and thread flags of the encoded sides (state variables)."""
        return [f for f in self.profile.flags if f.kind in ("command", "thread")
                and self.flag_side.get(f.name, "source") in self.sides]

    # ------------------------------------------------------------ variables
    def state(self, tag: str, i: int) -> State:
        """The state variables at step ``i`` of unrolling ``tag``."""
        key = (tag, i)
        if key in self._states:
            return self._states[key]
        u = f"{tag}{self.uid}_{i}"
        s = State()
        for side in self.sides:
            s.vars[("st", side)] = z3.Const(f"st_{side}_{u}", self.status_sort)
            for cap in self.caps:
                s.vars[("cap", side, cap)] = z3.Bool(f"cap_{side}_{_ident(cap)}_{u}")
            for pk in self.param_atoms:
                s.vars[("param", side, pk)] = z3.Bool(f"par_{side}_{_ident(str(pk))}_{u}")
        if "destination" in self.sides:
            s.vars[("pc",)] = z3.Const(f"pc_{u}", self.pc_sort)
            s.vars[("cursor",)] = z3.BitVec(f"cur_{u}", 4)
        for f in self.own_flags():
                s.vars[("flag", f.name)] = z3.Bool(f"fl_{_ident(f.name)}_{u}")
        for side, actor in sorted(self.reader_actors):
            s.vars[("pend", side, actor)] = z3.Const(f"pend_{side}_{actor}_{u}", self.pend_sort)
            s.vars[("seen", side, actor)] = z3.Const(f"seen_{side}_{actor}_{u}",
                                                     self.status_sort)
        for name, _side, _st in self.history:
            s.vars[("hist", name)] = z3.Bool(f"h_{_ident(name)}_{u}")
        self._states[key] = s
        return s

    def step(self, tag: str, i: int) -> Step:
        """The inputs of the step from state ``i`` to ``i + 1``."""
        key = (tag, i)
        if key in self._steps:
            return self._steps[key]
        u = f"{tag}{self.uid}_{i}"
        env = {f.name: z3.Bool(f"env_{_ident(f.name)}_{u}") for f in self.profile.flags
               if f.kind == "environment"}
        rs = {}
        for side in SIDES:
            names = self.model.runstates_of(side)
            rs[side] = z3.BitVec(f"rs_{side}_{u}", 4) if len(names) > 1 else z3.BitVecVal(0, 4)
        args = {a: z3.Bool(f"arg_{_ident(a)}_{u}") for a in self.arg_names}
        argstate = {a: z3.Const(f"argst_{_ident(a)}_{u}", self.status_sort)
                    for a in self.argstate_names}
        st = Step(z3.Const(f"act_{u}", self.action_sort), env, rs, args, argstate)
        self._steps[key] = st
        return st

    # ------------------------------------------------------------ helpers
    def in_states(self, value: z3.ExprRef, names: Iterable[str]) -> z3.BoolRef:
        """``value`` is one of the statuses ``names`` (unknown names are skipped)."""
        terms = [value == self.status[n] for n in sorted(set(names)) if n in self.status]
        if not terms:
            return z3.BoolVal(False)
        return terms[0] if len(terms) == 1 else z3.Or(terms)

    def same(self, a: z3.ExprRef, b: z3.ExprRef) -> z3.BoolRef:
        """``a == b`` for two status terms."""
        return a == b

    def _others(self, side: str) -> dict[str, z3.ExprRef]:
        """In ``side``'s process, the other side's object: never driven, so the initial status."""
        return {o: self.status[self.initial_status] for o in SIDES if o != side}

    def is_act(self, step: Step, name: str) -> z3.BoolRef:
        return step.act == self.action_const[name]

    def guard(self, ex: E.Expr, side: str, s: State, inp: Optional[Step], *,
              caps: Optional[dict[str, z3.BoolRef]] = None,
              was: Optional[dict[str, z3.BoolRef]] = None,
              params: Optional[dict[tuple, z3.BoolRef]] = None,
              status_override: Optional[dict[str, z3.ExprRef]] = None,
              free: Optional[dict[str, z3.BoolRef]] = None,
              profile: Optional[Profile] = None,
              state_side: Optional[str] = None) -> z3.BoolRef:
        """The Z3 reading of a guard (same meaning as ``livemig.core.guards.evaluate``).

        ``side`` is the side whose caps and (for a bare ``InState``) status the
        guard reads.  ``free`` maps flag names to variables that replace them
        (used to quantify them away).
        """
        prof = profile or self.profile
        g = lambda x: self.guard(x, side, s, inp, caps=caps, was=was, params=params,  # noqa: E731
                                 status_override=status_override, free=free, profile=prof,
                                 state_side=state_side)
        if isinstance(ex, E.Const):
            return z3.BoolVal(ex.value)
        if isinstance(ex, E.Not):
            return z3.Not(g(ex.arg))
        if isinstance(ex, E.All):
            return z3.And([g(a) for a in ex.args]) if ex.args else z3.BoolVal(True)
        if isinstance(ex, E.AnyOf):
            return z3.Or([g(a) for a in ex.args]) if ex.args else z3.BoolVal(False)
        if isinstance(ex, E.Cap):
            return caps[ex.name] if caps else s[("cap", side, ex.name)]
        if isinstance(ex, E.WasCap):
            return was[ex.name] if was else s[("cap", side, ex.name)]
        if isinstance(ex, E.Flag):
            if free is not None and ex.name in free:
                return free[ex.name]
            kind = self.flag_kind[ex.name]
            if kind == "environment":
                assert inp is not None, f"environment flag {ex.name} read without inputs"
                return inp.env[ex.name]
            return s[("flag", ex.name)]
        if isinstance(ex, E.Host):
            return self.host[ex.name]
        if isinstance(ex, E.Runstate):
            names = self.model.runstates_of(side)
            if ex.name not in names:
                return z3.BoolVal(False)
            if len(names) == 1:
                return z3.BoolVal(True)
            if free is not None and ("runstate", side) in free:
                return free[("runstate", side)] == names.index(ex.name)
            return inp.runstate[side] == names.index(ex.name)
        if isinstance(ex, E.InState):
            who = ex.side or state_side or side
            value = (status_override or {}).get(who)
            if value is None:
                value = s[("st", who)]
            return self.in_states(value, prof.states_of(ex.name))
        if isinstance(ex, E.PostcopyIs):
            return s[("pc",)] == self.pc[ex.name]
        if isinstance(ex, E.ArgState):
            return self.same(s[("st", side)], inp.argstate[ex.name])
        if isinstance(ex, E.Arg):
            if free is not None and ("arg", ex.name) in free:
                return free[("arg", ex.name)]
            return inp.args[ex.name]
        if isinstance(ex, E.Param):
            key = self._param_key(ex)
            v = (params or {}).get(key) if params else None
            v = v if v is not None else s[("param", side, key)]
            return z3.Not(v) if ex.op == "ne" else v
        raise TypeError(f"not a guard expression: {ex!r}")

    def _caps_of(self, s: State, side: str) -> dict[str, z3.BoolRef]:
        return {c: s[("cap", side, c)] for c in self.caps}

    def _params_of(self, s: State, side: str) -> dict[tuple, z3.BoolRef]:
        return {k: s[("param", side, k)] for k in self.param_atoms}

    def rules_fail(self, side: str, s: State, inp: Step, new: dict, old: dict,
                   params: dict, profile: Optional[Profile] = None) -> z3.BoolRef:
        """Some CAP_RULES entry of ``profile`` fails for the change ``old`` -> ``new``."""
        prof = profile or self.profile
        terms = [self.guard(r.when, side, s, inp, caps=new, was=old, params=params,
                            status_override={"source": self.status[self.initial_status]}
                            if side == "destination" else None, profile=prof)
                 for r in prof.cap_rules]
        return z3.Or(terms) if terms else z3.BoolVal(False)

    # ------------------------------------------------------------ init / trans
    def init(self, s: State) -> list[z3.BoolRef]:
        """The initial state: both sides in the first status, nothing set."""
        c = []
        for side in self.sides:
            c.append(s[("st", side)] == self.status[self.initial_status])
            for cap in self.caps:
                c.append(z3.Not(s[("cap", side, cap)]))
            for pk in self.param_atoms:
                c.append(s[("param", side, pk)] == self._param_default(pk))
        if "destination" in self.sides:
            c.append(s[("pc",)] == self.pc[self.profile.postcopy_states[0]])
            c.append(s[("cursor",)] == 0)
        for f in self.own_flags():
            c.append(z3.Not(s[("flag", f.name)]))
        for side, actor in self.reader_actors:
            c.append(s[("pend", side, actor)] == self.pend_idle)
            c.append(s[("seen", side, actor)] == self.status[self.initial_status])
        for name, side, status in self.history:
            c.append(s[("hist", name)] == (s[("st", side)] == self.status[status]))
        return c

    def _idle(self, s: State, side: str, actor: str) -> z3.BoolRef:
        if (side, actor) in self.reader_actors:
            return s[("pend", side, actor)] == self.pend_idle
        return z3.BoolVal(True)

    def _success_updates(self, row: Transition, ok: z3.BoolRef, s: State,
                         upd: dict[Key, z3.ExprRef]) -> None:
        """Thread-flag effects of a successful CAS of ``row``."""
        for f in self.own_flags():
            if f.kind != "thread":
                continue
            cur = upd.get(("flag", f.name), s[("flag", f.name)])
            if f.set_by == row.id:
                upd[("flag", f.name)] = z3.Or(ok, cur) if not z3.is_true(ok) else z3.BoolVal(True)
            elif row.id in f.cleared_by:
                upd[("flag", f.name)] = z3.And(z3.Not(ok), cur)

    def action_semantics(self, a: Action, s: State, inp: Step, n: State
                         ) -> tuple[z3.BoolRef, dict[Key, z3.ExprRef], list[z3.BoolRef],
                                    Optional[tuple[z3.BoolRef, z3.ExprRef]]]:
        """(enabled, updates, free constraints, emission) of action ``a``.

        ``emission`` is (condition, status) when the step emits a MIGRATION event.
        """
        p = self.profile
        upd: dict[Key, z3.ExprRef] = {}
        free: list[z3.BoolRef] = []
        emit = None
        events_on = lambda side: s[("cap", side, self.model.events_capability)]  # noqa: E731
        if a.row is not None:
            row = a.row
            st = s[("st", a.side)]
            sources = p.sources_of(row)
            idle = self._idle(s, a.side, a.actor)
            if a.kind == "store":
                en = z3.And(idle, self.in_states(st, sources), self.guard(row.guard, a.side, s, inp, status_override=self._others(a.side)))
                upd[("st", a.side)] = self.status[row.new]
                for f in p.flags:
                    if f.kind in ("command", "thread") and self.flag_side.get(f.name) == a.side:
                        upd[("flag", f.name)] = z3.BoolVal(False)
                return en, upd, free, None
            if a.kind == "event":
                en = z3.And(idle, self.in_states(st, sources), self.guard(row.guard, a.side, s, inp, status_override=self._others(a.side)))
                cond = z3.BoolVal(True) if not row.event_needs_cap else events_on(a.side)
                return en, upd, free, (cond, self.status[row.emits])
            if a.kind == "cas":
                en = z3.And(idle, st == self.status[row.old], self.guard(row.guard, a.side, s, inp, status_override=self._others(a.side)))
                upd[("st", a.side)] = self.status[row.new]
                self._success_updates(row, z3.BoolVal(True), s, upd)
                cond = z3.BoolVal(True) if not row.event_needs_cap else events_on(a.side)
                return en, upd, free, (cond, self.status[row.new])
            pend = s[("pend", a.side, a.actor)]
            seen = s[("seen", a.side, a.actor)]
            if a.kind == "read":
                en = z3.And(idle, self.in_states(st, sources),
                            self.guard(row.guard, a.side, s, inp, status_override=self._others(a.side)))
                upd[("pend", a.side, a.actor)] = self.pend[row.id]
                upd[("seen", a.side, a.actor)] = st
                return en, upd, free, None
            # the pending CAS
            en = pend == self.pend[row.id]
            ok = self.same(st, seen)
            upd[("st", a.side)] = z3.If(ok, self.status[row.new], st)
            if row.retry:
                again = z3.And(z3.Not(ok), self.in_states(st, sources))
                upd[("pend", a.side, a.actor)] = z3.If(again, self.pend[row.id], self.pend_idle)
                upd[("seen", a.side, a.actor)] = st
            else:
                upd[("pend", a.side, a.actor)] = self.pend_idle
            self._success_updates(row, ok, s, upd)
            cond = ok if not row.event_needs_cap else z3.And(ok, events_on(a.side))
            return en, upd, free, (cond, self.status[row.new])
        if a.kind in ("command", "caps", "params"):
            c = p.command(a.command)
            # A command runs in one process: the other side's object there is the
            # process's own idle one (a destination never migrates out, a source
            # never receives), i.e. the initial status.
            override = {o: self.status[self.initial_status] for o in SIDES if o != a.side}
            fails = [self.guard(pre.when, a.side, s, inp, status_override=override,
                                state_side=pre.state_side)
                     for pre in c.preconditions]
            en = z3.And(self._idle(s, a.side, self.model.command_actor),
                        z3.Not(z3.Or(fails)) if fails else z3.BoolVal(True))
            if a.kind == "command":
                for f in c.sets_flags:
                    when = self.flag_decl[f].set_when
                    if when == E.TRUE:
                        upd[("flag", f)] = z3.BoolVal(True)
                    else:  # only with the arguments the flag's set_when names
                        upd[("flag", f)] = z3.Or(s[("flag", f)], self.guard(
                            when, a.side, s, inp, status_override=override))
            elif a.kind == "caps":
                new = self._caps_of(n, a.side)
                free.append(z3.Not(self.rules_fail(a.side, s, inp, new, self._caps_of(s, a.side),
                                                   self._params_of(s, a.side))))
                for cap in self.caps:
                    upd[("cap", a.side, cap)] = None  # free
            else:
                newp = self._params_of(n, a.side)
                conds = [self.guard(r.when, a.side, s, inp, params=newp)
                         for r in p.param_rules if r.when is not None]
                if conds:
                    free.append(z3.Not(z3.Or(conds)))
                for pk in self.param_atoms:
                    upd[("param", a.side, pk)] = None
            return en, upd, free, None
        if a.kind == "idle":
            return z3.BoolVal(True), upd, free, None
        if a.kind == "postcopy":
            h = p.postcopy_handler(a.handler)
            j = self.handler_index[h.name]
            cur = s[("cursor",)]
            en = z3.ULE(cur, z3.BitVecVal(j, 4))
            upd[("cursor",)] = z3.BitVecVal(j, 4)
            pc = s[("pc",)]
            if h.op in ("xchg", "set"):
                if h.new is not None:
                    upd[("pc",)] = self.pc[h.new]
            else:  # check_then_set
                if h.new is not None:
                    ok_from = [x for x in h.accepted if h.set_new_from is None
                               or x in h.set_new_from]
                    cond = z3.Or([pc == self.pc[x] for x in ok_from]) if ok_from else \
                        z3.BoolVal(False)
                    upd[("pc",)] = z3.If(cond, self.pc[h.new], pc)
            return en, upd, free, None
        raise ValueError(a.kind)

    def trans(self, s: State, inp: Step, n: State) -> tuple[list[z3.BoolRef], list]:
        """Constraints of one step, and its emissions [(side, cond, status, action)]."""
        cons: list[z3.BoolRef] = []
        chains: dict[Key, list[tuple[z3.BoolRef, Optional[z3.ExprRef]]]] = {}
        emissions = []
        for a in self.actions:
            is_a = self.is_act(inp, a.name)
            en, upd, free, emit = self.action_semantics(a, s, inp, n)
            cons.append(z3.Implies(is_a, en))
            for f in free:
                cons.append(z3.Implies(is_a, f))
            for key, value in upd.items():
                chains.setdefault(key, []).append((is_a, value))
            if emit is not None:
                emissions.append((a.side, z3.And(is_a, emit[0]), emit[1], a))
        for side in self.sides:
            names = self.model.runstates_of(side)
            if len(names) > 1:
                cons.append(z3.ULT(inp.runstate[side], len(names)))
        for key, cur in s.vars.items():
            if key[0] == "hist":
                continue
            entries = chains.get(key, [])
            for cond, v in entries:
                if v is None:
                    continue  # chosen freely (under the action's own constraints)
                for c2, leaf in _flatten_ite(v):
                    cons.append(z3.Implies(z3.And(cond, c2) if c2 is not None else cond,
                                           n[key] == leaf))
            conds = [cond for cond, _ in entries]
            frame = n[key] == cur
            cons.append(z3.Implies(z3.Not(z3.Or(conds)), frame) if conds else frame)
        stores = {side: [self.is_act(inp, a.name) for a in self.actions
                         if a.kind == "store" and a.side == side] for side in self.sides}
        for name, side, status in self.history:
            reset = z3.Or(stores[side]) if stores[side] else z3.BoolVal(False)
            cons.append(n[("hist", name)] == z3.Or(z3.And(s[("hist", name)], z3.Not(reset)),
                                                    n[("st", side)] == self.status[status]))
        self._emission_cache[id(inp)] = emissions
        return cons, emissions

    def last_emissions(self, s: State, inp: Step, n: State) -> tuple[None, list]:
        """The emissions of the step ``inp`` (computed by :meth:`trans`)."""
        if id(inp) not in self._emission_cache:
            self.trans(s, inp, n)
        return None, self._emission_cache[id(inp)]

    # ------------------------------------------------------------ queries
    def store_step(self, inp: Step, side: str) -> z3.BoolRef:
        terms = [self.is_act(inp, a.name) for a in self.actions
                 if a.kind == "store" and a.side == side]
        return z3.Or(terms) if terms else z3.BoolVal(False)

    def row_fired(self, row: Transition, s: State, inp: Step) -> z3.BoolRef:
        """Row ``row`` succeeds in this step (a CAS that changes, stores, or emits)."""
        if row.reads_state and not row.store and not row.event_only:
            return z3.And(self.is_act(inp, row.id),
                          self.same(s[("st", row.side)], s[("seen", row.side, row.actor)]))
        return self.is_act(inp, row.id)

    def can_leave(self, side: str, s: State) -> z3.BoolRef:
        """Some row could still move ``side`` out of its current status.

        Inputs and command flags are existential (a command may still set
        them); each row's guard is expanded over the inputs it reads.  A CAS
        already pending with the current status also leaves.
        """
        p = self.profile
        st = s[("st", side)]
        terms = []
        for row in p.rows(side):
            if row.event_only:
                continue
            sources = p.sources_of(row)
            exists = self._exists_guard(row.guard, side, s)
            moves = z3.Not(st == self.status[row.new])
            terms.append(z3.And(self.in_states(st, sources), moves, exists))
        for (sd, actor) in self.reader_actors:
            if sd != side:
                continue
            for row in p.rows(side):
                if row.reads_state and row.actor == actor and row.id in self.pend:
                    terms.append(z3.And(s[("pend", sd, actor)] == self.pend[row.id],
                                        self.same(s[("seen", sd, actor)], st),
                                        z3.Not(st == self.status[row.new])))
        return z3.Or(terms) if terms else z3.BoolVal(False)

    def _exists_guard(self, ex: E.Expr, side: str, s: State) -> z3.BoolRef:
        inputs: list = []
        for node in E.walk(ex):
            if isinstance(node, E.Flag) and self.flag_kind[node.name] in ("environment", "command"):
                inputs.append(node.name)
            elif isinstance(node, E.Runstate):
                inputs.append(("runstate", side))
            elif isinstance(node, E.Arg):
                inputs.append(("arg", node.name))
        inputs = sorted(set(inputs), key=str)
        if any(isinstance(node, E.ArgState) for node in E.walk(ex)):
            return z3.BoolVal(True)
        options = []
        names = self.model.runstates_of(side)
        domains = []
        for x in inputs:
            if isinstance(x, tuple) and x[0] == "runstate":
                domains.append([z3.BitVecVal(k, 4) for k in range(len(names))])
            else:
                domains.append([z3.BoolVal(True), z3.BoolVal(False)])
        for combo in itertools.product(*domains):
            free = dict(zip(inputs, combo))
            options.append(self.guard(ex, side, s, None, free=free,
                                      status_override=self._others(side)))
        return z3.Or(options) if len(options) > 1 else options[0]

    def pending_lemmas(self, s: State) -> list[z3.BoolRef]:
        """Structural facts of every reachable state: a pending CAS read one of its sources."""
        out = []
        for (side, actor) in self.reader_actors:
            pend = s[("pend", side, actor)]
            for row in self.profile.rows(side):
                if row.id in self.pend and row.actor == actor:
                    out.append(z3.Implies(pend == self.pend[row.id],
                                          self.in_states(s[("seen", side, actor)],
                                                         self.profile.sources_of(row))))
                elif row.id in self.pend:
                    out.append(z3.Not(pend == self.pend[row.id]))
        return out

    def caps_lemmas(self, s: State) -> list[z3.BoolRef]:
        """Candidate lemma: each side's capability set passes the model's own rules."""
        out = []
        for side in self.sides:
            caps = self._caps_of(s, side)
            fails = []
            for r in self.profile.cap_rules:
                if any(isinstance(x, (E.ArgState, E.Arg)) or
                       (isinstance(x, E.Runstate) and len(self.model.runstates_of(side)) > 1
                        and x.name in self.model.runstates_of(side)) or
                       (isinstance(x, E.Flag) and self.flag_kind.get(x.name) == "environment")
                       for x in E.walk(r.when)):
                    continue  # depends on inputs: not a state fact
                fails.append(self.guard(r.when, side, s, None, caps=caps, was=caps,
                                        status_override={"source": self.status[self.initial_status]}
                                        if side == "destination" else None))
            out.append(z3.Not(z3.Or(fails)) if fails else z3.BoolVal(True))
        return out

    def postcopy_pairs(self) -> set[tuple[int, str]]:
        """Every (cursor, PostcopyState) the handler steps can reach (explicit search).

        The handlers read nothing but the cursor and PostcopyState, so this
        small search is exact; the lemma built from it is still proved by Z3
        before use.
        """
        p = self.profile
        start = (0, p.postcopy_states[0])
        seen = {start}
        todo = [start]
        while todo:
            cur, pc = todo.pop()
            for h in p.postcopy_handlers:
                j = self.handler_index[h.name]
                if cur > j:
                    continue
                new = pc
                if h.op in ("xchg", "set"):
                    new = h.new if h.new is not None else pc
                elif h.new is not None and pc in h.accepted and (
                        h.set_new_from is None or pc in h.set_new_from):
                    new = h.new
                nxt = (j, new)
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return seen

    def cursor_lemmas(self, s: State) -> list[z3.BoolRef]:
        """Candidate lemma: (cursor, PostcopyState) is one of :meth:`postcopy_pairs`."""
        if "destination" not in self.sides:
            return []
        pairs = self.postcopy_pairs()
        return [z3.Or([z3.And(s[("cursor",)] == c, s[("pc",)] == self.pc[x])
                       for c, x in sorted(pairs)])]

    def forward_closure(self, side: str, status: str) -> set[str]:
        """Statuses ``side`` can reach from ``status`` through rows other than stores."""
        p = self.profile
        seen = {status}
        todo = [status]
        while todo:
            x = todo.pop()
            for row in p.rows(side):
                if row.store or row.new is None or x not in p.sources_of(row):
                    continue
                if row.new not in seen:
                    seen.add(row.new)
                    todo.append(row.new)
        return seen

    def candidate_lemmas(self, s: State) -> list[tuple[str, z3.BoolRef]]:
        """Candidate facts for Houdini (each is kept only if the set proves inductive).

        Generic families read from the spec: a status never meets a
        PostcopyState / thread flag / history bit it cannot meet; a history bit
        implies the forward closure of its status.
        """
        p = self.profile
        out: list[tuple[str, z3.BoolRef]] = []
        for x in (p.status_names if "destination" in self.sides else ()):
            for v in p.postcopy_states:
                out.append((f"dst:{x}/pc:{v}", z3.Not(z3.And(
                    s[("st", "destination")] == self.status[x], s[("pc",)] == self.pc[v]))))
        for f in self.own_flags():
            side = self.flag_side.get(f.name, "source")
            for x in p.status_names:
                out.append((f"{side}:{x}/{f.name}", z3.Not(z3.And(
                    s[("st", side)] == self.status[x], s[("flag", f.name)]))))
        for name, side, status in self.history:
            closure = self.forward_closure(side, status)
            out.append((f"hist:{name}", z3.Implies(s[("hist", name)],
                                                   self.in_states(s[("st", side)], closure))))
        return out
