"""The fault matrix (issue 11): one fault, on one channel, at one status of a
migration between two ``livemig vm`` processes, each cell its own test id.

The fault is put in by :mod:`faultrelay` (a loopback proxy, one link per
connection: main, its reverse direction = the return path, each multifd
channel, the recovery channel) or is a signal to a process (SIGKILL,
SIGSTOP then SIGCONT or SIGKILL).  The status is reached with QMP commands
and bounded waits (low ``max-bandwidth`` keeps precopy ``active``,
pause-before-switchover holds ``pre-switchover``, postcopy as in
test_engine_postcopy_process); the short ones are hit by the relay itself:
``setup`` -- the main connection is faulted as it is accepted, before a byte
is passed on; ``device`` -- when the device section is about to cross the
main channel (after migrate-continue); ``completing`` -- when the
destination's SHUT 0 (load done) is about to cross the return path.

Every cell ends as the spec predicts and asserts it (see ``EXPECT``): a
precopy failure leaves the source ``failed`` with an error-desc, running,
and able to migrate again to a fresh destination (memory check); a postcopy
fault pauses both sides and recovery completes (memory check); short
stalls, throttle and delay complete.  On every cell: the source never says
``completed`` unless the destination did, and both logs validate against
the spec."""
from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError
from qemu.qmp.protocol import ConnectError

sys.path.insert(0, str(Path(__file__).parent))
from livemig.conformance.faultrelay import DEVICE_SECTION, SHUT_OK, FaultRelay  # noqa: E402
from test_engine_postcopy_process import _finish, _recover, _switch  # noqa: E402
from test_engine_process import TIMEOUT, Proc, tmp  # noqa: E402,F401
from test_engine_session import validate_log  # noqa: E402

from livemig.spec import load_profile  # noqa: E402

P = load_profile("qemu-7.2")
RAM = "16M"
WORKLOAD = "2000"  # 8 MB/s dirtied: converges above ~16 MiB/s
HOLD_BW = 4 << 20      # precopy stays active (16 MiB at 4 MiB/s)
FAST_BW = 1 << 30
PC_HOLD_BW = 4 << 20   # postcopy stays postcopy-active long enough to be hit
WAIT = 45.0            # every wait of a cell is bounded by this


@dataclass(frozen=True)
class Cell:
    at: str            # the status the fault hits
    channel: str       # main | rp | multifd1 | multifd2 | recovery | src | dst
    fault: str         # cut | rst | half-close | stall | throttle | delay | drop | SIGKILL | ...
    transport: str = "tcp"
    caps: tuple = ()

    @property
    def id(self) -> str:
        return f"{self.at}-{self.channel}-{self.fault}-{self.transport}"


