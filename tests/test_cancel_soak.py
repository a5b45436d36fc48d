"""The cancel races soak, short (CI) version: ``benchmarks/cancel_soak.py``
with 20 runs covering every combination (tcp/unix x plain, multifd,
return-path, postcopy before and after the switch) twice, each cancel at a
delay drawn from a seeded RNG; every run must end as the spec says, none may
hang.  Plus ``migrate_cancel`` right after ``migrate`` between two ``livemig
vm`` processes (the race window of the connect and the multifd channels)."""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import cancel_soak  # noqa: E402
from test_engine_process import tmp  # noqa: E402,F401
from test_engine_session import validate_log  # noqa: E402
from test_fault_matrix import P, VMProc, _caps, _incoming  # noqa: E402


def test_cancel_soak_short():
    runs = 2 * len(cancel_soak.COMBOS)
    before = threading.active_count()
    res = cancel_soak.soak(runs, seed=11)
    deadline = time.monotonic() + 10  # the VMs' threads end when they are closed
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before, threading.enumerate()
    assert len(res.runs) == runs
    assert {r.combo for r in res.runs} == set(cancel_soak.COMBOS)
    assert not res.bad, [(r.n, r.combo, r.delay, r.problem) for r in res.bad]


@pytest.mark.parametrize("transport", ["tcp", "unix"])
@pytest.mark.parametrize("mode", ["plain", "multifd"])
def test_cancel_right_after_migrate_processes(tmp, transport, mode):
    dst = VMProc(tmp, "dst", "--incoming", "defer", ram="16M")
    src = VMProc(tmp, "src", "--workload", "2000", ram="16M")
    try:
        caps = ["events"] + (["multifd"] if mode == "multifd" else [])
        _caps((src, dst), caps)
        if mode == "multifd":
            for p in (src, dst):
                p.cmd("migrate-set-parameters", **{"multifd-channels": 2})
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 4 << 20})
        uri = _incoming(dst, tmp, transport, "mig")
        src.cmd("migrate", uri=uri)
        src.cmd("migrate_cancel")
        assert src.wait_status({"cancelled", "completed", "failed"}, 30) == "cancelled"
        assert src.cmd("query-status")["status"] == "running"
        # the destination's load fails and it exits (bounded)
        assert dst.proc.wait(30) == 1, dst.cmd("query-migrate")
    finally:
        src.close()
        dst.close()
    validate_log(P, src.log())
    validate_log(P, dst.log())
