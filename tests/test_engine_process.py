"""Two livemig VM processes, driven by QEMU's own QMP client (qemu.qmp), migrate
a running, dirtying guest over TCP and unix sockets; cancel and a broken
connection behave as in QEMU 7.2; the NDJSON logs validate against the spec."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError, QMPClient

from livemig.core.cell import Attempt
from livemig.spec import load_profile

P = load_profile("qemu-7.2")
sys.path.insert(0, str(Path(__file__).parent))
from test_engine_session import validate_log  # noqa: E402

TIMEOUT = 90.0


class Proc:
    """A ``livemig vm`` process and a qemu.qmp client (own event loop)."""

    def __init__(self, tmp: Path, name: str, *extra: str, ram: str = "64M") -> None:
        self.qmp_path = str(tmp / f"{name}.qmp")
        self.log_path = tmp / f"{name}.ndjson"
        self.stderr = open(tmp / f"{name}.err", "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "livemig", "vm", "--qmp", f"unix:{self.qmp_path}",
             "--ram", ram, "--log", str(self.log_path), *extra],
            stdout=subprocess.DEVNULL, stderr=self.stderr)
        self.loop = asyncio.new_event_loop()
        self.events: list[dict] = []
        deadline = time.monotonic() + 30
        while not os.path.exists(self.qmp_path):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise AssertionError(f"{name}: no QMP socket")
            time.sleep(0.05)
        self.qmp = QMPClient(name)
        from qemu.qmp.events import EventListener
        self._el = EventListener()
        self.qmp.register_listener(self._el)
        self.loop.run_until_complete(asyncio.wait_for(self.qmp.connect(self.qmp_path), 30))

    def cmd(self, name: str, **args):
        return self.loop.run_until_complete(
            asyncio.wait_for(self.qmp.execute(name, args or None), 30))

    def error(self, name: str, **args) -> str:
        with pytest.raises(ExecuteError) as exc:
            self.cmd(name, **args)
        return str(exc.value)

    def drain(self) -> list[dict]:
        while not self._el._queue.empty():
            ev = self._el._queue.get_nowait()
            self.events.append({"event": ev["event"], "data": ev.get("data", {})})
        return self.events

    def wait_status(self, wanted, timeout=TIMEOUT) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.cmd("query-migrate").get("status")
            if status in wanted:
                return status
            self.loop.run_until_complete(asyncio.sleep(0.05))
        raise AssertionError(f"status never reached {wanted}")

    def log(self) -> list[Attempt]:
        return [Attempt(**json.loads(l)) for l in self.log_path.read_text().splitlines()]

    def close(self) -> int:
        try:
            if self.proc.poll() is None:
                try:
                    self.cmd("quit")
                except Exception:
                    pass
            try:
                self.loop.run_until_complete(asyncio.wait_for(self.qmp.disconnect(), 5))
            except Exception:
                pass
            try:
                return self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait(5)
        finally:
            self.loop.close()
            self.stderr.close()


@pytest.fixture
def tmp():
    with tempfile.TemporaryDirectory(prefix="lm-test-") as d:
        yield Path(d)


def _events_on(*procs):
    for p in procs:
        p.cmd("migrate-set-capabilities", capabilities=[{"capability": "events", "state": True}])


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_two_process_precopy_with_memory_check(tmp, transport):
    dst = Proc(tmp, "dst", "--incoming", "defer")
    src = Proc(tmp, "src", "--workload", "20000")
    try:
        _events_on(src, dst)
        assert dst.cmd("query-status")["status"] == "inmigrate"
        uri = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp}/mig.sock"
        dst.cmd("migrate-incoming", uri=uri)
        if transport == "tcp":
            addr = dst.cmd("query-migrate")["socket-address"][0]
            uri = f"tcp:{addr['host']}:{addr['port']}"
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 300})
        src.cmd("migrate", uri=uri)
        assert src.wait_status({"completed", "failed"}) == "completed"
        assert dst.wait_status({"completed", "failed"}) == "completed"
        info = src.cmd("query-migrate")
        assert set(info) == {"status", "setup-time", "total-time", "downtime", "ram"}
        assert info["ram"]["total"] == 64 * 2**20 + 128 * 1024
        assert src.cmd("query-status")["status"] == "postmigrate"
        # the guest runs on the destination: its counter moves
        first = dst.cmd("x-livemig-check-memory")["first-byte"]
        deadline = time.monotonic() + 30
        while dst.cmd("x-livemig-check-memory")["first-byte"] == first:
            assert time.monotonic() < deadline
        dst.cmd("stop")
        check = dst.cmd("x-livemig-check-memory")
        assert check["ok"], check
        assert dst.error("migrate-incoming", uri=uri) == \
            "The incoming migration has already been started"
        src_states = [e["data"]["status"] for e in src.drain() if e["event"] == "MIGRATION"]
        dst_states = [e["data"]["status"] for e in dst.drain() if e["event"] == "MIGRATION"]
        assert src_states == ["setup", "active", "completed"]
        assert dst_states == ["setup", "active", "completed"]
        assert any(e["event"] == "MIGRATION_PASS" for e in src.events)
    finally:
        assert src.close() == 0
        assert dst.close() == 0
    validate_log(P, src.log())
    validate_log(P, dst.log())


def test_qmp_errors_and_queries(tmp):
    src = Proc(tmp, "src")
    try:
        assert src.error("migrate", uri="bogus:1") == \
            "Parameter 'uri' expects a valid migration protocol"
        assert src.cmd("query-migrate") == {"status": "failed"}
        assert src.error("migrate-incoming", uri="tcp:127.0.0.1:0") == \
            "'-incoming' was not specified on the command line"
        assert src.error("migrate-set-parameters", **{"multifd-channels": 0}) == \
            "Parameter 'multifd_channels' expects a value between 1 and 255"
        caps = src.cmd("query-migrate-capabilities")
        assert [c["capability"] for c in caps] == list(P.capability_names())
        assert src.cmd("query-migrate-parameters")["max-bandwidth"] == 134217728
        assert src.error("migrate-continue", state="pre-switchover") == \
            "Migration not in expected state: failed"
    finally:
        src.close()


def test_cancel_keeps_source_running_and_destination_exits(tmp):
    dst = Proc(tmp, "dst", "--incoming", "defer")
    src = Proc(tmp, "src", "--workload", "20000")
    try:
        _events_on(src)
        uri = f"unix:{tmp}/mig.sock"
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20})  # slow: stays active
        src.cmd("migrate", uri=uri)
        src.wait_status({"active"})
        src.cmd("migrate_cancel")
        assert src.wait_status({"cancelled"}) == "cancelled"
        assert src.cmd("query-status")["status"] == "running"
        assert dst.proc.wait(TIMEOUT) == 1
        states = [e["data"]["status"] for e in src.drain() if e["event"] == "MIGRATION"]
        assert states[-2:] == ["cancelling", "cancelled"]
        src.cmd("migrate_cancel")  # a no-op now
    finally:
        src.close()
        dst.close()
    validate_log(P, src.log())
    validate_log(P, dst.log())


def test_broken_connection_fails_source_keeps_running(tmp):
    dst = Proc(tmp, "dst", "--incoming", "defer")
    src = Proc(tmp, "src", "--workload", "20000")
    try:
        uri = f"unix:{tmp}/mig.sock"
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20})
        src.cmd("migrate", uri=uri)
        src.wait_status({"active"})
        dst.proc.send_signal(signal.SIGKILL)
        assert src.wait_status({"failed"}) == "failed"
        info = src.cmd("query-migrate")
        assert info["error-desc"]
        assert src.cmd("query-status")["status"] == "running"
        assert src.cmd("x-livemig-check-memory")["ok"] is not None
    finally:
        src.close()
        dst.close()
    validate_log(P, src.log())


def test_connect_failure(tmp):
    src = Proc(tmp, "src")
    try:
        src.cmd("migrate", uri=f"unix:{tmp}/nobody.sock")
        assert src.wait_status({"failed"}) == "failed"
        assert src.cmd("query-migrate")["error-desc"]
        assert src.cmd("query-status")["status"] == "running"
    finally:
        src.close()
    validate_log(P, src.log())


def test_cli_incoming_and_migrate(tmp):
    sock = tmp / "cli.sock"
    inc = subprocess.Popen([sys.executable, "-m", "livemig", "incoming", f"unix:{sock}",
                            "--ram", "64M", "--json"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert time.monotonic() < deadline and inc.poll() is None
            time.sleep(0.05)
        out = subprocess.run([sys.executable, "-m", "livemig", "migrate", f"unix:{sock}",
                              "--ram", "64M", "--param", "max-bandwidth=1G", "--caps",
                              "return-path", "--json"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["status"] == "completed"
        stdout, _ = inc.communicate(timeout=TIMEOUT)
        assert inc.returncode == 0
        assert json.loads(stdout)["memory-check"]["ok"]
    finally:
        if inc.poll() is None:
            inc.kill()
            inc.wait()


def _pair(tmp, *, src_args=(), dst_args=()):
    dst = Proc(tmp, "dst", "--incoming", "defer", *dst_args)
    src = Proc(tmp, "src", "--workload", "20000", *src_args)
    return src, dst


def _both(src, dst, caps=(), params=None):
    for node in (src, dst):
        if caps:
            node.cmd("migrate-set-capabilities",
                     capabilities=[{"capability": c, "state": True} for c in caps])
        if params:
            node.cmd("migrate-set-parameters", **params)


def _finish_and_check(src, dst):
    assert src.wait_status({"completed", "failed"}) == "completed", src.cmd("query-migrate")
    assert dst.wait_status({"completed", "failed"}) == "completed"
    dst.cmd("stop")
    check = dst.cmd("x-livemig-check-memory")
    assert check["ok"], check


@pytest.mark.parametrize("caps,params", [
    (("multifd",), {"multifd-channels": 3}),
    (("xbzrle",), {"xbzrle-cache-size": 32 << 20}),
    (("compress",), {"compress-threads": 2}),
    (("return-path",), {}),
])
def test_features_two_process(tmp, caps, params):
    # per-page encodings (xbzrle, compress) are slower: a gentler guest converges
    rate = "3000" if ("compress" in caps or "xbzrle" in caps) else "20000"
    src, dst = _pair(tmp, src_args=("--workload", rate))
    try:
        _both(src, dst, caps, params)
        uri = "tcp:127.0.0.1:0"
        dst.cmd("migrate-incoming", uri=uri)
        addr = dst.cmd("query-migrate")["socket-address"][0]
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 64 << 20})
        src.cmd("migrate", uri=f"tcp:{addr['host']}:{addr['port']}")
        if "xbzrle" in caps or "compress" in caps:
            info = src.cmd("query-migrate")
            assert info["status"] not in ("failed",)
        _finish_and_check(src, dst)
        ram = src.cmd("query-migrate")["ram"]
        if "multifd" in caps:
            assert ram["multifd-bytes"] > 0
    finally:
        src.close()
        dst.close()
    validate_log(P, src.log())
    validate_log(P, dst.log())


def test_pause_before_switchover_and_auto_converge(tmp):
    src, dst = _pair(tmp, src_args=("--workload", "40000"))
    try:
        _both(src, dst, ("pause-before-switchover", "auto-converge", "events"))
        src.cmd("migrate-set-parameters", **{
            "max-bandwidth": 32 << 20, "cpu-throttle-initial": 90,
            "cpu-throttle-increment": 5, "max-cpu-throttle": 99})
        uri = f"unix:{tmp}/mig.sock"
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        seen = set()
        deadline = time.monotonic() + TIMEOUT
        while True:
            info = src.cmd("query-migrate")
            seen.add(info.get("cpu-throttle-percentage", 0))
            if info["status"] == "pre-switchover":
                break
            assert info["status"] in ("setup", "active") and time.monotonic() < deadline, info
            time.sleep(0.05)
        assert min(x for x in seen if x) == 90
        assert src.cmd("query-status")["status"] == "finish-migrate"
        assert src.error("migrate-continue", state="active") == \
            "Migration not in expected state: pre-switchover"
        src.cmd("migrate-continue", state="pre-switchover")
        _finish_and_check(src, dst)
        states = [e["data"]["status"] for e in src.drain() if e["event"] == "MIGRATION"]
        assert states[-3:] == ["pre-switchover", "device", "completed"]
    finally:
        src.close()
        dst.close()
    validate_log(P, src.log())


def test_validate_uuid_mismatch_destination_exits(tmp):
    src, dst = _pair(tmp, src_args=("--uuid", "11111111-1111-1111-1111-111111111111"),
                     dst_args=("--uuid", "22222222-2222-2222-2222-222222222222"))
    try:
        src.cmd("migrate-set-capabilities",
                capabilities=[{"capability": "validate-uuid", "state": True}])
        uri = f"unix:{tmp}/mig.sock"
        dst.cmd("migrate-incoming", uri=uri)
        src.cmd("migrate", uri=uri)
        assert dst.proc.wait(TIMEOUT) == 1
        assert src.wait_status({"failed"}) == "failed"
        assert src.cmd("query-status")["status"] == "running"
    finally:
        src.close()
        dst.close()
    assert "UUID received is 11111111-1111-1111-1111-111111111111" in \
        (tmp / "dst.err").read_text()


def test_file_migration(tmp):
    src, dst = _pair(tmp)
    try:
        uri = f"file:{tmp}/state.bin"
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        src.cmd("migrate", uri=uri)
        assert src.wait_status({"completed", "failed"}) == "completed"
        dst.cmd("migrate-incoming", uri=uri)
        assert dst.wait_status({"completed", "failed"}) == "completed"
        dst.cmd("stop")
        assert dst.cmd("x-livemig-check-memory")["ok"]
    finally:
        src.close()
        dst.close()


def test_precopy_demo_runs():
    from rich.console import Console
    from livemig.engine.demo import run_precopy_demo
    console = Console(record=True, width=120)
    assert run_precopy_demo(console, ram="64M", workload=10000) == 0
    text = console.export_text()
    assert "memory check passed" in text and "completed" in text
