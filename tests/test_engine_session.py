"""Sans-I/O source <-> destination over an in-memory link, with injected faults,
and the engine's row table and transition logs checked against the spec."""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest

from livemig.core.caps import default_capabilities, default_params
from livemig.core.cell import StatusCell, TransitionLog
from livemig.engine.destination import DestinationMigration
from livemig.engine.guest import Guest
from livemig.engine.rows import ALL_ROW_IDS, DESTINATION_ROWS, SOURCE_ROWS
from livemig.engine.source import Converged, Send, SourceMigration, Wait
from livemig.engine.stream import buffers_len
from livemig.errors import ReturnPathError, StreamError
from livemig.spec import load_profile
from livemig.spec.schema import CURRENT

P = load_profile("qemu-7.2")
ENGINE = Path(__file__).resolve().parents[1] / "engine"


def validate_log(profile, attempts):
    """Every successful attempt is a spec row of its side, from a state the row
    allows, to the row's new state, continuing the side's previous state."""
    state = {"source": "none", "destination": "none"}
    for a in attempts:
        row = profile.transition(a.id)
        assert row.side == a.side, a
        if not a.ok:
            continue
        if row.event_only:
            assert a.new == row.emits and a.old in profile.sources_of(row)
            continue
        assert a.old == state[a.side], (a, state)
        if not row.store:
            assert a.old in profile.sources_of(row), a
        assert a.new == row.new, a
        state[a.side] = a.new
    return state


def test_every_row_the_engine_names_exists():
    ids = set(ALL_ROW_IDS)
    for path in ENGINE.glob("*.py"):
        ids |= set(re.findall(r'"((?:src|dst)\.[a-z_.]+)"', path.read_text()))
    for rid in ids:
        row = P.transition(rid)
        assert row.side == ("source" if rid.startswith("src.") else "destination")
    assert set(SOURCE_ROWS.values()) <= {r.id for r in P.rows("source")}
    assert set(DESTINATION_ROWS.values()) <= {r.id for r in P.rows("destination")}


def test_no_status_names_in_engine_code():
    """Status names come from spec rows; literals may only be row-table keys."""
    statuses = set(P.status_names) - {"none", "device"}  # common words
    pattern = re.compile(r'(ROWS?\[)?"([a-z-]+)"(: "(?:src|dst)\.)?')
    for path in ENGINE.glob("*.py"):
        for m in pattern.finditer(path.read_text()):
            if m.group(1) or m.group(3):
                continue
            assert m.group(2) not in statuses, (path.name, m.group(2))


class Link:
    """Source and destination sessions joined in memory; ``fault`` may cut bytes."""

    def __init__(self, ram=8 << 20, caps=(), params=None, rate=30000.0, dst_uuid=None,
                 src_uuid=None, dst_caps=None):
        self.log = TransitionLog()
        self.sg = Guest(ram, fill="random", workload_rate=rate, seed=5)
        self.dg = Guest(ram, fill="zero")
        c = default_capabilities(P)
        for name in caps:
            c[name] = True
        dc = dict(c)
        for name in dst_caps or ():
            dc[name] = True
        p = default_params(P)
        p["max-bandwidth"] = 1 << 40
        p.update(params or {})
        self.scell = StatusCell(P, "source", log=self.log)
        self.dcell = StatusCell(P, "destination", log=self.log)
        self.passes = []
        self.src = SourceMigration(P, self.sg, self.scell, caps=c, params=p, uuid=src_uuid,
                                   on_pass=self.passes.append)
        self.dst = DestinationMigration(P, self.dg, self.dcell, caps=dc, uuid=dst_uuid)
        self.cut_after = None
        self.sent = 0

    def push(self, buffers):
        raw = b"".join(memoryview(b).cast("B") for b in buffers)
        if self.cut_after is not None and self.sent + len(raw) > self.cut_after:
            if self.cut_after > self.sent:
                self.dst.feed(raw[:self.cut_after - self.sent])  # a torn record arrives
            self.sent = self.cut_after
            raise OSError(32, "Broken pipe")
        self.sent += len(raw)
        if raw:
            self.dst.feed(raw)
        rp = self.dst.data_to_send()
        if rp:
            self.src.receive_rp(rp)

    def run(self, *, max_steps=10000):
        s, d = self.src, self.dst
        t = time.monotonic()
        s.begin(t)
        d.listening()
        d.accepted()
        self.sg.vm_start()
        try:
            self.push(s.setup(t))
            for _ in range(max_steps):
                now = time.monotonic()
                step = s.poll(now)
                if isinstance(step, Send):
                    for _ch, extra in step.extra:
                        pass
                    self.push(step.buffers)
                    s.sent(buffers_len(step.buffers), now)
                elif isinstance(step, Wait):
                    time.sleep(max(0.0, step.until - now))
                elif isinstance(step, Converged):
                    break
                else:
                    return
            self.sg.vm_stop("finish-migrate")
            if s.switchover():
                assert self.scell.state == "pre-switchover"
                s.continue_switchover()
            for step in s.completion(time.monotonic()):
                self.push(step.buffers)
            assert d.finished
            d.load_finished()
            self.push([])
            s.completed(time.monotonic())
        except (OSError, StreamError, ReturnPathError) as exc:
            msg = getattr(exc, "message", None) or exc.strerror
            s.stream_error(msg, time.monotonic())
            self.sg.vm_start()
        finally:
            self.sg.vm_stop()
            self.dg.vm_stop()


