"""Turn catalogue entries into proof obligations over an :class:`Encoding`.

An obligation is one formula at one position of a path:

* level "state": a formula over the state at position *k*;
* level "trans": a formula over the step from *k-1* to *k*.

Its polarity says what finding it means: "safety" (the formula is a
violation: found = refuted) or "witness" (the formula is a target that must
be reachable: found = good, proved unreachable = the property fails).

What each catalogue kind checks:

* implies: ``when`` and not ``then`` in a state (``Cap`` reads the side's set);
* entered_only_from / leads_only_to / never_overwrites: a step that changes
  the side's status into / out of / from ``state`` with the other end outside
  / outside / inside ``states``;
* never_after: a history bit (set when ``state`` is entered, cleared by the
  side's store row, i.e. a new migrate) together with a status in ``states``;
* postcopy_monotone: a step that moves PostcopyState backwards in the
  profile's POSTCOPY_STATES order;
* terminal_stays: a step that changes a terminal status other than a store;
* caps_satisfy_rules: a step after which some CAP_RULES entry of the
  *reference* profile fails (``Cap`` = after, ``WasCap`` = before);
* events_are_cas: a step that emits a MIGRATION event whose status is not the
  side's new status reached by a successful CAS of the emitting row;
* events_change_state: a step that emits a MIGRATION event while the side's
  status stays what it was (a CAS from X to X, or an event-only row);
* reachable: a witness per status (declared-unreachable ones are safety);
* no_dead_rows: a witness per row (a successful CAS / store / emission);
* no_trap: a state whose status is not terminal and that no row can leave
  now or later: for every row out of the status, its guard is false for every
  choice of inputs and command flags (commands may still set those), given
  the state's capabilities, thread flags and PostcopyState; and no pending
  CAS read the current status.  Thread flags (a thread asleep) are what makes
  a state a trap, e.g. the source's migration thread in postcopy_pause.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal, Optional

import z3

from livemig.core.prove.encode import Encoding, State, Step
from livemig.spec.schema import SIDES, Invariant

StateF = Callable[[State], z3.BoolRef]
TransF = Callable[[State, Step, State], z3.BoolRef]


@dataclass
class Obligation:
    """One formula to find or to prove absent."""

    invariant: str
    label: str  # e.g. "source:postcopy-recover" for per-status sub-checks
    side: str  # the side whose encoding it needs
    level: Literal["state", "trans"]
    polarity: Literal["safety", "witness"]
    formula: Callable  # StateF or TransF


def histories(invariants: tuple[Invariant, ...]) -> list[tuple[str, str, str]]:
    """The history bits the encoding must keep for ``never_after`` entries."""
    return [(inv.name, inv.side, inv.state) for inv in invariants if inv.kind == "never_after"]


def _sides(inv: Invariant) -> tuple[str, ...]:
    return (inv.side,) if inv.side else SIDES


def obligations(enc: Encoding, inv: Invariant) -> list[Obligation]:
    """The obligations of catalogue entry ``inv`` for the encoded profile."""
    p, ref = enc.profile, enc.reference
    k = inv.kind
    def ob(label: str, level: str, pol: str, f: Callable, side: Optional[str] = None) -> Obligation:
        return Obligation(inv.name, label, side or label.split(":")[0], level, pol, f)
    has = lambda name: name in enc.status  # noqa: E731

    if k == "implies":
        side = inv.side or "source"
        return [ob(side, "state", "safety",
                   lambda s: z3.And(enc.guard(inv.when, side, s, None, profile=ref),
                                    z3.Not(enc.guard(inv.then, side, s, None, profile=ref))))]
    if k in ("entered_only_from", "leads_only_to", "never_overwrites"):
        if not has(inv.state):
            return []
        out = []
        for side in _sides(inv):
            X = enc.status[inv.state]

            def f(s, i, n, side=side, X=X):
                a, b = s[("st", side)], n[("st", side)]
                if k == "entered_only_from":
                    return z3.And(z3.Not(a == X), b == X, z3.Not(enc.in_states(a, inv.states)))
                if k == "leads_only_to":
                    return z3.And(a == X, z3.Not(b == X), z3.Not(enc.in_states(b, inv.states)))
                return z3.And(a == X, z3.Not(b == X), enc.in_states(b, inv.states))
            out.append(ob(side, "trans", "safety", f))
        return out
    if k == "never_after":
        side = inv.side
        return [ob(side, "state", "safety",
                   lambda s: z3.And(s[("hist", inv.name)], enc.in_states(s[("st", side)],
                                                                         inv.states)))]
    if k == "postcopy_monotone":
        order = p.postcopy_states

        def f(s, i, n):
            a, b = s[("pc",)], n[("pc",)]
            return z3.Or([z3.And(a == enc.pc[x], b == enc.pc[y])
                          for ix, x in enumerate(order) for y in order[:ix]])
        return [ob("destination", "trans", "safety", f)]
    if k == "terminal_stays":
        out = []
        for side in _sides(inv):
            def f(s, i, n, side=side):
                a, b = s[("st", side)], n[("st", side)]
                return z3.And(enc.in_states(a, ref.terminal), z3.Not(enc.same(a, b)),
                              z3.Not(enc.store_step(i, side)))
            out.append(ob(side, "trans", "safety", f))
        return out
    if k == "caps_satisfy_rules":
        out = []
        for side in _sides(inv):
            def f(s, i, n, side=side):
                return enc.rules_fail(side, s, i, enc._caps_of(n, side), enc._caps_of(s, side),
                                      enc._params_of(n, side), profile=ref)
            out.append(ob(side, "trans", "safety", f))
        return out
    if k == "events_are_cas":
        out = []
        for side in _sides(inv):
            def f(s, i, n, side=side):
                _, emissions = enc.last_emissions(s, i, n)
                bad = []
                for esd, cond, status, action in emissions:
                    if esd != side:
                        continue
                    row = action.row
                    ok = z3.And(n[("st", side)] == status,
                                enc.in_states(s[("st", side)], p.sources_of(row)),
                                n[("st", side)] == enc.status[row.new] if row.new else
                                z3.BoolVal(False))
                    bad.append(z3.And(cond, z3.Not(ok)))
                return z3.Or(bad) if bad else z3.BoolVal(False)
            out.append(ob(side, "trans", "safety", f))
        return out
    if k == "events_change_state":
        out = []
        for side in _sides(inv):
            def f(s, i, n, side=side):
                _, emissions = enc.last_emissions(s, i, n)
                bad = [z3.And(cond, enc.same(s[("st", side)], n[("st", side)]))
                       for esd, cond, _status, _a in emissions if esd == side]
                return z3.Or(bad) if bad else z3.BoolVal(False)
            out.append(ob(side, "trans", "safety", f))
        return out
    if k == "reachable":
        out = []
        for side in _sides(inv):
            declared = {u.status for u in p.unreachable if u.side == side}
            for name in p.status_names:
                X = enc.status[name]
                pol = "safety" if name in declared else "witness"
                out.append(ob(f"{side}:{name}", "state", pol,
                              lambda s, side=side, X=X: s[("st", side)] == X))
        return out
    if k == "no_dead_rows":
        return [ob(row.id, "trans", "witness",
                   lambda s, i, n, row=row: enc.row_fired(row, s, i), side=row.side)
                for row in p.transitions if inv.side is None or row.side == inv.side]
    if k == "no_trap":
        out = []
        for side in _sides(inv):
            out.append(ob(side, "state", "safety",
                          lambda s, side=side: z3.And(
                              z3.Not(enc.in_states(s[("st", side)], ref.terminal)),
                              z3.Not(enc.can_leave(side, s)))))
        return out
    raise ValueError(f"unknown invariant kind {k!r}")