RP = ("return-path",)
MF = ("multifd",)
PBS = ("pause-before-switchover",)
CELLS = [
    # ---- precopy, main channel
    Cell("setup", "main", "cut"), Cell("setup", "main", "rst", "unix"),
    Cell("setup", "main", "half-close"), Cell("setup", "main", "stall", "unix"),
    Cell("active", "main", "cut"), Cell("active", "main", "cut", "unix"),
    Cell("active", "main", "rst"), Cell("active", "main", "half-close", "unix"),
    Cell("active", "main", "stall"), Cell("active", "main", "throttle", "unix"),
    Cell("active", "main", "delay"), Cell("active", "main", "drop", "unix", RP),
    # (with the return path: without it the source cannot know the stream
    # was lost, and a cut in pre-switchover can end in a false "completed")
    Cell("pre-switchover", "main", "cut", "tcp", PBS + RP),
    Cell("pre-switchover", "main", "rst", "unix", PBS + RP),
    Cell("pre-switchover", "main", "stall", "tcp", PBS),
    Cell("pre-switchover", "rp", "half-close", "unix", PBS + RP),
    Cell("device", "main", "cut", "tcp", PBS + RP),
    Cell("device", "main", "rst", "unix", PBS + RP),
    Cell("device", "main", "stall", "tcp", PBS + RP),
    Cell("completing", "rp", "cut", "tcp", RP),
    Cell("completing", "rp", "rst", "unix", RP),
    Cell("completing", "rp", "stall", "tcp", RP),
    Cell("completing", "rp", "cancel", "unix", RP),
    # ---- precopy, return path (the reverse direction of main)
    Cell("active", "rp", "half-close", "tcp", RP), Cell("active", "rp", "stall", "unix", RP),
    Cell("active", "rp", "delay", "tcp", RP), Cell("active", "rp", "throttle", "unix", RP),
    # ---- precopy, multifd channels
    Cell("active", "multifd1", "cut", "tcp", MF), Cell("active", "multifd1", "rst", "unix", MF),
    Cell("active", "multifd2", "half-close", "tcp", MF),
    Cell("active", "multifd1", "stall", "unix", MF),
    Cell("active", "multifd2", "throttle", "tcp", MF),
    Cell("active", "multifd1", "drop", "tcp", MF + RP),
    # ---- postcopy, main channel and return path
    Cell("postcopy-active", "main", "cut"), Cell("postcopy-active", "main", "rst", "unix"),
    Cell("postcopy-active", "main", "half-close"),
    Cell("postcopy-active", "main", "stall", "unix"),
    Cell("postcopy-active", "main", "delay"), Cell("postcopy-active", "main", "drop", "unix"),
    Cell("postcopy-active", "rp", "half-close"), Cell("postcopy-active", "rp", "stall", "unix"),
    Cell("postcopy-active", "rp", "drop"),
    # ---- postcopy recovery channel
    Cell("postcopy-paused", "recovery", "rst"), Cell("postcopy-paused", "recovery", "cut", "unix"),
    Cell("postcopy-recover", "recovery", "rst"),
    Cell("postcopy-recover", "recovery", "cut", "unix"),
    # ---- processes
    Cell("active", "dst", "SIGKILL"), Cell("active", "src", "SIGKILL", "unix"),
    Cell("active", "dst", "SIGSTOP-SIGCONT"), Cell("active", "src", "SIGSTOP-SIGCONT", "unix"),
    Cell("active", "dst", "SIGSTOP-SIGKILL"),
    Cell("pre-switchover", "dst", "SIGKILL", "unix", PBS + RP),
    Cell("postcopy-active", "dst", "SIGKILL"), Cell("postcopy-active", "src", "SIGKILL", "unix"),
    Cell("postcopy-active", "dst", "SIGSTOP-SIGCONT"),
    Cell("postcopy-active", "src", "SIGSTOP-SIGCONT", "unix"),
    Cell("postcopy-paused", "dst", "SIGSTOP-SIGCONT"),
    Cell("postcopy-paused", "src", "SIGKILL", "unix"),
]

#: what the spec predicts, by (status group, fault); see _expect
COMPLETES = {"stall", "throttle", "delay", "SIGSTOP-SIGCONT"}


def _expect(c: Cell) -> str:
    """completed | failed | cancelled (an operator's cancel ends a black hole)
    | paused (postcopy: pause, then recovery completes) | src-lost | dst-lost
    | recover-stuck (7.2: no way back from postcopy-recover on the destination)."""
    if c.channel == "src" and c.fault == "SIGKILL":
        return "src-lost"
    if c.at.startswith("postcopy"):
        if c.channel == "dst" and c.fault == "SIGKILL":
            return "dst-lost"
        if c.at == "postcopy-recover":
            return "recover-stuck"
        return "completed" if c.fault in COMPLETES else "paused"
    if c.fault == "cancel":
        return "cancelled"
    if c.fault == "drop" or (c.channel.startswith("multifd") and c.fault == "half-close"):
        # nothing tells the source: a black hole; or a multifd channel that
        # ends early, which the destination (as 7.2's multifd_recv_thread)
        # takes as that channel's end: the source blocks -> the operator cancels
        return "cancelled"
    if c.fault in COMPLETES:
        return "completed"
    if c.channel == "rp" and c.fault == "half-close" and c.at == "pre-switchover":
        return "failed"
    return "failed"


def _dst_end(c: Cell) -> str:
    """How a precopy destination ends when its source failed or was cancelled."""
    if c.channel == "dst" and c.fault.endswith("SIGKILL"):
        return "killed"
    if c.at == "completing" or (c.at, c.channel) == ("pre-switchover", "rp"):
        # it had loaded everything and said so; the SHUT was lost on the way
        # (7.2 restarts a source whose completion failed: both run)
        return "completed"
    if c.at == "setup" and c.fault in ("cut", "rst"):
        return "waiting"  # the connection was broken before it reached it
    if c.fault == "drop" or c.channel.startswith("multifd") and c.fault == "half-close":
        return "waiting"  # a black hole: no byte, no FIN reaches it (or it failed)
    return "exited"


