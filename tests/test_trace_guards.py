"""The trace checker evaluates the guards an event log can know (issue 15):
in 7.2 a destination's postcopy-paused -> postcopy-recover needs
migrate-recover, whose MIGRATION ``setup`` comes first (dst.recover.accept's
guard recover_listening); a log from the beginning without it is illegal.
A log that starts in the middle cannot know: no guard is evaluated there."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from livemig.conformance.trace import check_statuses
from livemig.core.tracelog import guard_may_hold, log_visible_flags
from livemig.spec import expr as E
from livemig.spec import load_profile

WITHOUT_RECOVER = ["setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover",
                   "postcopy-active", "completed"]
WITH_RECOVER = WITHOUT_RECOVER[:4] + ["setup"] + WITHOUT_RECOVER[4:]


@pytest.mark.parametrize("profile", ["qemu-3.0", "qemu-7.2"])
def test_recover_needs_migrate_recovers_event(profile):
    p = load_profile(profile)
    verdict = check_statuses(p, WITHOUT_RECOVER, "destination")
    assert not verdict.legal
    assert (verdict.illegal.old, verdict.illegal.new, verdict.illegal.line) == \
        ("postcopy-paused", "postcopy-recover", 5)
    assert "dst.recover.accept" in verdict.illegal.reason
    assert "migrate-recover (its MIGRATION setup)" in verdict.illegal.reason
    assert check_statuses(p, WITH_RECOVER, "destination").legal


def test_the_incoming_setup_does_not_count_as_a_recover():
    """migrate-incoming's setup (from none) is not migrate-recover's: that
    one is refused outside postcopy-paused (its precondition)."""
    p = load_profile("qemu-7.2")
    seq = ["setup", "active", "postcopy-active", "postcopy-paused", "postcopy-recover"]
    assert not check_statuses(p, seq, "destination").legal


def test_a_second_pause_after_one_recover_is_legal_by_the_latched_flag():
    """Command flags stay set (the spec's semantics: until migrate_init)."""
    p = load_profile("qemu-7.2")
    seq = WITH_RECOVER[:-1] + ["postcopy-paused", "postcopy-recover", "postcopy-active",
                               "completed"]
    assert check_statuses(p, seq, "destination").legal


def test_from_the_middle_no_guard_is_evaluated():
    p = load_profile("qemu-7.2")
    assert check_statuses(p, WITHOUT_RECOVER[3:], "destination", start="postcopy-active").legal


def test_three_valued_guards():
    known = {"recover_listening": False}
    assert guard_may_hold(E.All(E.Flag("recover_listening"), E.Flag("recover_channel")),
                          known) is False
    assert guard_may_hold(E.All(E.Flag("recover_channel"), E.Cap("postcopy-ram")), known) is None
    assert guard_may_hold(E.AnyOf(E.Not(E.Flag("recover_listening")), E.Cap("x")),
                          known) is True
    assert log_visible_flags(load_profile("qemu-7.2"), "destination").keys() == \
        {"recover_listening"}


def test_check_trace_cli(tmp_path):
    log = tmp_path / "dst.jsonl"
    log.write_text("".join(json.dumps({"event": "MIGRATION", "data": {"status": s},
                                       "timestamp": {"seconds": i, "microseconds": 0}}) + "\n"
                           for i, s in enumerate(WITHOUT_RECOVER)))
    r = subprocess.run([sys.executable, "-m", "livemig", "check-trace", str(log),
                        "--side", "destination"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "ILLEGAL at line 5: postcopy-paused -> postcopy-recover" in r.stdout
