"""Sans-I/O postcopy over an in-memory link: the switch, the package, page
requests, placement, pause and recovery (RECV_BITMAP handshake), faults
injected at every postcopy step; every transition log validates against the
spec."""
from __future__ import annotations

import struct
import time

import numpy as np
import pytest

from livemig.core.caps import default_capabilities, default_params
from livemig.core.cell import StatusCell, TransitionLog
from livemig.engine.guest import Guest
from livemig.engine.postcopy import (
    Idle, PostcopyDestination, PostcopyDone, PostcopySource, StartPostcopy,
    decode_received_bitmap, encode_received_bitmap,
)
from livemig.engine.returnpath import encode_rp
from livemig.engine.source import Send, Wait
from livemig.engine.stream import StreamEncoder, buffers_len
from livemig.errors import ReturnPathError, StreamError
from livemig.spec import load_profile

from test_engine_session import validate_log

P = load_profile("qemu-7.2")
PAGE = 4096


class Broken(Exception):
    pass


class PostcopyLink:
    """A postcopy source and destination joined in memory.

    ``cut`` (bytes on the main channel, counted from the first postcopy byte)
    tears the channel: the prefix arrives, the rest is lost, both sides pause.
    """

    def __init__(self, ram=4 << 20, caps=(), rate=50000.0):
        self.log = TransitionLog()
        self.sg = Guest(ram, fill="random", workload_rate=rate, seed=3,
                        workload_end=ram)
        self.dg = Guest(ram, fill="zero", workload_end=ram)
        c = default_capabilities(P)
        for name in ("events", "postcopy-ram", "return-path") + tuple(caps):
            c[name] = True
        p = default_params(P)
        p["max-bandwidth"] = 1 << 40
        self.scell = StatusCell(P, "source", log=self.log)
        self.dcell = StatusCell(P, "destination", log=self.log)
        self.src = PostcopySource(P, self.sg, self.scell, caps=c, params=p)
        self.dst = PostcopyDestination(P, self.dg, self.dcell, caps=c)
        self.cuts: list[int] = []
        self.post_bytes = 0
        self.in_post = False
        self.pauses = 0
        self.fail_next: list = []

    # ------------------------------------------------------------ channel
    def push(self, buffers):
        raw = b"".join(bytes(memoryview(b).cast("B")) for b in buffers)
        if self.in_post and self.cuts and self.post_bytes + len(raw) > self.cuts[0]:
            keep = self.cuts.pop(0) - self.post_bytes
            if keep > 0:
                self._feed(raw[:keep])
            self.post_bytes += max(keep, 0)
            raise Broken()
        if self.in_post:
            self.post_bytes += len(raw)
        self._feed(raw)
        self.rp()

    def _feed(self, raw):
        if raw:
            self.dst.feed(raw)

    def rp(self):
        data = self.dst.data_to_send()
        if data:
            self.src.receive_rp(data)

    # ------------------------------------------------------------ phases
    def precopy_then_switch(self, sends_before=1, coalesce=False, dirty=()):
        """Precopy, then the switch.  ``dirty`` (page indexes of pc.ram) are
        logged as written just before it, so they are surely missing on the
        destination afterwards however little the vCPU ran (a loaded machine
        may give it no time at all)."""
        s, d = self.src, self.dst
        t = time.monotonic()
        s.begin(t)
        d.listening()
        d.accepted()
        self.sg.vm_start()
        self.push(s.setup(t))
        sends = 0
        for _ in range(10000):
            now = time.monotonic()
            if sends >= sends_before:
                if len(dirty) and not s.start_postcopy:
                    with self.sg.dirty_lock:
                        self.sg.ram.dirty_log[list(dirty)] = True
                s.start_postcopy = True  # migrate-start-postcopy
            step = s.poll(now)
            if isinstance(step, Send):
                sends += 1
                time.sleep(0.01)  # let the vCPU dirty pages: discards follow
                self.push(step.buffers)
                s.sent(buffers_len(step.buffers), now)
            elif isinstance(step, Wait):
                time.sleep(max(0.0, step.until - now))
            elif isinstance(step, StartPostcopy):
                break
            else:
                raise AssertionError(step)
        else:
            raise AssertionError("never switched")
        if s.postcopy_start():
            assert self.scell.state == "pre-switchover"
            s.postcopy_continue()
        assert self.scell.state == "postcopy-active"
        self.sg.vm_stop("finish-migrate")
        self.in_post = True
        package = s.package(time.monotonic())
        if coalesce:
            # the package and the first postcopy pages in one receive buffer:
            # DISCARD must take effect before the pages behind it are loaded
            step = s.poll_postcopy(time.monotonic())
            package = package + step.buffers
        self.push(package)
        assert d.run_requested and d.pc.state == "RUNNING"
        assert self.dcell.state == "postcopy-active"

    def pause_both(self):
        self.pauses += 1
        assert self.src.postcopy_pause("Broken pipe")
        assert self.dst.load_failed("Broken pipe")
        assert self.scell.state == "postcopy-paused" == self.dcell.state

    def recover(self, fail_at=None):
        """migrate-recover + migrate resume=true; ``fail_at="connect"`` breaks
        the source's new channel before the destination accepted it."""
        s, d = self.src, self.dst
        d.recover_listening()
        assert s.resume_connected()
        if fail_at == "connect":
            assert s.postcopy_pause("Connection reset by peer")
            assert self.scell.state == "postcopy-paused" == self.dcell.state
            return False
        assert d.recover_accepted()
        assert self.scell.state == "postcopy-recover" == self.dcell.state
        self._feed(b"".join(s.resume_prepare()))
        self.rp()
        assert s.bitmaps_reloaded
        self._feed(s.resume_command())
        self.rp()
        assert self.scell.state == "postcopy-active" == self.dcell.state
        return True

    def postcopy_loop(self, faults=(), max_steps=100000):
        """Background pages + page requests until done; ``faults`` is a list of
        (step, first, last) destination faults (non-blocking requests)."""
        s, d = self.src, self.dst
        faults = list(faults)
        for i in range(max_steps):
            while faults and faults[0][0] <= i:
                _, a, b = faults.pop(0)
                d.fault("pc.ram", a, b)
                self.rp()
            step = s.poll_postcopy(time.monotonic())
            if isinstance(step, PostcopyDone):
                try:
                    self.push(s.postcopy_complete(time.monotonic()))
                except Broken:
                    return False
                assert d.finished
                assert d.load_finished()
                self.rp()
                assert s.completed(time.monotonic())
                return True
            assert isinstance(step, Send), step
            try:
                self.push(step.buffers)
            except Broken:
                return False
            s.sent(buffers_len(step.buffers), time.monotonic())
        raise AssertionError("postcopy did not finish")

    def finish(self, faults=()):
        while not self.postcopy_loop(faults):
            faults = ()
            self.pause_both()
            while not self.recover(self.fail_next.pop(0) if self.fail_next else None):
                pass

    def check_memory(self):
        for name, b in self.sg.blocks.items():
            assert np.array_equal(b.pages, self.dg.blocks[name].pages), name
        assert self.dg.check().ok
        state = validate_log(P, self.log.attempts)
        assert state == {"source": "completed", "destination": "completed"}

    def close(self):
        self.sg.shutdown()
        self.dg.shutdown()


