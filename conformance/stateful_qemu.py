"""Stateful tests with a real QEMU 7.2 as one side: QEMU checked against the model.

Theory of operation
-------------------
:func:`build_qemu_machine` returns a ``RuleBasedStateMachine`` whose every
example is one migration between livemig and a real QEMU process
(:class:`~livemig.conformance.qemupeer.QemuPeerPair`, QEMU in ``qemu_role``),
its main channel (and each recovery channel) through a
:class:`~livemig.conformance.faultrelay.FaultRelay`, so that the network can
break under both programs.

The rules are the profile's migration commands (its COMMANDS table, less
``migrate-incoming``, which the start does), sent to either side with
arguments drawn from the spec -- ``migrate-start-postcopy``,
``migrate-pause``, ``migrate_cancel``, ``migrate-continue`` with a status
name, ``migrate-recover`` on a fresh socket, ``migrate`` (a resume, or a
second start), the set commands with capability names and parameter values
at their bounds -- plus the environment: the channel cut, time passing, a
page read on the destination (a postcopy fault), and the bandwidth limits
lifted so that a migration can finish.

After every step:

* QEMU's ``MIGRATION`` events so far are a legal path of its side of the
  qemu-7.2 profile (:class:`~livemig.conformance.trace.SideChecker`, the
  checker ``check-trace`` uses); the rows that explain them are counted in
  :data:`QEMU_ROWS` -- the QEMU-side rows a run reached;
* livemig's transition log is a path of spec rows keeping the step
  invariants (:class:`~livemig.conformance.runtime.RuntimeChecker`);
* a refused command's text, from either program, is one the spec declares
  (QEMU's texts are checked against the spec too), and a refusal changed
  nothing on livemig;
* no livemig error text is a crash.

At the end of an example: when the source reports ``completed``, the
destination must report it too (bounded wait) and the RAM must be equal --
a false ``completed`` is the worst bug a migration can have.

A QEMU destination whose load failed exits, as QEMU does; the example goes
on with the rules that need only the livemig side.
"""
from __future__ import annotations

import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Optional

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from livemig.conformance.faultrelay import FaultRelay
from livemig.conformance.qemupeer import LivemigSide, QemuPeerPair, QemuSide, Role, Side
from livemig.conformance.runtime import RuntimeChecker
from livemig.conformance.stateful import parameter_values, spec_error_patterns
from livemig.conformance.trace import SideChecker
from livemig.engine.qmpclient import QMPClientError, QMPCommandError
from livemig.engine.threads import CRASH_PREFIX
from livemig.errors import MigrationError
from livemig.spec import load_profile

PROFILE_NAME = "qemu-7.2"
#: QEMU-side rows reached (explaining QEMU's own events), per QEMU role
QEMU_ROWS: defaultdict[str, Counter] = defaultdict(Counter)
#: livemig-side rows reached in these runs, per livemig role
LIVEMIG_ROWS: defaultdict[str, Counter] = defaultdict(Counter)
#: the refusals seen, by program and text (for the report)
REFUSALS: Counter = Counter()
#: how each example ended: (source status, destination status)
OUTCOMES: Counter = Counter()
WAIT = 30.0
#: where an example starts (see QemuPeerMachine.start)
STARTS = ("precopy", "postcopy", "paused")
PAGE = 4096
RAM = 64 << 20


