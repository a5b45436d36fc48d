"""Stateful tests generated from the spec: Hypothesis drives two livemig VMs.

Theory of operation
-------------------
:func:`build_machine` returns a ``RuleBasedStateMachine`` class for a
profile.  Its rules are not written per state: there is one rule per QMP
command of the profile's COMMANDS table, whose arguments are drawn from the
spec (status names for ``state``, capability names and parameter bounds for
the set commands, good and bad URIs), sent to either VM; plus environment
rules: time passing, a migration shortcut that starts a converging
migration (so deep states are reached often), the channel broken, the
destination killed, and the workload's rate changed.

Two in-process :class:`~livemig.engine.vm.VM` objects (the real engine: real
threads, real unix sockets, QEMU's stream) play source and destination.
After every step:

* each VM's transition log is a path of spec rows and keeps the catalogue's
  step invariants (:class:`~livemig.conformance.runtime.RuntimeChecker`);
* the observable ``implies`` invariants hold for the current statuses and
  capabilities;
* a refused command changed neither capabilities nor parameters, fired no
  monitor row, and its error text is one the spec declares for it.

Rows hit are collected across examples (:data:`COVERAGE`) for the coverage
report.  Commands the engine does not implement yet answer CommandNotFound;
they are counted (:data:`UNIMPLEMENTED`), not failed.
"""
from __future__ import annotations

import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from livemig.conformance.runtime import RuntimeChecker
from livemig.errors import MigrationError
from livemig.spec import load_profile
from livemig.spec.schema import Profile

#: rows hit by every run in this process, for the coverage report
COVERAGE: Counter = Counter()
#: commands the engine answered with CommandNotFound
UNIMPLEMENTED: Counter = Counter()
#: engine texts that are not in the spec (kept visible in the report)
NON_SPEC_ERRORS: Counter = Counter()
#: why destinations failed (their load errors), for the report
DESTINATION_FAILURES: Counter = Counter()

RAM = 4 << 20
SIDES = ("source", "destination")
#: capability sets for the deep-state shortcut: the ones that change the
#: engine's path through the rows (inputs, not rules: the checker decides)
SHORTCUT_CAPS = ((), ("pause-before-switchover",), ("return-path",),
                 ("events", "pause-before-switchover"), ("xbzrle",), ("postcopy-ram",),
                 ("postcopy-ram", "pause-before-switchover"))


def spec_error_patterns(profile: Profile) -> list[re.Pattern]:
    """Every error text the spec declares, as patterns (``%s``/``%d`` match anything)."""
    texts = [pre.error for cmd in profile.commands for pre in cmd.preconditions]
    texts += [r.error for r in profile.cap_rules] + [r.error for r in profile.param_rules]
    texts += [text for _key, text in profile.qapi_errors]
    texts += [r.error for r in profile.alias_map_rules]
    out = []
    for text in texts:
        parts = re.split(r"%[sdzux]+", text)
        out.append(re.compile("^" + ".*".join(re.escape(p) for p in parts) + "$", re.S))
    prefixed = [r.error for r in profile.param_rules if r.alias_map]
    out += [re.compile("^" + re.escape(p) + ".*$", re.S) for p in prefixed]
    return out


def parameter_values(profile: Profile) -> st.SearchStrategy:
    """One parameter and a value near its rules' bounds, or junk."""
    bounds: dict[str, list[Any]] = {}
    for param_rule in profile.param_rules:
        if param_rule.param is None:
            continue
        values = bounds.setdefault(param_rule.param, [])
        for bound in (param_rule.min, param_rule.max):
            if isinstance(bound, int):
                values += [bound - 1, bound, bound + 1]
    choices = []
    for param in profile.parameters:
        values = [param.default, -1, "x", None] + bounds.get(param.name, [])
        if param.enum:
            values += list(param.enum) + ["nope"]
        choices += [(param.name, v) for v in values]
    choices.append(("no-such-parameter", 1))
    return st.sampled_from(choices)


