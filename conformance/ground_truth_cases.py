"""Ground truth, job 1 of 3: the capability and parameter cases, generated from the spec.

Job
---
Turn a spec profile into the requests sent to QEMU: capability sets (every
single one, pair and triple, random larger sets, duplicates, sets from a
non-default current set, sets whose outcome depends on parameters) and
parameter values (boundaries of every rule, type limits, junk, cross rules
between two parameters, rules that read capabilities, two bad values in one
call), plus malformed arguments that only QAPI input validation rejects.

Rules
-----
* Pure: no QEMU, no I/O.  Sending the cases is
  :mod:`~livemig.conformance.ground_truth_qemu`'s job, recording a whole run
  :mod:`~livemig.conformance.ground_truth_files`'.
* Every name, type, bound and rule comes from the profile; nothing here says
  what QEMU *should* answer (the recorded answers are the ground truth).
* Deterministic for a given ``random.Random``: a seed reproduces the cases.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from livemig.spec import expr as E
from livemig.spec.schema import ParamRef, Profile

__all__ = ["UNKNOWN_PAIRS", "CapCase", "capability_cases", "caps_setup_param_cases",
           "invalid_capability_cases", "parameter_cases", "settable", "valid_pool",
           "value_pool"]

#: Pairs of unknown member names, each sent in both orders.
UNKNOWN_PAIRS = (("aaa", "zzz"), ("foo", "bar"), ("x", "y"), ("nope", "abc"), ("a", "b"),
                 ("extra", "bogus"), ("q1", "q2"))


# --------------------------------------------------------------------------
# Capability cases
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class CapCase:
    """One migrate-set-capabilities call, optionally after some setup."""

    request: Any  # the raw ``arguments`` object (None: no arguments member)
    setup_caps: tuple[str, ...] = ()
    setup_params: Optional[dict] = None
    note: str = ""


def _entries(names: Iterable[str], state: Any = True) -> list[dict]:
    return [{"capability": n, "state": state} for n in names]


def capability_cases(profile: Profile, rng: random.Random, n_random: int,
                     n_from_current: int) -> list[CapCase]:
    """Systematic and random capability requests for one side."""
    names = profile.capability_names()
    cases: list[CapCase] = [CapCase({"capabilities": []}, note="empty list")]
    # every single capability, on and (explicitly) off
    cases += [CapCase({"capabilities": _entries([n])}, note="single") for n in names]
    cases += [CapCase({"capabilities": _entries([n], False)}, note="single off") for n in names]
    # every pair and every triple, switched on in one call
    cases += [CapCase({"capabilities": _entries(c)}, note="pair")
              for c in itertools.combinations(names, 2)]
    cases += [CapCase({"capabilities": _entries(c)}, note="triple")
              for c in itertools.combinations(names, 3)]
    # every pair in the other order: first failing rule must not depend on it
    cases += [CapCase({"capabilities": _entries(reversed(c))}, note="pair reversed")
              for c in itertools.combinations(names, 2) if rng.random() < 0.25]
    cases.append(CapCase({"capabilities": _entries(names)}, note="all on"))
    cases.append(CapCase({"capabilities": _entries(names, False)}, note="all off"))
    # random larger sets, with random explicit off entries and random order
    for _ in range(n_random):
        k = rng.randint(4, len(names))
        chosen = rng.sample(names, k)
        request = [{"capability": n, "state": rng.random() < 0.7} for n in chosen]
        cases.append(CapCase({"capabilities": request}, note="random"))
    # duplicates: the same capability twice with both states (which one wins?)
    for n in rng.sample(names, min(8, len(names))):
        cases.append(CapCase({"capabilities": [{"capability": n, "state": True},
                                               {"capability": n, "state": False}]},
                             note="duplicate on,off"))
        cases.append(CapCase({"capabilities": [{"capability": n, "state": False},
                                               {"capability": n, "state": True}]},
                             note="duplicate off,on"))
    # from a non-default current set: a random accepted set first, then a request
    for _ in range(n_from_current):
        current = tuple(rng.sample(names, rng.randint(1, 4)))
        k = rng.randint(1, 4)
        request = [{"capability": n, "state": rng.random() < 0.6} for n in rng.sample(names, k)]
        cases.append(CapCase({"capabilities": request}, setup_caps=current, note="from current"))
    cases += invalid_capability_cases(profile, rng)
    return cases


def invalid_capability_cases(profile: Profile, rng: random.Random) -> list[CapCase]:
    """Malformed requests: QAPI input validation, not migrate_caps_check."""
    names = profile.capability_names()
    a, b = names[0], names[-1]
    dashed = next((n for n in names if "-" in n), a)
    good = {"capability": a, "state": True}
    bad_names = ["nope", "", a.upper(), dashed.replace("-", "_"), a + " ", "x-" + a,
                 dashed.replace("-", "")]
    bad_states: list[Any] = [1, 0, "true", "on", None, [], {}, 1.5]
    cases = [CapCase({"capabilities": [{"capability": n, "state": True}]}, note="unknown name")
             for n in bad_names]
    cases += [CapCase({"capabilities": [{"capability": a, "state": s}]}, note="non-bool state")
              for s in bad_states]
    cases += [CapCase({"capabilities": [{"capability": c, "state": True}]}, note="non-str name")
              for c in (5, None, True, [a], {"x": a})]
    cases += [
        CapCase(None, note="no arguments"),
        CapCase([], note="arguments not an object"),
        CapCase("x", note="arguments not an object"),
        CapCase({}, note="missing capabilities"),
        CapCase({"capabilities": None}, note="capabilities null"),
        CapCase({"capabilities": "x"}, note="capabilities not a list"),
        CapCase({"capabilities": {"capability": a, "state": True}}, note="object not list"),
        CapCase({"capabilities": [a]}, note="element not an object"),
        CapCase({"capabilities": [None]}, note="element null"),
        CapCase({"capabilities": [1, good]}, note="element int"),
        CapCase({"capabilities": [{"state": True}]}, note="missing capability"),
        CapCase({"capabilities": [{"capability": a}]}, note="missing state"),
        CapCase({"capabilities": [{}]}, note="empty element"),
        CapCase({"capabilities": [{"capability": a, "state": True, "extra": 1}]},
                note="unknown member"),
        CapCase({"capabilities": [{"capability": a, "state": True}], "extra": 1},
                note="unknown argument"),
        CapCase({"capabilities": [{"capability": a, "state": True}], "capability": a},
                note="unknown argument like a member"),
        # a bad element after good ones: the call must change nothing at all
        CapCase({"capabilities": [good, {"capability": "nope", "state": True}]},
                note="good then unknown"),
        CapCase({"capabilities": [good, {"capability": b, "state": "yes"}]},
                note="good then non-bool"),
        CapCase({"capabilities": [good, {"capability": b}]}, note="good then missing state"),
        # two errors in one element / in two elements: which is reported?
        CapCase({"capabilities": [{"capability": "nope", "state": "yes"}]},
                note="unknown name and bad state"),
        CapCase({"capabilities": [{"capability": "nope"}]}, note="unknown name, no state"),
        CapCase({"capabilities": [{"state": "yes"}]}, note="no name, bad state"),
        CapCase({"capabilities": [{"capability": a, "state": True, "zzz": 1, "aaa": 2}]},
                note="two unknown members"),
        CapCase({"capabilities": [{"capability": "nope", "state": True, "zzz": 1}]},
                note="unknown name and unknown member"),
        CapCase({"capabilities": [{"capability": a, "state": "yes"},
                                  {"capability": "nope", "state": True}]},
                note="errors in two elements"),
        CapCase({"capabilities": [{"capability": a, "state": True}] * 3
                 + [{"capability": b, "state": 1}]}, note="index 3 bad"),
    ]
    # two unknown members: QEMU does not report them in request order
    for x, y in UNKNOWN_PAIRS:
        for first, second in ((x, y), (y, x)):
            cases.append(CapCase({"capabilities": [{"capability": a, "state": True,
                                                    first: 1, second: 1}]},
                                 note="two unknown members"))
    for extra in (["u1", "u2", "u3"], ["a", "b", "c", "d"], ["k1", "k2", "k3", "k4", "k5", "k6"],
                  ["zeta", "alpha", "mid", "x", "y", "q", "r", "s"]):
        element = {"capability": a, "state": True, **{u: 1 for u in extra}}
        cases.append(CapCase({"capabilities": [element]}, note="several unknown members"))
        items = list(element.items())
        rng.shuffle(items)
        cases.append(CapCase({"capabilities": [dict(items)]}, note="several unknown members"))
    # the same malformed shapes against other capability names (index text)
    for n in rng.sample(names, 5):
        cases.append(CapCase({"capabilities": [good, good, {"capability": n, "state": "x"}]},
                             note="index 2 non-bool"))
    return cases


def caps_setup_param_cases(profile: Profile) -> list[CapCase]:
    """Capability requests whose outcome depends on current parameter values.

    The parameters come from the cap rules that read ``Param(...)`` atoms;
    each is set to a non-default value, and every capability set of the rule
    (plus its neighbours) is requested.
    """
    cases: list[CapCase] = []
    for rule in profile.cap_rules:
        params = E.names(rule.when, E.Param)
        if not params:
            continue
        caps = sorted(E.names(rule.when, E.Cap))
        settings: list[dict] = []
        for name in sorted(params):
            p = profile.parameter(name)
            if p.type == "enum":
                settings += [{name: v} for v in p.enum or ()]
            elif p.type in ("str", "StrOrNull"):
                settings += [{name: "tls0"}, {name: ""}, {name: None}]
        if len(params) > 1:  # both at once
            combo: dict[str, Any] = {}
            for s in settings:
                for k, v in s.items():
                    if v not in ("", None, profile.parameter(k).default):
                        combo.setdefault(k, v)
            settings.append(combo)
        requests = [list(c) for r in range(1, len(caps) + 1) for c in itertools.combinations(caps, r)]
        for s in settings:
            for req in requests:
                cases.append(CapCase({"capabilities": _entries(req)}, setup_params=s,
                                     note=f"params rule {rule.id}"))
            # and from a current set that already has the rule's capabilities on
            for k in range(len(caps)):
                cur = tuple(c for i, c in enumerate(caps) if i != k)
                cases.append(CapCase({"capabilities": _entries([caps[k]])}, setup_caps=cur,
                                     setup_params=s, note=f"params rule {rule.id}, from current"))
    return cases


# --------------------------------------------------------------------------
# Parameter cases
# --------------------------------------------------------------------------
_INT_LIMITS = {"uint8": 2 ** 8 - 1, "uint32": 2 ** 32 - 1, "uint64": 2 ** 64 - 1,
               "size": 2 ** 64 - 1, "int64": 2 ** 63 - 1}
_JUNK: tuple[Any, ...] = (1.5, 1.0, "str", "1", True, False, None, [], {})


def _bounds(profile: Profile, name: str) -> list[int]:
    """Every numeric bound the spec's rules give ``name`` (refs resolved to defaults)."""
    out: list[int] = []
    for rule in profile.param_rules:
        if rule.param != name:
            continue
        for b in (rule.min, rule.max):
            if isinstance(b, ParamRef):
                b = profile.parameter(b.name).default
            if isinstance(b, int):
                out += [b - 1, b, b + 1]
    return out