XFAIL: dict[str, str] = {}


def _params(c: Cell) -> list:
    marks = []
    if c.id in XFAIL:
        marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[c.id]))
    return pytest.param(c, id=c.id, marks=marks)


# ------------------------------------------------------------------ helpers
class VMProc(Proc):
    """:class:`Proc` whose first QMP connect is retried (bounded): the socket
    file exists from the VM's bind() on, a connect before its listen() is
    refused -- seen on a loaded 2-core machine."""

    def __init__(self, *args, **kw) -> None:
        try:
            super().__init__(*args, **kw)
            return
        except ConnectError:
            pass
        deadline = time.monotonic() + 30
        while True:
            time.sleep(0.05)
            try:
                self.loop.run_until_complete(
                    asyncio.wait_for(self.qmp.connect(self.qmp_path), 30))
                return
            except ConnectError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.proc.kill()
                    self.proc.wait(5)
                    raise


def _wait(cond, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while True:
        got = cond()
        if got:
            return got
        assert time.monotonic() < deadline, \
            f"timed out waiting for {what() if callable(what) else what}"
        time.sleep(0.02)


def _incoming(proc: Proc, tmp: Path, transport: str, name: str, cmd="migrate-incoming") -> str:
    uri = "tcp:127.0.0.1:0" if transport == "tcp" else f"unix:{tmp}/{name}.sock"
    proc.cmd(cmd, uri=uri)
    if transport == "tcp":
        addr = proc.cmd("query-migrate")["socket-address"][0]
        uri = f"tcp:{addr['host']}:{addr['port']}"
    return uri


def _caps(procs, names, state=True):
    for p in procs:
        p.cmd("migrate-set-capabilities",
              capabilities=[{"capability": n, "state": state} for n in names])


def _status(p: Proc) -> str:
    return p.cmd("query-migrate").get("status")


def _dst_status(p: Proc) -> str:
    """The destination's status, or "exited" (a failed load exits, as QEMU)."""
    if p.proc.poll() is not None:
        return "exited"
    try:
        return _status(p)
    except Exception:
        _wait(lambda: p.proc.poll() is not None, "the destination to exit", 15)
        return "exited"


def _source_failed(src: Proc, want: str = "failed") -> dict:
    assert src.wait_status({"failed", "cancelled", "completed"}, WAIT) == want, \
        src.cmd("query-migrate")
    info = src.cmd("query-migrate")
    if want == "failed":
        assert info.get("error-desc"), info
    _wait(lambda: src.cmd("query-status")["status"] == "running", "the source to run again")
    return info


def _remigrate(tmp: Path, src: Proc, c: Cell) -> Proc:
    """The source, still running after the fault, migrates to a fresh
    destination (directly) and the memory check passes there."""
    dst2 = VMProc(tmp, "dst2", "--incoming", "defer", ram=RAM)
    caps = [x for x in c.caps if x != "pause-before-switchover"]
    _caps([dst2], ["events", *caps])
    if "pause-before-switchover" in c.caps:
        _caps([src], ["pause-before-switchover"], False)
    if "multifd" in c.caps:
        dst2.cmd("migrate-set-parameters", **{"multifd-channels": 2})
    src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST_BW})
    src.cmd("migrate", uri=_incoming(dst2, tmp, c.transport, "again"))
    assert src.wait_status({"completed", "failed"}, WAIT) == "completed", \
        src.cmd("query-migrate")
    assert dst2.wait_status({"completed", "failed"}, WAIT) == "completed"
    dst2.cmd("stop")
    check = dst2.cmd("x-livemig-check-memory")
    assert check["ok"], check
    return dst2