def build_qemu_machine(qemu_role: Role) -> type[RuleBasedStateMachine]:
    """The machine for one direction: QEMU as ``qemu_role``."""
    profile = load_profile(PROFILE_NAME)
    patterns = spec_error_patterns(profile)
    sides = st.sampled_from(("source", "destination"))

    class QemuPeerMachine(RuleBasedStateMachine):
        """One livemig <-> QEMU migration per example (see the module doc)."""

        def __init__(self) -> None:
            super().__init__()
            self.tmp = tempfile.TemporaryDirectory(prefix="livemig-qemu-stateful-")
            self.pair: Optional[QemuPeerPair] = None
            self.relay: Optional[FaultRelay] = None
            self.events_seen = 0
            self.qemu_checker = SideChecker(profile, qemu_role)
            self.livemig_checker = RuntimeChecker(profile)
            self.consumed = 0
            self.recoveries = 0
            #: the relay's URI in front of the last migrate-recover socket
            self.recover_uri: Optional[str] = None

        # ---------------------------------------------------------- start
        @initialize(start=st.sampled_from(STARTS), transport=st.sampled_from(("unix", "tcp")))
        def start(self, start: str, transport: str) -> None:
            """Both programs up, capabilities set, the migration started
            through the relay (slow, so the rules find it running), then
            driven to the start's state: ``precopy`` (as it is),
            ``postcopy`` (switched), ``paused`` (switched, then the channel
            cut), so that few examples still reach the deep rows."""
            postcopy = start != "precopy"
            caps = ("events", "return-path") + (("postcopy-ram",) if postcopy else ())
            self.pair = QemuPeerPair(Path(self.tmp.name), qemu_role=qemu_role,
                                     transport=transport, caps=caps)
            self.pair.start(route=self._through_relay)
            if not postcopy:
                return
            source, destination = self.pair.source, self.pair.destination
            source.execute("migrate-start-postcopy")  # at once: precopy must not finish first
            ends = {"postcopy-active", "completed", "failed"}
            if any(side.wait_status(ends, WAIT) != "postcopy-active"
                   for side in (source, destination)):
                return  # it ended before the switch was seen: the rules go on from there
            if start == "paused":
                destination.wait_run(WAIT)  # (before RUN a cut fails it: not this start)
                self.cut_the_channel()
                for side in (source, destination):
                    side.wait_status({"postcopy-paused"}, WAIT)

        def _through_relay(self, uri: str) -> str:
            if self.relay is None:
                self.relay = FaultRelay(uri, "unix", self.tmp.name)
            else:
                self.relay.retarget(uri)
            return self.relay.uri

        # ---------------------------------------------------------- helpers
        @property
        def qemu(self) -> QemuSide:
            assert self.pair is not None
            side = self.pair.source if qemu_role == "source" else self.pair.destination
            assert isinstance(side, QemuSide)
            return side

        @property
        def ours(self) -> LivemigSide:
            assert self.pair is not None
            side = self.pair.destination if qemu_role == "source" else self.pair.source
            assert isinstance(side, LivemigSide)
            return side

        def side(self, role: str) -> Side:
            assert self.pair is not None
            return self.pair.source if role == "source" else self.pair.destination

        def qemu_alive(self) -> bool:
            return self.pair is not None and self.pair.qemu.alive

        def status(self, role: str) -> str:
            """query-migrate's status of a side; QEMU's last event status
            once it has exited."""
            side = self.side(role)
            if isinstance(side, QemuSide) and not self.qemu_alive():
                return "exited"
            try:
                return side.status()
            except QMPClientError:
                return "exited"

        def _execute(self, role: str, name: str, args: dict) -> bool:
            """A command on one side; True if accepted.  A refusal's text must
            be a spec text and (livemig) change nothing."""
            side = self.side(role)
            if isinstance(side, QemuSide) and not self.qemu_alive():
                return False
            vm = self.pair.vm if isinstance(side, LivemigSide) else None  # type: ignore[union-attr]
            before = (dict(vm.caps), dict(vm.params)) if vm is not None else None
            try:
                side.execute(name, args)
                return True
            except QMPCommandError as exc:
                text = exc.desc
            except QMPClientError:
                return False  # QEMU exited under the command (its load failed)
            except MigrationError as exc:
                text = exc.message
                assert vm is not None and (dict(vm.caps), dict(vm.params)) == before, \
                    f"livemig's refused {name} changed capabilities or parameters"
            REFUSALS[f"{side.program}: {name}: {text}"] += 1
            assert any(p.match(text) for p in patterns), \
                f"{side.program} refused {name} with a text the spec does not declare: {text!r}"
            return False

        def _fresh_uri(self) -> str:
            self.recoveries += 1
            return f"unix:{self.tmp.name}/recover-{self.recoveries}.sock"

        # ---------------------------------------------------------- command rules
        @rule(role=sides)
        def cmd_migrate_start_postcopy(self, role: str) -> None:
            self._execute(role, "migrate-start-postcopy", {})

        @rule(role=sides)
        def cmd_migrate_pause(self, role: str) -> None:
            self._execute(role, "migrate-pause", {})

        @rule(role=sides)
        def cmd_migrate_cancel(self, role: str) -> None:
            self._execute(role, "migrate_cancel", {})

        @rule(role=sides, state=st.sampled_from(profile.status_names))
        def cmd_migrate_continue(self, role: str, state: str) -> None:
            self._execute(role, "migrate-continue", {"state": state})

        @rule(role=sides)
        def cmd_migrate_recover(self, role: str) -> None:
            """migrate-recover on a fresh socket, behind the relay."""
            uri = self._fresh_uri()
            if self._execute(role, "migrate-recover", {"uri": uri}) and role == "destination":
                self.recover_uri = self._through_relay(uri)

        @rule(resume=st.booleans())
        def cmd_migrate(self, resume: bool) -> None:
            """migrate on the source to the last socket the destination
            listened on: a resume (after migrate-recover), or a second start.

            Not on the destination: QEMU 7.2 accepts ``migrate`` on a
            postcopy destination (its runstate is no longer ``inmigrate``,
            the only thing migrate checks there) and starts an outgoing
            migration in the same process, whose MIGRATION events
            (``setup`` ...) interleave with the incoming one's -- one event
            stream then holds two state machines and cannot be checked as
            one side (found by this machine)."""
            uri = self.recover_uri or self._fresh_uri()
            self._execute("source", "migrate", {"uri": uri, "resume": resume})

        @rule(role=sides, cap=st.sampled_from(profile.capability_names()), state=st.booleans())
        def cmd_migrate_set_capabilities(self, role: str, cap: str, state: bool) -> None:
            self._execute(role, "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": state}]})

        @rule(role=sides, value=parameter_values(profile))
        def cmd_migrate_set_parameters(self, role: str, value: tuple[str, Any]) -> None:
            name, v = value
            if v is None or isinstance(v, str) and name not in {
                    p.name for p in profile.parameters if p.enum}:
                return  # junk types are QAPI's business, tested elsewhere
            self._execute(role, "migrate-set-parameters", {name: v})

        # ---------------------------------------------------------- environment
        @rule()
        def cut_the_channel(self) -> None:
            """The network breaks: the newest link through the relay is cut."""
            if self.relay is not None and self.relay.links:
                self.relay.links[-1].cut()

        @rule(seconds=st.sampled_from((0.1, 0.5, 1.0)))
        def time_passes(self, seconds: float) -> None:
            """Wait until either side's status changes (bounded)."""
            before = (self.status("source"), self.status("destination"))
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if (self.status("source"), self.status("destination")) != before:
                    return
                time.sleep(0.02)

        @precondition(lambda self: self.pair is not None)
        @rule(page=st.integers(0, RAM // PAGE - 2))
        def destination_reads_a_page(self, page: int) -> None:
            """A postcopy fault (only with both sides postcopy-active: a QEMU
            destination's read blocks its monitor until the page comes)."""
            if self.status("source") != "postcopy-active" or \
                    self.status("destination") != "postcopy-active":
                return
            try:
                got = self.pair.destination.read(page * PAGE, PAGE)  # type: ignore[union-attr]
            except (QMPClientError, MigrationError):
                return  # the migration broke meanwhile (a cut in flight)
            assert got == self.pair.source.read(page * PAGE, PAGE)  # type: ignore[union-attr]

        @rule()
        def recover_both(self) -> None:
            """The recovery as a user does it, when both sides are paused:
            migrate-recover on the destination, migrate resume=true on the
            source (both through the relay), and time to come back."""
            if self.status("source") != "postcopy-paused" or \
                    self.status("destination") != "postcopy-paused":
                return
            # commands, not pair.recover(): a side may leave paused meanwhile
            # (the network is real), and a refusal is checked like any other
            uri = self._fresh_uri()
            if not self._execute("destination", "migrate-recover", {"uri": uri}):
                return
            self.recover_uri = self._through_relay(uri)
            if not self._execute("source", "migrate", {"uri": self.recover_uri, "resume": True}):
                return
            for role in ("source", "destination"):
                try:
                    self.side(role).wait_status({"postcopy-active", "completed", "failed",
                                                 "postcopy-paused", "exited"}, WAIT)
                except TimeoutError:
                    pass  # a rule may have broken it again meanwhile: the checks judge

        @rule()
        def run_to_the_end(self) -> None:
            """Limits lifted, then a bounded wait until the source stops
            moving (completed, failed, cancelled or paused)."""
            self.lift_bandwidth_limits()
            try:
                self.side("source").wait_status(
                    {"completed", "failed", "cancelled", "postcopy-paused", "pre-switchover"},
                    WAIT)
            except TimeoutError:
                pass  # stuck in a state only a command leaves: the checks judge

        @rule()
        def lift_bandwidth_limits(self) -> None:
            self._execute("source", "migrate-set-parameters",
                          {"max-bandwidth": 1 << 30, "max-postcopy-bandwidth": 0})

        # ---------------------------------------------------------- checks
        @invariant()
        def qemu_events_are_legal(self) -> None:
            if self.pair is None:
                return
            qmp = self.pair.qemu.qmp
            events = list(qmp.events) if qmp is not None else []
            if qmp is not None and self.qemu_alive():
                try:
                    qmp.drain()
                    events = list(qmp.events)
                except QMPClientError:
                    pass  # it exited meanwhile: the events it sent are checked
            for event in events[self.events_seen:]:
                if event.get("event") != "MIGRATION":
                    continue
                status = event["data"]["status"]
                before = self.qemu_checker.state
                for step in self.qemu_checker.event(status):
                    assert step.legal, (f"QEMU {qemu_role}: {before} -> {status} is not a "
                                        f"row of {PROFILE_NAME}: {step.reason}")
                    QEMU_ROWS[qemu_role].update(step.rows[:1])
            self.events_seen = len(events)

        @invariant()
        def livemig_log_is_legal(self) -> None:
            if self.pair is None:
                return
            attempts = self.pair.vm.log.attempts
            new = attempts[self.consumed:]
            self.consumed += len(new)
            self.livemig_checker.feed(new)
            assert not self.livemig_checker.violations, self.livemig_checker.violations
            desc = self.ours.error_desc() or ""
            assert CRASH_PREFIX not in desc, desc

        def teardown(self) -> None:
            try:
                if self.pair is not None:
                    self._check_completed()
            finally:
                LIVEMIG_ROWS[self.ours.role if self.pair else "-"].update(
                    self.livemig_checker.rows_hit)
                if self.relay is not None:
                    self.relay.close()
                if self.pair is not None:
                    self.pair.close()
                self.tmp.cleanup()

        def _check_completed(self) -> None:
            """Never a false completed: a completed source means a completed
            destination, and when both completed their RAM is equal."""
            src, dst = self.status("source"), self.status("destination")
            self.qemu_events_are_legal()
            if src == "completed" and dst != "completed":
                dst = self.side("destination").wait_status({"completed", "failed"}, WAIT)
            OUTCOMES[(src, dst)] += 1
            if src == "completed":
                assert dst == "completed", f"source completed, destination {dst}"
            if src == dst == "completed":
                assert self.pair.source.ram_sha256() == self.pair.destination.ram_sha256()

    QemuPeerMachine.__name__ = QemuPeerMachine.__qualname__ = \
        f"QemuAs{qemu_role.capitalize()}Machine"
    return QemuPeerMachine


def report() -> str:
    """The QEMU-side rows reached, per role, against the profile's rows."""
    profile = load_profile(PROFILE_NAME)
    lines = []
    for role in ("source", "destination"):
        rows = [r.id for r in profile.rows(role)]
        hit = QEMU_ROWS[role]
        if not hit and role not in QEMU_ROWS:
            continue
        lines.append(f"QEMU 7.2 as {role}: {sum(1 for r in rows if hit[r])}/{len(rows)} "
                     f"{role} rows of {PROFILE_NAME} reached by its own MIGRATION events")
        lines += [f"  {hit[r]:5d}  {r}" for r in rows if hit[r]]
    lines.append("outcomes (source, destination): " + ", ".join(
        f"{s}/{d} x{n}" for (s, d), n in OUTCOMES.most_common()))
    return "\n".join(lines)
