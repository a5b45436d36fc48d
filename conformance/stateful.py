"""Stateful tests generated from the spec: Hypothesis drives two livemig VMs.

Theory of operation
-------------------
:func:`build_machine` returns a ``RuleBasedStateMachine`` class for a
profile and a *backend*.  Its rules are not written per state: there is one
rule per QMP command of the profile's COMMANDS table, whose arguments are
drawn from the spec (status names for ``state``, capability names and
parameter bounds for the set commands, good and bad URIs), sent to either
VM; plus environment rules (time passing, the channel broken, connects
refused, the destination killed, vCPU work) and shortcuts into deep states
(a converging migration, postcopy, pause, recovery).

Two :class:`~livemig.engine.vm.VM` objects play source and destination:
the engine's own QMP commands, checkers, sessions and status cells.  The
backend decides what moves their bytes:

``fake`` (the main run)
    :mod:`livemig.conformance.fakelink`: the drivers' threads as tasks on one
    thread over an in-memory network, a simulated clock, vCPUs stepped by
    rules.  Every interleaving is a rule Hypothesis chose (which task runs,
    for how long, how many bytes a read takes), so a failure shrinks and
    replays exactly.
``sockets`` (a smaller run)
    the real drivers on real threads and unix sockets; time passing is real
    waiting (bounded, on the status cells' conditions).

After every step:

* each VM's transition log is a path of spec rows and keeps the catalogue's
  step invariants (:class:`~livemig.conformance.runtime.RuntimeChecker`);
* the observable ``implies`` invariants hold for the current statuses and
  capabilities;
* a refused command changed neither capabilities nor parameters, fired no
  monitor row, and its error text is one the spec declares, or one of the
  engine's own documented refusals (:data:`ENGINE_OWN_TEXTS`, counted in
  :data:`NON_SPEC_ERRORS` for the report).

Rows hit are collected across examples, per backend (:data:`COVERAGE`), for
the coverage report.
"""
from __future__ import annotations

import re
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Callable, Optional

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from livemig.conformance.runtime import CrossSideChecker, RuntimeChecker
from livemig.engine.threads import CRASH_PREFIX
from livemig.errors import MigrationError
from livemig.spec import load_profile
from livemig.spec.schema import Profile

#: rows hit per backend, by every run in this process (coverage report)
COVERAGE: defaultdict[str, Counter] = defaultdict(Counter)
#: commands the engine answered with CommandNotFound
UNIMPLEMENTED: Counter = Counter()
#: refusals whose text the spec does not declare (kept visible in the report)
NON_SPEC_ERRORS: Counter = Counter()
#: the engine's own refusals, which QEMU does not have (README: differences);
#: any other text the spec does not declare fails the run
ENGINE_OWN_TEXTS = (
    re.compile(r"^livemig: capability '[a-z-]+' is not implemented by this engine; "
               r"turn it off to migrate$"),
)
#: why destinations failed (their load errors), for the report
DESTINATION_FAILURES: Counter = Counter()
#: reports the stateful tests made, printed at the end of the pytest run
#: (conformance/conftest.py: pytest's output capture hides a test's prints)
SUMMARY: list[str] = []

RAM = 2 << 20
SIDES = ("source", "destination")
BACKENDS = ("fake", "sockets", "processes")
#: capability sets for the deep-state shortcut: the ones that change the
#: engine's path through the rows (inputs, not rules: the checker decides)
SHORTCUT_CAPS = ((), ("pause-before-switchover",), ("return-path",),
                 ("events", "pause-before-switchover"), ("xbzrle",), ("postcopy-ram",),
                 ("postcopy-ram", "pause-before-switchover"), ("multifd",),
                 ("multifd", "pause-before-switchover"))


#: starts whose migrate cannot get going: (capabilities, kind of URI)
CONNECT_STARTS = {
    "bad-uri": ((), "bad"),
    "nobody-listening": ((), "unreachable"),
    "file-with-return-path": (("return-path",), "file"),
    "file-with-multifd": (("multifd",), "file"),
}


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