def value_pool(profile: Profile, name: str) -> list[Any]:
    """Boundary, type-limit and junk values for one parameter."""
    p = profile.parameter(name)
    if p.type in _INT_LIMITS:
        top = _INT_LIMITS[p.type]
        pool = [0, 1, 2, -1, -2, p.default, top - 1, top, top + 1, 2 ** 31, 2 ** 32,
                2 ** 53, 2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1, 2 ** 64, 2 ** 65, -2 ** 63,
                -2 ** 63 - 1, 4095, 4096, 4097, 6000, 8192, 2 ** 20, 2 ** 30, 10 ** 5,
                100001, 1000, 1001, 10000, 10001, 2000000, 2000001, *_bounds(profile, name),
                *_JUNK]
    elif p.type == "bool":
        pool = [True, False, 0, 1, "true", "yes", None, [], 1.5]
    elif p.type in ("str", "StrOrNull"):
        pool = ["", "tls0", "a" * 300, None, 1, True, [], {}]
    elif p.type == "enum":
        enum = list(p.enum or ())
        pool = [*enum, "", "NONE", enum[0].upper() if enum else "X", "lz4", "qpl", 1, None,
                True, []]
    elif p.type == "BitmapMigrationNodeAliasList":
        bm = {"name": "bm0", "alias": "bma0"}
        pool = [
            [], None, "x", [1], {"node-name": "n0"},
            [{"node-name": "node0", "alias": "na0", "bitmaps": [bm]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": []}],
            [{"node-name": "node0", "alias": "na0"}],
            [{"node-name": "node0", "bitmaps": [bm]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [bm]},
             {"node-name": "node0", "alias": "na1", "bitmaps": [bm]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [bm]},
             {"node-name": "node1", "alias": "na0", "bitmaps": [bm]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [bm, bm]}],
            [{"node-name": "node0", "alias": "a" * 256, "bitmaps": [bm]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "b" * 256}]}],
            [{"node-name": "node0", "alias": "", "bitmaps": [bm]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [bm], "x": 1}],
            # which node aliases are well-formed, and check order within a node
            *[[{"node-name": "node0", "alias": a, "bitmaps": [bm]}]
              for a in ("A", "z9", "1", "1a", "_a", "a_b", "a-b", "a.b", "a b", "a#", "-a",
                        ".a", "\u00e9", "a\u00e9", "a/b", "a:b", "a" * 255, "a" * 255 + " ",
                        " " * 256)],
            *[[{"node-name": "node0", "alias": "na0", "bitmaps": [{"name": "bm0", "alias": a}]}]
              for a in ("", "a b", "1", "\u00e9", "b" * 255)],
            [{"node-name": "", "alias": "na0", "bitmaps": [{"name": "", "alias": "x"}]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "x"}, {"name": "bm1", "alias": "x"}]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [{"name": "bm0", "alias": "x"}]},
             {"node-name": "node1", "alias": "na1", "bitmaps": [{"name": "bm0", "alias": "x"}]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": []},
             {"node-name": "node0", "alias": "a b", "bitmaps": []}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": []},
             {"node-name": "node1", "alias": "na0", "bitmaps": [{"name": "bm0", "alias": "b" * 256}]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "b" * 256}, {"name": "bm0", "alias": "x"}]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "x", "transform": {"persistent": True}}]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "x", "transform": {}}]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "x", "transform": {"persistent": 1}}]}],
            [{"node-name": "node0", "alias": "na0",
              "bitmaps": [{"name": "bm0", "alias": "x", "transform": {"y": 1}}]}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [{"name": "bm0", "alias": "x",
                                                                 "transform": None}]}],
            [{"node-name": 1, "alias": "na0", "bitmaps": []}],
            [{"alias": 1, "bitmaps": "x"}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [None]}],
            # which check wins when one node or bitmap breaks two rules
            [{"node-name": "n", "alias": "x", "bitmaps": []},
             {"node-name": "n", "alias": "a" * 256, "bitmaps": []}],
            [{"node-name": "n", "alias": "x", "bitmaps": []},
             {"node-name": "n", "alias": "x", "bitmaps": []}],
            [{"node-name": "n", "alias": "x",
              "bitmaps": [{"name": "b", "alias": "y"}, {"name": "b", "alias": "b" * 256}]}],
            [{"node-name": "n", "alias": "x",
              "bitmaps": [{"name": "b", "alias": "y"}, {"name": "b", "alias": "y"}]}],
            [{"node-name": "n", "alias": "x",
              "bitmaps": [{"name": "b", "alias": "y"}, {"name": "c", "alias": "b" * 256}]}],
            [{"node-name": "n", "alias": "x", "bitmaps": [{"name": "b", "alias": "b" * 256}]},
             {"node-name": "m", "alias": "1", "bitmaps": []}],
            [{"node-name": "node0", "alias": "na0", "bitmaps": [{"alias": "x"}]}],
        ]
    else:
        pool = [None, 0, "x"]
    seen: list[Any] = []
    for v in pool:  # keep order, drop duplicates (True == 1 in Python: compare JSON)
        if json.dumps(v) not in {json.dumps(s) for s in seen}:
            seen.append(v)
    return seen


