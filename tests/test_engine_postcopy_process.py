"""Postcopy between two ``livemig vm`` processes driven by qemu.qmp, over TCP
and unix sockets: a guest that does not converge in precopy is switched to
postcopy and completes; the channel is broken mid-postcopy (migrate-pause on
either side, a connection reset), recovered (migrate-recover, migrate
resume=true), twice in a row; the memory check passes and the NDJSON logs
validate against the spec."""
from __future__ import annotations

import select
import socket
import struct
import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_process import Proc, TIMEOUT, tmp  # noqa: E402,F401
from test_engine_session import validate_log  # noqa: E402

from livemig.spec import load_profile  # noqa: E402

P = load_profile("qemu-7.2")


def _setup(tmp, transport, *, postcopy_bw=None, extra_caps=()):
    dst = Proc(tmp, "dst", "--incoming", "defer")
    src = Proc(tmp, "src", "--workload", "20000")
    caps = [{"capability": c, "state": True}
            for c in ("events", "postcopy-ram", *extra_caps)]
    for p in (src, dst):
        p.cmd("migrate-set-capabilities", capabilities=caps)
    params = {"max-bandwidth": 16 << 20}  # 16 MiB/s: never converges in precopy
    if postcopy_bw:
        params["max-postcopy-bandwidth"] = postcopy_bw
    src.cmd("migrate-set-parameters", **params)
    uri = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp}/mig.sock"
    dst.cmd("migrate-incoming", uri=uri)
    if transport == "tcp":
        addr = dst.cmd("query-migrate")["socket-address"][0]
        uri = f"tcp:{addr['host']}:{addr['port']}"
    return src, dst, uri


def _switch(src, dst, uri):
    src.cmd("migrate", uri=uri)
    src.wait_status({"active"})
    deadline = time.monotonic() + TIMEOUT
    while src.cmd("query-migrate").get("ram", {}).get("transferred", 0) < (4 << 20):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    src.cmd("migrate-start-postcopy")
    src.wait_status({"postcopy-active", "completed"})
    # RUN reached the destination (PostcopyState RUNNING): only then does a
    # broken channel pause it; between LISTEN and RUN 7.2 fails the load.
    while dst.cmd("query-status")["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.02)


def _finish(src, dst):
    assert src.wait_status({"completed", "failed"}) == "completed"
    assert dst.wait_status({"completed", "failed"}) == "completed"
    info = src.cmd("query-migrate")
    assert info["ram"]["postcopy-bytes"] > 0
    dinfo = dst.cmd("query-migrate")
    assert dst.cmd("query-status")["status"] == "running"
    dst.cmd("stop")
    check = dst.cmd("x-livemig-check-memory")
    assert check["ok"], check
    return info, dinfo


def _logs(src, dst):
    src_state = validate_log(P, src.log())
    dst_state = validate_log(P, dst.log())
    assert src_state["source"] == "completed" and dst_state["destination"] == "completed"
    return ([a.new for a in src.log() if a.ok and a.side == "source"],
            [a.new for a in dst.log() if a.ok and a.side == "destination"])


@pytest.mark.parametrize("transport", ["tcp", "unix"])
def test_two_process_postcopy_completes(tmp, transport):
    src, dst, uri = _setup(tmp, transport)
    try:
        _switch(src, dst, uri)
        info, dinfo = _finish(src, dst)
        seq, dseq = _logs(src, dst)
        assert seq[-3:] == ["active", "postcopy-active", "completed"]
        assert dseq[-3:] == ["active", "postcopy-active", "completed"]
        assert "x-livemig-postcopy-latency" in dinfo
    finally:
        assert src.close() == 0
        assert dst.close() == 0


def test_two_process_postcopy_with_multifd_completes(tmp):
    """QEMU 7.2 accepts multifd with postcopy-ram: precopy pages go on the
    multifd channels, postcopy pages on the main one, and the source closes
    the multifd channels before it waits for the destination's SHUT (which
    waits for their end of file)."""
    src, dst, uri = _setup(tmp, "unix", extra_caps=("multifd",))
    try:
        _switch(src, dst, uri)
        info, _ = _finish(src, dst)
        assert info["ram"]["multifd-bytes"] > 0
        seq, dseq = _logs(src, dst)
        assert seq[-3:] == ["active", "postcopy-active", "completed"]
        assert dseq[-3:] == ["active", "postcopy-active", "completed"]
    finally:
        assert src.close() == 0
        assert dst.close() == 0


def _recover(src, dst, tmp, transport, n):
    src.wait_status({"postcopy-paused"})
    dst.wait_status({"postcopy-paused"})
    uri = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp}/rec{n}.sock"
    dst.cmd("migrate-recover", uri=uri)
    if transport == "tcp":
        addr = dst.cmd("query-migrate")["socket-address"][0]
        uri = f"tcp:{addr['host']}:{addr['port']}"
    src.cmd("migrate", uri=uri, resume=True)
    src.wait_status({"postcopy-active", "completed"})