def _fault(link, c: Cell) -> None:
    direction = "rev" if c.channel == "rp" else "fwd"
    if c.fault == "cut":
        link.cut()
    elif c.fault == "rst":
        link.rst()
    elif c.fault == "half-close":
        link.half_close(direction)
    elif c.fault == "stall":
        link.stall(1.0, direction)
    elif c.fault == "throttle":
        link.throttle(48 << 20, direction)
    elif c.fault == "delay":
        link.delay(0.001, direction)
    elif c.fault == "drop":
        link.drop(direction)
    elif c.fault == "cancel":  # hold the destination's SHUT until the operator cancels
        link.stall(3.0, direction)
    else:
        raise AssertionError(c.fault)


def _signal(c: Cell, src: Proc, dst: Proc) -> None:
    victim = src if c.channel == "src" else dst
    if c.fault == "SIGKILL":
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(15)
        return
    victim.proc.send_signal(signal.SIGSTOP)
    time.sleep(1.0)  # the stop lasts 1 s: that is the fault itself, not a wait
    if c.fault == "SIGSTOP-SIGCONT":
        victim.proc.send_signal(signal.SIGCONT)
    else:
        victim.proc.send_signal(signal.SIGKILL)
        victim.proc.wait(15)


def _no_false_success(src: Proc, dst: Proc) -> None:
    """The source says completed only if the destination did."""
    if src.proc.poll() is None and _status(src) == "completed":
        assert _dst_status(dst) == "completed"


# ------------------------------------------------------------------ precopy
def _link_for(relay: FaultRelay, c: Cell):
    if c.channel.startswith("multifd"):
        return relay.link("multifd", int(c.channel[-1]) - 1)
    return relay.link("main")


def _precopy(tmp: Path, c: Cell, src: Proc, dst: Proc, procs: list) -> None:
    caps = ["events", *c.caps]
    _caps((src, dst), caps)
    if "multifd" in c.caps:
        for p in (src, dst):
            p.cmd("migrate-set-parameters", **{"multifd-channels": 2})
    hold = c.at in ("setup", "active")
    src.cmd("migrate-set-parameters",
            **{"max-bandwidth": HOLD_BW if hold else FAST_BW, "downtime-limit": 300})
    target = _incoming(dst, tmp, c.transport, "mig")
    relay = FaultRelay(target, c.transport, str(tmp))
    procs.append(relay)
    fire = lambda link: _fault(link, c)  # noqa: E731
    if c.at == "setup":
        relay.when("main", "accept", fire)
    elif c.at == "device":
        relay.when("main", ("pattern", DEVICE_SECTION), fire)
    elif c.at == "completing":
        relay.when("main", ("pattern", SHUT_OK), fire, direction="rev")
    src.cmd("migrate", uri=relay.uri)
    expect = _expect(c)
    if c.channel in ("src", "dst"):
        src.wait_status({"active", "pre-switchover"}, WAIT)
        assert relay.link("main").fwd.wait_bytes(256 << 10, WAIT)
        if c.at == "pre-switchover":
            src.wait_status({"pre-switchover"}, WAIT)
        _signal(c, src, dst)
    elif c.at == "active":
        src.wait_status({"active"}, WAIT)
        link = _link_for(relay, c)
        assert link.fwd.wait_bytes(128 << 10, WAIT) or link.dead
        _fault(link, c)
    elif c.at == "pre-switchover":
        src.wait_status({"pre-switchover"}, WAIT)
        _fault(relay.link("main"), c)
    if c.at in ("pre-switchover", "device") and c.channel != "dst":
        src.wait_status({"pre-switchover"}, WAIT)
        src.cmd("migrate-continue", state="pre-switchover")
    elif c.at == "pre-switchover":
        src.cmd("migrate-continue", state="pre-switchover")
    if expect == "src-lost":
        assert dst.proc.wait(WAIT) == 1  # its load fails: it exits, as QEMU
        return
    if expect == "completed":
        if c.at == "setup":
            relay.link("main").fwd.wait_bytes(1, WAIT)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST_BW})
        assert src.wait_status({"completed", "failed", "cancelled"}, WAIT) == "completed", \
            src.cmd("query-migrate")
        assert dst.wait_status({"completed", "failed"}, WAIT) == "completed"
        dst.cmd("stop")
        check = dst.cmd("x-livemig-check-memory")
        assert check["ok"], check
        return
    if c.fault == "cancel":
        # the destination completed, its SHUT 0 is held: the source cannot
        # know; a cancel now gives cancelled and restarts the source's guest
        # (7.2 alike): the guest runs on both sides -- the known hazard the
        # cancel soak counts as cancelled-after-destination-completed
        assert dst.wait_status({"completed", "failed"}, WAIT) == "completed"
        assert _status(src) == "active"
        src.cmd("migrate_cancel")
        _source_failed(src, "cancelled")
        assert dst.cmd("query-status")["status"] == "running"
        procs.append(_remigrate(tmp, src, c))
        return
    if expect == "cancelled":
        # a black hole: nothing tells the source; it sends everything, then
        # waits for the destination's SHUT (never completing) until cancelled
        src.cmd("migrate-set-parameters", **{"max-bandwidth": FAST_BW})
        # a black hole lets it send everything and wait for SHUT in its
        # completion; an early-ended multifd channel blocks it in active
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and \
                src.cmd("query-status")["status"] != "finish-migrate":
            time.sleep(0.05)
        _no_false_success(src, dst)
        if c.fault == "half-close" and _status(src) == "failed":
            # the early-ended multifd channel missed a SYNC: the destination's
            # barrier broke, it failed and closed, the source saw that
            _source_failed(src)
        else:
            assert _status(src) not in ("completed", "failed"), src.cmd("query-migrate")
            src.cmd("migrate_cancel")
            _source_failed(src, "cancelled")
    else:
        _source_failed(src)
    want = _dst_end(c)
    if want == "killed":
        assert dst.proc.wait(WAIT) == -signal.SIGKILL
    elif want == "exited":
        assert dst.proc.wait(WAIT) == 1  # its load failed: it exits, as QEMU
    elif want == "completed":
        assert dst.wait_status({"completed", "failed"}, WAIT) == "completed"
    elif _dst_status(dst) == "completed" and c.channel.startswith("multifd"):
        # the half-close came after the channel's last page and SYNC had
        # crossed (a loaded machine sends fast): the load is whole, and the
        # memory check says so; only the source waited on the channel
        check = dst.cmd("x-livemig-check-memory")
        assert check["ok"], check
    else:  # never reached it / a black hole: it waits, but never completes
        assert _dst_status(dst) in (None, "setup", "active", "exited")
    procs.append(_remigrate(tmp, src, c))


