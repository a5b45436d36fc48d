"""Spec-generated stateful tests against the real engine, and their coverage.

The machine's rules come from the spec's command table; see
livemig/conformance/stateful.py.  The main run is on the fake link
(deterministic, every interleaving a rule), one test class per start (idle,
a migrate that cannot get going, each deep state), so every start is explored
from the same number of times whatever Hypothesis favours; smaller runs use
the real drivers on threads and unix sockets, in this process and as
``livemig vm`` processes driven over QMP.  The coverage test runs after them
in this module and reports which rows the runs hit."""
import os

import pytest
from hypothesis import HealthCheck, settings

from livemig.conformance.stateful import COVERAGE, build_machine, coverage_report, starts
from livemig.engine.postcopy import POSTCOPY_DESTINATION_ROWS, POSTCOPY_SOURCE_ROWS
from livemig.engine.rows import ALL_ROW_IDS
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")
#: examples per start on the fake link (18 starts)
FAKE_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_EXAMPLES", "40"))
SOCKET_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_SOCKET_EXAMPLES", "8"))
PROCESS_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_PROCESS_EXAMPLES", "5"))
SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much]


def _settings(examples: int, steps: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    derandomize=True, suppress_health_check=SUPPRESS)


FAKE_MACHINES = []
for _start in starts("fake"):
    _machine = build_machine(PROFILE.name, backend="fake", start_in=(_start,))
    _case = _machine.TestCase
    _case.settings = _settings(FAKE_EXAMPLES, 40)
    _name = "TestFakeLinkFrom_" + _start.replace("-", "_")
    _case.__name__ = _case.__qualname__ = _name
    globals()[_name] = _case
    FAKE_MACHINES.append(_machine)
del _start, _machine, _case, _name

SocketMachine = build_machine(PROFILE.name, backend="sockets")
TestSockets = SocketMachine.TestCase
TestSockets.settings = _settings(SOCKET_EXAMPLES, 20)

ProcessMachine = build_machine(PROFILE.name, backend="processes")
TestProcesses = ProcessMachine.TestCase
TestProcesses.settings = _settings(PROCESS_EXAMPLES, 15)

#: rows the engine fires (its row tables name every row it uses)
ENGINE_ROWS = set(ALL_ROW_IDS) | set(POSTCOPY_SOURCE_ROWS.values()) | \
    set(POSTCOPY_DESTINATION_ROWS.values())
#: the floor CI holds the fake-link run to; the report lists every miss
COVERAGE_FLOOR = 0.95


def test_generated_rules_cover_every_command_of_the_spec():
    for machine in FAKE_MACHINES + [SocketMachine, ProcessMachine]:
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
