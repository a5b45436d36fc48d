"""Record real QEMU's answers to capability, parameter and command requests.

Theory of operation
-------------------
The cases are generated from the spec profile (capability names, parameter
types and rule bounds, command names and their precondition atoms), sent to
a real ``qemu-system-x86_64`` through :class:`~livemig.conformance.qemu_vm.QemuVM`,
and QEMU's reply is written verbatim as one JSON object per line.  Nothing
here decides what QEMU *should* answer: the files are ground truth that the
offline test ``tests/test_checkers_vs_qemu.py`` replays through livemig's
checkers.

One QEMU per side is reused for thousands of calls.  Between cases the
migration state is put back to QEMU's defaults (captured from QEMU itself at
start-up, not from the spec) and every reset is verified: its reply must be
``ok`` and a query afterwards must show the defaults again.  A case whose
request set a value that no call can take back (``block-bitmap-mapping``
appears in ``query-migrate-parameters`` once set) restarts that side's QEMU.

Files (each line is one JSON object; the first line has ``"kind": "meta"``):

``qemu72_caps.jsonl``
    ``{"kind": "caps", "side", "request", "setup_caps", "setup_params", "ok",
    "error", "error_class", "after_on"}`` -- ``request`` is the raw
    ``arguments`` object of ``migrate-set-capabilities``; ``after_on`` lists
    the capabilities that ``query-migrate-capabilities`` shows on after the
    call (rejected calls included, which proves they changed nothing).
``qemu72_params.jsonl``
    ``{"kind": "params", "side", "request", "setup_caps", "setup_params",
    "ok", "error", "error_class", "query_diff"}`` -- ``query_diff`` is
    ``query-migrate-parameters`` after the call, as the members that differ
    from the meta line's ``param_defaults`` (``None`` for a removed member).
``qemu72_commands.jsonl``
    ``{"kind": "command", "scenario", "side", "cmd", "args", "context",
    "ok", "error", "error_class", "result"}`` -- ``context`` is what a
    precondition may read: the migration status of both sides, the run
    state, the capabilities that are on, and the flags the scenario set.

Regenerate:  ``python -m livemig.conformance.ground_truth --out tests/data/``
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from livemig.conformance.qemu_vm import QemuVM, Reply, qemu_binary, qemu_version
from livemig.spec import load_profile
from livemig.spec import expr as E
from livemig.spec.schema import ParamRef, Profile

PROFILE = "qemu-7.2"
FILES = {
    "caps": "qemu72_caps.jsonl",
    "params": "qemu72_params.jsonl",
    "commands": "qemu72_commands.jsonl",
}
SIDES: tuple[str, ...] = ("source", "destination")

#: Pairs of unknown member names, each sent in both orders.
UNKNOWN_PAIRS = (("aaa", "zzz"), ("foo", "bar"), ("x", "y"), ("nope", "abc"), ("a", "b"),
                 ("extra", "bogus"), ("q1", "q2"))

#: A value that stands for "member absent" in query diffs cannot be JSON null
#: (null is a legal parameter value), so removals are written as this marker.
ABSENT = {"$absent": True}


class GroundTruthError(RuntimeError):
    """QEMU did something the generator relies on not happening (a reset failed)."""


# --------------------------------------------------------------------------
# Sessions: one QEMU per side, with verified resets
# --------------------------------------------------------------------------
@dataclass
class SideSession:
    """One long-lived QEMU for one side, plus its default caps and parameters."""

    side: str
    workdir: Optional[str] = None
    binary: Optional[str] = None
    vm: Optional[QemuVM] = None
    cap_names: tuple[str, ...] = ()
    param_defaults: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    restarts: int = 0

    def start(self) -> "SideSession":
        self.vm = QemuVM(role=self.side, name=f"gt-{self.side}", workdir=self.workdir,
                         binary=self.binary).start()
        caps = self.vm.command("query-migrate-capabilities")
        self.cap_names = tuple(c["capability"] for c in caps)
        if any(c["state"] for c in caps):
            raise GroundTruthError(f"{self.side}: capabilities not all off at start: {caps}")
        self.param_defaults = self.vm.command("query-migrate-parameters")
        return self

    def restart(self) -> None:
        """Kill and restart this side's QEMU (fresh defaults)."""
        if self.vm is not None:
            self.vm.close()
        self.restarts += 1
        defaults = self.param_defaults
        self.start()
        if self.param_defaults != defaults:
            raise GroundTruthError(f"{self.side}: defaults changed across a restart")

    def close(self) -> None:
        if self.vm is not None:
            self.vm.close()
            self.vm = None

    def execute(self, cmd: str, args: Optional[dict] = None) -> Reply:
        assert self.vm is not None
        self.calls += 1
        return self.vm.execute(cmd, args)

    # ---- capabilities
    def caps_on(self) -> list[str]:
        """The capabilities QEMU shows on, in QEMU's order."""
        reply = self.execute("query-migrate-capabilities")
        if reply[0] != "ok":
            raise GroundTruthError(f"query-migrate-capabilities failed: {reply}")
        return [c["capability"] for c in reply[1] if c["state"]]

    def set_caps(self, on: Iterable[str]) -> Reply:
        request = [{"capability": n, "state": True} for n in on]
        return self.execute("migrate-set-capabilities", {"capabilities": request})

    def reset_caps(self, known_on: Optional[Sequence[str]] = None) -> None:
        """All capabilities off; verified by a query."""
        on = self.caps_on() if known_on is None else list(known_on)
        if not on:
            return
        reply = self.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": n, "state": False} for n in self.cap_names]})
        if reply[0] != "ok":
            raise GroundTruthError(f"{self.side}: capability reset refused: {reply}")
        left = self.caps_on()
        if left:
            raise GroundTruthError(f"{self.side}: capability reset left {left} on")

    # ---- parameters
    def query_params(self) -> dict[str, Any]:
        reply = self.execute("query-migrate-parameters")
        if reply[0] != "ok":
            raise GroundTruthError(f"query-migrate-parameters failed: {reply}")
        return reply[1]

    def params_diff(self, query: dict[str, Any]) -> dict[str, Any]:
        diff = {k: v for k, v in query.items()
                if k not in self.param_defaults or self.param_defaults[k] != v}
        for k in self.param_defaults:
            if k not in query:
                diff[k] = ABSENT
        return diff

    def reset_params(self, diff: dict[str, Any]) -> None:
        """Back to the defaults QEMU had at start; verified by a query.

        A member that appeared (``block-bitmap-mapping``) cannot be removed
        by any call: then the QEMU is restarted.
        """
        if not diff:
            return
        if any(k not in self.param_defaults or v == ABSENT for k, v in diff.items()):
            self.restart()
            return
        reply = self.execute("migrate-set-parameters", dict(self.param_defaults))
        if reply[0] != "ok":
            raise GroundTruthError(f"{self.side}: parameter reset refused: {reply}")
        left = self.params_diff(self.query_params())
        if left:
            raise GroundTruthError(f"{self.side}: parameter reset left {left}")


