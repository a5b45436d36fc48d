"""check-trace on fixtures: both log kinds, legal and illegal, --from, input errors.

No QEMU needed: the QMP logs are real QEMU 7.2 event logs recorded by
``livemig.conformance.scenarios`` (tests/data/qemu72_*.jsonl).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from livemig.cli import main
from livemig.conformance.monitor import ndjson_line
from livemig.conformance.scenarios import load_recording
from livemig.conformance.trace import (
    SideChecker, TraceInputError, allowed_from, check_statuses, check_trace, initial_status,
    read_log,
)
from livemig.spec import load_profile

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
P72 = load_profile("qemu-7.2")
RECOVER_DST = DATA / "qemu72_postcopy-pause-destination_destination.jsonl"
RECOVER_SRC = DATA / "qemu72_postcopy-pause-destination_source.jsonl"
CANCEL_SRC = DATA / "qemu72_cancel-precopy_source.jsonl"


def qmp_lines(*statuses: str) -> list[str]:
    return [json.dumps({"timestamp": {"seconds": 1, "microseconds": i}, "event": "MIGRATION",
                        "data": {"status": s}}) for i, s in enumerate(statuses)]


def write(tmp_path: Path, name: str, lines: list[str]) -> Path:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def nd(side: str, rid: str, old: str, new: str, ok: bool = True) -> str:
    return json.dumps({"t": 0.0, "side": side, "id": rid, "old": old, "new": new, "ok": ok})


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["check-trace", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


# ---------------------------------------------------------------- QMP event logs
def test_real_recovery_log_destination_is_legal(capsys):
    rc, out, _ = run_cli(capsys, str(RECOVER_DST), "--side", "destination", "-v")
    assert rc == 0, out
    assert "LEGAL" in out and "final state completed" in out
    v = check_trace(P72, RECOVER_DST, "destination")
    kinds = [(s.kind, s.rows) for s in v.steps]
    # Both 7.2 destination "setup" events are the event-only row, and the
    # state stays where it was (none, then postcopy-paused).
    events = [s for s in v.steps if s.kind == "event"]
    assert len(events) == 2, kinds
    assert [s.old for s in events] == ["none", "postcopy-paused"]
    assert all(s.old == s.new for s in events)
    assert v.steps[1].old == "none" and v.steps[1].new == "active"


def test_real_recovery_log_source_is_legal_and_other_events_skipped():
    log = read_log(RECOVER_SRC)
    assert log.format == "qmp"
    assert log.skipped > 0  # STOP and friends
    v = check_trace(P72, RECOVER_SRC, "source")
    assert v.legal, v.lines()
    assert [s.new for s in v.steps] == load_recording()["postcopy-pause-destination"]["source"]


def test_migration_pass_events_are_counted():
    log = read_log(CANCEL_SRC)
    assert log.passes >= 1
    assert check_trace(P72, CANCEL_SRC, "source").passes == log.passes


def test_same_log_is_illegal_for_the_other_side(capsys):
    rc, out, _ = run_cli(capsys, str(RECOVER_DST), "--side", "source")
    assert rc == 1
    # the source has no event-only setup: its 5th event (setup while paused) is illegal
    assert "ILLEGAL at line" in out and "postcopy-paused -> setup" in out


def test_illegal_qmp_step_names_line_and_what_was_allowed(tmp_path, capsys):
    path = write(tmp_path, "bad.jsonl", qmp_lines("setup", "active", "postcopy-paused"))
    rc, out, _ = run_cli(capsys, str(path), "--side", "source")
    assert rc == 1
    assert "ILLEGAL at line 3: active -> postcopy-paused" in out
    assert "src.postcopy_start.switch: active -> postcopy-active" in out
    v = check_trace(P72, path, "source")
    assert (v.illegal.line, v.illegal.old, v.illegal.new) == (3, "active", "postcopy-paused")
    assert {a.id for a in v.allowed} == {a.id for a in allowed_from(P72, "source", "active")}
    assert v.state == "active"


def test_destination_setup_event_leaves_state_none(tmp_path):
    # After the event-only setup the destination is still in none, so a jump
    # straight to postcopy-active is reported from none, not from setup.
    v = check_statuses(P72, ["setup", "postcopy-active"], "destination")
    assert not v.legal
    assert (v.illegal.old, v.illegal.new) == ("none", "postcopy-active")
    assert check_statuses(P72, ["setup"], "destination").state == "none"


def test_store_is_crossed_silently_when_a_new_migration_starts():
    v = check_statuses(P72, ["setup", "active", "completed", "setup", "active"], "source")
    assert v.legal, v.lines()
    stores = [s for s in v.steps if s.kind == "store"]
    assert len(stores) == 1 and stores[0].old == "completed"
    assert stores[0].new == initial_status(P72)
    # but a store cannot explain a jump that no row makes from the initial status
    assert not check_statuses(P72, ["setup", "active", "completed", "active"], "source").legal


def test_from_state_accepts_partial_logs(tmp_path, capsys):
    path = write(tmp_path, "tail.jsonl",
                 qmp_lines("postcopy-paused", "postcopy-recover", "postcopy-active", "completed"))
    rc, out, _ = run_cli(capsys, str(path), "--side", "source")
    assert rc == 1 and "line 1: none -> postcopy-paused" in out
    rc, out, _ = run_cli(capsys, str(path), "--side", "source", "--from", "postcopy-active")
    assert rc == 0, out
    assert "from postcopy-active" in out
    rc, out, _ = run_cli(capsys, str(path), "--side", "source", "--from", "active")
    assert rc == 1


def test_recording_covers_every_scenario():
    from livemig.conformance.scenarios import SCENARIOS

    recorded = load_recording()
    assert set(recorded) == set(SCENARIOS)
    assert not any(r.get("skipped") for r in recorded.values())


def test_every_recorded_qemu_sequence_is_legal():
    for name, rec in load_recording().items():
        for side in ("source", "destination"):
            v = check_statuses(P72, rec[side], side)
            assert v.legal, (name, side, v.lines())


# ---------------------------------------------------------------- NDJSON logs
def ndjson_run() -> list[str]:
    return [
        nd("destination", "dst.incoming.setup_event", "none", "setup"),
        nd("source", "src.migrate_init.setup", "none", "setup"),
        nd("source", "src.thread.active", "setup", "active"),
        nd("destination", "dst.co.active", "none", "active"),
        nd("source", "src.completion.device", "pre-switchover", "device", ok=False),
        nd("source", "src.completion.completed", "active", "completed"),
        nd("destination", "dst.bh.completed", "active", "completed"),
        nd("source", "src.migrate_init.reset", "completed", "none"),
        nd("source", "src.migrate_init.setup", "none", "setup"),
    ]


def test_ndjson_legal_both_sides(tmp_path, capsys):
    path = write(tmp_path, "run.ndjson", ndjson_run())
    rc, out, _ = run_cli(capsys, str(path), "--side", "source")
    assert rc == 0, out
    assert "1 failed CAS (ok=false) not checked" in out
    assert "final state setup" in out
    rc, out, _ = run_cli(capsys, str(path), "--side", "destination")
    assert rc == 0, out
    assert "final state completed" in out


@pytest.mark.parametrize("line, why", [
    (nd("source", "src.no_such_row", "active", "completed"), "no row 'src.no_such_row'"),
    (nd("source", "dst.bh.completed", "active", "completed"), "is a destination row"),
    (nd("source", "src.thread.active", "active", "completed"), "row src.thread.active goes"),
    (nd("source", "src.completion.completed", "setup", "completed"), "was in active"),
])
def test_ndjson_illegal_lines(tmp_path, capsys, line, why):
    lines = ndjson_run()[:4] + [line]
    path = write(tmp_path, "bad.ndjson", lines)
    rc, out, _ = run_cli(capsys, str(path), "--side", "source")
    assert rc == 1, out
    assert "ILLEGAL at line 5" in out and why in out
    assert "the spec allows from" in out


def test_ndjson_from_state(tmp_path, capsys):
    path = write(tmp_path, "tail.ndjson", [
        nd("source", "src.postcopy_pause", "postcopy-active", "postcopy-paused"),
        nd("source", "src.fd_connect.resume", "postcopy-paused", "postcopy-recover"),
        nd("source", "src.rp.resume_ack", "postcopy-recover", "postcopy-active"),
    ])
    assert run_cli(capsys, str(path), "--side", "source")[0] == 1
    rc, out, _ = run_cli(capsys, str(path), "--side", "source", "--from", "postcopy-active")
    assert rc == 0, out


def test_monitor_ndjson_lines_read_back_legal(tmp_path):
    """What ``monitor --ndjson`` writes for a real QMP log is a legal NDJSON log."""
    checker = SideChecker(P72, "destination")
    lines = []
    for record in read_log(RECOVER_DST).records:
        for step in checker.event(record.new, record.line, record.t):
            lines.append(ndjson_line(step, record.new, "destination"))
    assert any(json.loads(x)["id"] == "dst.incoming.setup_event" for x in lines)
    v = check_trace(P72, lines, "destination")
    assert v.format == "ndjson" and v.legal, v.lines()
    assert v.state == "completed"


# ---------------------------------------------------------------- input errors
@pytest.mark.parametrize("lines, needle", [
    (["{\"event\": \"MIGRATION\", \"data\": {\"status\": \"setup\"}}", "not json"], "line 2"),
    (["[1, 2]"], "line 1: expected a JSON object"),
    (["{\"event\": \"MIGRATION\", \"data\": {}}"], "without a status"),
    (qmp_lines("setup") + [nd("source", "src.thread.active", "setup", "active")],
     "line 2: a ndjson line in a file that began as qmp"),
    (["{\"QMP\": {\"version\": {}}}"], "no MIGRATION event"),
])
def test_input_errors_exit_2_naming_the_line(tmp_path, capsys, lines, needle):
    path = write(tmp_path, "in.jsonl", lines)
    rc, out, err = run_cli(capsys, str(path), "--side", "source")
    assert rc == 2
    assert needle in err


def test_bad_options_exit_2(tmp_path, capsys):
    path = write(tmp_path, "ok.jsonl", qmp_lines("setup"))
    assert run_cli(capsys, str(path), "--side", "source", "--from", "nowhere")[0] == 2
    assert run_cli(capsys, str(path), "--side", "source", "--profile", "qemu-0.1")[0] == 2
    assert run_cli(capsys, str(tmp_path / "missing.jsonl"), "--side", "source")[0] == 2


def test_allowed_from_matches_the_rows():
    for side in ("source", "destination"):
        for state in P72.status_names:
            ids = {a.id for a in allowed_from(P72, side, state)}
            assert ids == {r.id for r in P72.rows(side) if state in P72.sources_of(r)}
    with pytest.raises(TraceInputError):
        SideChecker(P72, "sideways")


def test_recorded_qemu_error_texts_are_spec_texts():
    """Every error QEMU gave a misused command is one of that command's spec texts."""
    import re

    for name, rec in load_recording().items():
        for err in rec["errors"]:
            texts = [pc.error for pc in P72.command(err["command"]).preconditions]
            assert any(re.fullmatch(re.escape(t).replace("%s", ".+"), err["desc"])
                       for t in texts), (name, err["command"], err["desc"], texts)


def test_monitor_unreachable_socket_exits_2(tmp_path, capsys):
    rc = main(["monitor", "--qmp", f"unix:{tmp_path / 'nothing.sock'}", "--timeout", "0.5"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "not reachable" in err