# ------------------------------------------------------------------ postcopy
def _postcopy(tmp: Path, c: Cell, src: Proc, dst: Proc, procs: list) -> None:
    _caps((src, dst), ["events", "postcopy-ram"])
    src.cmd("migrate-set-parameters",
            **{"max-bandwidth": 16 << 20, "max-postcopy-bandwidth": PC_HOLD_BW})
    target = _incoming(dst, tmp, c.transport, "mig")
    relay = FaultRelay(target, c.transport, str(tmp))
    procs.append(relay)
    _switch(src, dst, relay.uri)
    expect = _expect(c)
    link = relay.link("main")
    assert _status(src) == "postcopy-active"  # the fault hits postcopy, not its end
    if c.at == "postcopy-active":
        if c.channel in ("src", "dst"):
            _signal(c, src, dst)
        else:
            _fault(link, c)
            if c.fault == "drop":
                # nothing tells either side: the operator pauses both
                src.cmd("migrate-pause")
                if c.channel == "main":  # the FIN went into the black hole too
                    try:
                        dst.cmd("migrate-pause")
                    except ExecuteError:  # it saw the relay give up first
                        assert _status(dst) == "postcopy-paused"
    else:  # postcopy-paused / postcopy-recover: pause first, then the fault
        src.cmd("migrate-pause")
        src.wait_status({"postcopy-paused"}, WAIT)
        dst.wait_status({"postcopy-paused"}, WAIT)
        if c.channel in ("src", "dst"):
            _signal(c, src, dst)
        else:
            _recovery_fault(tmp, c, src, dst, procs)
            return
    if expect == "src-lost":
        assert dst.wait_status({"postcopy-paused"}, WAIT) == "postcopy-paused"
        assert dst.cmd("query-status")["status"] == "running"  # its vCPU waits on pages
        return
    if expect == "dst-lost":
        # the guest ran only on the destination: the source must not resume it
        assert src.wait_status({"postcopy-paused"}, WAIT) == "postcopy-paused"
        assert src.cmd("query-status")["status"] != "running"
        return
    src.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
    if expect == "paused" or c.at == "postcopy-paused":
        _recover(src, dst, tmp, c.transport, 1)
    _finish(src, dst)
    paused = "postcopy-paused" in [a.new for a in src.log() if a.ok]
    assert paused == (expect == "paused" or c.at == "postcopy-paused"), c