def valid_pool(profile: Profile, name: str, rng: random.Random) -> list[Any]:
    """Values likely to be accepted (for random multi-parameter calls)."""
    p = profile.parameter(name)
    lo, hi = 0, _INT_LIMITS.get(p.type, 0)
    for rule in profile.param_rules:
        if rule.param == name:
            if isinstance(rule.min, int):
                lo = max(lo, rule.min)
            if isinstance(rule.max, int):
                hi = min(hi, rule.max)
            if isinstance(rule.max, ParamRef) or isinstance(rule.min, ParamRef):
                lo, hi = 1, 99 if hi == 0 else hi
    if p.type in _INT_LIMITS:
        vals = [p.default, lo, hi, rng.randint(lo, max(lo, min(hi, 2 ** 40)))]
        if any(r.power_of_two for r in profile.param_rules if r.param == name):
            vals = [p.default, 2 ** rng.randint(12, 40), 2 ** 12]
        return vals
    if p.type == "bool":
        return [True, False]
    if p.type in ("str", "StrOrNull"):
        return ["", "tls0", None]
    if p.type == "enum":
        return list(p.enum or ())
    return [[]]


def settable(profile: Profile) -> list[str]:
    return [p.name for p in profile.parameters if p.in_set_command]


def parameter_cases(profile: Profile, rng: random.Random, n_random: int) -> list[dict]:
    """Cases as dicts: {"request", "setup_caps", "setup_params", "note"}."""
    names = settable(profile)
    cases: list[dict] = [{"request": {}, "note": "no parameters"},
                         {"request": None, "note": "no arguments member"},
                         *[{"request": junk, "note": "arguments not an object"}
                           for junk in ([], "x", 1, True, [{"downtime-limit": 1}])]]
    for n in names:
        for v in value_pool(profile, n):
            cases.append({"request": {n: v}, "note": "single"})
    # two unknown names: which one QEMU reports does not follow request order
    for x, y in UNKNOWN_PAIRS:
        for first, second in ((x, y), (y, x)):
            cases.append({"request": {first: 1, second: 1}, "note": "two unknown parameters"})
            cases.append({"request": {first: 1, names[0]: profile.parameter(names[0]).default,
                                      second: 1}, "note": "two unknown parameters"})
    # ... also in larger objects, where QEMU's key table is resized while filled and
    # shrunk while the known members are read (see core/qapi_order.py)
    for k in (3, 5, 6, 7, 8, 10, 12, 16, 20, len(names)):
        for _ in range(4):
            request = {n: profile.parameter(n).default for n in rng.sample(names, k)
                       if profile.parameter(n).default is not None}
            unknown = list(rng.choice(UNKNOWN_PAIRS)) + (["zz9", "u_u"][:rng.randint(0, 2)])
            items = list(request.items()) + [(u, 1) for u in unknown]
            rng.shuffle(items)
            cases.append({"request": dict(items), "note": "unknown parameters in a large object"})
    # unknown names
    for bad in ("nope", names[0].replace("-", "_"), names[0].upper(), names[0] + "s", "",
                "x-" + names[0], "capabilities"):
        cases.append({"request": {bad: 1}, "note": "unknown parameter"})
        cases.append({"request": {names[0]: profile.parameter(names[0]).default, bad: 1},
                      "note": "known + unknown parameter"})
    # cross rules: a rule bound that names another parameter
    for rule in profile.param_rules:
        for b in (rule.min, rule.max):
            if isinstance(b, ParamRef) and rule.param:
                grid_ref = sorted({0, 1, 2, 19, 20, 21, 50, 98, 99, 100,
                                   profile.parameter(b.name).default})
                grid_self = sorted({0, 1, 19, 20, 21, 50, 98, 99, 100, 255,
                                    profile.parameter(rule.param).default})
                for x in grid_ref:
                    for y in grid_self:
                        cases.append({"request": {b.name: x, rule.param: y},
                                      "note": f"cross {rule.id}"})
                        # and in the other member order
                        if rng.random() < 0.3:
                            cases.append({"request": {rule.param: y, b.name: x},
                                          "note": f"cross {rule.id} reversed"})
                for cur in (1, 50, 99):
                    for y in (0, 1, 49, 50, 51, 99, 100):
                        cases.append({"request": {rule.param: y}, "setup_params": {b.name: cur},
                                      "note": f"cross {rule.id} from current"})
                    for x in (1, 49, 50, 51, 99, 100):
                        cases.append({"request": {b.name: x},
                                      "setup_params": {b.name: cur, rule.param: max(cur, 99)},
                                      "note": f"cross {rule.id} ref from current"})
    # rules that read capabilities: with those capabilities on
    for rule in profile.param_rules:
        if rule.when is None:
            continue
        caps = tuple(sorted(E.names(rule.when, E.Cap)))
        needed = _enabling_set(profile, caps)
        for pname in sorted(E.names(rule.when, E.Param)):
            for v in value_pool(profile, pname):
                cases.append({"request": {pname: v}, "setup_caps": needed,
                              "note": f"caps rule {rule.id}"})
        pnames = sorted(E.names(rule.when, E.Param))
        if len(pnames) > 1:
            cases.append({"request": {pnames[0]: valid_pool(profile, pnames[0], rng)[-1],
                                      pnames[1]: "tls0"},
                          "setup_caps": needed, "note": f"caps rule {rule.id} both"})
    # two invalid values in one call: which error wins?
    bad_single = [(n, v) for n in names for v in value_pool(profile, n)]
    for _ in range(120):
        (n1, v1), (n2, v2) = rng.sample(bad_single, 2)
        if n1 != n2:
            cases.append({"request": {n1: v1, n2: v2}, "note": "two values"})
    # random combinations of several parameters, mostly valid values
    for _ in range(n_random):
        k = rng.randint(2, 7)
        request = {}
        for n in rng.sample(names, k):
            pool = valid_pool(profile, n, rng) if rng.random() < 0.8 else value_pool(profile, n)
            request[n] = rng.choice(pool)
        cases.append({"request": request, "note": "random"})
    # everything at once, as the defaults (a full reset request)
    cases.append({"request": {n: profile.parameter(n).default for n in names
                              if profile.parameter(n).default is not None},
                  "note": "all defaults"})
    return cases