def test_precopy_over_fake_link_passes_memory_check():
    link = Link()
    link.run()
    assert link.scell.state == "completed" and link.dcell.state == "completed"
    assert link.dg.check().ok
    for name in link.sg.blocks:
        assert (link.sg.blocks[name].pages == link.dg.blocks[name].pages).all()
    final = validate_log(P, link.log.attempts)
    assert final == {"source": "completed", "destination": "completed"}
    assert link.passes == list(range(1, len(link.passes) + 1))


@pytest.mark.parametrize("caps,params", [
    (("return-path",), {}),
    (("xbzrle",), {"xbzrle-cache-size": 16 << 20}),
    (("compress",), {"compress-threads": 2, "compress-level": 1}),
    (("pause-before-switchover",), {}),
    (("validate-uuid",), {}),
])
def test_features_over_fake_link(caps, params):
    uuid = b"\x01" * 16
    link = Link(caps=caps, params=params, src_uuid=uuid, dst_uuid=uuid)
    link.run()
    assert link.scell.state == "completed", link.src.error_desc
    assert link.dg.check().ok
    assert (link.sg.ram.pages == link.dg.ram.pages).all()
    validate_log(P, link.log.attempts)
    if "return-path" in caps:
        assert link.src.pongs == [1] and link.src.shut == 0
    if "xbzrle" in caps:
        assert link.src.stats.xbzrle_pages > 0 or link.src.passes_done == 0
    if "compress" in caps:
        assert link.dst.decoder.counters.compressed > 0
    if "pause-before-switchover" in caps:
        states = [a.new for a in link.log.changes() if a.side == "source"]
        assert states[-3:] == ["pre-switchover", "device", "completed"]


def test_validate_uuid_mismatch_fails_both_sides():
    link = Link(caps=("validate-uuid",), src_uuid=b"\x01" * 16, dst_uuid=b"\x02" * 16)
    link.run()
    assert link.scell.state == "failed"
    assert "UUID received is 01010101-0101" in link.src.error_desc


@pytest.mark.parametrize("cut", [5, 3000, 200_000, 5_000_000])
def test_broken_link_fails_source_and_keeps_guest(cut):
    link = Link()
    link.cut_after = cut
    before = link.sg.ram.pages.copy()
    link.run()
    assert link.scell.state == "failed"
    assert link.src.error_desc == "Broken pipe"
    # the source guest lost nothing: only the workload's counters moved
    diff = np.flatnonzero((link.sg.ram.pages != before).any(axis=1))
    first, last = link.sg.work_range
    assert diff.size == 0 or (diff.min() >= first and diff.max() < last)
    assert (link.sg.ram.pages[:, 1:] == before[:, 1:]).all()
    validate_log(P, link.log.attempts)


def test_cancel_in_every_running_state_goes_cancelling_then_cancelled():
    for steps in range(0, 3):
        link = Link()
        s = link.src
        t = time.monotonic()
        s.begin(t)
        if steps >= 1:
            s.setup(t)
        if steps >= 2:
            s.poll(t)
        assert s.cancel()
        assert link.scell.state == "cancelling"
        assert s.poll(t) is None
        assert s.cleanup(time.monotonic())
        assert link.scell.state == "cancelled"
        validate_log(P, link.log.attempts)
    # nothing running: a no-op
    assert not link.src.cancel()


def test_destination_load_failure_fires_failed_and_shut():
    link = Link(caps=("return-path",))
    d = link.dst
    d.listening()
    d.accepted()
    d.return_path = True
    with pytest.raises(StreamError):
        d.feed(b"garbage!")
    d.load_failed("Not a migration stream")
    assert link.dcell.state == "failed"
    assert d.data_to_send()[-4:] == b"\0\0\0\1"
    link.sg.shutdown()


def test_migrate_refuses_capabilities_the_engine_does_not_implement():
    from livemig.engine.rows import unimplemented_capabilities
    from livemig.engine.vm import VM
    from livemig.errors import CommandError

    vm = VM(ram_size=4 << 20, workload_rate=0.0)
    NOT_IMPLEMENTED = tuple(unimplemented_capabilities(vm.profile))
    assert NOT_IMPLEMENTED == ("x-colo", "background-snapshot")  # the spec's table
    try:
        for cap in NOT_IMPLEMENTED:
            vm.execute("migrate-set-capabilities",
                       {"capabilities": [{"capability": c, "state": c == cap}
                                         for c in NOT_IMPLEMENTED]})
            before = len(vm.log.attempts)
            with pytest.raises(CommandError, match=f"capability '{cap}' is not implemented"):
                vm.execute("migrate", {"uri": "unix:/nonexistent/livemig.sock"})
            assert len(vm.log.attempts) == before  # no row fired, nothing changed
    finally:
        vm.close()
