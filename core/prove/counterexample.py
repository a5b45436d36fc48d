"""Counterexamples: a readable step table, and a replayable pytest case.

A trace (from :func:`livemig.core.prove.engine.extract_trace`) is a list of
states and the steps between them.  :func:`steps` turns it into rows of
(actor, row id or command, old -> new, what else changed); idle steps are
dropped.  :func:`render` prints them as a table; :func:`pytest_source` writes
a test that drives ``livemig.core.cell.StatusCell`` (strict mode) through the
same rows and checks every capability change against the profile's
CAP_RULES with the runtime guard evaluator, and a second test that walks the
same path on the engine (``livemig.conformance.replay``).
"""
from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from typing import Optional

from livemig.spec import expr as E
from livemig.spec import load_profile


@dataclass(frozen=True)
class TraceStep:
    """One step of a counterexample, ready to print or to replay."""

    index: int
    side: str
    actor: str
    action: str  # row id, "row@read", command name, "postcopy:handler", "side:command"
    kind: str
    old: str  # the side's status before the step
    new: str  # the side's status after the step
    note: str  # flags, capability changes, CAS outcome


def _guard_flags(profile, row_id: Optional[str], env: list[str]) -> list[str]:
    if row_id is None:
        return []
    row = profile.transition(row_id)
    names = E.names(row.guard, E.Flag)
    return [f for f in env if f in names]


def steps(trace: dict, profile=None) -> list[TraceStep]:
    """The non-idle steps of ``trace`` (``profile``: the one it ran on, e.g. a mutant)."""
    profile = profile or load_profile(trace["profile"])
    states = trace["states"]
    out = []
    for i, st in enumerate(trace["steps"]):
        if st["kind"] == "idle":
            continue
        side = st["side"]
        before, after = states[i], states[i + 1]
        old, new = before.get(side, "?"), after.get(side, "?")
        notes = []
        if st["kind"] == "read":
            notes.append(f"reads {old}")
        elif st["kind"] == "pending":
            seen = before["pending"].get(f"{side}:{st['actor']}", (None, "?"))[1]
            notes.append(f"CAS({seen} -> {profile.transition(st['row']).new}) "
                         + ("ok" if old != new or seen == old else "fails"))
        if st.get("args"):
            notes.append("args: " + ", ".join(f"{a}=true" for a in st["args"]))
        env = _guard_flags(profile, st["row"], st["env"])
        if env:
            notes.append("env: " + ", ".join(env))
        for s2 in trace.get("sides", ("source", "destination")):
            was, now = set(before.get(f"caps:{s2}", [])), set(after.get(f"caps:{s2}", []))
            if was != now:
                change = [f"+{c}" for c in sorted(now - was)] + [f"-{c}" for c in sorted(was - now)]
                notes.append(f"caps {' '.join(change)}")
        was, now = set(before["flags"]), set(after["flags"])
        if was != now:
            notes.append("flags " + " ".join([f"+{f}" for f in sorted(now - was)]
                                             + [f"-{f}" for f in sorted(was - now)]))
        if before.get("postcopy") != after.get("postcopy"):
            notes.append(f"PostcopyState {before.get('postcopy')} -> {after.get('postcopy')}")
        out.append(TraceStep(len(out) + 1, side, st["actor"], st["action"], st["kind"],
                             old, new, "; ".join(notes)))
    return out


def render(trace: dict, title: str = "", profile=None) -> str:
    """The trace as a fixed-width step table."""
    rows = steps(trace, profile)
    head = ("#", "side", "actor", "row / command", "old -> new", "flags / notes")
    cells = [head] + [(str(r.index), r.side, r.actor, r.action,
                       f"{r.old} -> {r.new}" if r.old != r.new else r.old, r.note) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(head) - 1)]
    lines = [title] if title else []
    for n, c in enumerate(cells):
        lines.append("  " + "  ".join(c[i].ljust(widths[i]) for i in range(len(widths)))
                     + "  " + c[-1])
        if n == 0:
            lines.append("  " + "  ".join("-" * w for w in widths) + "  " + "-" * 13)
    final = trace["states"][-1]
    tail = ", ".join(f"{s}={final[s]}" for s in trace.get("sides", ()) if s in final)
    caps = "; ".join(f"{s} caps: {', '.join(final.get(f'caps:{s}', [])) or '-'}"
                     for s in trace.get("sides", ()))
    lines.append(f"  final: {tail}" + (f"; PostcopyState={final['postcopy']}"
                                       if "postcopy" in final else "") + f"; {caps}")
    return "\n".join(lines)