def _reply_fields(reply: Reply) -> dict[str, Any]:
    if reply[0] == "ok":
        return {"ok": True, "error": None, "error_class": None}
    return {"ok": False, "error": reply[2], "error_class": reply[1]}


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


def run_cap_case(sess: SideSession, case: CapCase) -> dict[str, Any]:
    """Send one capability case (after its setup) and record the outcome."""
    setup_caps: Optional[list[str]] = None
    if case.setup_params:
        reply = sess.execute("migrate-set-parameters", case.setup_params)
        if reply[0] != "ok":
            raise GroundTruthError(f"setup params {case.setup_params} refused: {reply}")
    if case.setup_caps:
        reply = sess.set_caps(case.setup_caps)
        if reply[0] != "ok":  # not a usable starting point: record as such and skip
            sess.reset_params(sess.params_diff(sess.query_params()))
            return {}
        setup_caps = sess.caps_on()
    reply = sess.execute("migrate-set-capabilities", case.request)
    after = sess.caps_on()
    record = {"kind": "caps", "side": sess.side, "request": case.request,
              "setup_caps": setup_caps, "setup_params": case.setup_params,
              **_reply_fields(reply), "after_on": after, "note": case.note}
    sess.reset_caps(after)
    if case.setup_params:
        sess.reset_params(sess.params_diff(sess.query_params()))
    return record


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


def run_param_case(sess: SideSession, case: dict) -> dict[str, Any]:
    setup_caps: Optional[list[str]] = None
    if case.get("setup_caps"):
        reply = sess.set_caps(case["setup_caps"])
        if reply[0] != "ok":
            raise GroundTruthError(f"setup caps {case['setup_caps']} refused: {reply}")
        setup_caps = sess.caps_on()
    if case.get("setup_params"):
        reply = sess.execute("migrate-set-parameters", case["setup_params"])
        if reply[0] != "ok":
            raise GroundTruthError(f"setup params {case['setup_params']} refused: {reply}")
    before = sess.params_diff(sess.query_params()) if case.get("setup_params") else {}
    reply = sess.execute("migrate-set-parameters", case["request"])
    diff = sess.params_diff(sess.query_params())
    record = {"kind": "params", "side": sess.side, "request": case["request"],
              "setup_caps": setup_caps, "setup_params": case.get("setup_params"),
              "setup_diff": before or None,
              **_reply_fields(reply), "query_diff": diff, "note": case.get("note", "")}
    sess.reset_params(diff)
    if setup_caps:
        sess.reset_caps(setup_caps)
    return record


