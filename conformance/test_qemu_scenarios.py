"""Differential scenarios on real QEMU 7.2, checked against the spec and the recording.

Each scenario of ``livemig.conformance.scenarios`` runs live on two QEMUs
(source + destination, unix sockets, TCG, the dirtying guest).  For each
side the observed MIGRATION sequence must be a legal path of livemig's
qemu-7.2 spec (``conformance.trace``) and equal the committed recording
``tests/data/qemu72_scenarios.json``, and the misused commands must fail with
the recorded error class and text.  Where a scenario completes, the
destination's memory passes QEMU's check.

Re-record after a deliberate change: ``python -m livemig.conformance.scenarios``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from livemig.conformance.scenarios import (
    SCENARIOS, Process, QemuLauncher, load_recording, run_scenario,
)
from livemig.conformance.trace import check_statuses, check_trace
from livemig.conformance.qemupeer import why_not_qemu_72
from livemig.spec import load_profile

WHY_NOT_72 = why_not_qemu_72()
pytestmark = [
    pytest.mark.qemu,
    # the answers are compared with the qemu-7.2 profile: another QEMU is skipped
    pytest.mark.skipif(bool(WHY_NOT_72), reason=WHY_NOT_72 or "qemu 7.2"),
]

P72 = load_profile("qemu-7.2")
RECORDED = load_recording()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario_matches_spec_and_recording(name):
    result = run_scenario(name, QemuLauncher(), P72)
    if result.skipped:
        pytest.skip(result.skipped)
    expected = RECORDED[name]
    for side in ("source", "destination"):
        observed = getattr(result, side)
        verdict = check_statuses(P72, observed, side)
        assert verdict.legal, (name, side, verdict.lines())
        assert observed == expected[side], (name, side)
    got = [(e.side, e.command, e.args, e.reply, e.error_class, e.desc) for e in result.errors]
    want = [(e["side"], e["command"], e["args"], e["reply"], e["error_class"], e["desc"])
            for e in expected["errors"]]
    assert got == want
    assert all(e.reply == "error" for e in result.errors)
    assert result.memory_ok == expected["memory_ok"], result.notes
    assert result.memory_ok in (None, True), result.notes


class MonitoredLauncher(QemuLauncher):
    """QEMU launcher that attaches ``livemig monitor`` to each VM's second QMP socket."""

    def __init__(self, tmp: Path, extra: dict[str, list[str]] | None = None) -> None:
        super().__init__(monitor_socket=True)
        self.tmp = tmp
        self.extra = extra or {}
        self.monitors: dict[str, subprocess.Popen] = {}

    def _attach(self, p: Process, side: str) -> Process:
        out = self.tmp / f"{side}.out"
        argv = [sys.executable, "-m", "livemig", "monitor", "--qmp", f"unix:{p.monitor_qmp_path}",
                "--side", side, "--ndjson", str(self.tmp / f"{side}.ndjson"),
                "--overlay", str(self.tmp / f"{side}.svg"), "--timeout", "180",
                *self.extra.get(side, [])]
        mon = subprocess.Popen(argv, stdout=open(out, "w"), stderr=subprocess.STDOUT)
        self.monitors[side] = mon
        # Bounded wait until the monitor listens (it says where it starts).
        deadline = time.monotonic() + 60
        while "starts in" not in out.read_text():
            assert mon.poll() is None, out.read_text()
            assert time.monotonic() < deadline, "monitor did not attach"
            time.sleep(0.05)
        return p

    def start_source(self) -> Process:
        return self._attach(super().start_source(), "source")

    def start_destination(self, incoming_uri: str) -> Process:
        return self._attach(super().start_destination(incoming_uri), "destination")

    def close(self) -> None:
        for mon in self.monitors.values():
            if mon.poll() is None:
                mon.kill()
                mon.wait(timeout=20)
        super().close()


def run_monitored(tmp_path: Path, scenario: str, extra: dict[str, list[str]] | None = None):
    """Run a scenario with a monitor on each end; (result, exit codes, outputs)."""
    launcher = MonitoredLauncher(tmp_path, extra)
    monitors = launcher.monitors
    # run_scenario closes the launcher (killing monitors still running), so
    # let the monitors finish first: they stop at the terminal status.
    closing = launcher.close
    launcher.close = lambda: None  # type: ignore[method-assign]
    try:
        result = run_scenario(scenario, launcher, P72)
        if result.skipped:
            pytest.skip(result.skipped)
        codes = {side: mon.wait(timeout=120) for side, mon in monitors.items()}
    finally:
        closing()
    outs = {side: (tmp_path / f"{side}.out").read_text() for side in codes}
    return result, codes, outs


def test_monitor_checks_a_live_postcopy_recovery(tmp_path):
    """``livemig monitor`` on both ends of a paused-and-recovered postcopy: all legal."""
    result, codes, _ = run_monitored(tmp_path, "postcopy-pause-destination")
    for side in ("source", "destination"):
        out = (tmp_path / f"{side}.out").read_text()
        assert codes[side] == 0, out
        assert "turned the events capability on" in out or "already on" in out
        assert "ILLEGAL" not in out
        assert "ended by completed" in out
        verdict = check_trace(P72, tmp_path / f"{side}.ndjson", side)
        assert verdict.format == "ndjson" and verdict.legal, verdict.lines()
        # one NDJSON line per MIGRATION event, saying the status QEMU sent
        written = [json.loads(x)["new"]
                   for x in (tmp_path / f"{side}.ndjson").read_text().splitlines()]
        assert written == getattr(result, side)
        svg = (tmp_path / f"{side}.svg").read_text()
        assert svg.lstrip().startswith("<?xml") or "<svg" in svg
    dst_lines = (tmp_path / "destination.ndjson").read_text().splitlines()
    assert sum('"dst.incoming.setup_event"' in x for x in dst_lines) == 2


def test_monitor_reports_illegal_steps_and_stops_at_until(tmp_path):
    """A wrong --from makes the first live step illegal; --until stops early."""
    result, codes, outs = run_monitored(tmp_path, "precopy", {
        "source": ["--from", "postcopy-active"],
        "destination": ["--until", "active"],
    })
    src = outs["source"]
    assert codes["source"] == 1, src
    assert "ILLEGAL  postcopy-active -> setup" in src
    assert "allowed from postcopy-active" in src
    # it carries on from what QEMU says: the rest of the run is legal
    assert "OK       setup -> active" in src and "ended by completed" in src
    lines = [json.loads(x) for x in (tmp_path / "source.ndjson").read_text().splitlines()]
    assert lines[0]["id"] is None and "illegal" in lines[0]
    assert [x["new"] for x in lines] == result.source
    assert "#d01010" in (tmp_path / "source.svg").read_text()  # the illegal step is drawn red
    dst = outs["destination"]
    assert codes["destination"] == 0, dst
    assert "ended by active" in dst
    assert [json.loads(x)["new"] for x in
            (tmp_path / "destination.ndjson").read_text().splitlines()] == ["setup", "active"]
