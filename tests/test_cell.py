"""CAS cells: QEMU's migrate_set_state semantics, strictness, and real-thread races."""
import io
import json
import sys
import threading
import time

import pytest

from livemig.core import PostcopyCell, StatusCell, TransitionLog
from livemig.errors import IllegalTransition, StreamError
from livemig.spec import load_profile

P72 = load_profile("qemu-7.2")
P30 = load_profile("qemu-3.0")


def source(initial="none", **kw):
    return StatusCell(P72, "source", initial=initial, **kw)


def test_successful_cas_changes_state_logs_and_emits():
    stream = io.StringIO()
    cell = source(log=TransitionLog(stream))
    events = []
    cell.subscribe(events.append)
    assert cell.set_state("src.migrate_init.setup", "none", "setup")
    assert cell.state == "setup"
    assert [e.new for e in events] == ["setup"]
    line = json.loads(stream.getvalue())
    assert line["id"] == "src.migrate_init.setup" and line["ok"] is True
    assert set(line) == {"t", "side", "id", "old", "new", "ok"}


def test_failed_cas_changes_nothing_and_emits_nothing():
    log = TransitionLog()
    cell = source("active", log=log)
    events = []
    cell.subscribe(events.append)
    assert not cell.set_state("src.completion.device", "pre-switchover", "device")
    assert cell.state == "active" and events == []
    assert log.attempts[-1].ok is False and log.changes() == []


@pytest.mark.parametrize("row,old,new,why", [
    ("src.nope", "none", "setup", "not a source row"),
    ("dst.co.active", "none", "active", "not a source row"),
    ("src.migrate_init.setup", "none", "active", "goes to 'setup'"),
    ("src.thread.active", "none", "active", "cannot compare against 'none'"),
])
def test_strict_mode_refuses_what_no_row_allows(row, old, new, why):
    cell = source()
    with pytest.raises(IllegalTransition, match=why):
        cell.set_state(row, old, new)
    assert cell.state == "none"


def test_non_strict_mode_allows_any_cas_but_still_logs():
    log = TransitionLog()
    cell = source(strict=False, log=log)
    assert cell.set_state("experiment", "none", "completed")
    assert log.changes()[0].id == "experiment"


def test_store_row_resets_without_event():
    cell = source("failed")
    events = []
    cell.subscribe(events.append)
    assert cell.store("src.migrate_init.reset") and cell.state == "none"
    assert events == []
    cell2 = source("active")
    with pytest.raises(IllegalTransition):
        cell2.store("src.migrate_init.reset")
    assert cell2.state == "active"


def test_event_only_row_emits_without_changing_state():
    cell = StatusCell(P72, "destination")
    events = []
    cell.subscribe(events.append)
    attempt = cell.emit("dst.incoming.setup_event")
    assert attempt.new == "setup" and cell.state == "none" and len(events) == 1


def test_cancel_retries_until_cancelling():
    cell = source("postcopy-paused")
    assert cell.fire("src.cancel") and cell.state == "cancelling"
    assert not source("completed").fire("src.cancel")  # not running: the loop stops


def test_wait_for_wakes_on_change():
    cell = source("setup")
    seen = []
    waiter = threading.Thread(target=lambda: seen.append(
        cell.wait_for(lambda s: s == "active", timeout=10)))
    waiter.start()
    cell.fire("src.thread.active")
    waiter.join(10)
    assert seen == [True]
    assert not cell.wait_for(lambda s: s == "completed", timeout=0.01)


def test_cancel_races_completion_exactly_one_outcome():
    """Real threads: cancel (read-then-CAS loop) against completion (active->completed).

    Each round both threads are released together by a barrier.  Exactly one
    wins: either the source is cancelling (and completion's CAS failed) or it
    is completed (and cancel found it no longer running).  The events are
    exactly the successful CASes, in order.
    """
    rounds = 3000
    outcomes = {"cancelling": 0, "completed": 0}
    barrier = threading.Barrier(2)
    cell_box = {}
    results = {}

    # Which thread the barrier lets run first is up to the scheduler, and on a
    # loaded machine it can be the same one every round.  On a quarter of the
    # rounds each thread in turn gives up the GIL first (sleep(0)), so both
    # orders are exercised whatever the load; the property checked, one CAS
    # wins and the other sees the change, is the same in every round.
    def canceller():
        for i in range(rounds):
            barrier.wait()
            if i % 4 == 1:
                time.sleep(0)
            results[("cancel", i)] = cell_box[i].fire("src.cancel")
            barrier.wait()

    def completer():
        for i in range(rounds):
            barrier.wait()
            if i % 4 == 3:
                time.sleep(0)
            results[("complete", i)] = cell_box[i].set_state(
                "src.completion.completed", "active", "completed")
            barrier.wait()

    logs = []
    for i in range(rounds):
        log = TransitionLog()
        cell = source("active", log=log)
        events = []
        cell.subscribe(events.append)
        cell_box[i] = cell
        logs.append((log, events))
    threads = [threading.Thread(target=canceller), threading.Thread(target=completer)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible: more interleavings
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
    finally:
        sys.setswitchinterval(interval)
    assert not any(t.is_alive() for t in threads)
    for i in range(rounds):
        final = cell_box[i].state
        cancelled, completed = results[("cancel", i)], results[("complete", i)]
        assert final in outcomes
        outcomes[final] += 1
        assert cancelled == (final == "cancelling")
        assert completed == (final == "completed")
        log, events = logs[i]
        assert [(e.id, e.new) for e in events] == [(a.id, a.new) for a in log.changes()]
        assert len(events) == 1  # exactly one successful CAS per round
    assert sum(outcomes.values()) == rounds
    print("race outcomes:", outcomes)
    # Both orders must actually have happened, or the race was not exercised.
    assert outcomes["cancelling"] > 0 and outcomes["completed"] > 0, outcomes


def test_postcopy_exchange_returns_old_value():
    cell = PostcopyCell(P72)
    assert cell.exchange("ADVISE") == "NONE" and cell.state == "ADVISE"


def test_advise_twice_is_xchg_then_check():
    cell = PostcopyCell(P72)
    cell.handle("advise")
    cell.handle("listen")
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_ADVISE in wrong postcopy state \(3\)"):
        cell.handle("advise")
    assert cell.state == "ADVISE"  # QEMU stored the new value before checking


def test_discard_moves_advise_to_discard_and_stays():
    cell = PostcopyCell(P72)
    cell.handle("advise")
    cell.handle("discard")
    assert cell.state == "DISCARD"
    cell.handle("discard")
    assert cell.state == "DISCARD"
    with pytest.raises(StreamError, match=r"RAM_DISCARD in wrong postcopy state \(0\)"):
        PostcopyCell(P72).handle("discard")


def test_run_before_listen_differs_between_profiles():
    new = PostcopyCell(P72, "ADVISE")
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_RUN in wrong postcopy state \(1\)"):
        new.handle("run")
    assert new.state == "ADVISE"  # 7.2 checks first
    old = PostcopyCell(P30, "ADVISE")
    with pytest.raises(StreamError):
        old.handle("run")
    assert old.state == "RUNNING"  # 3.0 exchanged first