# ==================================================================== backends
class SocketBackend:
    """Real drivers, real threads, unix sockets; time passing is waiting.
    Faults come from :mod:`livemig.conformance.faultrunner` (refused
    connects, channels broken, breaks at exact points)."""

    name = "sockets"

    def __init__(self, profile_name: str) -> None:
        from livemig.conformance.faultrunner import FaultPlan
        self.profile_name = profile_name
        self.plan = FaultPlan()

    def make_vm(self, role: str, seed: int) -> Any:
        from livemig.conformance.faultrunner import FaultyTransport
        from livemig.engine.vm import VM  # the engine is optional for importers
        transport = FaultyTransport(self.plan)
        if role == "source":
            return VM(ram_size=RAM, profile=self.profile_name, workload_rate=5000.0, seed=seed,
                      transport=transport)
        return VM(ram_size=RAM, profile=self.profile_name, incoming="defer",
                  transport=transport)

    def run_until(self, vm: Any, settled: frozenset[str], seconds: float) -> None:
        """Wait (bounded) until something happens and the source settles."""
        cell = vm.src_cell
        start = cell.state
        deadline = time.monotonic() + seconds
        cell.wait_for(lambda s: s != start, timeout=seconds)
        cell.wait_for(lambda s: s in settled, timeout=max(0.0, deadline - time.monotonic()))

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        """Look at the VMs until ``done()`` (bounded); True if it came."""
        deadline = time.monotonic() + timeout
        while not done():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def break_channel(self, vms: dict[str, Any], running: frozenset[str]) -> None:
        self.plan.break_connections()

    def vcpu(self, vm: Any, amount: int) -> None:
        vm.set_workload(rate=float(amount) * 1000.0)

    def close(self) -> None:
        self.plan.clear_triggers()


class FakeBackend:
    """The fake link: tasks stepped by rules, a simulated clock."""

    name = "fake"

    def __init__(self, profile_name: str) -> None:
        from livemig.conformance.fakelink import FakeLink
        self.profile_name = profile_name
        self.link = FakeLink()
        self.generation = 0

    def make_vm(self, role: str, seed: int) -> Any:
        from livemig.engine.vm import VM
        self.generation += 1
        owner = f"{role}-{self.generation}"
        if role == "source":
            return VM(ram_size=RAM, profile=self.profile_name, seed=seed, vcpu_thread=False,
                      transport=self.link.transport(owner))
        return VM(ram_size=RAM, profile=self.profile_name, incoming="defer", vcpu_thread=False,
                  transport=self.link.transport(owner))

    def run_until(self, vm: Any, settled: frozenset[str], seconds: float) -> None:
        """Every task runs until none can; then the clock moves on, and again."""
        self.link.run()
        self.link.advance(seconds)
        self.link.run()

    def break_channel(self, vms: dict[str, Any], running: frozenset[str]) -> None:
        self.link.network.break_connections()

    def vcpu(self, vm: Any, amount: int) -> None:
        vm.guest.step_workload(amount)

    def close(self) -> None:
        self.link.close()


class ProcessBackend:
    """``livemig vm`` processes over QMP and unix sockets: the real engine
    as its users run it.  Time passing is waiting (bounded) on the
    processes' transition logs; a broken channel is a killed destination."""

    name = "processes"

    def __init__(self, profile_name: str) -> None:
        from livemig.conformance.scenarios import LivemigLauncher
        self.profile_name = profile_name
        self.launcher = LivemigLauncher(ram="2M", extra=("--workload", "5000"))

    def make_vm(self, role: str, seed: int) -> Any:
        from livemig.conformance.processvm import ProcessVM
        return ProcessVM(self.launcher, role, self.profile_name)

    def run_until(self, vm: Any, settled: frozenset[str], seconds: float) -> None:
        start = vm.src_cell.state
        deadline = time.monotonic() + seconds
        vm.wait_until(lambda: vm.src_cell.state != start, seconds)
        vm.wait_until(lambda: vm.src_cell.state in settled,
                      max(0.0, deadline - time.monotonic()))

    def wait(self, done: Callable[[], bool], timeout: float) -> bool:
        return SocketBackend.wait(self, done, timeout)  # type: ignore[arg-type]

    def break_channel(self, vms: dict[str, Any], running: frozenset[str]) -> None:
        if vms["source"].src_cell.state in running:
            vms["destination"].kill()  # the machine replaces it before its next use

    def vcpu(self, vm: Any, amount: int) -> None:
        if vm.alive:
            vm.execute("x-livemig-set-workload", {"rate": float(amount) * 1000.0})

    def close(self) -> None:
        self.launcher.close()


