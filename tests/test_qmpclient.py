"""The one synchronous QMP client (livemig.engine.qmpclient) against a real
``livemig vm --qmp`` process: QEMU's answers as data or typed errors, events
kept in order, every wait bounded, a dead peer noticed at once."""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from livemig.engine.qmpclient import (
    QMPClientError, QMPCommandError, QMPTimeout, SyncQMPClient, status_of,
)
from livemig.engine.qmpprocess import QMPProcess


@pytest.fixture
def vm():
    """A ``livemig vm`` process and a client connected to it."""
    with tempfile.TemporaryDirectory(prefix="lm-qmpclient-") as d:
        path = str(Path(d) / "vm.qmp")
        proc = subprocess.Popen([sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{path}",
                                 "--ram", "16M"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            client = SyncQMPClient(path, "vm", connect_timeout=30, command_timeout=30,
                                   alive=lambda: proc.poll() is None,
                                   diagnostics=lambda: f"exit status {proc.poll()}")
            try:
                yield proc, client
            finally:
                client.close()
        finally:
            proc.kill()
            proc.wait(10)


def test_answers_are_data_or_errors_carrying_qemus_class_and_text(vm):
    _, qmp = vm
    assert qmp.command("query-status")["status"] == "running"
    assert qmp.execute("migrate-set-parameters", {"nope": 1}) == \
        ("error", "GenericError", "Parameter 'nope' is unexpected")
    with pytest.raises(QMPCommandError) as exc:
        qmp.command("migrate-set-parameters", {"nope": 1})
    assert (exc.value.cmd, exc.value.error_class, exc.value.desc) == \
        ("migrate-set-parameters", "GenericError", "Parameter 'nope' is unexpected")


def test_events_are_kept_in_order_and_waits_are_bounded(vm):
    _, qmp = vm
    qmp.command("stop")
    qmp.command("cont")
    stop = qmp.wait_event("STOP", 10)
    resume = qmp.wait_event("RESUME", 10, start=stop + 1)
    assert stop < resume and qmp.count("STOP") == 1
    # waiting again from after the RESUME: nothing comes, and the wait ends on time
    t0 = time.monotonic()
    with pytest.raises(QMPTimeout):
        qmp.wait_event(lambda e: e.get("event") == "STOP", 0.3, start=resume + 1)
    assert 0.3 <= time.monotonic() - t0 < 5


def test_a_dead_peer_is_an_error_at_once_not_a_timeout(vm):
    proc, qmp = vm
    proc.kill()
    proc.wait(10)
    t0 = time.monotonic()
    with pytest.raises(QMPClientError) as exc:
        qmp.wait_event("STOP", 60)
    assert not isinstance(exc.value, QMPTimeout) and "exited" in str(exc.value)
    assert time.monotonic() - t0 < 10
    with pytest.raises(QMPClientError) as exc:
        qmp.execute("query-status")
    assert "exit status -9" in str(exc.value)  # the diagnostics are in the message


def test_connecting_to_nothing_ends_at_the_deadline(tmp_path):
    t0 = time.monotonic()
    with pytest.raises(QMPTimeout, match="not reachable within 0.5s"):
        SyncQMPClient(str(tmp_path / "nobody.qmp"), connect_timeout=0.5)
    assert time.monotonic() - t0 < 5
    with pytest.raises(QMPClientError, match="exited before QMP was reachable"):
        SyncQMPClient(str(tmp_path / "nobody.qmp"), connect_timeout=30, alive=lambda: False)


def test_status_of_reads_only_migration_events():
    assert status_of({"event": "MIGRATION", "data": {"status": "active"}}) == "active"
    assert status_of({"event": "MIGRATION", "data": [1]}) is None
    assert status_of({"event": "STOP"}) is None


def test_qmpprocess_starts_drives_and_quits_a_vm(tmp_path):
    path = str(tmp_path / "p.qmp")
    node = QMPProcess([sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{path}",
                       "--ram", "16M"], path, name="p")
    try:
        assert node.cmd("query-status")["status"] == "running"
        with pytest.raises(QMPCommandError, match="GenericError"):
            node.cmd("migrate-set-parameters", nope=1)
    finally:
        node.close()
    assert node.proc.returncode == 0  # it quit when asked, it was not killed
