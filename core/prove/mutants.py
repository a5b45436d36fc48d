"""Spec mutants: does the catalogue notice when the spec is wrong?

Four operators, each applied everywhere it applies (deterministically):

* ``drop-cap-rule``: remove one CAP_RULES entry;
* ``add-edge``: add an unguarded row ``s -> t`` on one side, for every
  status ``s`` the side can be in and ``t`` the status three places further
  in the profile's status order (skipping existing edges and ``t == s``);
* ``widen-guard``: replace a row's guard by TRUE, for rows whose guard reads
  more than environment flags (a guard of environment flags only is already
  free in the model, so widening it is an equivalent mutant by construction);
* ``cas-to-wildcard``: turn an exact CAS row into a wildcard
  (``old = current``, no ``within``): QEMU's ``migrate_set_state(&s, s, NEW)``.

A mutant is killed when some catalogue entry's result differs from its
expectation for the (unmutated) profile; rule-based entries keep reading the
unmutated profile's CAP_RULES.  Survivors are printed with the operator's
explanation of why such a mutant can be equivalent under the catalogue.
"""
from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Optional

from livemig.spec import expr as E
from livemig.spec import load_profile
from livemig.spec.schema import CURRENT, SIDES, Profile, Transition

#: minimum share of killed mutants for ``livemig prove --mutants`` to pass
THRESHOLD = 0.90


@dataclass(frozen=True)
class Mutant:
    """One mutation of a profile."""

    id: str
    operator: str
    profile: str
    description: str
    sides: tuple[str, ...]  # the sides whose model the mutation can change


def _replace_row(p: Profile, row: Transition, new: Transition) -> Profile:
    rows = tuple(new if t.id == row.id else t for t in p.transitions)
    return dataclasses.replace(p, transitions=rows)


def _env_only(p: Profile, guard: E.Expr) -> bool:
    kinds = {f.name: f.kind for f in p.flags}
    for node in E.walk(guard):
        if isinstance(node, E.ATOMS):
            if not (isinstance(node, E.Flag) and kinds.get(node.name) == "environment"):
                return False
    return True


def mutants(profile_name: str) -> list[tuple[Mutant, Profile]]:
    """Every mutant of the profile, with the mutated profile."""
    p = load_profile(profile_name)
    out: list[tuple[Mutant, Profile]] = []
    for r in p.cap_rules:
        m = Mutant(f"drop-cap-rule:{r.id}", "drop-cap-rule", p.name,
                   f"remove cap rule {r.id} ({r.error!r})", SIDES)
        out.append((m, dataclasses.replace(p, cap_rules=tuple(x for x in p.cap_rules
                                                               if x.id != r.id))))
    names = p.status_names
    for side in SIDES:
        unreachable = {u.status for u in p.unreachable if u.side == side}
        edges = {(s, t.new) for t in p.rows(side) if t.new for s in p.sources_of(t)}
        actor = next(t.actor for t in p.rows(side) if not t.store)
        for i, s in enumerate(names):
            if s in unreachable:
                continue
            t = names[(i + 3) % len(names)]
            if t == s or (s, t) in edges:
                continue
            row = Transition(f"mutant.{side}.{s}->{t}", side, actor, "mutant", s, t,
                             old_is_state=True)
            m = Mutant(f"add-edge:{side}:{s}->{t}", "add-edge", p.name,
                       f"add an unguarded {side} row {s} -> {t}", (side,))
            out.append((m, dataclasses.replace(p, transitions=p.transitions + (row,))))
    for row in p.transitions:
        if row.guard != E.TRUE and not _env_only(p, row.guard):
            m = Mutant(f"widen-guard:{row.id}", "widen-guard", p.name,
                       f"guard of {row.id} ({E.to_text(row.guard)}) replaced by true",
                       (row.side,))
            out.append((m, _replace_row(p, row, dataclasses.replace(row, guard=E.TRUE))))
    for row in p.transitions:
        if row.old_is_state and not row.store and not row.event_only:
            m = Mutant(f"cas-to-wildcard:{row.id}", "cas-to-wildcard", p.name,
                       f"{row.id}: CAS({row.old} -> {row.new}) becomes "
                       f"migrate_set_state(&s, s, {row.new})", (row.side,))
            out.append((m, _replace_row(p, row, dataclasses.replace(
                row, old=CURRENT, within=None, old_is_state=False))))
    return out


@dataclass
class MutantResult:
    mutant: Mutant
    killed: bool
    by: list[str]
    seconds: float