def _backend(name: str, profile_name: str) -> SocketBackend | FakeBackend | ProcessBackend:
    if name == "fake":
        return FakeBackend(profile_name)
    if name == "sockets":
        return SocketBackend(profile_name)
    if name == "processes":
        return ProcessBackend(profile_name)
    raise ValueError(f"unknown backend {name!r}; expected one of {', '.join(BACKENDS)}")


# ==================================================================== the machine
#: deep states the real backends reach with QMP commands and bounded waits
COMMAND_STARTS = ("precopy-completed", "cancelled", "pre-switchover",
                  "postcopy-pre-switchover", "postcopy-active", "postcopy-paused",
                  "postcopy-resumed")
PROCESS_STARTS = ("pre-switchover", "postcopy-active", "postcopy-paused", "postcopy-resumed")
#: deep states the sockets backend reaches with faults at exact points
#: (livemig.conformance.faultrunner): the rows only a broken network reaches
FAULT_STARTS = ("multifd-refused", "multifd-broken", "precopy-broken", "completion-broken",
                "package-broken", "listening-broken")


def starts(backend: str) -> tuple[str, ...]:
    """Where an example can start on ``backend``: idle, a migrate that cannot
    get going, or a deep state (every one on the fake link; those commands
    reach on the real backends)."""
    if backend == "fake":
        return ("idle",) + tuple(CONNECT_STARTS) + tuple(DEEP_STATES)
    if backend == "processes":  # slow to start: the starts QMP users reach most
        return ("idle",) + tuple(CONNECT_STARTS) + PROCESS_STARTS
    return ("idle",) + tuple(CONNECT_STARTS) + COMMAND_STARTS + FAULT_STARTS