def _recovery_fault(tmp: Path, c: Cell, src: Proc, dst: Proc, procs: list) -> None:
    """A fault on the recovery channel: postcopy-paused -- the connection is
    broken as the relay accepts it, before it reaches the destination;
    postcopy-recover -- after the destination accepted it."""
    target = _incoming(dst, tmp, c.transport, "rec", cmd="migrate-recover")
    relay = FaultRelay(target, c.transport, str(tmp))
    procs.append(relay)
    fire = lambda link: _fault(link, c)  # noqa: E731
    if c.at == "postcopy-paused":
        relay.when("main", "accept", fire)
    else:
        relay.when("main", ("bytes", 1), fire)
    n_recover = len([a for a in src.log() if a.ok and a.new == "postcopy-recover"])
    src.cmd("migrate", uri=relay.uri, resume=True)
    link = relay.link("main")

    def back_to_paused():
        log = [a for a in src.log() if a.ok]
        went = len([a for a in log if a.new == "postcopy-recover"]) > n_recover
        # it went to postcopy-recover and back -- or, when the reset came
        # before its connect returned, the connect failed and it stayed
        # paused (7.2's migrate_fd_error is a no-op while paused)
        return link.dead and _status(src) == "postcopy-paused" and \
            (not went or log[-1].new == "postcopy-paused")

    _wait(back_to_paused,
          lambda: f"the source to fall back to postcopy-paused: {_status(src)} "
                  f"{[(a.id, a.new) for a in src.log()[-4:]]} {link.fault}")
    if c.at == "postcopy-paused":
        # the destination never saw it: still paused and listening; resume again
        assert _status(dst) == "postcopy-paused"
        src.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        deadline = time.monotonic() + WAIT
        while True:
            try:
                src.cmd("migrate", uri=target, resume=True)
                break
            except ExecuteError:  # its failed attempt was not over yet
                assert time.monotonic() < deadline
                src.wait_status({"postcopy-paused"}, WAIT)
        _finish(src, dst)
        return
    # 7.2: a channel lost in postcopy-recover leaves the destination there
    # (no dst row recover -> paused), and migrate-recover is refused
    _wait(lambda: _status(dst) == "postcopy-recover", "the destination in postcopy-recover")
    assert "Migrate recover can only be run when postcopy is paused." in \
        dst.error("migrate-recover", uri=f"unix:{tmp}/again.sock")


# ------------------------------------------------------------------ the test
@pytest.mark.parametrize("c", [_params(c) for c in CELLS])
def test_fault_cell(tmp, c: Cell):
    # a destination guest that faults few pages: postcopy lasts (~3 s) at PC_HOLD_BW
    dst = VMProc(tmp, "dst", "--incoming", "defer", "--workload", "500", ram=RAM)
    src = VMProc(tmp, "src", "--workload", WORKLOAD, ram=RAM)
    extra: list = []
    try:
        if c.at.startswith("postcopy"):
            _postcopy(tmp, c, src, dst, extra)
        else:
            _precopy(tmp, c, src, dst, extra)
        # the destination the source last migrated to (a fresh one after a failure)
        _no_false_success(src, ([dst] + [x for x in extra if isinstance(x, Proc)])[-1])
    finally:
        for x in extra:
            if isinstance(x, FaultRelay):
                x.close()
                assert not x.threads_alive()
        for p in [src, dst] + [x for x in extra if isinstance(x, Proc)]:
            if p.proc.poll() is None:
                p.proc.send_signal(signal.SIGCONT)
            p.close()
    for p in [src, dst] + [x for x in extra if isinstance(x, Proc)]:
        if p.log_path.exists():
            validate_log(P, p.log())


def test_matrix_size():
    assert len(CELLS) >= 48 and len({c.id for c in CELLS}) == len(CELLS)
    assert {c.at for c in CELLS} == {"setup", "active", "pre-switchover", "device",
                                     "completing", "postcopy-active", "postcopy-paused",
                                     "postcopy-recover"}
