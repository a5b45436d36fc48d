"""Spec-generated stateful tests against the real engine, and their coverage.

The machine's rules come from the spec's command table; see
livemig/conformance/stateful.py.  The main run is on the fake link
(deterministic, every interleaving a rule); a smaller run uses the real
drivers on threads and unix sockets.  The coverage test runs after both in
this module and reports which rows the runs hit."""
import os

import pytest
from hypothesis import HealthCheck, settings

from livemig.conformance.stateful import COVERAGE, build_machine, coverage_report
from livemig.engine.postcopy import POSTCOPY_DESTINATION_ROWS, POSTCOPY_SOURCE_ROWS
from livemig.engine.rows import ALL_ROW_IDS
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")
FAKE_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_EXAMPLES", "600"))
SOCKET_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_SOCKET_EXAMPLES", "10"))
SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much]

FakeMachine = build_machine(PROFILE.name, backend="fake")
TestFakeLink = FakeMachine.TestCase
TestFakeLink.settings = settings(max_examples=FAKE_EXAMPLES, stateful_step_count=40,
                                 deadline=None, derandomize=True, suppress_health_check=SUPPRESS)

SocketMachine = build_machine(PROFILE.name, backend="sockets")
TestSockets = SocketMachine.TestCase
TestSockets.settings = settings(max_examples=SOCKET_EXAMPLES, stateful_step_count=20,
                                deadline=None, derandomize=True, suppress_health_check=SUPPRESS)

#: rows the engine fires (its row tables name every row it uses)
ENGINE_ROWS = set(ALL_ROW_IDS) | set(POSTCOPY_SOURCE_ROWS.values()) | \
    set(POSTCOPY_DESTINATION_ROWS.values())
#: the floor CI holds the fake-link run to; the report lists every miss
COVERAGE_FLOOR = 0.95


def test_generated_rules_cover_every_command_of_the_spec():
    for machine in (FakeMachine, SocketMachine):
        names = {name for name in dir(machine) if not name.startswith("_")}
        for command in PROFILE.commands:
            assert ("cmd_" + command.name.replace("-", "_")) in names or \
                command.name.replace("-", "_") in names, command.name


def test_transition_coverage_report():
    if not COVERAGE["fake"]:
        pytest.skip("run together with the stateful tests (they collect the coverage)")
    fraction, report = coverage_report(PROFILE, ENGINE_ROWS)
    print("\n" + report)
    fake_fraction, _ = coverage_report(PROFILE, ENGINE_ROWS, backends=("fake",))
    assert fake_fraction >= COVERAGE_FLOOR, report