def build_machine(profile_name: str = "qemu-7.2") -> type[RuleBasedStateMachine]:
    """A RuleBasedStateMachine class for the profile (rules from its command table)."""
    profile = load_profile(profile_name)
    statuses = st.sampled_from(profile.status_names)
    caps = st.lists(st.tuples(st.sampled_from(profile.capability_names() + ("no-such-cap",)),
                              st.booleans()), min_size=1, max_size=3)
    patterns = spec_error_patterns(profile)
    RUNNING = profile.states_of("running")
    SETTLED = settled_states(profile)
    monitor_rows = {r.id for r in profile.transitions if r.actor == "monitor"}

    class SpecMachine(RuleBasedStateMachine):
        """Two VMs driven by spec-generated rules (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.vms: dict[str, Any] = {}
            self.checkers: dict[str, RuntimeChecker] = {}
            self.consumed: dict[str, int] = {}
            self.tmp = tempfile.TemporaryDirectory(prefix="livemig-stateful-")
            self.serial = 0
            self.fatal: list[str] = []
            self.listen_uri: str | None = None

        # ---------------------------------------------------------- setup
        @initialize()
        def start_vms(self) -> None:
            from livemig.engine.vm import VM  # the engine is optional for importers

            self.vms["source"] = VM(ram_size=RAM, profile=profile_name, workload_rate=5000.0,
                                    seed=1)
            self.vms["destination"] = VM(ram_size=RAM, profile=profile_name,
                                         incoming="defer")
            for side, vm in self.vms.items():
                vm.on_fatal = self.fatal.append
                self.checkers[side] = RuntimeChecker(profile)
                self.consumed[side] = 0

        def teardown(self) -> None:
            for side, vm in self.vms.items():
                self._sync_log(side)
                COVERAGE.update(self.checkers[side].rows_hit)
                vm.close()
            incoming = self.vms["destination"].incoming if self.vms else None
            if incoming is not None and incoming.error_desc:
                DESTINATION_FAILURES[incoming.error_desc] += 1
            self.tmp.cleanup()

        # ---------------------------------------------------------- helpers
        def _uri(self, kind: str) -> str:
            self.serial += 1
            if kind == "bad":
                return "nope:x"
            if kind == "unreachable":
                return f"unix:{Path(self.tmp.name) / f'nobody-{self.serial}.sock'}"
            return f"unix:{Path(self.tmp.name) / f'mig-{self.serial}.sock'}"

        def _sync_log(self, side: str) -> None:
            attempts = self.vms[side].log.attempts
            new = attempts[self.consumed[side]:]
            self.consumed[side] += len(new)
            self.checkers[side].feed(new)

        def _execute(self, side: str, name: str, args: dict) -> bool:
            """Run a command; True if it was accepted.  A refusal is checked."""
            vm = self.vms[side]
            self._sync_log(side)
            before_caps, before_params = dict(vm.caps), dict(vm.params)
            mark = len(vm.log.attempts)
            try:
                vm.execute(name, args)
                return True
            except MigrationError as exc:
                if type(exc).__name__ == "CommandNotFound":
                    UNIMPLEMENTED[name] += 1
                    return False
                assert vm.caps == before_caps, f"refused {name} changed capabilities"
                assert vm.params == before_params, f"refused {name} changed parameters"
                fired = {a.id for a in vm.log.attempts[mark:] if a.ok}
                allowed = {"src.qmp_migrate.bad_uri", "src.migrate_init.reset",
                           "src.migrate_init.setup"} if name == "migrate" else set()
                assert not (fired & monitor_rows) - allowed, \
                    f"refused {name} fired {fired & monitor_rows}"
                if not any(p.match(exc.message) for p in patterns):
                    NON_SPEC_ERRORS[f"{name}: {exc.message}"] += 1
                return False

        # ---------------------------------------------------------- command rules
        @rule(side=st.sampled_from(SIDES), request=caps)
        def migrate_set_capabilities(self, side: str, request: list) -> None:
            self._execute(side, "migrate-set-capabilities", {"capabilities": [
                {"capability": name, "state": on} for name, on in request]})

        @rule(side=st.sampled_from(SIDES), item=parameter_values(profile))
        def migrate_set_parameters(self, side: str, item: tuple) -> None:
            self._execute(side, "migrate-set-parameters", {item[0]: item[1]})

        @rule(side=st.sampled_from(SIDES), resume=st.booleans())
        def migrate(self, side: str, resume: bool) -> None:
            uri = self.listen_uri or self._uri("unreachable")
            self._execute(side, "migrate", {"uri": uri, "resume": resume})

        @rule(where=st.sampled_from(("bad", "unreachable")))
        def migrate_elsewhere(self, where: str) -> None:
            self._execute("source", "migrate", {"uri": self._uri(where)})

        @rule(side=st.sampled_from(SIDES), where=st.sampled_from(("fresh", "bad")))
        def migrate_incoming(self, side: str, where: str) -> None:
            self._incoming(side, self._uri(where))

        def _incoming(self, side: str, uri: str) -> None:
            had_listener = self.vms[side]._listener is not None
            self._execute(side, "migrate-incoming", {"uri": uri})
            if not had_listener and self.vms[side]._listener is not None and \
                    side == "destination":
                self.listen_uri = uri

        @rule(side=st.sampled_from(SIDES), state=st.one_of(st.just(None), statuses))
        def migrate_continue(self, side: str, state: str | None) -> None:
            """``state`` None: name the side's current status (the useful call)."""
            if state is None:
                cell = self.vms[side].src_cell
                state = cell.state
            self._execute(side, "migrate-continue", {"state": state})

        # ---------------------------------------------------------- environment
        @rule(caps=st.sampled_from(SHORTCUT_CAPS), bandwidth=st.sampled_from((1 << 40, 2 << 20)))
        def start_migration(self, caps: tuple, bandwidth: int) -> None:
            """Shortcut into deep states: capabilities, bandwidth (fast: converges at
            once; slow: stays active for seconds), a listening destination, migrate."""
            if caps:
                request = [{"capability": c, "state": True} for c in caps]
                for side in SIDES:
                    self._execute(side, "migrate-set-capabilities", {"capabilities": request})
            self._execute("source", "migrate-set-parameters", {"max-bandwidth": bandwidth})
            if self.vms["destination"]._listener is None:
                self._incoming("destination", self._uri("fresh"))
            if self.listen_uri:
                self._execute("source", "migrate", {"uri": self.listen_uri})

        @rule()
        def start_postcopy_migration(self) -> None:
            """Shortcut into postcopy: postcopy-ram on both sides, a slow
            precopy, migrate, migrate-start-postcopy."""
            request = [{"capability": "postcopy-ram", "state": True}]
            for side in SIDES:
                self._execute(side, "migrate-set-capabilities", {"capabilities": request})
            self._execute("source", "migrate-set-parameters", {"max-bandwidth": 2 << 20})
            if self.vms["destination"]._listener is None:
                self._incoming("destination", self._uri("fresh"))
            if self.listen_uri and self._execute("source", "migrate", {"uri": self.listen_uri}):
                self._execute("source", "migrate-start-postcopy", {})

        @rule()
        def recover(self) -> None:
            """Shortcut out of postcopy-paused: migrate-recover on the destination,
            then migrate resume=true to it (refusals are checked as usual)."""
            uri = self._uri("fresh")
            if self._execute("destination", "migrate-recover", {"uri": uri}):
                self.listen_uri = uri
                self._execute("source", "migrate", {"uri": uri, "resume": True})

        @rule(seconds=st.sampled_from((2.0, 0.3, 0.05)))
        def time_passes(self, seconds: float) -> None:
            """Wait (bounded) until the source settles: a terminal status, or one
            that only a command can leave (see :func:`settled_states`)."""
            cell = self.vms["source"].src_cell
            start = cell.state
            deadline = time.monotonic() + seconds
            cell.wait_for(lambda s: s != start, timeout=seconds)  # something happens
            cell.wait_for(lambda s: s in SETTLED, timeout=max(0.0, deadline - time.monotonic()))

        @rule()
        def break_channel(self) -> None:
            """Cut the migration channel if a migration is running.

            Decided inside the rule, not by a precondition: the engine runs on
            real threads, so a precondition on its state could differ when
            Hypothesis replays the same choices (FlakyStrategyDefinition)."""
            source = self.vms["source"]
            if source._src_driver is not None and source.src_cell.state in RUNNING:
                source._src_driver.abort()

        @rule(rate=st.sampled_from((0.0, 2000.0, 50000.0)))
        def workload(self, rate: float) -> None:
            self._execute("source", "x-livemig-set-workload", {"rate": rate})

        # ---------------------------------------------------------- invariants
        @invariant()
        def follows_the_spec(self) -> None:
            for side, vm in self.vms.items():
                self._sync_log(side)
                checker = self.checkers[side]
                checker.check_states({"source": vm.src_cell.state,
                                      "destination": vm.dst_cell.state},
                                     {"source": vm.caps, "destination": vm.caps})
                assert not checker.violations, checker.violations

    # Every other command of the table takes no argument or only a URI: one
    # generated rule each, so a command added to the spec is exercised here.
    handwritten = {"migrate", "migrate-incoming", "migrate-continue",
                   "migrate-set-capabilities", "migrate-set-parameters"}
    for command in profile.commands:
        if command.name not in handwritten:
            name = "cmd_" + command.name.replace("-", "_")
            setattr(SpecMachine, name, _command_rule(command.name, "uri" in command.args))
    # Weighted rules: the ways into deep states are registered more than once,
    # so swarm testing and uniform rule choice still reach them often.
    for copy in range(2, 4):
        setattr(SpecMachine, f"start_migration_{copy}", SpecMachine.start_migration)
        setattr(SpecMachine, f"start_postcopy_migration_{copy}",
                SpecMachine.start_postcopy_migration)
        setattr(SpecMachine, f"recover_{copy}", SpecMachine.recover)
        setattr(SpecMachine, f"time_passes_{copy}", SpecMachine.time_passes)
        setattr(SpecMachine, f"migrate_continue_{copy}", SpecMachine.migrate_continue)
    SpecMachine.__name__ = f"SpecMachine_{profile_name.replace('-', '_').replace('.', '_')}"
    return SpecMachine