@pytest.fixture
def link():
    links = []

    def make(**kw):
        lk = PostcopyLink(**kw)
        links.append(lk)
        return lk
    yield make
    for lk in links:
        lk.close()


def test_postcopy_completes_with_page_requests(link):
    lk = link()
    lk.precopy_then_switch()
    d = lk.dst
    missing = np.flatnonzero(~d.received["pc.ram"])
    assert missing.size > 10  # the vCPU dirtied pages during precopy: discarded
    faults = [(0, int(p), int(p) + 1) for p in missing[[0, 5, -1]]]
    assert lk.postcopy_loop(faults)
    lk.check_memory()
    assert d.latency.to_json()["count"] >= 3
    assert lk.src.postcopy_requests >= 3 and d.postcopy_requests >= 3
    assert lk.src.postcopy_bytes > 0
    events = [a.new for a in lk.log.changes() if a.side == "source"]
    assert events == ["none", "setup", "active", "postcopy-active", "completed"]
    dev = [a.new for a in lk.log.changes() if a.side == "destination"]
    assert dev == ["setup", "active", "postcopy-active", "completed"]
    assert d.pc.state == "END"


def test_commands_take_effect_before_the_pages_behind_them(link):
    lk = link()
    lk.precopy_then_switch(coalesce=True)
    assert lk.postcopy_loop()
    lk.check_memory()


