"""``livemig vm`` with several ``--qmp`` sockets, as QEMU takes several ``-qmp``:
each socket takes its own client, a command on one is seen as events on all."""
import os
import subprocess
import sys

import pytest

from livemig.engine.qmpclient import SyncQMPClient

EVENT_WAIT = 60.0  # seconds: bounded waits, generous for a loaded 2-core machine


def run_cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "livemig", *args],
                          capture_output=True, text=True, timeout=timeout)


class VMProcess:
    """``livemig vm`` started with ``qmp_paths``, a client on each socket."""

    def __init__(self, qmp_paths, *extra):
        argv = [sys.executable, "-m", "livemig", "vm", "--ram", "16M", "--workload", "2000"]
        for path in qmp_paths:
            argv += ["--qmp", f"unix:{path}"]
        self.proc = subprocess.Popen([*argv, *extra], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.clients = []
        try:
            for i, path in enumerate(qmp_paths):
                self.clients.append(SyncQMPClient(
                    str(path), f"qmp{i}", connect_timeout=EVENT_WAIT,
                    alive=lambda: self.proc.poll() is None, diagnostics=self._why))
        except BaseException:
            self.close()
            raise

    def _why(self):
        if self.proc.poll() is None:
            return "the process still runs"
        return f"exit status {self.proc.returncode}, stderr {self.proc.stderr.read()[-2000:]!r}"

    def close(self):
        if self.clients and self.proc.poll() is None:
            self.clients[0].execute("quit")
        for client in self.clients:
            client.close()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.proc.stderr.close()


@pytest.fixture
def vm_pair(tmp_path):
    started = []

    def start(paths, *extra):
        vm = VMProcess(paths, *extra)
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.close()


def test_each_qmp_socket_has_its_own_client_and_all_get_stop_and_resume(tmp_path, vm_pair):
    paths = [tmp_path / "a.qmp", tmp_path / "b.qmp"]
    vm = vm_pair(paths)
    a, b = vm.clients
    assert a.command("query-status")["status"] == "running"
    a.command("stop")
    assert b.command("query-status")["status"] == "paused"  # one VM behind both sockets
    b.command("cont")
    for client in (a, b):
        stop = client.wait_event("STOP", EVENT_WAIT)
        client.wait_event("RESUME", EVENT_WAIT, start=stop + 1)
    # the process removes its sockets when it quits, as it created them
    vm.close()
    assert vm.proc.returncode == 0
    assert not any(p.exists() for p in paths)


def test_both_clients_of_the_source_see_the_migration_events(tmp_path, vm_pair):
    src = vm_pair([tmp_path / "src-a.qmp", tmp_path / "src-b.qmp"])
    dst = vm_pair([tmp_path / "dst.qmp"], "--incoming", "defer")
    driver, watcher = src.clients
    for client in (driver, dst.clients[0]):
        client.command("migrate-set-capabilities",
                       {"capabilities": [{"capability": "events", "state": True}]})
    mig = f"unix:{tmp_path}/mig.sock"
    dst.clients[0].command("migrate-incoming", {"uri": mig})
    driver.command("migrate", {"uri": mig})
    for client in (driver, watcher):
        client.wait_status("completed", EVENT_WAIT)
        seen = client.statuses()
        assert seen[0] == "setup" and seen[-1] == "completed", seen
    # the watcher issued no command, yet it saw the same steps as the driver
    assert watcher.statuses() == driver.statuses()
    assert watcher.count("STOP") >= 1  # the source stops its guest for the last pass


def test_the_same_qmp_socket_twice_is_one_line(tmp_path):
    proc = run_cli("vm", "--qmp", f"unix:{tmp_path}/x.qmp", "--qmp", f"unix:{tmp_path}/x.qmp")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        f"livemig: error: --qmp unix:{tmp_path}/x.qmp: given twice; each --qmp needs its "
        f"own socket"]


def test_a_second_qmp_socket_it_cannot_bind_is_named_and_the_first_removed(tmp_path):
    good = tmp_path / "good.qmp"
    proc = run_cli("vm", "--qmp", f"unix:{good}", "--qmp", "unix:/nonexistent-dir/y.qmp")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [
        "livemig: error: --qmp unix:/nonexistent-dir/y.qmp: Failed to bind socket to "
        "/nonexistent-dir/y.qmp: No such file or directory"]
    assert not os.path.exists(good)


def test_name_is_what_query_name_and_info_name_answer(tmp_path, vm_pair):
    named = vm_pair([tmp_path / "named.qmp"], "--name", "guest-7")
    client = named.clients[0]
    assert client.command("query-name") == {"name": "guest-7"}
    assert client.command("human-monitor-command",
                          {"command-line": "info name"}) == "guest-7\r\n"
    unnamed = vm_pair([tmp_path / "unnamed.qmp"]).clients[0]
    assert unnamed.command("query-name") == {}  # QEMU without -name: no member