# --------------------------------------------------------------------------
# Command preconditions
# --------------------------------------------------------------------------
def _precondition_caps(profile: Profile, cmd: str) -> list[str]:
    """Capability names the preconditions of ``cmd`` read, in spec order."""
    out: list[str] = []
    for pre in profile.command(cmd).preconditions:
        for n in sorted(E.names(pre.when, E.Cap)):
            if n not in out:
                out.append(n)
    return out


class CommandRecorder:
    """Runs command scenarios and records each call with its context."""

    def __init__(self, profile: Profile, workdir: str, binary: Optional[str]) -> None:
        self.profile = profile
        self.workdir = workdir
        self.binary = binary
        self.records: list[dict] = []
        self._n = 0
        self._outgoing: set[int] = set()
        self.failed: list[str] = []
        self._incoming_seen: dict[int, str] = {}

    def vm(self, side: str, extra_args: Sequence[str] = ()) -> QemuVM:
        self._n += 1
        return QemuVM(role=side, name=f"cmd{self._n}-{side}", workdir=self.workdir,
                      binary=self.binary, extra_args=tuple(extra_args)).start()

    def ram_blob_args(self, size: int = 16 << 20) -> list[str]:
        """Arguments that preload ``size`` random bytes at guest address 1 MiB.

        An idle guest's RAM is nearly all zero pages, which cost almost
        nothing on the wire; random pages make postcopy last long enough to
        be paused under a small bandwidth limit.
        """
        path = os.path.join(self.workdir, "ram-blob.bin")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(random.Random(0).randbytes(size))
        return ["-device", f"loader,file={path},addr=0x100000,force-raw=on"]

    def call(self, scenario: str, vm: QemuVM, side: str, cmd: str,
             args: Optional[dict] = None, flags: Optional[dict] = None,
             peer: Optional[QemuVM] = None, host: Optional[dict] = None) -> Reply:
        """Run ``cmd`` on ``vm`` (started as ``side``) and record it with its context.

        ``context.states`` is the process's own view: a source process has
        no incoming migration (``none``); a destination process has no
        outgoing one until it runs ``migrate`` itself (QMP's query-migrate
        shows the outgoing state once there is one, so the last incoming
        state seen is kept).  ``peer_status`` is the other VM's status.
        ``flags`` are the spec's environment/command flags the scenario
        knows to hold (e.g. ``uri_invalid`` when it passes a bad URI); ``host``
        overrides of the spec's host facts that the scenario brought about.
        """
        caps = [c["capability"] for c in vm.command("query-migrate-capabilities") if c["state"]]
        key = id(vm)
        status = vm.migration_status()
        none = self.profile.status_names[0]
        if side == "source":
            states = {"source": status, "destination": none}
        elif key in self._outgoing:
            states = {"source": status, "destination": self._incoming_seen.get(key, none)}
        else:
            self._incoming_seen[key] = status
            states = {"source": none, "destination": status}
        context = {"states": states, "runstate": vm.status(), "caps_on": caps,
                   "flags": flags or {}, "host": host or {},
                   "peer_status": peer.migration_status() if peer is not None else None}
        reply = vm.execute(cmd, args)
        if side == "destination" and cmd == "migrate" and reply[0] == "ok":
            self._outgoing.add(key)
        self.records.append({"kind": "command", "scenario": scenario, "side": side, "cmd": cmd,
                             "args": args, "context": context, **_reply_fields(reply),
                             "result": reply[1] if reply[0] == "ok" else None,
                             "status_after": vm.migration_status() if vm.alive else None})
        return reply

    # ---- scenarios -----------------------------------------------------
    def idle_source(self) -> None:
        """A running VM that never migrated: every command in state none."""
        p = self.profile
        with self.vm("source") as vm:
            sc = "source idle"
            self.call(sc, vm, "source", "migrate-start-postcopy")
            for cap in _precondition_caps(p, "migrate-start-postcopy"):
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": True}]})
                self.call(sc + f", {cap} on", vm, "source", "migrate-start-postcopy")
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})
            for status in [*p.status_names, "nope", ""]:
                self.call(sc, vm, "source", "migrate-continue", {"state": status})
            self.call(sc, vm, "source", "migrate-continue", {})
            self.call(sc, vm, "source", "migrate-pause")
            self.call(sc, vm, "source", "migrate-recover", {"uri": "unix:/nonexistent"})
            self.call(sc, vm, "source", "migrate-incoming", {"uri": "unix:/nonexistent"})
            self.call(sc, vm, "source", "migrate-incoming", {"uri": "nope:x"},
                      {"uri_invalid": True})
            self.call(sc, vm, "source", "migrate_cancel")
            self.call(sc, vm, "source", "migrate-cancel")
            self.call(sc, vm, "source", "migrate", {"uri": "unix:/nonexistent", "resume": True})
            for cap in _precondition_caps(p, "migrate"):
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": True}]})
                for args in ({"uri": "nope:x", "resume": True}, {"uri": "nope:x", "blk": True},
                             {"uri": "nope:x", "inc": True}):
                    self.call(sc + f", {cap} on", vm, "source", "migrate", args,
                              {"uri_invalid": True})
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})
            self.call(sc, vm, "source", "migrate", {})
            self.call(sc, vm, "source", "migrate", {"uri": 5})
            self.call(sc, vm, "source", "migrate", {"uri": "unix:/x", "resume": "yes"})
            self.call(sc, vm, "source", "migrate", {"uri": "unix:/x", "bogus": 1})
        # bad URIs: each fails and leaves the source in failed; one VM per URI family
        with self.vm("source") as vm:
            sc = "source bad uri"
            for uri in ("nope:x", "", "unix", "tcp", "foo", "file:/tmp/x"):
                self.call(sc, vm, "source", "migrate", {"uri": uri}, {"uri_invalid": True})
            # the migration now failed: commands in state failed
            self.call(sc + " (after)", vm, "source", "migrate-start-postcopy")
            for cap in _precondition_caps(p, "migrate-start-postcopy")[:1]:
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": True}]})
                self.call(sc + f" (after), {cap} on", vm, "source", "migrate-start-postcopy")
            for status in p.status_names:
                self.call(sc + " (after)", vm, "source", "migrate-continue", {"state": status})
            self.call(sc + " (after)", vm, "source", "migrate-pause")
            self.call(sc + " (after)", vm, "source", "migrate", {"uri": "unix:/x",
                                                                 "resume": True})
        # a URI that parses but cannot connect: async failure
        with self.vm("source") as vm:
            sc = "source unreachable uri"
            path = os.path.join(self.workdir, "nobody-listens.sock")
            self.call(sc, vm, "source", "migrate", {"uri": f"unix:{path}"})
            vm.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                        timeout=20, what="the failed connect to settle")
            self.call(sc + " (after)", vm, "source", "migrate-start-postcopy")

    def idle_destination(self) -> None:
        """A ``-incoming defer`` VM: commands before and after migrate-incoming."""
        p = self.profile
        with self.vm("destination") as vm:
            sc = "destination deferred"
            self.call(sc, vm, "destination", "migrate", {"uri": "unix:/nonexistent"})
            self.call(sc, vm, "destination", "migrate", {"uri": "nope:x"},
                      {"uri_invalid": True})
            self.call(sc, vm, "destination", "migrate", {"uri": "unix:/x", "resume": True})
            self.call(sc, vm, "destination", "migrate-start-postcopy")
            for cap in _precondition_caps(p, "migrate-start-postcopy"):
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": True}]})
                self.call(sc + f", {cap} on", vm, "destination", "migrate-start-postcopy")
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})
            self.call(sc, vm, "destination", "migrate-pause")
            self.call(sc, vm, "destination", "migrate-recover", {"uri": "unix:/nonexistent"})
            for status in p.status_names:
                self.call(sc, vm, "destination", "migrate-continue", {"state": status})
            self.call(sc, vm, "destination", "migrate_cancel")
            self.call(sc, vm, "destination", "migrate-incoming", {})
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": 1})
            # an unknown protocol fails and does not consume the "once" flag
            for uri in ("nope:x", "", "unix"):
                self.call(sc, vm, "destination", "migrate-incoming", {"uri": uri},
                          {"uri_invalid": True})
            path = os.path.join(self.workdir, f"in{self._n}.sock")
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": f"unix:{path}"})
            sc = "destination listening"
            flags = {"incoming_started": True}
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": f"unix:{path}2"},
                      flags)
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": "nope:x"},
                      {**flags, "uri_invalid": True})
            self.call(sc, vm, "destination", "migrate-recover", {"uri": f"unix:{path}3"},
                      flags)
            self.call(sc, vm, "destination", "migrate-pause", None, flags)
            self.call(sc, vm, "destination", "migrate", {"uri": "unix:/x"}, flags)
            self.call(sc, vm, "destination", "query-migrate", None, flags)
            # capabilities may still change on a listening destination (7.2)
            for cap in p.capability_names():
                self.call(sc, vm, "destination", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": True}]}, flags)
                vm.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})
        # a destination listening on a transport that allows one channel only
        with self.vm("destination") as vm:
            sc = "destination listening on exec"
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": "exec:sleep 60"})
            flags = {"incoming_started": True}
            # exec: carries one channel only: the spec's host fact for it is now false
            host = {"multi_channels_allowed": False}
            for cap in p.capability_names():
                self.call(sc, vm, "destination", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": True}]}, flags,
                          host=host)
                vm.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})

    def running_migration(self) -> None:
        """A real migration paused before switchover, then completed.

        The pausing capability and the pause status come from the spec row
        ``src.completion.pre_switchover`` (a precopy that converges with that
        capability on stops there until migrate-continue).
        """
        p = self.profile
        row = p.transition("src.completion.pre_switchover")
        pause_caps = sorted(E.names(row.guard, E.Cap))
        pause_state = row.new
        settled = set(p.terminal) | {pause_state}
        with self.vm("source") as src, self.vm("destination") as dst:
            sock = os.path.join(self.workdir, f"mig{self._n}.sock")
            dst.command("migrate-incoming", {"uri": f"unix:{sock}"})
            caps = [{"capability": c, "state": True} for c in pause_caps]
            src.command("migrate-set-capabilities", {"capabilities": caps})
            dst.command("migrate-set-capabilities", {"capabilities": caps})
            self.call("source migrate", src, "source", "migrate", {"uri": f"unix:{sock}"},
                      peer=dst)
            paused = src.wait_for(lambda v: v.migration_status(), lambda s: s in settled,
                                  timeout=120, what="the source to pause before switchover")
            sc = f"source {paused}"
            for status in [*p.status_names, "nope"]:
                if status != paused:
                    self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities",
                      {"capabilities": []}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities",
                      {"capabilities": [{"capability": "nope", "state": True}]}, peer=dst)
            for cap in p.capability_names()[:3]:
                self.call(sc, src, "source", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": False}]}, peer=dst)
            self.call(sc, src, "source", "migrate-set-parameters",
                      {"downtime-limit": 301}, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}"}, peer=dst)
            bad = {"uri_invalid": True}
            self.call(sc, src, "source", "migrate", {"uri": "nope:x"}, bad, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": "nope:x", "resume": True}, bad,
                      peer=dst)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, dst, "destination", "migrate-pause", peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": "unix:/x"}, peer=src)
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": "unix:/x"},
                      {"incoming_started": True}, peer=src)
            # 7.2 checks only the source object's status: a destination whose
            # incoming migration is active may still change capabilities.
            for cap in p.capability_names()[:4]:
                self.call(sc, dst, "destination", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": False}]},
                          {"incoming_started": True}, peer=src)
            self.call(sc, dst, "destination", "migrate-set-parameters", {"downtime-limit": 299},
                      {"incoming_started": True}, peer=src)
            if paused == pause_state:
                self.call(sc, src, "source", "migrate-continue", {"state": paused}, peer=dst)
            done = src.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                                timeout=120, what="the migration to finish")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                         timeout=60, what="the destination to finish")
            sc = f"source {done} (after migration)"
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}"}, peer=dst)
            for status in p.status_names:
                self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities",
                      {"capabilities": [{"capability": c, "state": False} for c in pause_caps]},
                      peer=dst)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, src, "source", "migrate_cancel", peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": "unix:/x", "resume": True}, peer=dst)
            sc = "destination after migration"
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": "unix:/x"},
                      {"incoming_started": True}, peer=src)
            self.call(sc, dst, "destination", "migrate", {"uri": "unix:/x"}, peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": "unix:/x"}, peer=src)
            self.call(sc, dst, "destination", "migrate-pause", peer=src)

    def postcopy_pause_recover(self) -> None:
        """A real postcopy migration, paused with migrate-pause and recovered.

        Capabilities and statuses come from spec rows: the destination pause
        row's capability, the postcopy switch row's new status, the pause
        rows' new status.  The source's postcopy bandwidth is throttled (as
        QEMU's own recovery test does) so that postcopy lasts long enough.
        """
        p = self.profile
        pc_caps = sorted(E.names(p.transition("dst.pause").guard, E.Cap))
        pc_active = p.transition("src.postcopy_start.switch").new
        paused = p.transition("src.postcopy_pause").new
        recover = p.transition("dst.recover.accept").new
        caps = [{"capability": c, "state": True} for c in pc_caps]
        blob = self.ram_blob_args()
        # -S on the destination: after postcopy's RUN its vCPUs stay stopped, so no
        # vCPU can block on a missing page while holding the big lock, which on
        # TCG intermittently froze the destination's monitor once paused.
        with self.vm("source", blob) as src, self.vm("destination", blob + ["-S"]) as dst:
            sock = os.path.join(self.workdir, f"pc{self._n}")
            incoming_runstate = dst.status()
            dst.command("migrate-incoming", {"uri": f"unix:{sock}-1"})
            src.command("migrate-set-capabilities", {"capabilities": caps})
            dst.command("migrate-set-capabilities", {"capabilities": caps})
            src.command("migrate-set-parameters", {"max-postcopy-bandwidth": 4096,
                                                   "max-bandwidth": 1 << 20})
            started = {"incoming_started": True}
            self.call("postcopy", src, "source", "migrate", {"uri": f"unix:{sock}-1"}, peer=dst)
            self.call("postcopy", src, "source", "migrate-start-postcopy", peer=dst)
            src.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                         or s in p.terminal, timeout=120, what="the source to enter postcopy")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                         or s in p.terminal, timeout=60, what="the destination to enter postcopy")
            dst.wait_for(lambda v: v.status(), lambda r: r != incoming_runstate, timeout=60,
                         what="the destination to process postcopy's RUN")
            sc = f"both {src.migration_status()}"
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            for status in p.status_names:
                self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities", {"capabilities": caps},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-x"}, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-x", "resume": True},
                      peer=dst)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-x"},
                      started, peer=src)
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": f"unix:{sock}-x"},
                      started, peer=src)
            self.call(sc, dst, "destination", "migrate-set-capabilities",
                      {"capabilities": caps}, started, peer=src)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            src.wait_for(lambda v: v.migration_status(), lambda s: s == paused
                         or s in p.terminal, timeout=60, what="the source to pause")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s == paused
                         or s in p.terminal, timeout=60, what="the destination to pause")
            sc = f"both {src.migration_status()}"
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, dst, "destination", "migrate-pause", None, started, peer=src)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            for status in p.status_names:
                self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities", {"capabilities": []},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-x"}, peer=dst)
            self.call(sc, src, "source", "migrate-recover", {"uri": f"unix:{sock}-x"}, peer=dst)
            # (not `migrate` on the paused destination: 7.2 answers "duplicate yank
            # instance" and leaves that process's outgoing status in setup, which
            # hides the incoming status from query-migrate for the rest of the run)
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": f"unix:{sock}-x"},
                      started, peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": "nope:x"},
                      {**started, "uri_invalid": True}, peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-2"},
                      started, peer=src)
            sc = f"{sc}, destination recovering"
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-3"},
                      {**started, "recover_listening": True}, peer=src)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-3", "resume": True},
                      peer=dst)
            back = src.wait_for(lambda v: v.migration_status(),
                                lambda s: s not in (paused, recover), timeout=60,
                                what="the source to leave recovery")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s not in (paused, recover),
                         timeout=60, what="the destination to leave recovery")
            sc = f"both {back} again"
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-3", "resume": True},
                      peer=dst)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-4"},
                      started, peer=src)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            src.command("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
            done = src.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                                timeout=120, what="the postcopy migration to finish")
            self.call(f"source {done} after postcopy", src, "source", "migrate-pause", peer=dst)
            self.call(f"source {done} after postcopy", src, "source", "migrate-start-postcopy",
                      peer=dst)

    def postcopy_paused_dead_ends(self) -> None:
        """Postcopy paused with release-ram on: the calls that cannot recover.

        ``migrate resume=true`` is refused because of release-ram (the
        capability comes from the spec's precondition); ``migrate`` on the
        paused destination; then ``migrate_cancel`` on the paused source,
        which 7.2 accepts and leaves in cancelling (facts §1.7).  No recovery
        is attempted: both QEMUs are killed at the end.
        """
        p = self.profile
        pc_caps = sorted(E.names(p.transition("dst.pause").guard, E.Cap))
        pre = next(x for x in p.command("migrate").preconditions
                   if E.names(x.when, E.Arg) == {"resume"} and E.names(x.when, E.Cap))
        release = sorted(E.names(pre.when, E.Cap))
        pc_active = p.transition("src.postcopy_start.switch").new
        paused = p.transition("src.postcopy_pause").new
        blob = self.ram_blob_args()
        # -S on the destination: after postcopy's RUN its vCPUs stay stopped, so no
        # vCPU can block on a missing page while holding the big lock, which on
        # TCG intermittently froze the destination's monitor once paused.
        with self.vm("source", blob) as src, self.vm("destination", blob + ["-S"]) as dst:
            sock = os.path.join(self.workdir, f"pd{self._n}")
            incoming_runstate = dst.status()
            dst.command("migrate-incoming", {"uri": f"unix:{sock}-1"})
            src.command("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": True} for c in pc_caps + release]})
            dst.command("migrate-set-capabilities", {"capabilities": [
                {"capability": c, "state": True} for c in pc_caps]})
            src.command("migrate-set-parameters", {"max-postcopy-bandwidth": 4096,
                                                   "max-bandwidth": 1 << 20})
            started = {"incoming_started": True}
            sc = "postcopy with " + ",".join(release)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-1"}, peer=dst)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            for vm, who in ((src, "source"), (dst, "destination")):
                vm.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                            or s in p.terminal, timeout=120, what=f"the {who} to enter postcopy")
            # Pause only after postcopy's RUN (the destination leaves inmigrate).
            dst.wait_for(lambda v: v.status(), lambda r: r != incoming_runstate, timeout=60,
                         what="the destination to process postcopy's RUN")
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            for vm, who in ((src, "source"), (dst, "destination")):
                vm.wait_for(lambda v: v.migration_status(), lambda s: s == paused
                            or s in p.terminal, timeout=60, what=f"the {who} to pause")
            sc = f"both {src.migration_status()}, " + ",".join(release) + " on"
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-2", "resume": True},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": "nope:x", "resume": True},
                      {"uri_invalid": True}, peer=dst)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, src, "source", "migrate_cancel", peer=dst)
            src.wait_for(lambda v: v.migration_status(), lambda s: s != paused, timeout=30,
                         what="the cancel to be seen")
            sc = f"source {src.migration_status()} after cancel while paused"
            self.call(sc, src, "source", "migrate-set-capabilities", {"capabilities": []},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-2"}, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-2", "resume": True},
                      peer=dst)
            self.call(sc, src, "source", "migrate_cancel", peer=dst)
            # Last: 7.2 refuses `migrate` on a paused destination with "duplicate yank
            # instance" and leaves that process's outgoing status in setup.
            self.call("destination " + paused, dst, "destination", "migrate",
                      {"uri": f"unix:{sock}-3"}, started, peer=src)

    def postcopy_destination_migrate(self) -> None:
        """``migrate`` in a destination process while its incoming postcopy is active."""
        p = self.profile
        pc_caps = sorted(E.names(p.transition("dst.pause").guard, E.Cap))
        pc_active = p.transition("src.postcopy_start.switch").new
        caps = [{"capability": c, "state": True} for c in pc_caps]
        blob = self.ram_blob_args()
        with self.vm("source", blob) as src, self.vm("destination", blob + ["-S"]) as dst:
            sock = os.path.join(self.workdir, f"pm{self._n}")
            incoming_runstate = dst.status()
            dst.command("migrate-incoming", {"uri": f"unix:{sock}-1"})
            src.command("migrate-set-capabilities", {"capabilities": caps})
            dst.command("migrate-set-capabilities", {"capabilities": caps})
            src.command("migrate-set-parameters", {"max-postcopy-bandwidth": 4096,
                                                   "max-bandwidth": 1 << 20})
            src.command("migrate", {"uri": f"unix:{sock}-1"})
            src.command("migrate-start-postcopy")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                         or s in p.terminal, timeout=120, what="the destination in postcopy")
            dst.wait_for(lambda v: v.status(), lambda r: r != incoming_runstate, timeout=60,
                         what="the destination to process postcopy's RUN")
            self.call(f"destination {pc_active}", dst, "destination", "migrate",
                      {"uri": f"unix:{sock}-2"}, {"incoming_started": True}, peer=src)

    def run_all(self, log: Callable[[str], None] = print) -> list[dict]:
        """Every scenario; one that breaks (e.g. a QEMU stops answering) is
        reported and the others still run.  Its records so far are kept."""
        for scenario in (self.idle_source, self.idle_destination, self.running_migration,
                         self.postcopy_pause_recover, self.postcopy_paused_dead_ends,
                         self.postcopy_destination_migrate):
            try:
                scenario()
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                log(f"commands: scenario {scenario.__name__} broke off: {exc!r}")
                self.failed.append(scenario.__name__)
        return self.records


