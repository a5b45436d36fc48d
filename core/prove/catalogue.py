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


def _fold(inv: Invariant, profile: str, findings: list) -> Result:
    exp = inv.expectation(profile)
    expected = exp.result if exp else "proved"
    reason = exp.reason if exp else "no expectation in the catalogue for this profile"
    safety = [f for f in findings if f.polarity == "safety"]
    witness = [f for f in findings if f.polarity == "witness"]
    found = [f for f in safety if f.status == "found"]
    impossible = [f for f in witness if f.status == "absent"]
    seconds = max((f.seconds for f in findings), default=0.0)
    details: list[str] = []
    cex = None
    if found or impossible:
        result = "refuted"
        if found:
            first = min(found, key=lambda f: f.k)
            method, k, cex = "bmc", first.k, first.trace
            details = [f"{f.label}: violated at depth {f.k}" for f in found]
        else:
            method, k = "k-induction", max(f.k for f in impossible)
        details += [f"{f.label}: impossible (k-induction, k={f.k})"
                    for f in impossible]
        if inv.kind == "reachable" and found:
            details = [f"{f.label}: declared unreachable but reached at depth {f.k}"
                       for f in found] + details[len(found):]
    elif any(f.status == "open" for f in findings):
        result, method = "unknown", "bmc+k-induction"
        k = max((f.k for f in findings), default=0)
        details = [f"{f.label}: undecided" for f in findings if f.status == "open"]
    else:
        result = "proved"
        methods = sorted({f.method for f in findings})
        method = "+".join(methods) if methods else "vacuous"
        k = max((f.k for f in findings), default=0)
        if witness:
            details = [f"{len(witness)} witnesses, deepest at depth "
                       f"{max(f.k for f in witness)}"]
    return Result(inv.name, profile, expected, result, method, k, seconds, reason, details, cex)


@dataclass
class Settled:
    """A finding reduced to plain data (picklable across processes)."""

    invariant: str
    label: str
    polarity: str
    status: str
    method: str
    k: int
    trace: Optional[dict]
    seconds: float


def run_side(profile: Profile | str, side: str, invariants: tuple[Invariant, ...] = INVARIANTS,
             *, reference: Optional[Profile] = None, bmc_depth: int = BMC_DEPTH,
             max_k: int = MAX_K, stop_early: bool = False) -> tuple[list[Settled], dict, bool]:
    """Run the engine on one side's encoding: (settled obligations, stats, killed)."""
    p = load_profile(profile) if isinstance(profile, str) else profile
    enc = Encoding(p, reference=reference, history=histories(invariants), sides=(side,))
    obs = [o for inv in invariants for o in obligations(enc, inv) if o.side == side]
    eng = Engine(enc, obs, bmc_depth=bmc_depth, max_k=max_k)
    if stop_early:
        eng.kill_on = {inv.name for inv in invariants
                       if inv.expectation(p.name) is None
                       or inv.expectation(p.name).result == "proved"}
    findings = eng.run(stop_early=stop_early)
    settled = [Settled(f.obligation.invariant, f.obligation.label, f.obligation.polarity,
                       f.status, f.method, f.k, f.trace, f.seconds) for f in findings]
    stats = {"seconds": round(eng.stats.seconds, 3), "queries": eng.stats.queries,
             "bmc_depth": eng.stats.bmc_depth, "lemmas": len(eng.stats.lemmas),
             "phases": eng.stats.phases}
    return settled, stats, eng.killed


def _fold_all(p_name: str, invariants: tuple[Invariant, ...], settled: list[Settled],
              complete: bool) -> list[Result]:
    per_inv: dict[str, list] = {inv.name: [] for inv in invariants}
    for f in settled:
        per_inv[f.invariant].append(f)
    return [_fold(inv, p_name, per_inv[inv.name]) for inv in invariants
            if per_inv[inv.name] or complete]


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
    settled: list[Settled] = []
    side_stats = {}
    for side in sides:
        got, st, killed = run_side(p, side, invariants, reference=reference,
                                   bmc_depth=bmc_depth, max_k=max_k, stop_early=stop_early)
        settled += got
        side_stats[side] = st
        if stop_early and killed:
            break
    if stats is not None:
        stats.append(RunStats(p.name, time.perf_counter() - t0, side_stats))
    return _fold_all(p.name, invariants, settled, sides == SIDES)


def _run_side_task(args: tuple) -> tuple:
    name, side, bmc_depth, max_k = args
    t = time.perf_counter()
    settled, st, _ = run_side(name, side, bmc_depth=bmc_depth, max_k=max_k)
    return name, side, settled, st, time.perf_counter() - t


def prove_all(names: Optional[list[str]] = None, *, jobs: int = 1,
              bmc_depth: int = BMC_DEPTH, max_k: int = MAX_K,
              stats: Optional[list] = None) -> list[Result]:
    """The whole catalogue for each named profile (default: every profile).

    With ``jobs`` > 1 the (profile, side) runs are spread over that many
    processes, heaviest first.
    """
    from livemig.spec import profile_names
    names = names or list(profile_names())
    tasks = [(n, side, bmc_depth, max_k) for n in names for side in SIDES]
    # the source side carries most of the work: start those first
    tasks.sort(key=lambda t: (t[1] != "source", t[0]), reverse=False)
    if jobs > 1 and len(tasks) > 1:
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            done = list(pool.map(_run_side_task, tasks))
    else:
        done = [_run_side_task(t) for t in tasks]
    out: list[Result] = []
    for n in names:
        mine = [d for d in done if d[0] == n]
        settled = [f for d in mine for f in d[2]]
        if stats is not None:
            stats.append(RunStats(n, sum(d[4] for d in mine), {d[1]: d[3] for d in mine}))
        out += _fold_all(n, INVARIANTS, settled, True)
    return out