def test_postcopy_with_pause_before_switchover(link):
    lk = link(caps=("pause-before-switchover",))
    lk.precopy_then_switch()
    assert lk.postcopy_loop()
    lk.check_memory()
    assert "pre-switchover" in [a.new for a in lk.log.changes()]


def test_discard_ranges_at_most_twelve_per_command(link):
    lk = link()
    src = lk.src
    bm = src.bitmaps["pc.ram"]
    bm[:] = False
    bm[0:40:2] = True  # 20 runs
    cmds = src.discard_commands()
    assert len(cmds) == 2
    w = src.w
    for cmd, n in zip(cmds, (12, 8)):
        assert cmd[0] == w.command
        value, length = struct.unpack(">HH", cmd[1:5])
        assert value == w.cmd["POSTCOPY_RAM_DISCARD"].value
        payload = cmd[5:]
        assert payload[:2] == bytes([0, len(b"pc.ram")]) and payload[8] == 0
        ranges = np.frombuffer(payload[9:], ">u8").reshape(-1, 2)
        assert len(ranges) == n and (ranges[:, 1] == PAGE).all()


@pytest.mark.parametrize("cut", [1, 5000, 200_000, 1_000_000, 2_500_000])
def test_pause_and_recover_at_any_byte(link, cut):
    lk = link()
    npages = lk.dg.ram.npages
    # every page re-sent in postcopy: the stream is long enough for each cut
    lk.precopy_then_switch(dirty=range(npages))
    lk.cuts = [cut]
    lk.finish(faults=[(0, npages // 2, npages // 2 + 8), (3, 10, 12)])
    lk.check_memory()
    assert lk.pauses == 1
    seq = [a.new for a in lk.log.changes() if a.side == "source"]
    assert seq[-5:] == ["postcopy-active", "postcopy-paused", "postcopy-recover",
                        "postcopy-active", "completed"]
    dseq = [a.new for a in lk.log.changes() if a.side == "destination"]
    assert dseq[-5:] == ["postcopy-paused", "setup", "postcopy-recover", "postcopy-active",
                         "completed"]


def test_two_failures_in_a_row_and_failed_recoveries(link):
    lk = link()
    lk.precopy_then_switch()
    lk.cuts = [300_000, 20_000]
    lk.fail_next = ["connect", None, None]
    lk.finish(faults=[(0, 7, 9)])
    lk.check_memory()
    src_seq = [a.new for a in lk.log.changes() if a.side == "source"]
    assert src_seq.count("postcopy-paused") == 3
    assert "failed" not in src_seq


def test_destination_failure_while_recovering_stays_in_recover(link):
    """7.2: dst.pause only leaves postcopy-active, so a channel lost after the
    destination accepted the recovery leaves it in postcopy-recover (facts
    §1.4, fixed in master); the source goes back to postcopy-paused."""
    lk = link()
    lk.precopy_then_switch()
    lk.pause_both()
    s, d = lk.src, lk.dst
    d.recover_listening()
    s.resume_connected()
    d.recover_accepted()
    lk._feed(b"".join(s.resume_prepare()))
    assert s.postcopy_pause("Connection reset by peer")
    assert not d.load_failed("Connection reset by peer")
    assert lk.scell.state == "postcopy-paused" and lk.dcell.state == "postcopy-recover"
    validate_log(P, lk.log.attempts)


def test_pending_requests_are_resent_after_resume(link):
    lk = link()
    last = lk.dg.ram.npages
    lk.precopy_then_switch(dirty=range(last - 4, last))
    s, d = lk.src, lk.dst
    lk.pause_both()
    # the vCPU faults while paused: the request waits for the new channel
    assert not d.fault("pc.ram", last - 4, last)
    assert d.data_to_send() == b""
    d.recover_listening()
    d.recover_accepted()
    s.resume_connected()
    lk._feed(b"".join(s.resume_prepare()))
    lk.rp()
    lk._feed(s.resume_command())
    before = s.postcopy_requests
    lk.rp()
    assert s.postcopy_requests == before + 1
    step = s.poll_postcopy(time.monotonic())
    lk.push(step.buffers)
    assert d.received["pc.ram"][last - 4:].all()
    assert lk.postcopy_loop()
    lk.check_memory()


def test_page_pushed_and_requested_is_placed_once(link):
    lk = link()
    lk.precopy_then_switch()
    s, d = lk.src, lk.dst
    block = lk.dg.ram
    page = 77
    enc = StreamEncoder(P)
    good = lk.sg.ram.pages[page].copy()
    # first copy arrives and is placed
    s.bitmaps["pc.ram"][page] = False
    d.feed(b"".join(bytes(memoryview(x).cast("B")) for x in
                    [enc.section_part(0)] + enc.normal_pages(lk.sg.ram, np.array([page]),
                                                            good[None, :])
                    + [enc.eos(), enc.footer(0)]))
    assert d.received["pc.ram"][page]
    # a second, different copy of the same page is ignored
    bogus = np.full((1, PAGE), 0xAB, np.uint8)
    enc.reset_continue()
    d.feed(b"".join(bytes(memoryview(x).cast("B")) for x in
                    [enc.section_part(0)] + enc.normal_pages(lk.sg.ram, np.array([page]), bogus)
                    + [enc.eos(), enc.footer(0)]))
    assert np.array_equal(block.pages[page], good)
    assert lk.postcopy_loop()
    lk.check_memory()


def test_source_rejects_bad_page_requests(link):
    lk = link()
    lk.precopy_then_switch()
    s = lk.src
    with pytest.raises(ReturnPathError, match="Misaligned page request, start: 0x1001 len: 4096"):
        s.receive_rp(encode_rp(P, "REQ_PAGES_ID",
                               struct.pack(">QIB", 0x1001, 4096, 6) + b"pc.ram"))
    s.rp_decoder = s._new_rp_decoder()
    with pytest.raises(ReturnPathError, match="has no block 'nope'"):
        s.receive_rp(encode_rp(P, "REQ_PAGES_ID", struct.pack(">QIB", 0, 4096, 4) + b"nope"))
    s.rp_decoder = s._new_rp_decoder()
    with pytest.raises(ReturnPathError, match="request overrun"):
        s.receive_rp(encode_rp(P, "REQ_PAGES_ID",
                               struct.pack(">QIB", lk.sg.ram.used_length, 4096, 6) + b"pc.ram"))


def test_destination_command_errors_use_qemu_texts(link):
    lk = link()
    d = lk.dst
    d.accepted()
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_RUN in wrong postcopy state \(0\)"):
        d._cmd_postcopy_run(b"")
    with pytest.raises(StreamError, match="RAM postcopy is enabled but have 0 byte advise"):
        d._cmd_postcopy_advise(b"")
    # xchg-then-check: the state is already ADVISE, so a second ADVISE fails with 1
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_ADVISE in wrong postcopy state \(1\)"):
        d._cmd_postcopy_advise(struct.pack(">QQ", PAGE, PAGE))
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_RAM_DISCARD invalid version \(1\)"):
        d._cmd_postcopy_ram_discard(bytes([1, 6]) + b"pc.ram\0" + bytes(16))
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_RAM_DISCARD missing nil \(7\)"):
        d._cmd_postcopy_ram_discard(bytes([0, 6]) + b"pc.ram\x07" + bytes(16))
    d2 = link().dst
    d2.accepted()
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_ADVISE invalid length \(8\)"):
        d2._cmd_postcopy_advise(bytes(8))
    d3 = link().dst
    d3.accepted()
    with pytest.raises(StreamError, match=r"CMD_POSTCOPY_LISTEN in wrong postcopy state \(0\)"):
        d3._cmd_postcopy_listen(b"")
    assert d3.pc.state == "LISTENING"  # QEMU stored it before checking


def test_break_before_run_is_fatal_on_the_destination(link):
    """LISTENING (not RUNNING) when the load fails: listen.failed, not paused."""
    lk = link()
    s, d = lk.src, lk.dst
    t = time.monotonic()
    s.begin(t)
    d.listening()
    d.accepted()
    lk.push(s.setup(t))
    s.start_postcopy = True
    s.passes_done = 0
    assert isinstance(s.poll(t), StartPostcopy)
    s.postcopy_start()
    pkg = b"".join(bytes(memoryview(b).cast("B")) for b in s.package(t))
    cut = pkg.index(s.enc.command("POSTCOPY_LISTEN")) + 8
    d.feed(pkg[:cut])
    assert d.pc.state == "LISTENING" and lk.dcell.state == "postcopy-active"
    assert d.load_failed("Input/output error")
    assert lk.dcell.state == "failed"
    assert s.postcopy_pause("Broken pipe") and lk.scell.state == "postcopy-paused"
    validate_log(P, lk.log.attempts)


def test_resume_ack_value_and_bitmap_checks(link):
    lk = link()
    lk.precopy_then_switch()
    s = lk.src
    with pytest.raises(ReturnPathError, match="illegal resume_ack value 2"):
        s.receive_rp(encode_rp(P, "RESUME_ACK", struct.pack(">I", 2)))
    lk.pause_both()
    lk.dst.recover_accepted()
    s.resume_connected()
    s.rp_decoder = s._new_rp_decoder()
    bad = (encode_rp(P, "RECV_BITMAP", bytes([6]) + b"pc.ram") + struct.pack(">Q", 8)
           + bytes(8) + struct.pack(">Q", 0x0123456789ABCDEF))
    with pytest.raises(ReturnPathError, match="bitmap size mismatch"):
        s.receive_rp(bad)
    s.rp_decoder = s._new_rp_decoder()
    n = lk.sg.blocks["small.ram"].npages
    raw = encode_received_bitmap(np.ones(n, bool))
    bad = (encode_rp(P, "RECV_BITMAP", bytes([9]) + b"small.ram") + struct.pack(">Q", len(raw))
           + raw + struct.pack(">Q", 1))
    with pytest.raises(ReturnPathError, match="end mark incorrect"):
        s.receive_rp(bad)


def test_received_bitmap_is_little_endian_longs():
    bits = np.zeros(130, bool)
    bits[[0, 9, 64, 129]] = True
    raw = encode_received_bitmap(bits)
    assert len(raw) == 24
    longs = struct.unpack("<3Q", raw)
    assert longs == (1 | 1 << 9, 1, 1 << 1)
    assert np.array_equal(decode_received_bitmap(raw, 130), bits)


def test_idle_while_paused(link):
    lk = link()
    lk.precopy_then_switch()
    lk.pause_both()
    assert isinstance(lk.src.poll_postcopy(time.monotonic()), Idle)


@pytest.mark.parametrize("where", ["discard", "listen", "run", "after"])
def test_break_at_every_switch_step(link, where):
    """The channel breaks at each step of postcopy_start.  The source is
    postcopy-active, so it pauses in every case; the destination fails before
    RUN (7.2: pausing needs PostcopyState RUNNING) and pauses after it, and then
    recovery completes with the memory check passing."""
    lk = link()
    s, d = lk.src, lk.dst
    t = time.monotonic()
    s.begin(t)
    d.listening()
    d.accepted()
    lk.sg.vm_start()
    lk.push(s.setup(t))
    step = s.poll(t)
    lk.push(step.buffers)
    s.sent(buffers_len(step.buffers), t)
    time.sleep(0.02)
    s.start_postcopy = True
    assert isinstance(s.poll(time.monotonic()), StartPostcopy)
    s.postcopy_start()
    lk.sg.vm_stop("finish-migrate")
    raw = b"".join(bytes(memoryview(b).cast("B")) for b in s.package(time.monotonic()))
    listen = raw.index(s.enc.command("POSTCOPY_LISTEN"))
    run = raw.index(s.enc.command("POSTCOPY_RUN"))
    cut = {"discard": 12, "listen": listen + 5, "run": run,
           "after": run + 5}[where]
    d.feed(raw[:cut])
    assert s.postcopy_pause("Broken pipe")
    if where != "after":
        assert d.load_failed("Input/output error")
        assert lk.dcell.state == "failed"
        state = validate_log(P, lk.log.attempts)
        assert state == {"source": "postcopy-paused", "destination": "failed"}
        return
    assert d.load_failed("Input/output error") and lk.dcell.state == "postcopy-paused"
    lk.in_post = True
    assert lk.recover()
    assert lk.postcopy_loop()
    lk.check_memory()


def test_release_ram_frees_sent_pages(link):
    lk = link(caps=("release-ram",))
    lk.precopy_then_switch()
    before = {n: b.pages.copy() for n, b in lk.sg.blocks.items()}
    sent_in_postcopy = np.flatnonzero(~lk.dst.received["pc.ram"])
    assert sent_in_postcopy.size
    assert lk.postcopy_loop()
    for name, b in lk.dg.blocks.items():
        assert np.array_equal(b.pages, before[name]), name
    assert not lk.sg.ram.pages[sent_in_postcopy].any()  # freed on the source
    assert lk.dg.check().ok


from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(cuts=st.lists(st.integers(1, 4_500_000), max_size=3).map(sorted),
       faults=st.lists(st.tuples(st.integers(0, 6), st.integers(0, 1000)), max_size=6),
       connect_failures=st.lists(st.booleans(), max_size=3))
def test_random_breaks_faults_and_failed_resumes(cuts, faults, connect_failures):
    """Any number of breaks at any byte after the switch, faults on any page,
    resumes that fail before the destination accepts: postcopy completes and
    nothing is lost; the log validates against the spec."""
    lk = PostcopyLink()
    try:
        lk.precopy_then_switch()
        # cuts are cumulative byte positions on the post-switch channel
        lk.cuts = [c for i, c in enumerate(cuts) if i == 0 or c > cuts[i - 1]]
        lk.fail_next = ["connect" if f else None for f in connect_failures]
        lk.finish(faults=[(step, page, page + 1) for step, page in sorted(faults)])
        lk.check_memory()
        assert lk.pauses <= len(cuts)
    finally:
        lk.close()


def test_faulting_reader_never_sees_a_partial_page(link):
    """A thread standing in for the vCPU faults on pages while the link places
    them; every page it is let through to equals the source's page whole.
    The test is the runner here: the reader asks with request_pages (under
    the lock the session is given as ``exclusive``), the link sends the
    requests, and the reader waits on the placement notification."""
    import threading
    lk = link(ram=8 << 20)
    lk.precopy_then_switch()
    d = lk.dst
    src_pages = lk.sg.ram.pages  # the source vCPU is stopped: final content
    missing = np.flatnonzero(~d.received["pc.ram"])
    rng = np.random.default_rng(7)
    order = rng.permutation(missing)[:200]
    bad: list[int] = []
    lock = threading.RLock()
    placed = threading.Condition(lock)
    requests: list[bytes] = []
    d.exclusive = lock

    def notify():
        with placed:
            placed.notify_all()

    d.on_pages_placed = notify

    def reader():
        for p in order.tolist():
            with lock:
                requests.append(d.request_pages("pc.ram", p, p + 1))
            with placed:
                assert placed.wait_for(lambda: d.present("pc.ram", p, p + 1), 30)
            if not np.array_equal(lk.dg.ram.pages[p], src_pages[p]):
                bad.append(p)

    t = threading.Thread(target=reader)
    t.start()
    # the link: serve requests as they come, background pages in between
    while t.is_alive():
        with lock:
            asked, requests[:] = b"".join(requests), []
        if asked:
            lk.src.receive_rp(asked)
        step = lk.src.poll_postcopy(time.monotonic())
        if isinstance(step, Send):
            lk.push(step.buffers)
        else:
            with placed:
                placed.wait(0.01)
    t.join()
    assert not bad
    assert d.latency.to_json()["count"] > 0
    assert lk.postcopy_loop()
    lk.check_memory()


def test_recv_bitmap_payload_is_qemus_counted_name(link):
    """MIG_CMD_RECV_BITMAP is u8 length + name and nothing more: QEMU 7.2's
    loadvm_handle_recv_bitmap refuses any other payload length (a trailing
    NUL made a real QEMU refuse livemig's recovery, and then crash).  The
    destination checks the same, with QEMU's text, before answering."""
    lk = link()
    lk.precopy_then_switch()
    lk.pause_both()
    s, d = lk.src, lk.dst
    d.recover_listening()
    s.resume_connected()
    d.recover_accepted()
    commands = s.resume_prepare()
    header = 1 + 2 + 2  # QEMU_VM_COMMAND, be16 command, be16 length
    for name, cmd in zip(s.guest.blocks, commands):
        assert cmd[header:] == bytes([len(name)]) + name.encode()
        assert struct.unpack(">H", cmd[3:5]) == (len(name) + 1,)
    bad = commands[0][:3] + struct.pack(">H", len(commands[0]) - header + 1) \
        + commands[0][header:] + b"\0"
    with pytest.raises(StreamError, match=r"^loadvm_handle_recv_bitmap: invalid payload "
                                          r"length \(8\)$"):
        lk._feed(bad)
    assert d.data_to_send() == b""  # nothing answered