def _command_rule(name: str, needs_uri: bool):
    @rule(side=st.sampled_from(SIDES))
    def command_rule(self, side: str) -> None:
        args = {"uri": self._uri("fresh")} if needs_uri else {}
        if self._execute(side, name, args) and needs_uri and side == "destination":
            self.listen_uri = args["uri"]  # e.g. migrate-recover: resume goes there
    command_rule.__name__ = "cmd_" + name.replace("-", "_")
    return command_rule


def settled_states(profile: Profile) -> frozenset[str]:
    """Statuses the source stays in until a command acts: the terminal ones, the
    initial one, and those whose every way forward (failures aside) needs a
    command flag (pre-switchover waits for migrate-continue, postcopy-paused
    for a resume)."""
    from livemig.spec import expr as E

    command_flags = {f.name for f in profile.flags if f.kind == "command"}
    failures = profile.states_of("has_failed")
    settled = set(profile.terminal) | {profile.status_names[0]}
    for status in profile.status_names:
        # the ways forward: not a command's own row, not an accident (failure)
        exits = [r for r in profile.rows("source")
                 if status in profile.sources_of(r) and not r.event_only and not r.store
                 and r.new != status and r.actor != "monitor" and r.new not in failures]
        if exits and all(E.names(r.guard, E.Flag) & command_flags for r in exits):
            settled.add(status)
    return frozenset(settled)


def coverage_report(profile: Profile, reachable: set[str]) -> tuple[float, str]:
    """The fraction of ``reachable`` rows hit, and a printable report."""
    hit = {r for r in reachable if COVERAGE[r]}
    lines = [f"transition coverage ({profile.name}): {len(hit)}/{len(reachable)} rows the "
             f"engine can reach were hit"]
    for row_id in sorted(reachable):
        lines.append(f"  {'HIT ' if COVERAGE[row_id] else 'MISS'} {COVERAGE[row_id]:6d}  {row_id}")
    if UNIMPLEMENTED:
        lines.append("commands the engine does not implement yet: "
                     + ", ".join(f"{k} ({v})" for k, v in sorted(UNIMPLEMENTED.items())))
    if DESTINATION_FAILURES:
        lines.append("destination load errors seen:")
        lines += [f"  {v:4d}  {k}" for k, v in DESTINATION_FAILURES.most_common()]
    if NON_SPEC_ERRORS:
        lines.append("refusals with texts the spec does not declare:")
        lines += [f"  {v:4d}  {k}" for k, v in NON_SPEC_ERRORS.most_common()]
    return (len(hit) / len(reachable) if reachable else 1.0), "\n".join(lines)