def pytest_source(trace: dict, invariant: str, expect: str) -> str:
    """A pytest module that replays ``trace`` through StatusCell.

    ``expect`` is a Python expression over ``status`` (dict side -> status)
    and ``caps`` (dict side -> set of capability names) that must hold at the
    end: the violated invariant's state.
    """
    data = json.dumps(trace, indent=1, sort_keys=True)
    name = "".join(c if c.isalnum() else "_" for c in f"{trace['profile']}_{invariant}")
    return textwrap.dedent('''\
        """Replay of the `livemig prove` counterexample for {invariant} ({profile}).

        Generated by `livemig prove --write-tests`; the steps are spec rows
        fired through livemig.core.cell.StatusCell in strict mode, so the test
        fails if the spec no longer allows the path.
        """
        import json

        from livemig.core.guards import GuardEnv, evaluate
        from livemig.core.cell import StatusCell
        from livemig.spec import load_profile
        from livemig.spec.invariants import INVARIANTS, MODEL

        TRACE = json.loads(r"""{data}""")


        def test_replay_{name}():
            profile = load_profile(TRACE["profile"])
            cells = {{side: StatusCell(profile, side, strict=True) for side in TRACE["sides"]}}
            caps = {{side: set() for side in TRACE["sides"]}}
            host = {{h.name: h.name not in TRACE["host_false"] for h in profile.host_facts}}
            params = {{p.name: p.default for p in profile.parameters}}
            seen = {{}}
            for i, step in enumerate(TRACE["steps"]):
                before, after = TRACE["states"][i], TRACE["states"][i + 1]
                side, kind = step["side"], step["kind"]
                cell = cells.get(side)
                if kind in ("cas", "read", "store", "event"):
                    # the row's guard holds in the state the prover chose
                    env = GuardEnv(profile, side=side,
                                   states={{s: before[s] for s in TRACE["sides"]}},
                                   caps={{c: c in caps[side] for c in profile.capability_names()}},
                                   flags={{f: True for f in step["env"] + before["flags"]}},
                                   host=host, runstate=MODEL.runstates_of(side)[0],
                                   params=params, postcopy_state=before.get("postcopy", "NONE"))
                    assert evaluate(profile.transition(step["row"]).guard, env), step
                if kind in ("cas",):
                    row = profile.transition(step["row"])
                    assert cell.set_state(row.id, row.old, row.new)
                elif kind == "read":
                    seen[(side, step["actor"])] = cell.state
                    assert cell.state in profile.sources_of(profile.transition(step["row"]))
                elif kind == "pending":
                    row = profile.transition(step["row"])
                    read = seen.pop((side, step["actor"]))
                    assert cell.set_state(row.id, read, row.new) == (read == before[side])
                elif kind == "store":
                    assert cell.store(step["row"])
                elif kind == "event":
                    cell.emit(step["row"])
                elif kind == "caps":
                    new = set(after["caps:" + side])
                    env = GuardEnv(profile, side=side,
                                   caps={{c: c in new for c in profile.capability_names()}},
                                   was_caps={{c: c in caps[side] for c in profile.capability_names()}},
                                   params=params, host=host,
                                   runstate=MODEL.runstates_of(side)[0])
                    failing = [r.id for r in profile.cap_rules if evaluate(r.when, env)]
                    assert not failing, failing
                    caps[side] = new
                if cell is not None:
                    assert cell.state == after[side], (i, step, cell.state)
            status = {{side: cell.state for side, cell in cells.items()}}
            last = TRACE["states"][-2] if len(TRACE["states"]) > 1 else TRACE["states"][-1]
            postcopy = TRACE["states"][-1].get("postcopy", "NONE")
            assert {expect}


        def test_replay_{name}_on_the_engine():
            """The same path walked by the engine over the fake link: it follows
            every row, or parts where conformance/replay.py says why."""
            import pytest
            from livemig.conformance.replay import engine_supports, replay_on_engine
            if not engine_supports(TRACE["profile"]):
                pytest.skip("the engine does not run on " + TRACE["profile"])
            result = replay_on_engine(TRACE)
            assert result.complete or result.known_difference, result.explain()
    ''').format(invariant=invariant, profile=trace["profile"], data=data, name=name,
                expect=expect)


def expectation_source(invariant) -> str:
    """A Python assertion (over the replay's variables) that the final state violates
    ``invariant``; falls back to "the final statuses were reached"."""
    k = invariant.kind
    side = invariant.side or "source"
    if k == "implies":
        return ("(lambda inv, env: evaluate(inv.when, env) and not evaluate(inv.then, env))("
                "next(i for i in INVARIANTS if i.name == {name!r}), "
                "GuardEnv(profile, side={side!r}, states=status, "
                "caps={{c: c in caps[{side!r}] for c in profile.capability_names()}}, "
                "postcopy_state=postcopy))").format(name=invariant.name, side=side)
    if k == "entered_only_from":
        return (f"status[{side!r}] == {invariant.state!r} and last[{side!r}] not in "
                f"{tuple(invariant.states)!r}")
    if k == "leads_only_to":
        return (f"last[{side!r}] == {invariant.state!r} and status[{side!r}] not in "
                f"{tuple(invariant.states) + (invariant.state,)!r}")
    if k == "never_overwrites":
        return (f"last[{side!r}] == {invariant.state!r} and status[{side!r}] in "
                f"{tuple(invariant.states)!r}")
    return "all(status[s] == TRACE['states'][-1][s] for s in status)"
