"""BMC and k-induction over an :class:`Encoding`.

* BMC unrolls from the initial state, one step at a time, and at each depth
  asks for every open obligation at once (one query for their disjunction;
  on "sat" the model says which ones hold, those are recorded and the query
  repeats without them).  Counterexamples are therefore shortest.
* k-induction then tries to show that every remaining safety obligation (and
  every unfound witness, read as "never") is impossible: from any window of
  *k* steps that satisfies the structural lemmas and avoids the formula, the
  next step still avoids it.  BMC has covered every depth below *k*, so an
  "unsat" is a proof.
* The lemmas (a pending CAS holds one of its sources; each side's capability
  set passes the model's own rules; the PostcopyState cursor is consistent)
  are themselves proved by 1-induction before they are used; one that fails
  to prove is simply not used.
* Anything neither found by BMC nor proved by induction stays "open", which
  the catalogue runner reports as ``unknown`` (a failure).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import z3

from livemig.core.prove.encode import Encoding, State
from livemig.core.prove.obligations import Obligation


@dataclass
class Finding:
    """What the engine found for one obligation."""

    obligation: Obligation
    status: str = "open"  # "found" | "absent" | "open"
    method: str = ""
    k: int = 0
    trace: Optional[dict] = None
    seconds: float = 0.0  # time from the engine's start until settled


@dataclass
class EngineStats:
    bmc_depth: int = 0
    queries: int = 0
    lemmas: list[str] = field(default_factory=list)
    seconds: float = 0.0
    unknown_reason: str = ""
    phases: dict = field(default_factory=dict)


def _solver() -> z3.Solver:
    """Z3's default incremental solver (enumeration sorts, Booleans, small bit-vectors)."""
    return z3.Solver()


