"""Spec-generated stateful tests against the real engine, and their coverage.

The machine's rules come from the spec's command table; see
livemig/conformance/stateful.py.  The main run is on the fake link
(deterministic, every interleaving a rule), one test class per start (idle,
a migrate that cannot get going, each deep state), so every start is explored
from the same number of times whatever Hypothesis favours; smaller runs use
the real drivers on threads and unix sockets, in this process and as
``livemig vm`` processes driven over QMP, from the starts QMP commands reach.  The coverage test runs after them
in this module and reports which rows the runs hit."""
import os

import pytest
from hypothesis import HealthCheck, settings

from livemig.conformance.stateful import (
    COVERAGE, SUMMARY, build_machine, coverage_report, starts,
)
from livemig.engine.postcopy import POSTCOPY_DESTINATION_ROWS, POSTCOPY_SOURCE_ROWS
from livemig.engine.rows import ALL_ROW_IDS
from livemig.spec import load_profile

PROFILE = load_profile("qemu-7.2")
#: examples per start on the fake link (18 starts)
FAKE_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_EXAMPLES", "40"))
#: examples per start on the real backends (8 starts each)
SOCKET_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_SOCKET_EXAMPLES", "2"))
PROCESS_EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_PROCESS_EXAMPLES", "2"))
SUPPRESS = [HealthCheck.too_slow, HealthCheck.filter_too_much]


def _settings(examples: int, steps: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    derandomize=True, suppress_health_check=SUPPRESS)


MACHINES = []


def _per_start(backend: str, title: str, examples: int, steps: int) -> None:
    """One test class per start of ``backend``, named Test<title>From_<start>."""
    for start in starts(backend):
        machine = build_machine(PROFILE.name, backend=backend, start_in=(start,))
        case = machine.TestCase
        case.settings = _settings(examples, steps)
        name = f"Test{title}From_{start.replace('-', '_')}"
        case.__name__ = case.__qualname__ = name
        globals()[name] = case
        MACHINES.append(machine)


_per_start("fake", "FakeLink", FAKE_EXAMPLES, 40)
_per_start("sockets", "Sockets", SOCKET_EXAMPLES, 15)
_per_start("processes", "Processes", PROCESS_EXAMPLES, 12)

#: rows the engine fires (its row tables name every row it uses)
ENGINE_ROWS = set(ALL_ROW_IDS) | set(POSTCOPY_SOURCE_ROWS.values()) | \
    set(POSTCOPY_DESTINATION_ROWS.values())
#: the floor CI holds the fake-link run to; the report lists every miss
COVERAGE_FLOOR = 0.95
#: the floor for the real drivers on real threads (sockets + processes); a
#: loaded machine may time out of a deep state now and then, so a little
#: below what a quiet run reaches (32/32)
REAL_THREADS_FLOOR = 28 / 32


def test_generated_rules_cover_every_command_of_the_spec():
    for machine in MACHINES:
        names = {name for name in dir(machine) if not name.startswith("_")}
        for command in PROFILE.commands:
            assert ("cmd_" + command.name.replace("-", "_")) in names or \
                command.name.replace("-", "_") in names, command.name


def test_transition_coverage_report():
    if not COVERAGE["fake"]:
        pytest.skip("run together with the stateful tests (they collect the coverage)")
    fraction, report = coverage_report(PROFILE, ENGINE_ROWS)
    print("\n" + report)
    SUMMARY.append(report)
    fake_fraction, _ = coverage_report(PROFILE, ENGINE_ROWS, backends=("fake",))
    assert fake_fraction >= COVERAGE_FLOOR, report
    if COVERAGE["sockets"]:
        real, real_report = coverage_report(PROFILE, ENGINE_ROWS,
                                            backends=("sockets", "processes"))
        print(real_report.splitlines()[0])
        assert real >= REAL_THREADS_FLOOR, real_report