# --------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------
def _meta(kind: str, profile: Profile, seed: int, sessions: dict[str, SideSession],
          binary: str) -> dict[str, Any]:
    return {
        "kind": "meta", "file": kind, "profile": profile.name, "qemu": qemu_version(binary),
        "kernel": platform.release(), "seed": seed,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": "python -m livemig.conformance.ground_truth",
        "capabilities": {s: list(v.cap_names) for s, v in sessions.items()},
        "param_defaults": {s: v.param_defaults for s, v in sessions.items()},
        "host_assumed": profile.host_defaults(),
    }


def _write(path: Path, meta: dict, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w") as f:
        f.write(json.dumps(meta, sort_keys=True) + "\n")
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
            n += 1
    return n


def generate(out_dir: str, seed: int = 72, n_random_caps: int = 350,
             n_from_current: int = 150, n_random_params: int = 500,
             binary: Optional[str] = None, only: Sequence[str] = ("caps", "params", "commands"),
             log: Callable[[str], None] = print) -> dict[str, int]:
    """Run every case against QEMU and write the JSON-lines files; returns counts."""
    binary = binary or qemu_binary()
    if binary is None:
        raise GroundTruthError("qemu-system-x86_64 is not installed")
    profile = load_profile(PROFILE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="livemig-gt-") as work:
        sessions = {s: SideSession(s, workdir=work, binary=binary).start() for s in SIDES}
        try:
            for s in sessions.values():
                if s.cap_names != profile.capability_names():
                    log(f"note: QEMU's capability list differs from the spec: {s.cap_names}")
            if "caps" in only:
                t0 = time.monotonic()
                records = []
                for side, sess in sessions.items():
                    rng = random.Random(f"{seed}-caps-{side}")
                    cases = capability_cases(profile, rng, n_random_caps, n_from_current)
                    cases += caps_setup_param_cases(profile)
                    for case in cases:
                        r = run_cap_case(sess, case)
                        if r:
                            records.append(r)
                counts["caps"] = _write(out / FILES["caps"],
                                        _meta("caps", profile, seed, sessions, binary), records)
                log(f"caps: {counts['caps']} cases in {time.monotonic() - t0:.1f}s")
            if "params" in only:
                t0 = time.monotonic()
                records = []
                for side, sess in sessions.items():
                    rng = random.Random(f"{seed}-params-{side}")
                    for case in parameter_cases(profile, rng, n_random_params):
                        records.append(run_param_case(sess, case))
                counts["params"] = _write(out / FILES["params"],
                                          _meta("params", profile, seed, sessions, binary),
                                          records)
                log(f"params: {counts['params']} cases in {time.monotonic() - t0:.1f}s "
                    f"({sum(s.restarts for s in sessions.values())} restarts)")
        finally:
            for s in sessions.values():
                s.close()
        if "commands" in only:
            t0 = time.monotonic()
            rec = CommandRecorder(profile, work, binary)
            records = rec.run_all(log)
            meta = _meta("commands", profile, seed, {}, binary)
            meta["scenarios_broken"] = rec.failed
            counts["commands"] = _write(out / FILES["commands"], meta, records)
            log(f"commands: {counts['commands']} calls in {time.monotonic() - t0:.1f}s")
    return counts


def read_cases(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(meta, records)`` of one recorded file."""
    meta: dict = {}
    records: list[dict] = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            if obj.get("kind") == "meta":
                meta = obj
            else:
                records.append(obj)
    return meta, records


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m livemig.conformance.ground_truth",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/", help="output directory")
    ap.add_argument("--seed", type=int, default=72)
    ap.add_argument("--random-caps", type=int, default=350)
    ap.add_argument("--from-current", type=int, default=150)
    ap.add_argument("--random-params", type=int, default=500)
    ap.add_argument("--only", nargs="*", default=["caps", "params", "commands"],
                    choices=["caps", "params", "commands"])
    ap.add_argument("--qemu", default=None, help="QEMU binary (default: on PATH)")
    args = ap.parse_args(argv)
    counts = generate(args.out, seed=args.seed, n_random_caps=args.random_caps,
                      n_from_current=args.from_current, n_random_params=args.random_params,
                      binary=args.qemu, only=args.only)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