class Engine:
    """Runs BMC then k-induction for a batch of obligations of one encoding."""

    def __init__(self, enc: Encoding, obligations: list[Obligation], *,
                 bmc_depth: int = 14, max_k: int = 3) -> None:
        self.enc = enc
        self.obligations = obligations
        self.bmc_depth = bmc_depth
        self.max_k = max_k
        self.findings = [Finding(o) for o in obligations]
        #: with stop_early: the invariants whose refutation ends the run
        self.kill_on: Optional[set[str]] = None
        self.killed = False
        self._formulas: dict = {}
        self.stats = EngineStats()

    # ---------------------------------------------------------- formulas
    def _at(self, o: Obligation, tag: str, k: int) -> Optional[z3.BoolRef]:
        """The obligation's formula ending at position ``k`` of unrolling ``tag``."""
        key = (id(o), tag, k)
        if key not in self._formulas:
            enc = self.enc
            if o.level == "state":
                phi = o.formula(enc.state(tag, k))
            elif k == 0:
                phi = None
            else:
                phi = o.formula(enc.state(tag, k - 1), enc.step(tag, k - 1), enc.state(tag, k))
            self._formulas[key] = phi
        return self._formulas[key]

    def _trans(self, tag: str, i: int) -> list[z3.BoolRef]:
        cons, _ = self.enc.trans(self.enc.state(tag, i), self.enc.step(tag, i),
                                 self.enc.state(tag, i + 1))
        return cons

    # ---------------------------------------------------------- BMC
    def _bmc(self) -> z3.Solver:
        enc = self.enc
        if not hasattr(self, "_bmc_solver"):
            self._bmc_solver = _solver()
            self._bmc_solver.add(enc.init(enc.state("b", 0)))
            self._bmc_unrolled = 0
        return self._bmc_solver

    def _unroll(self, k: int) -> None:
        s = self._bmc()
        while self._bmc_unrolled < k:
            s.add(self._trans("b", self._bmc_unrolled))
            self._bmc_unrolled += 1
        self.stats.bmc_depth = max(self.stats.bmc_depth, k)

    def bmc(self, lo: int, hi: int, polarity: str = "safety", stop_early: bool = False) -> None:
        """Exact-depth search, depth ``lo`` .. ``hi``: the first hit is a shortest path."""
        enc = self.enc
        s = self._bmc()
        open_ = [f for f in self.findings if f.status == "open"
                 and f.obligation.polarity == polarity]
        for k in range(lo, hi + 1):
            if not open_:
                return
            self._unroll(k)
            formulas = {}
            for f in open_:
                phi = self._at(f.obligation, "b", k)
                if phi is not None:
                    formulas[id(f)] = (f, phi)
            while formulas:
                lit = z3.FreshBool("q")
                s.add(z3.Implies(lit, z3.Or([phi for _, phi in formulas.values()])))
                self.stats.queries += 1
                r = s.check(lit)
                if r == z3.unsat:
                    break
                if r != z3.sat:
                    self.stats.unknown_reason = s.reason_unknown()
                    return  # unknown: leave open
                m = s.model()
                hit = [key for key, (f, phi) in formulas.items()
                       if z3.is_true(m.eval(phi, model_completion=True))]
                trace = extract_trace(enc, m, "b", k)
                self._harvest(m, k)
                for key in hit:
                    f, phi = formulas.pop(key)
                    f.status, f.method, f.k = "found", "bmc", k
                    f.trace = trace if stop_early else self._lean_trace(phi, m, k)
                    f.seconds = time.perf_counter() - self._t0
                if stop_early and self._stopped(True):
                    return
            open_ = [f for f in open_ if f.status == "open"]

    def _lean_trace(self, phi: z3.BoolRef, m: z3.ModelRef, k: int) -> dict:
        """The counterexample with as few capabilities switched on as it needs.

        Greedy: for each capability the path turns on, ask whether the same
        violation at the same depth exists with it off throughout; keep it
        off if so.  Only for readability: the violation is the same.
        """
        enc, s = self.enc, self._bmc()
        goal = z3.FreshBool("lean")
        s.add(z3.Implies(goal, phi))
        kept: list[z3.BoolRef] = []
        for side in enc.sides:
            for cap in enc.caps:
                on = [enc.state("b", j)[("cap", side, cap)] for j in range(k + 1)]
                if not any(z3.is_true(m.eval(x, model_completion=True)) for x in on):
                    continue
                off = z3.FreshBool("off")
                s.add(z3.Implies(off, z3.Not(z3.Or(on))))
                self.stats.queries += 1
                if s.check(goal, *kept, off) == z3.sat:
                    kept.append(off)
                    m = s.model()
        return extract_trace(enc, m, "b", k)

    def _harvest(self, m: z3.ModelRef, k: int) -> None:
        """Record every open witness that the path in ``m`` (length ``k``) hits."""
        full = None
        for f in self.findings:
            if f.status != "open" or f.obligation.polarity != "witness":
                continue
            for j in range(k + 1):
                phi = self._at(f.obligation, "b", j)
                if phi is not None and z3.is_true(m.eval(phi, model_completion=True)):
                    full = full or extract_trace(self.enc, m, "b", k)
                    f.status, f.method, f.k = "found", "bmc", j
                    f.trace = dict(full, states=full["states"][:j + 1],
                                   steps=full["steps"][:j])
                    f.seconds = time.perf_counter() - self._t0
                    break

    def witness_depths(self) -> list[int]:
        """Unrollings for the witness search: a few, growing to ``bmc_depth``."""
        out = list(range(self.max_k + 3, self.bmc_depth, 4)) + [self.bmc_depth]
        return sorted(set(out))

    def witness_search(self, depth: int) -> None:
        """Find every open witness anywhere on a path of ``depth`` steps.

        One query asks for a path that hits any remaining target at any
        position; every target the model hits is recorded (with the path up to
        that position) and the query repeats for the rest.  Only the last query
        is "unsat".  Paths may contain idle steps; they are not shortest.
        """
        enc = self.enc
        s = self._bmc()
        self._unroll(depth)
        targets = {}
        for f in self.findings:
            if f.status == "open" and f.obligation.polarity == "witness":
                per_pos = [(j, self._at(f.obligation, "b", j)) for j in range(depth + 1)]
                targets[id(f)] = (f, [(j, phi) for j, phi in per_pos if phi is not None])
        hits = {}
        for key, (f, ps) in targets.items():
            h = z3.FreshBool("hit")
            s.add(h == z3.Or([phi for _, phi in ps]))
            hits[key] = h
        want = 3  # ask for paths that hit several targets at once; fall back to one
        while targets:
            lit = z3.FreshBool("w")
            n = min(want, len(targets))
            s.add(z3.Implies(lit, z3.AtLeast(*[hits[key] for key in targets], n)))
            self.stats.queries += 1
            r = s.check(lit)
            if r == z3.unsat and n > 1:
                want = n - 1
                continue
            if r != z3.sat:
                if r != z3.unsat:
                    self.stats.unknown_reason = s.reason_unknown()
                return
            self._harvest(s.model(), depth)
            for key in [key for key, (f, _) in targets.items() if f.status != "open"]:
                del targets[key]

    # ---------------------------------------------------------- lemmas
    def _lemma_sets(self, st: State) -> dict[str, list[z3.BoolRef]]:
        sets = {"pending": self.enc.pending_lemmas(st), "caps": self.enc.caps_lemmas(st),
                "cursor": self.enc.cursor_lemmas(st)}
        for name, phi in self.enc.candidate_lemmas(st):
            sets[name] = [phi]
        return sets

    def prove_lemmas(self) -> list[str]:
        """Houdini: the largest subset of the candidate lemmas that is inductive.

        Drop candidates false in the initial state; then, while some step from
        a state satisfying all kept candidates violates one, drop the violated
        ones.  What remains holds in every reachable state.
        """
        enc = self.enc
        s0 = enc.state("l0", 0)
        init = _solver()
        init.add(enc.init(s0))
        init.check()
        m0 = init.model()
        sets0 = self._lemma_sets(s0)
        names = [n for n, fs in sets0.items()
                 if all(z3.is_true(m0.eval(f, model_completion=True)) for f in fs)]
        a, b = enc.state("l", 0), enc.state("l", 1)
        la, lb = self._lemma_sets(a), self._lemma_sets(b)
        s = _solver()
        s.add(self._trans("l", 0))
        guards = {}
        for n in la:
            g = z3.Bool(f"lemma{enc.uid}_{n}")
            guards[n] = g
            s.add(z3.Implies(g, z3.And(la[n])))
        while names:
            self.stats.queries += 1
            r = s.check(*[guards[n] for n in names],
                        z3.Not(z3.And([f for n in names for f in lb[n]])))
            if r == z3.unsat:
                return names
            if r != z3.sat:
                return []
            m = s.model()
            keep = [n for n in names
                    if all(z3.is_true(m.eval(f, model_completion=True)) for f in lb[n])]
            if len(keep) == len(names):
                return []
            names = keep
        return []

    # ---------------------------------------------------------- k-induction
    def induction(self, polarity: Optional[str] = None) -> None:
        """k-induction for the open obligations (of one ``polarity``, if given)."""
        enc = self.enc
        open_ = [f for f in self.findings if f.status == "open"
                 and (polarity is None or f.obligation.polarity == polarity)]
        if not open_:
            return
        if not hasattr(self, "_ind_solver"):
            t = time.perf_counter()
            lemmas = self.prove_lemmas()
            self.stats.lemmas = lemmas
            self.stats.phases["lemmas"] = time.perf_counter() - t
            s = _solver()
            for i in range(self.max_k + 1):
                st = enc.state("w", i)
                sets = self._lemma_sets(st)
                for n in lemmas:
                    s.add(sets[n])
                if i < self.max_k:
                    s.add(self._trans("w", i))
            self._ind_solver = s
        s = self._ind_solver
        # k = 1 in batches: one query for the disjunction, drop what the model violates.
        batch = {id(f): (f, self._at(f.obligation, "w", 1)) for f in open_}
        while batch:
            lit = z3.FreshBool("b")
            s.add(z3.Implies(lit, z3.Or([phi for _, phi in batch.values()])))
            self.stats.queries += 1
            r = s.check(lit)
            if r == z3.unsat:
                for f, _ in batch.values():
                    f.status, f.method, f.k = "absent", "k-induction", 1
                    f.seconds = time.perf_counter() - self._t0
                break
            if r != z3.sat:
                break
            m = s.model()
            hit = [key for key, (f, phi) in batch.items()
                   if z3.is_true(m.eval(phi, model_completion=True))]
            for key in hit:
                batch.pop(key)
        for k in range(2, self.max_k + 1):
            for f in [f for f in open_ if f.status == "open"]:
                o = f.obligation
                first = 0 if o.level == "state" else 1
                assumptions = []
                for j in range(first, k):
                    lit = z3.FreshBool("n")
                    s.add(z3.Implies(lit, z3.Not(self._at(o, "w", j))))
                    assumptions.append(lit)
                lit = z3.FreshBool("b")
                s.add(z3.Implies(lit, self._at(o, "w", k)))
                assumptions.append(lit)
                self.stats.queries += 1
                if s.check(*assumptions) == z3.unsat:
                    f.status, f.method, f.k = "absent", "k-induction", k
                    f.seconds = time.perf_counter() - self._t0

    def run(self, stop_early: bool = False) -> list[Finding]:
        """Base-case BMC, k-induction, deep BMC for refutations, witness search."""
        t0 = self._t0 = time.perf_counter()

        def phase(name: str, fn, *args) -> None:
            if self._stopped(stop_early):
                return
            t = time.perf_counter()
            fn(*args)
            self.stats.phases[name] = round(time.perf_counter() - t, 3)

        phase("bmc-base", self.bmc, 0, self.max_k, "safety", stop_early)
        phase("induction", self.induction, "safety")
        phase("bmc-deep", self.bmc, self.max_k + 1, self.bmc_depth, "safety", stop_early)
        if not stop_early:
            for depth in self.witness_depths():
                if any(f.status == "open" and f.obligation.polarity == "witness"
                       for f in self.findings):
                    phase(f"witness-{depth}", self.witness_search, depth)
            if any(f.status == "open" for f in self.findings):
                phase("induction-witness", self.induction, "witness")
        self.stats.seconds = time.perf_counter() - t0
        return self.findings

    def _stopped(self, stop_early: bool) -> bool:
        if not stop_early:
            return False
        self.killed = any(f.status == "found" and f.obligation.polarity == "safety"
                          and (self.kill_on is None or f.obligation.invariant in self.kill_on)
                          for f in self.findings)
        return self.killed