@dataclass
class MutantReport:
    results: list[MutantResult] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def killed(self) -> int:
        return sum(r.killed for r in self.results)

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def score(self) -> float:
        return self.killed / self.total if self.total else 1.0

    @property
    def passed(self) -> bool:
        return self.score >= THRESHOLD

    def survivors(self) -> list[MutantResult]:
        return [r for r in self.results if not r.killed]

    def render(self) -> str:
        lines = [f"mutants: {self.killed}/{self.total} killed ({100 * self.score:.1f}%, "
                 f"threshold {100 * THRESHOLD:.0f}%) in {self.seconds:.1f} s"]
        ops = sorted({r.mutant.operator for r in self.results})
        for op in ops:
            rs = [r for r in self.results if r.mutant.operator == op]
            lines.append(f"  {op:16s} {sum(r.killed for r in rs)}/{len(rs)}")
        surv = self.survivors()
        if surv:
            lines.append("survivors:")
            for r in surv:
                why = SURVIVOR_REASONS.get(r.mutant.id, "not explained")
                lines.append(f"  {r.mutant.profile} {r.mutant.id}: {r.mutant.description}")
                lines.append(f"      why: {why}")
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"killed": self.killed, "total": self.total, "score": round(self.score, 4),
                "threshold": THRESHOLD, "passed": self.passed, "seconds": round(self.seconds, 2),
                "survivors": [{"id": r.mutant.id, "profile": r.mutant.profile,
                               "description": r.mutant.description,
                               "why": SURVIVOR_REASONS.get(r.mutant.id, "not explained")}
                              for r in self.survivors()],
                "results": [{"id": r.mutant.id, "profile": r.mutant.profile,
                             "killed": r.killed, "by": r.by, "seconds": round(r.seconds, 2)}
                            for r in self.results]}


_CAUSE = ("the guard's capability term only decides whether this row may fire; with the "
          "capability on, the row already makes the same status changes under environment "
          "flags alone, and no catalogue entry ties a status change to the capability or "
          "thread behind it: widening adds only paths that exist under another capability "
          "set, which the catalogue does not tell apart")
_COLO = ("x-colo can be switched off during colo in QEMU (entry source_colo_needs_x_colo is "
         "refuted on purpose), so no entry can say COLO needs x-colo; entering colo only from "
         "active is still checked")

#: why a known survivor is equivalent as far as the catalogue can tell
SURVIVOR_REASONS: dict[str, str] = {
    "widen-guard:src.colo.start": _COLO,
    "widen-guard:src.completion.colo": _COLO,
    "widen-guard:src.completion.completed": (
        "the guard only separates completed from colo (x-colo) and from a sleeping "
        "migration thread; within active/postcopy-active/device neither is observable by an "
        "entry: completing with x-colo on is a status change the catalogue allows"),
    "widen-guard:src.detect_error.failed": (
        "the row only fires within `active`, where its InState(postcopy-active) term is "
        "always false: widening leaves the environment flag only, an equivalent mutant"),
    "widen-guard:src.bg.failed": _CAUSE,
    "widen-guard:src.bg.completed": _CAUSE,
    "widen-guard:src.multifd.send_failed": _CAUSE,
    "widen-guard:src.multifd.recv_failed": _CAUSE,
    "drop-cap-rule:background-snapshot.zero-copy-send": (
        "redundant rule: zero-copy-send needs multifd (zero-copy-send.needs-plain-multifd, "
        "or zero-copy-send.not-linux off Linux) and background-snapshot.multifd refuses "
        "multifd with background-snapshot, so the pair is refused anyway (with another "
        "message; the catalogue checks sets, not texts)"),
}


def check_mutant(profile_name: str, mutant_id: str) -> MutantResult:
    """Prove the catalogue on one mutant; killed if any result differs from expectation."""
    from livemig.core.prove.catalogue import prove_profile
    t0 = time.perf_counter()
    for m, mp in mutants(profile_name):
        if m.id == mutant_id:
            break
    else:
        raise KeyError(mutant_id)
    ref = load_profile(profile_name)
    results = prove_profile(mp, reference=ref, stop_early=True, sides=m.sides)
    # Only a definite answer that contradicts the expectation kills; with
    # stop_early the entries not reached are "unknown" and say nothing.
    by = [f"{r.invariant} ({r.result}, expected {r.expected})" for r in results
          if r.result != "unknown" and not r.ok]
    return MutantResult(m, bool(by), by, time.perf_counter() - t0)


def _check(args: tuple[str, str]) -> MutantResult:
    return check_mutant(*args)


def run_mutants(profiles: list[str], *, jobs: int = 2,
                limit: Optional[int] = None) -> MutantReport:
    """Check every mutant of ``profiles`` (``limit`` per profile: an even sample)."""
    todo = []
    for name in profiles:
        ms = [m.id for m, _ in mutants(name)]
        if limit is not None and len(ms) > limit:
            step = len(ms) / limit
            ms = [ms[int(i * step)] for i in range(limit)]
        todo += [(name, mid) for mid in ms]
    t0 = time.perf_counter()
    report = MutantReport()
    if jobs > 1:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            report.results = list(pool.map(_check, todo))
    else:
        report.results = [_check(t) for t in todo]
    report.seconds = time.perf_counter() - t0
    return report
