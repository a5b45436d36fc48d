"""Run the invariant catalogue against a profile and compare with expectations.

For each profile the prover builds one encoding per side (source and
destination do not read each other's state in the model, see
``encode``), turns every catalogue entry into obligations, runs the engine
once per side for all of them together, and folds the findings back into one
:class:`Result` per entry.

How findings become a result:
  * a safety obligation found by BMC refutes the entry (the first one gives
    the counterexample); all safety obligations shown absent by k-induction
    prove it;
  * a witness obligation (``reachable``, ``no_dead_rows``) must be found;
    one shown impossible by k-induction refutes the entry (the dead rows or
    unreachable statuses are listed);
  * anything still open makes the result ``unknown``, which never matches an
    expectation.
``seconds`` of a result is the wall time from the start of its side's
engine run until its last obligation was settled (the engine settles
everything in shared batched queries, so per-entry times overlap).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

from livemig.core.prove.encode import Encoding
from livemig.core.prove.engine import Engine
from livemig.core.prove.obligations import histories, obligations
from livemig.spec import load_profile
from livemig.spec.invariants import INVARIANTS
from livemig.spec.schema import SIDES, Invariant, Profile

#: default bounds: BMC depth (steps) and the largest k for k-induction
BMC_DEPTH = 14
MAX_K = 3


@dataclass
class Result:
    """The prover's answer for one catalogue entry on one profile."""

    invariant: str
    profile: str
    expected: str
    result: str  # "proved" | "refuted" | "unknown"
    method: str
    k: int
    seconds: float
    reason: str = ""
    details: list[str] = field(default_factory=list)
    counterexample: Optional[dict] = None

    @property
    def ok(self) -> bool:
        return self.result == self.expected

    def to_json(self) -> dict:
        return {"name": self.invariant, "profile": self.profile, "expected": self.expected,
                "result": self.result, "method": self.method, "k": self.k,
                "seconds": round(self.seconds, 3), "ok": self.ok, "reason": self.reason,
                "details": self.details, "counterexample": self.counterexample}


@dataclass
class RunStats:
    """Timing and engine counters of one profile run."""

    profile: str
    seconds: float
    per_side: dict[str, dict]


def _fold(inv: Invariant, profile: str, findings: list, elapsed: dict) -> Result:
    exp = inv.expectation(profile)
    expected = exp.result if exp else "proved"
    reason = exp.reason if exp else "no expectation in the catalogue for this profile"
    safety = [f for f in findings if f.obligation.polarity == "safety"]
    witness = [f for f in findings if f.obligation.polarity == "witness"]
    found = [f for f in safety if f.status == "found"]
    impossible = [f for f in witness if f.status == "absent"]
    seconds = max((elapsed.get(id(f), 0.0) for f in findings), default=0.0)
    details: list[str] = []
    cex = None
    if found or impossible:
        result = "refuted"
        if found:
            first = min(found, key=lambda f: f.k)
            method, k, cex = "bmc", first.k, first.trace
            details = [f"{f.obligation.label}: violated at depth {f.k}" for f in found]
        else:
            method, k = "k-induction", max(f.k for f in impossible)
        details += [f"{f.obligation.label}: impossible (k-induction, k={f.k})"
                    for f in impossible]
        if inv.kind == "reachable" and found:
            details = [f"{f.obligation.label}: declared unreachable but reached at depth {f.k}"
                       for f in found] + details[len(found):]
    elif any(f.status == "open" for f in findings):
        result, method = "unknown", "bmc+k-induction"
        k = max((f.k for f in findings), default=0)
        details = [f"{f.obligation.label}: undecided" for f in findings if f.status == "open"]
    else:
        result = "proved"
        methods = sorted({f.method for f in findings})
        method = "+".join(methods) if methods else "vacuous"
        k = max((f.k for f in findings), default=0)
        if witness:
            details = [f"{len(witness)} witnesses, deepest at depth "
                       f"{max(f.k for f in witness)}"]
    return Result(inv.name, profile, expected, result, method, k, seconds, reason, details, cex)


def prove_profile(profile: Profile | str, invariants: tuple[Invariant, ...] = INVARIANTS, *,
                  reference: Optional[Profile] = None, bmc_depth: int = BMC_DEPTH,
                  max_k: int = MAX_K, stop_early: bool = False,
                  stats: Optional[list] = None,
                  sides: tuple[str, ...] = SIDES) -> list[Result]:
    """Every catalogue entry's result for ``profile``.

    ``reference`` (default: the profile itself) is the profile whose rules
    the rule-based entries read; for a mutant it is the unmutated profile and
    ``profile.name`` is the name used to look up expectations.
    ``stop_early`` stops at the first refuted safety obligation whose entry
    is expected to be proved (used to kill mutants quickly).  ``sides``
    limits the run to those sides' encodings; entries with no obligation on
    them are left out of the answer.
    """
    p = load_profile(profile) if isinstance(profile, str) else profile
    t0 = time.perf_counter()
    per_inv: dict[str, list] = {inv.name: [] for inv in invariants}
    elapsed: dict[int, float] = {}
    side_stats = {}
    hist = histories(invariants)
    for side in sides:
        enc = Encoding(p, reference=reference, history=hist, sides=(side,))
        obs = []
        for inv in invariants:
            for o in obligations(enc, inv):
                if o.side == side:
                    obs.append(o)
        eng = Engine(enc, obs, bmc_depth=bmc_depth, max_k=max_k)
        if stop_early:
            eng.kill_on = {inv.name for inv in invariants
                           if inv.expectation(p.name) is None
                           or inv.expectation(p.name).result == "proved"}
        findings = eng.run(stop_early=stop_early)
        for f in findings:
            per_inv[f.obligation.invariant].append(f)
            elapsed[id(f)] = f.seconds
        side_stats[side] = {"seconds": round(eng.stats.seconds, 3),
                            "queries": eng.stats.queries, "bmc_depth": eng.stats.bmc_depth,
                            "lemmas": len(eng.stats.lemmas), "phases": eng.stats.phases}
        if stop_early and eng.killed:
            break
    if stats is not None:
        stats.append(RunStats(p.name, time.perf_counter() - t0, side_stats))
    return [_fold(inv, p.name, per_inv[inv.name], elapsed) for inv in invariants
            if per_inv[inv.name] or sides == SIDES]


def prove_all(names: Optional[list[str]] = None, **kw) -> list[Result]:
    """``prove_profile`` for each named profile (default: every profile)."""
    from livemig.spec import profile_names
    out: list[Result] = []
    for name in names or list(profile_names()):
        out += prove_profile(name, **kw)
    return out