# -------------------------------------------------------------- traces
def extract_trace(enc: Encoding, m: z3.ModelRef, tag: str, k: int) -> dict:
    """The path of length ``k`` in model ``m`` as plain data (see counterexample.py)."""
    ev = lambda x: m.eval(x, model_completion=True)  # noqa: E731
    states = []
    for i in range(k + 1):
        s = enc.state(tag, i)
        d = {side: enc.status_name[str(ev(s[("st", side)]))] for side in enc.sides}
        if ("pc",) in s.vars:
            d["postcopy"] = enc.pc_name[str(ev(s[("pc",)]))]
        for side in enc.sides:
            d[f"caps:{side}"] = sorted(c for c in enc.caps if z3.is_true(ev(s[("cap", side, c)])))
        d["flags"] = sorted(f.name for f in enc.own_flags()
                            if z3.is_true(ev(s[("flag", f.name)])))
        pend = {}
        for side, actor in sorted(enc.reader_actors):
            pv = str(ev(s[("pend", side, actor)]))
            if pv in enc.pend_name:
                pend[f"{side}:{actor}"] = (enc.pend_name[pv],
                                           enc.status_name[str(ev(s[("seen", side, actor)]))])
        d["pending"] = pend
        states.append(d)
    steps = []
    for i in range(k):
        inp = enc.step(tag, i)
        a = enc.action_by_const[str(ev(inp.act))]
        env = sorted(n for n, v in inp.env.items() if z3.is_true(ev(v)))
        args = sorted(n for n, v in inp.args.items() if z3.is_true(ev(v)))
        steps.append({"action": a.name, "kind": a.kind, "side": a.side, "actor": a.actor,
                      "row": a.row.id if a.row is not None else None,
                      "command": a.command, "handler": a.handler, "env": env,
                      "args": args if a.kind == "command" else []})
    host = sorted(h for h, v in enc.host.items() if not z3.is_true(ev(v)))
    return {"profile": enc.profile.name, "sides": list(enc.sides), "states": states,
            "steps": steps,
            "host_false": host}