class ResetProxy:
    """A TCP relay between the source and the destination whose ``reset()``
    closes both legs with SO_LINGER 0: a real connection reset (RST)."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.socks: list[socket.socket] = []
        self.pumps: list[threading.Thread] = []
        self.dead = threading.Event()
        self.ready = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        try:
            a, _ = self.lsock.accept()
        except OSError:
            return
        b = socket.create_connection(self.target)
        self.socks += [a, b]
        for x, y in ((a, b), (b, a)):
            t = threading.Thread(target=self._pump, args=(x, y), daemon=True)
            t.start()
            self.pumps.append(t)
        self.ready.set()

    def _pump(self, x: socket.socket, y: socket.socket) -> None:
        # select with a timeout: no thread sits in recv() when reset() closes
        # the sockets, so the close really sends the RST
        try:
            while not self.dead.is_set():
                if not select.select([x], [], [], 0.02)[0]:
                    continue
                data = x.recv(1 << 16)
                if not data:
                    y.shutdown(socket.SHUT_WR)
                    return
                y.sendall(data)
        except OSError:
            return

    def reset(self) -> None:
        assert self.ready.wait(30)
        self.dead.set()
        for t in self.pumps:
            t.join(10)
        for sk in self.socks:
            sk.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sk.close()
        self.lsock.close()


@pytest.mark.parametrize("transport,breaker", [
    ("unix", "src-pause"), ("tcp", "dst-pause"), ("tcp", "reset")])
def test_two_process_postcopy_pause_and_recover(tmp, transport, breaker):
    src, dst, uri = _setup(tmp, transport, postcopy_bw=8 << 20)
    proxy = None
    if breaker == "reset":
        host, port = uri[len("tcp:"):].rsplit(":", 1)
        proxy = ResetProxy((host, int(port)))
        uri = f"tcp:127.0.0.1:{proxy.port}"
    try:
        _switch(src, dst, uri)
        if breaker == "src-pause":
            src.cmd("migrate-pause")
        elif breaker == "dst-pause":
            dst.cmd("migrate-pause")
        else:
            proxy.reset()
        _recover(src, dst, tmp, transport, 1)
        _finish(src, dst)
        seq, dseq = _logs(src, dst)
        assert seq[-4:] == ["postcopy-paused", "postcopy-recover", "postcopy-active",
                            "completed"]
        # 7.2: migrate-recover emits MIGRATION{setup} with no state change
        assert dseq[-5:] == ["postcopy-paused", "setup", "postcopy-recover",
                             "postcopy-active", "completed"]
        assert "failed" not in seq + dseq
    finally:
        assert src.close() == 0
        assert dst.close() == 0


def test_two_process_two_failures_in_a_row_and_preconditions(tmp):
    src, dst, uri = _setup(tmp, "unix", postcopy_bw=8 << 20)
    try:
        assert "only supported during postcopy-active" in src.error("migrate-pause")
        assert "Migrate recover can only be run when postcopy is paused." in dst.error(
            "migrate-recover", uri=f"unix:{tmp}/x.sock")
        _switch(src, dst, uri)
        assert "Cannot resume if there is no paused migration" in src.error(
            "migrate", uri=uri, resume=True)
        src.cmd("migrate-pause")
        src.wait_status({"postcopy-paused"})
        # a resume whose connection fails: 7.2's migrate_fd_error is a no-op
        # while paused, so the source simply stays postcopy-paused
        src.cmd("migrate", uri=f"unix:{tmp}/nobody.sock", resume=True)
        # a resume to a peer that hangs up at once: recover -> paused again
        bogus = socket.socket(socket.AF_UNIX)
        bogus.bind(f"{tmp}/bogus.sock")
        bogus.listen(1)
        src.cmd("migrate", uri=f"unix:{tmp}/bogus.sock", resume=True)
        conn, _ = bogus.accept()
        conn.close()
        bogus.close()
        deadline = time.monotonic() + TIMEOUT
        while [a.new for a in src.log() if a.ok][-1] != "postcopy-paused" or \
                "postcopy-recover" not in [a.new for a in src.log() if a.ok]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _recover(src, dst, tmp, "unix", 1)
        dst.cmd("migrate-pause")
        _recover(src, dst, tmp, "unix", 2)
        _finish(src, dst)
        seq, _ = _logs(src, dst)
        assert seq.count("postcopy-paused") == 3
        assert seq.count("postcopy-recover") == 3
    finally:
        assert src.close() == 0
        assert dst.close() == 0


def test_postcopy_demo_runs():
    from rich.console import Console
    import io
    from livemig.engine.postcopy_demo import run_postcopy_demo
    out = io.StringIO()
    assert run_postcopy_demo(Console(file=out, width=160), ram="64M") == 0
    text = out.getvalue()
    assert "postcopy-paused -> postcopy-recover -> postcopy-active -> completed" in text
    assert "memory check passed" in text


def test_python_api_postcopy_release_ram_refuses_resume(tmp):
    """The Python API (two in-process VMs): postcopy with release-ram, paused by
    the destination's migrate-pause; resume is refused with 7.2's text, the
    source stays postcopy-paused."""
    from livemig.engine.vm import VM
    from livemig.errors import CommandError
    dst = VM(ram_size=32 << 20, incoming="defer")
    src = VM(ram_size=32 << 20, workload_rate=20000)
    try:
        caps = [{"capability": c, "state": True}
                for c in ("events", "postcopy-ram", "release-ram")]
        for v in (src, dst):
            v.execute("migrate-set-capabilities", {"capabilities": caps})
        src.execute("migrate-set-parameters", {"max-bandwidth": 8 << 20,
                                               "max-postcopy-bandwidth": 4 << 20})
        dst.execute("migrate-incoming", {"uri": f"unix:{tmp}/m.sock"})
        src.execute("migrate", {"uri": f"unix:{tmp}/m.sock"})
        assert src.wait_for_status({"active"}, TIMEOUT)
        src.execute("migrate-start-postcopy")
        assert src.wait_for_status({"postcopy-active"}, TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while dst.execute("query-status")["status"] != "running":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        dst.execute("migrate-pause")
        assert src.wait_for_status({"postcopy-paused"}, TIMEOUT)
        assert dst.wait_for_status({"postcopy-paused"}, TIMEOUT, side="destination")
        with pytest.raises(CommandError,
                           match="Postcopy recovery cannot work when release-ram capability"):
            src.execute("migrate", {"uri": f"unix:{tmp}/r.sock", "resume": True})
        assert src.src_cell.state == "postcopy-paused"
        validate_log(P, src.log.attempts)
        validate_log(P, dst.log.attempts)
    finally:
        src.close()
        dst.close()


def test_cli_postcopy(tmp):
    """``livemig incoming`` and ``livemig migrate --postcopy-after``: a
    non-converging guest switches to postcopy and the memory check passes."""
    import json
    import subprocess
    sock = f"unix:{tmp}/cli.sock"
    inc = subprocess.Popen([sys.executable, "-m", "livemig", "incoming", sock, "--ram", "64M",
                            "--caps", "postcopy-ram", "--json", "--log", f"{tmp}/d.ndjson"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not Path(f"{tmp}/cli.sock").exists():
            assert time.monotonic() < deadline and inc.poll() is None
            time.sleep(0.05)
        mig = subprocess.run([sys.executable, "-m", "livemig", "migrate", sock, "--ram", "64M",
                              "--caps", "postcopy-ram", "--param", "max-bandwidth=16M",
                              "--postcopy-after", "0.5", "--json", "--log", f"{tmp}/s.ndjson"],
                             capture_output=True, text=True, timeout=TIMEOUT)
        assert mig.returncode == 0, mig.stderr
        info = json.loads(mig.stdout)
        assert info["status"] == "completed" and info["ram"]["postcopy-bytes"] > 0
        out, err = inc.communicate(timeout=TIMEOUT)
        assert inc.returncode == 0, err
        assert json.loads(out)["memory-check"]["ok"]
        from livemig.core.cell import Attempt
        for name, side in (("s", "source"), ("d", "destination")):
            log = [Attempt(**json.loads(line))
                   for line in (tmp / f"{name}.ndjson").read_text().splitlines()]
            assert validate_log(P, log)[side] == "completed"
            assert "postcopy-active" in [a.new for a in log if a.ok]
    finally:
        if inc.poll() is None:
            inc.kill()
            inc.wait()