def _enabling_set(profile: Profile, caps: Sequence[str]) -> tuple[str, ...]:
    """``caps`` plus what the cap rules need for the set to be accepted.

    Found by search over the spec's capability names: the smallest superset
    whose cap rules (ignoring parameter atoms) do not fail.  Used only to
    pick a starting point; QEMU decides whether it is accepted.
    """
    names = profile.capability_names()
    others = [n for n in names if n not in caps]
    for r in range(0, 3):
        for extra in itertools.combinations(others, r):
            on = set(caps) | set(extra)
            if not any(_fails_ignoring_params(rule.when, on) for rule in profile.cap_rules):
                return tuple(sorted(on))
    return tuple(caps)


def _fails_ignoring_params(when: E.Expr, on: set[str]) -> bool:
    if isinstance(when, E.Const):
        return when.value
    if isinstance(when, E.Cap):
        return when.name in on
    if isinstance(when, E.Not):
        if isinstance(when.arg, E.Host):  # host facts: assume present
            return False
        return not _fails_ignoring_params(when.arg, on)
    if isinstance(when, E.All):
        return all(_fails_ignoring_params(a, on) for a in when.args)
    if isinstance(when, E.AnyOf):
        return any(_fails_ignoring_params(a, on) for a in when.args)
    if isinstance(when, E.Host):
        return True
    return False  # runstate, params, was-cap: treated as not failing

