"""Checking a running engine against the spec, step by step.

:class:`RuntimeChecker` is fed the engine's transition log as it grows and
the capabilities in force.  It checks, for every successful attempt:

* the attempt is a row of its side, from a state the row allows, to the
  row's new state, continuing that side's previous state (the log is a path
  of rows; plain-store rows reset, event-only rows change nothing);
* the step invariants of the catalogue (``livemig.spec.invariants``) that the
  prover *proves* for this profile: entered_only_from, leads_only_to,
  never_overwrites, never_after, terminal_stays;

and, on demand, the catalogue's ``implies`` invariants over the current
statuses and capabilities (those whose atoms are observable at run time:
capabilities and statuses; ones that read flags or PostcopyState are left
to the prover).  Entries expected *refuted* are QEMU's own gaps and are not
held against the engine.  It also counts the rows hit, for coverage.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Optional, Union

from livemig.core.cell import Attempt
from livemig.core.guards import GuardEnv, evaluate
from livemig.spec import SIDES
from livemig.spec import expr as E
from livemig.spec.invariants import INVARIANTS
from livemig.spec.schema import Invariant, Profile

STEP_KINDS = ("entered_only_from", "leads_only_to", "never_overwrites", "never_after",
              "terminal_stays")
_OBSERVABLE = (E.Const, E.Cap, E.InState, E.Not, E.All, E.AnyOf)


def proved_invariants(profile: Profile) -> list[Invariant]:
    """The catalogue entries the prover must prove for ``profile``."""
    out = []
    for inv in INVARIANTS:
        expectation = inv.expectation(profile.name)
        if expectation is not None and expectation.result == "proved":
            out.append(inv)
    return out


def observable(expr: E.Expr) -> bool:
    return all(isinstance(node, _OBSERVABLE) for node in E.walk(expr))


@dataclass
class RuntimeChecker:
    """Validates a growing log; ``violations`` lists what broke (empty = fine)."""

    profile: Profile
    state: dict[str, str] = field(default_factory=lambda: {s: "none" for s in SIDES})
    seen_since_reset: dict[str, set[str]] = field(
        default_factory=lambda: {s: set() for s in SIDES})
    rows_hit: Counter = field(default_factory=Counter)
    violations: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._step = [i for i in proved_invariants(self.profile) if i.kind in STEP_KINDS]
        self._implies = [i for i in proved_invariants(self.profile)
                         if i.kind == "implies" and observable(i.when) and observable(i.then)]

    # ------------------------------------------------------------ the log
    def feed(self, attempts: Iterable[Attempt]) -> None:
        for attempt in attempts:
            self._one(attempt)

    def _one(self, a: Attempt) -> None:
        p = self.profile
        if not a.ok:
            return
        try:
            row = p.transition(a.id)
        except KeyError:
            self.violations.append(f"{a.side}: {a.id} is not a spec row")
            return
        if row.side != a.side:
            self.violations.append(f"{a.id} is a {row.side} row, logged by the {a.side}")
            return
        self.rows_hit[row.id] += 1
        if row.event_only:
            if a.new != row.emits or a.old not in p.sources_of(row):
                self.violations.append(f"{a.id}: event {a.new} from {a.old} is not the row's")
            return
        previous = self.state[a.side]
        if a.old != previous:
            self.violations.append(f"{a.side}: {a.id} changes {a.old} but the state was "
                                   f"{previous}")
        if not row.store and a.old not in p.sources_of(row):
            self.violations.append(f"{a.side}: {a.id} cannot fire from {a.old}")
        if a.new != row.new:
            self.violations.append(f"{a.side}: {a.id} goes to {row.new}, logged {a.new}")
        for inv in self._step:
            problem = self._step_violation(inv, row, a.side, a.old, a.new)
            if problem:
                self.violations.append(f"{inv.name}: {problem} ({a.id})")
        self.state[a.side] = a.new
        if row.store:
            self.seen_since_reset[a.side] = set()
        self.seen_since_reset[a.side].add(a.new)

    def _step_violation(self, inv: Invariant, row, side: str, old: str,
                        new: str) -> Optional[str]:
        if inv.side is not None and inv.side != side:
            return None
        states = set(inv.states)
        if inv.kind == "entered_only_from" and new == inv.state and old != new \
                and old not in states:
            return f"{side} entered {new} from {old}"
        if inv.kind == "leads_only_to" and old == inv.state and new != old \
                and new not in states:
            return f"{side} left {old} for {new}"
        if inv.kind == "never_overwrites" and old == inv.state and new in states:
            return f"{side} went from {old} to {new}"
        if inv.kind == "never_after" and inv.state in self.seen_since_reset[side] \
                and new in states and not row.store:
            return f"{side} reached {new} after {inv.state}"
        if inv.kind == "terminal_stays" and old in self.profile.terminal and not row.store \
                and new != old:
            return f"{side} left terminal {old} for {new}"
        return None

    # ------------------------------------------------------------ states
    def check_states(self, states: Mapping[str, str], caps: Mapping[str, Mapping[str, bool]]
                     ) -> None:
        """The observable ``implies`` invariants, per side, over ``states`` and ``caps``."""
        for inv in self._implies:
            for side in ((inv.side,) if inv.side else SIDES):
                env = GuardEnv(profile=self.profile, side=side, states=states,
                               caps=caps[side])
                if evaluate(inv.when, env) and not evaluate(inv.then, env):
                    self.violations.append(
                        f"{inv.name}: {side} is {states[side]} with "
                        f"{sorted(k for k, v in caps[side].items() if v)}")


class CrossSideChecker:
    """Checks the catalogue's :data:`~livemig.spec.invariants.CROSS_SIDE`
    entries over the logs of both sides of a run.

    Feed every successful attempt of either side (in any order between the
    sides; each side's own order is kept) with :meth:`feed`, and the caps
    the side held when it was logged; :meth:`check` then compares times:
    an entry of ``state`` at time t needs the peer's entry of ``peer_state``
    at a time <= t and >= the side's last entry of ``start``.  Both sides
    log with the same clock (one process, or one machine's wall clock)."""

    def __init__(self, profile: Profile) -> None:
        from livemig.spec.invariants import CROSS_SIDE
        self.profile = profile
        self.entries = CROSS_SIDE
        self._entered: dict[tuple[str, str], list[float]] = {}
        self._pending: list[tuple[object, float, float]] = []
        self._start_t: dict[str, float] = {}
        self.violations: list[str] = []

    def feed(self, attempts: Iterable[Attempt],
             caps: Union[Mapping[str, bool], Callable[[], Mapping[str, bool]]]) -> None:
        """``caps``: the side's capabilities, or a function that reads them
        (called only when an attempt may need them: asking a process VM for
        them is a QMP round trip, and a destination may have exited)."""
        known: Optional[Mapping[str, bool]] = None if callable(caps) else caps

        def current() -> Mapping[str, bool]:
            nonlocal known
            if known is None:
                known = caps()  # type: ignore[operator]
            return known

        for a in attempts:
            if not a.ok or a.old == a.new:
                continue
            for inv in self.entries:  # a new migration (migrate_init may store it)
                if a.side == inv.side and a.new == inv.start:
                    self._start_t[inv.side] = a.t
            if self.profile.transition(a.id).store:
                continue
            self._entered.setdefault((a.side, a.new), []).append(a.t)
            for inv in self.entries:
                if a.side == inv.side and a.new == inv.state and \
                        any(current().get(c) for c in inv.caps):
                    self._pending.append((inv, a.t, self._start_t.get(inv.side, 0.0)))

    def check(self, final: bool = True) -> None:
        """Judge the entries fed so far (after both sides were fed).  With
        ``final`` False an unmatched entry stays pending (the peer's log may
        not have been read yet) and is judged by a later final check."""
        still: list[tuple[object, float, float]] = []
        for inv, t, start in self._pending:
            peer = self._entered.get((inv.peer, inv.peer_state), [])
            if any(start <= pt <= t for pt in peer):
                continue
            if not final:
                still.append((inv, t, start))
                continue
            self.violations.append(
                f"{inv.name}: {inv.side} entered {inv.state} at {t:.6f} but "
                f"{inv.peer} had not entered {inv.peer_state} since {start:.6f}")
        self._pending = still