def build_machine(profile_name: str = "qemu-7.2", backend: str = "fake",
                  start_in: Optional[tuple[str, ...]] = None) -> type[RuleBasedStateMachine]:
    """A RuleBasedStateMachine class for the profile (rules from its command
    table) on ``backend`` (one of :data:`BACKENDS`); its examples start in one
    of ``start_in`` (default: every start of :func:`starts`)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(BACKENDS)}")
    profile = load_profile(profile_name)
    statuses = st.sampled_from(profile.status_names)
    caps = st.lists(st.tuples(st.sampled_from(profile.capability_names() + ("no-such-cap",)),
                              st.booleans()), min_size=1, max_size=3)
    patterns = spec_error_patterns(profile)
    RUNNING = profile.states_of("running")
    SETTLED = settled_states(profile)
    POSTCOPY = profile.states_of("in_postcopy")
    monitor_rows = {r.id for r in profile.transitions if r.actor == "monitor"}
    coverage = COVERAGE[backend]
    STARTS = start_in or starts(backend)
    unknown = set(STARTS) - set(starts(backend))
    if unknown:
        raise ValueError(f"unknown start {sorted(unknown)} for {backend}; expected one of "
                         f"{', '.join(starts(backend))}")

    class SpecMachine(RuleBasedStateMachine):
        """Two VMs driven by spec-generated rules (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__()
            self.vms: dict[str, Any] = {}
            self.checkers: dict[str, RuntimeChecker] = {}
            #: the catalogue's cross-side entries over both VMs' logs
            self.cross = CrossSideChecker(profile)
            self.consumed: dict[str, int] = {}
            self.tmp = tempfile.TemporaryDirectory(prefix="livemig-stateful-")
            self.serial = 0
            self.fatal: list[str] = []
            self.listen_uri: Optional[str] = None
            self.backend = _backend(backend, profile_name)

        # ---------------------------------------------------------- setup
        @initialize(start=st.sampled_from(STARTS), return_path=st.booleans(),
                    then=st.sampled_from(("stay", "break", "continue")))
        def start_vms(self, start: str, return_path: bool, then: str) -> None:
            """The two VMs, then a start: idle; a migration that cannot connect
            (see :data:`CONNECT_STARTS`); or, on the fake link, a deep state
            (see ``drive_to``) -- so each is explored from many times a run --
            left as it is, or with the channel broken right there, or with
            migrate-continue naming the source's status (and then time to
            settle, so the rows that follow have fired)."""
            for side in SIDES:
                self._new_vm(side)
            if start in CONNECT_STARTS:
                caps, uri = CONNECT_STARTS[start]
                if caps:
                    self._execute("source", "migrate-set-capabilities", {"capabilities": [
                        {"capability": c, "state": True} for c in caps]})
                self._execute("source", "migrate", {"uri": self._uri(uri)})
            elif start != "idle":
                if backend == "fake":
                    self.drive_to(deep=start, return_path=return_path)
                else:
                    self._drive_by_commands(start)
                if then == "break":
                    self.break_channel()
                    self._settle()
                elif then == "continue":
                    self._execute("source", "migrate-continue",
                                  {"state": self.vms["source"].src_cell.state})
                    self._settle()

        def _new_vm(self, side: str) -> None:
            vm = self.backend.make_vm(side, seed=1)
            vm.on_fatal = self.fatal.append
            self.vms[side] = vm
            self.checkers[side] = RuntimeChecker(profile)
            self.consumed[side] = 0

        def _retire(self, side: str) -> None:
            """Count a VM's rows and release it."""
            vm = self.vms[side]
            self._sync_log(side)
            coverage.update(self.checkers[side].rows_hit)
            incoming = vm.incoming
            if incoming is not None and incoming.error_desc:
                DESTINATION_FAILURES[incoming.error_desc] += 1
            vm.close()

        def teardown(self) -> None:
            self.backend.close()
            for side in list(self.vms):
                self._retire(side)
            self.tmp.cleanup()
            self.cross.check(final=True)
            assert not self.cross.violations, self.cross.violations

        # ---------------------------------------------------------- helpers
        def _uri(self, kind: str) -> str:
            self.serial += 1
            if kind == "bad":
                return "nope:x"
            if kind == "file":
                return f"file:{Path(self.tmp.name) / f'stream-{self.serial}'}"
            if kind == "unreachable":
                return f"unix:{Path(self.tmp.name) / f'nobody-{self.serial}.sock'}"
            return f"unix:{Path(self.tmp.name) / f'mig-{self.serial}.sock'}"

        def _sync_log(self, side: str) -> None:
            attempts = self.vms[side].log.attempts
            new = attempts[self.consumed[side]:]
            self.consumed[side] += len(new)
            self.checkers[side].feed(new)
            vm = self.vms[side]
            self.cross.feed(new, lambda: vm.caps)

        def _replace_exited(self) -> None:
            """A destination process whose migration failed exits (as QEMU's
            does): count its rows and start a fresh one."""
            for side in SIDES:
                if not getattr(self.vms[side], "alive", True):
                    self._retire(side)
                    self._new_vm(side)
                    if side == "destination":
                        self.listen_uri = None

        def _execute(self, side: str, name: str, args: dict) -> bool:
            """Run a command; True if it was accepted.  A refusal is checked."""
            self._replace_exited()
            vm = self.vms[side]
            self._sync_log(side)
            before_caps, before_params = dict(vm.caps), dict(vm.params)
            mark = len(vm.log.attempts)
            try:
                vm.execute(name, args)
                return True
            except RuntimeError as exc:
                if getattr(exc, "process_gone", False):
                    return False  # it exited meanwhile; replaced before the next step
                raise
            except MigrationError as exc:
                if type(exc).__name__ == "CommandNotFound" or \
                        getattr(exc, "qmp_class", None) == "CommandNotFound":
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
                    assert any(p.match(exc.message) for p in ENGINE_OWN_TEXTS), \
                        f"refused {name} with a text neither the spec nor the engine's " \
                        f"documented differences declare: {exc.message!r}"
                return False

        def _settle(self, seconds: float = 0.3) -> None:
            self.backend.run_until(self.vms["source"], SETTLED, seconds)

        def _drive_by_commands(self, deep: str) -> None:
            """A deep state on real threads: capabilities, a slow migration
            (so it lasts), migrate (and migrate-start-postcopy), a bounded wait
            for the state; migrate_cancel for cancelled; migrate-pause on the
            destination for paused, then migrate-recover + migrate resume=true
            for resumed; faults at exact points for :data:`FAULT_STARTS`."""
            src, dst = self.vms["source"], self.vms["destination"]
            if deep in FAULT_STARTS:
                self._drive_into_fault(deep)
                return
            postcopy = deep.startswith("postcopy")
            pause = deep in ("pre-switchover", "postcopy-pre-switchover")
            request = [{"capability": "postcopy-ram", "state": postcopy},
                       {"capability": "pause-before-switchover", "state": pause}]
            for side in SIDES:
                self._execute(side, "migrate-set-capabilities", {"capabilities": request})
            slow = deep == "cancelled" or postcopy
            self._execute("source", "migrate-set-parameters",
                          {"max-bandwidth": (2 << 20) if slow else 1 << 40,
                           "max-postcopy-bandwidth": 1 << 20})
            uri = self._listening()
            if not uri or not self._execute("source", "migrate", {"uri": uri}):
                return
            if deep == "cancelled":
                self.backend.wait(lambda: src.src_cell.state == src.st.active, 20.0)
                self._execute("source", "migrate_cancel", {})
            if not postcopy:
                self.backend.wait(lambda: src.src_cell.state in SETTLED, 20.0)
                return
            self._execute("source", "migrate-start-postcopy", {})
            self.backend.wait(lambda: src.src_cell.state in POSTCOPY and
                              dst.dst_cell.state in POSTCOPY or
                              src.src_cell.state in SETTLED, 20.0)
            if deep in ("postcopy-paused", "postcopy-resumed"):
                self._execute("destination", "migrate-pause", {})
                self.backend.wait(lambda: src.src_cell.state in SETTLED and
                                  dst.dst_cell.state in SETTLED | POSTCOPY, 20.0)
            if deep == "postcopy-pre-switchover":
                self._execute("source", "migrate-continue", {"state": src.src_cell.state})
                self.backend.wait(lambda: src.src_cell.state in SETTLED, 20.0)
            if deep == "postcopy-resumed":
                self.backend.wait(lambda: dst.dst_cell.state == src.src_cell.state, 20.0)
                self.recover()
                self.backend.wait(lambda: src.src_cell.state not in SETTLED - {
                    profile.status_names[0]} or src.src_cell.state in profile.terminal, 20.0)

        def _drive_into_fault(self, deep: str) -> None:
            """Migrations the sockets backend breaks at an exact point (see
            :data:`FAULT_STARTS` and ``faultrunner.FaultPlan``)."""
            src, dst = self.vms["source"], self.vms["destination"]
            plan = self.backend.plan
            caps = {"multifd-refused": ("multifd",), "multifd-broken": ("multifd",),
                    "completion-broken": ("pause-before-switchover",),
                    "package-broken": ("postcopy-ram",),
                    "listening-broken": ("postcopy-ram",)}.get(deep, ())
            if caps:
                request = [{"capability": c, "state": True} for c in caps]
                for side in SIDES:
                    self._execute(side, "migrate-set-capabilities", {"capabilities": request})
            slow = deep in ("multifd-broken", "precopy-broken", "package-broken")
            self._execute("source", "migrate-set-parameters",
                          {"max-bandwidth": (2 << 20) if slow else 1 << 40})
            uri = self._listening()
            if not uri:
                return
            if deep == "multifd-refused":
                plan.refuse_connect(after=1)  # the first multifd channel
            if deep == "package-broken":
                plan.break_before_write = _package_marker(profile)
            if deep == "listening-broken":
                plan.break_after_bytes = _command_bytes(profile, "POSTCOPY_LISTEN")
            if not self._execute("source", "migrate", {"uri": uri}):
                plan.clear_triggers()
                return
            moving = lambda: (src.src_cell.state == src.st.active  # noqa: E731
                              and src.source.stats.transferred > 0)
            if deep in ("multifd-broken", "precopy-broken"):
                self.backend.wait(moving, 20.0)
                if deep == "multifd-broken":
                    plan.break_multifd()
                else:
                    plan.break_connections()
            if deep == "completion-broken":
                self.backend.wait(lambda: src.src_cell.state in SETTLED, 20.0)
                plan.break_connections()
                self._execute("source", "migrate-continue", {"state": src.src_cell.state})
            if deep in ("package-broken", "listening-broken"):
                self._execute("source", "migrate-start-postcopy", {})
            self.backend.wait(lambda: src.src_cell.state in SETTLED, 20.0)
            if deep == "listening-broken":
                self.backend.wait(lambda: dst.dst_cell.state in profile.terminal, 20.0)
            plan.clear_triggers()

        def _listening(self) -> Optional[str]:
            """A URI the destination listens on (started if need be)."""
            if self.vms["destination"]._listener is None:
                self._incoming("destination", self._uri("fresh"))
            return self.listen_uri

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

        @rule(where=st.sampled_from(("bad", "unreachable", "file")))
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
        def migrate_continue(self, side: str, state: Optional[str]) -> None:
            """``state`` None: name the side's current status (the useful call)."""
            if state is None:
                state = self.vms[side].src_cell.state
            self._execute(side, "migrate-continue", {"state": state})

        # ---------------------------------------------------------- shortcuts
        @rule(caps=st.sampled_from(SHORTCUT_CAPS),
              bandwidth=st.sampled_from((1 << 40, 2 << 20)), settle=st.booleans(),
              into=st.sampled_from(("destination", "destination", "file")))
        def start_migration(self, caps: tuple, bandwidth: int, settle: bool,
                            into: str) -> None:
            """Into deep states: capabilities on both sides, bandwidth (fast:
            converges at once; slow: stays active), a listening destination
            (or a one-way ``file:``, which has no return path), migrate, and
            (``settle``) time until the source settles."""
            if caps:
                request = [{"capability": c, "state": True} for c in caps]
                for side in SIDES:
                    self._execute(side, "migrate-set-capabilities", {"capabilities": request})
            self._execute("source", "migrate-set-parameters", {"max-bandwidth": bandwidth})
            uri = self._listening() if into == "destination" else self._uri("file")
            if uri and self._execute("source", "migrate", {"uri": uri}) and settle:
                self._settle()

        @rule(pause_first=st.booleans(), settle=st.booleans())
        def start_postcopy_migration(self, pause_first: bool, settle: bool) -> None:
            """Into postcopy: postcopy-ram (and maybe pause-before-switchover)
            on both sides, a slow precopy, migrate, migrate-start-postcopy."""
            request = [{"capability": "postcopy-ram", "state": True},
                       {"capability": "pause-before-switchover", "state": pause_first}]
            for side in SIDES:
                self._execute(side, "migrate-set-capabilities", {"capabilities": request})
            self._execute("source", "migrate-set-parameters", {"max-bandwidth": 2 << 20})
            uri = self._listening()
            if uri and self._execute("source", "migrate", {"uri": uri}):
                self._execute("source", "migrate-start-postcopy", {})
                if settle:
                    self._settle()

        @rule()
        def recover(self) -> None:
            """Out of postcopy-paused: migrate-recover on the destination, then
            migrate resume=true to it (refusals are checked as usual)."""
            uri = self._uri("fresh")
            if self._execute("destination", "migrate-recover", {"uri": uri}):
                self.listen_uri = uri
                self._execute("source", "migrate", {"uri": uri, "resume": True})

        # ---------------------------------------------------------- environment
        @rule(seconds=st.sampled_from((2.0, 0.3, 0.05)))
        def time_passes(self, seconds: float) -> None:
            """Time passes until the source settles: a terminal status, or one
            that only a command can leave (see :func:`settled_states`)."""
            self.backend.run_until(self.vms["source"], SETTLED, seconds)

        @rule()
        def break_channel(self) -> None:
            """The migration channel breaks (a reset: data in flight is lost)."""
            self.backend.break_channel(self.vms, RUNNING)

        @rule(side=st.sampled_from(SIDES), amount=st.sampled_from((1, 8, 64)))
        def vcpu(self, side: str, amount: int) -> None:
            """The guest works: batches of page writes (on a postcopy
            destination, faults on missing pages)."""
            self.backend.vcpu(self.vms[side], amount)

        # ---------------------------------------------------------- invariants
        @invariant()
        def follows_the_spec(self) -> None:
            self._replace_exited()
            for side, vm in self.vms.items():
                self._sync_log(side)
                checker = self.checkers[side]
                checker.check_states({"source": vm.src_cell.state,
                                      "destination": vm.dst_cell.state},
                                     {"source": vm.caps, "destination": vm.caps})
                assert not checker.violations, checker.violations
            # a thread that ended by an exception nobody expected is a bug,
            # even though it ended in a failure row (engine/threads.py)
            for vm in self.vms.values():
                for session in (getattr(vm, "source", None), getattr(vm, "incoming", None)):
                    desc = getattr(session, "error_desc", None) or ""
                    assert CRASH_PREFIX not in desc, desc
            if backend == "fake":
                assert not self.backend.link.crashes, self.backend.link.crashes
            # in-process backends log both sides at once; a process's log may
            # lag its return-path message, so there the check waits for the end
            self.cross.check(final=backend != "processes")
            assert not self.cross.violations, self.cross.violations

    if backend == "fake":
        _add_fake_rules(SpecMachine, POSTCOPY)

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
        for name in ("start_migration", "start_postcopy_migration", "recover", "time_passes",
                     "migrate_continue") + (("run_threads", "drive_to") if backend == "fake"
                                            else ()):
            setattr(SpecMachine, f"{name}_{copy}", getattr(SpecMachine, name))
    SpecMachine.__name__ = (f"SpecMachine_{backend}_"
                            f"{profile_name.replace('-', '_').replace('.', '_')}"
                            + (f"_{'_'.join(STARTS).replace('-', '_')}" if start_in else ""))
    return SpecMachine


def _add_fake_rules(machine: type, postcopy: frozenset[str]) -> None:
    """Rules only the fake link can offer: exact interleavings and faults."""

    @rule(choice=st.integers(0, 7), quantum=st.sampled_from((1, 3, 20)),
          chunk=st.sampled_from((64, 4096, 1 << 19)))
    def run_threads(self, choice: int, quantum: int, chunk: int) -> None:
        """One simulated thread runs ``quantum`` steps; a destination reads
        ``chunk`` bytes at a time (small: records and packages arrive torn)."""
        link = self.backend.link
        link.read_chunk = chunk
        link.step(choice, quantum)

    @rule(after=st.sampled_from((0, 1)))
    def refuse_connect(self, after: int) -> None:
        """A connect fails: the next one (the main channel, or a resume), or
        the one after it (the first multifd channel)."""
        self.backend.link.network.refuse_connect(after)

    @rule()
    def kill_destination(self) -> None:
        """The destination process dies; a fresh one (incoming defer) replaces it."""
        vm = self.vms["destination"]
        self.backend.link.kill(vm.transport.owner)
        self._retire("destination")
        self._new_vm("destination")
        self.listen_uri = None

    @rule(deep=st.sampled_from(tuple(DEEP_STATES)), return_path=st.booleans())
    def drive_to(self, deep: str, return_path: bool) -> None:
        """Initialise into a deep state: capabilities for it on both sides, a
        listening destination, migrate (and migrate-start-postcopy), then the
        link runs one step at a time until the state is reached (bounded);
        paused and recovering states break the channel, then recover.  From a
        busy state the commands are refused (and checked) as usual."""
        link = self.backend.link
        src, dst = self.vms["source"], self.vms["destination"]
        postcopy_wanted = deep not in PRECOPY_DEEP_STATES
        request = [{"capability": "postcopy-ram", "state": postcopy_wanted},
                   {"capability": "pause-before-switchover", "state": "pre-switchover" in deep},
                   {"capability": "return-path", "state": return_path},
                   {"capability": "multifd", "state": deep == "multifd-active"}]
        for side in SIDES:
            self._execute(side, "migrate-set-capabilities", {"capabilities": request})
        self._execute("source", "migrate-set-parameters", {"max-bandwidth": 1 << 40})
        uri = self._listening()
        if not uri or not self._execute("source", "migrate", {"uri": uri}):
            return
        if postcopy_wanted:
            self._execute("source", "migrate-start-postcopy", {})
        link.read_chunk = 64 if deep == "listening" else 1 << 19
        reached = DEEP_STATES[deep]
        _step_until(link, lambda: reached(self.vms["source"], self.vms["destination"]))
        if deep in ("postcopy-paused", "postcopy-recover"):
            link.network.break_connections()
            link.run()
        if deep == "postcopy-recover":
            uri = self._uri("fresh")
            if self._execute("destination", "migrate-recover", {"uri": uri}):
                self.listen_uri = uri
                if self._execute("source", "migrate", {"uri": uri, "resume": True}):
                    _step_until(link, lambda: src.src_cell.state not in postcopy or
                                src.src_cell.state != dst.dst_cell.state)
        link.read_chunk = 1 << 19

    for fn in (run_threads, refuse_connect, kill_destination, drive_to):
        setattr(machine, fn.__name__, fn)


def _command_bytes(profile: Profile, name: str) -> bytes:
    """A payload-less migration command as the stream carries it."""
    from livemig.engine.stream import StreamEncoder
    return StreamEncoder(profile).command(name)


def _package_marker(profile: Profile) -> bytes:
    """The first bytes the source writes when it sends the postcopy package
    (PING with the before-package value, see PostcopySource.package)."""
    from livemig.engine.stream import StreamEncoder
    enc = StreamEncoder(profile)
    return enc.layouts.cmd["PING"].pack(profile.wire.const("PING_BEFORE_PACKAGE"))


def _step_until(link: Any, done: Callable[[], bool], limit: int = 5000) -> None:
    """Step the link's runnable tasks in turn, one blocking point at a time,
    until ``done()`` or nothing can run (or ``limit`` steps)."""
    for i in range(limit):
        if done() or link.step(i, 1) is None:
            return


def _deep_states() -> dict[str, Callable[[Any, Any], bool]]:
    """When :func:`drive_to` has arrived, read from the VMs (status names from
    spec rows, never written here)."""
    from livemig.engine.guest import RUN_FINISH_MIGRATE
    from livemig.engine.postcopy import POSTCOPY_SOURCE_ROWS as SROW
    from livemig.engine.rows import SOURCE_ROWS

    def status(vm: Any, row: str) -> str:
        return vm.profile.transition(row).new

    def precopy_active(src: Any, dst: Any) -> bool:
        return src.src_cell.state == src.st.active and src.source.stats.transferred > 0

    def pre_switchover(src: Any, dst: Any) -> bool:
        return src.src_cell.state == status(src, SOURCE_ROWS["pre_switchover"])

    def completing(src: Any, dst: Any) -> bool:
        return src.guest.run_state == RUN_FINISH_MIGRATE and \
            src.src_cell.state not in src.st.terminal

    def switching(src: Any, dst: Any) -> bool:
        active = status(src, SROW["switch"])
        return src.src_cell.state == active and dst.dst_cell.state != active

    def listening(src: Any, dst: Any) -> bool:
        return dst.dst_cell.state == status(src, SROW["switch"]) and \
            not dst.incoming.run_requested

    def postcopy_running(src: Any, dst: Any) -> bool:
        active = status(src, SROW["switch"])
        return src.src_cell.state == active and dst.dst_cell.state == active and \
            dst.incoming.run_requested

    return {"precopy-active": precopy_active, "multifd-active": precopy_active,
            "pre-switchover": pre_switchover, "postcopy-pre-switchover": pre_switchover,
            "completing": completing, "switching": switching, "listening": listening,
            "postcopy-active": postcopy_running, "postcopy-paused": postcopy_running,
            "postcopy-recover": postcopy_running}


#: the deep states :func:`drive_to` initialises into, and when it is there
DEEP_STATES = _deep_states()
PRECOPY_DEEP_STATES = ("precopy-active", "multifd-active", "pre-switchover", "completing")


def _command_rule(name: str, needs_uri: bool) -> Callable:
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


def coverage_report(profile: Profile, reachable: set[str],
                    backends: tuple[str, ...] = BACKENDS) -> tuple[float, str]:
    """The fraction of ``reachable`` rows hit by ``backends`` together, and a
    printable report (one column of hit counts per backend)."""
    merged: Counter = Counter()
    for name in backends:
        merged.update(COVERAGE[name])
    hit = {r for r in reachable if merged[r]}
    lines = [f"transition coverage ({profile.name}, {' + '.join(backends)}): "
             f"{len(hit)}/{len(reachable)} rows the engine can reach were hit",
             "        " + "".join(f"{b:>9}" for b in backends)]
    for row_id in sorted(reachable):
        counts = "".join(f"{COVERAGE[b][row_id]:9d}" for b in backends)
        lines.append(f"  {'HIT ' if merged[row_id] else 'MISS'}  {counts}  {row_id}")
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
