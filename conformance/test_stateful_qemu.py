"""The spec-generated stateful machine with a real QEMU 7.2 as one side
(livemig/conformance/stateful_qemu.py): livemig source -> QEMU destination
and QEMU source -> livemig destination, breaks, pauses, recoveries and
cancels chosen by Hypothesis; QEMU's own MIGRATION events must be a legal
path of the qemu-7.2 profile after every step.  The report test prints the
QEMU-side rows reached.  Skipped, with the reason, without QEMU 7.2."""
import os

import pytest
from hypothesis import HealthCheck, settings

from livemig.conformance.qemupeer import why_not_qemu_72
from livemig.conformance.stateful import SUMMARY
from livemig.conformance.stateful_qemu import QEMU_ROWS, build_qemu_machine, report

EXAMPLES = int(os.environ.get("LIVEMIG_STATEFUL_QEMU_EXAMPLES", "20"))
STEPS = 16
WHY_NOT = why_not_qemu_72()
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=WHY_NOT or "qemu 7.2")
#: rows QEMU must have reached by its own events in a run this size (the
#: ones a quiet run reaches 9 times or more: a loaded machine still does)
MUST_REACH = {
    "destination": {"dst.incoming.setup_event", "dst.co.active", "dst.listen.start",
                    "dst.pause"},
    "source": {"src.migrate_init.setup", "src.thread.active", "src.postcopy_start.switch",
               "src.postcopy_pause"},
}

_SETTINGS = settings(max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
                     derandomize=True, suppress_health_check=[HealthCheck.too_slow])
TestQemuAsDestination = build_qemu_machine("destination").TestCase
TestQemuAsDestination.settings = _SETTINGS
TestQemuAsSource = build_qemu_machine("source").TestCase
TestQemuAsSource.settings = _SETTINGS


def test_qemu_rows_reached_report():
    if not QEMU_ROWS:
        pytest.skip("run together with the QEMU stateful tests (they collect the rows)")
    text = report()
    print("\n" + text)
    SUMMARY.append(text)
    for role, rows in MUST_REACH.items():
        if role in QEMU_ROWS:
            missing = rows - set(QEMU_ROWS[role])
            assert not missing, f"QEMU as {role} never reached {sorted(missing)}\n{text}"


def test_rules_cover_every_migration_command_but_the_start():
    from livemig.spec import load_profile
    names = set(dir(build_qemu_machine("source")))
    for command in load_profile("qemu-7.2").commands:
        if command.name != "migrate-incoming":  # the start listens
            assert "cmd_" + command.name.replace("-", "_") in names, command.name
