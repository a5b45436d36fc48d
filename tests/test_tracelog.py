"""The one reader of observed runs (livemig.core.tracelog): strict for
check-trace, lenient for the diagram overlay, and both users see the same steps."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from livemig.conformance.trace import check_trace
from livemig.core.tracelog import TraceInputError, read_log
from livemig.diagrams.trace import parse_trace
from livemig.spec import load_profile

DATA = Path(__file__).resolve().parent / "data"
P72 = load_profile("qemu-7.2")


def migration(status: str) -> str:
    return json.dumps({"event": "MIGRATION", "data": {"status": status}})


LINES = ["not json", json.dumps({"QMP": {"version": {}}}), migration("setup"),
         json.dumps({"event": "MIGRATION_PASS", "data": {"pass": 1}}), migration("active")]


def test_strict_refuses_what_lenient_skips_and_counts():
    with pytest.raises(TraceInputError) as exc:
        read_log(LINES)
    assert exc.value.line == 1
    log = read_log(LINES, strict=False)
    assert (log.format, [r.new for r in log.records]) == ("qmp", ["setup", "active"])
    assert (log.skipped, log.passes) == (2, 1)  # the garbage and the greeting; one pass


def test_a_malformed_ndjson_line_is_an_error_or_an_illegal_step():
    line = json.dumps({"side": "source", "id": [1], "old": "none", "new": "setup"})
    with pytest.raises(TraceInputError, match="'id' must be a string"):
        read_log([line])
    (step,) = parse_trace(P72, [line]).steps
    assert not step.legal and "must be strings" in step.reason


def test_mixing_the_kinds_is_refused_in_both_modes():
    ndjson = json.dumps({"side": "source", "id": "src.thread.active", "old": "setup",
                         "new": "active", "ok": True})
    for strict in (True, False):
        with pytest.raises(TraceInputError, match="one kind per file") as exc:
            read_log([migration("setup"), ndjson], strict=strict)
        assert exc.value.line == 2


@pytest.mark.parametrize("name,side", [
    ("qemu72_postcopy-pause-destination_destination.jsonl", "destination"),
    ("qemu72_postcopy-pause-destination_source.jsonl", "source"),
    ("diagram_ndjson72_postcopy_recover.ndjson", "source"),
    ("diagram_ndjson72_postcopy_recover.ndjson", "destination"),
])
def test_the_checker_and_the_overlay_see_the_same_steps(name, side):
    verdict = check_trace(P72, DATA / name, side)
    assert verdict.legal and verdict.steps
    assert parse_trace(P72, DATA / name, side).side(side) == verdict.steps
