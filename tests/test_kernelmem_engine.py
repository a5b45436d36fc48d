"""The kernel memory backend in the engine (engine/kernelmem/backend.py):
two ``livemig vm --memory kernel`` processes migrate a guest whose vCPU knows
nothing of livemig -- it writes its RAM with plain stores, the source learns
the dirty pages from the kernel, and on the postcopy destination the kernel
stops it on a missing page until the fault thread had it sent and placed.
Precopy, and postcopy with a pause (threads stay asleep in the kernel) and a
recovery; the memory check passes and the logs validate against the spec.
In one process: a fault thread that fails fails the migration (a spec row,
not a silent death), EEXIST on a page already placed is no error, and
``--memory kernel`` where it cannot run is one line naming why.

Skipped, with the backend's own reason, where the kernel lacks userfaultfd
MISSING on shmem or a dirty log."""
from __future__ import annotations

import contextlib
import mmap
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_engine_process import Proc, TIMEOUT, tmp  # noqa: E402,F401
from test_engine_postcopy_process import _finish, _logs, _recover, _switch  # noqa: E402

from livemig.engine.kernelmem import backend  # noqa: E402
from livemig.engine.kernelmem.mapping import SharedMemory  # noqa: E402
from livemig.engine.kernelmem.uffd import PageExists  # noqa: E402

PS = mmap.PAGESIZE
AVAIL = backend.available()
needs_kernel = pytest.mark.skipif(not AVAIL, reason=f"kernel memory backend: {AVAIL.reason}")


def _until(what: str, predicate, timeout: float = TIMEOUT, step: float = 0.05) -> None:
    """Poll ``predicate`` (a cheap query) until true; fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(step)


def _memory(p: Proc) -> dict:
    return p.cmd("query-migrate")["x-livemig-memory"]


def _asleep_on_a_fault(pid: int) -> bool:
    """Some thread of process ``pid`` sleeps in handle_userfault (its wchan);
    True also where the kernel hides wchan (then sleeping-pages says it)."""
    seen = []
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            seen.append(Path(f"/proc/{pid}/task/{tid}/wchan").read_text().strip())
        except OSError:
            continue
    return "handle_userfault" in seen or not any(w not in ("", "0") for w in seen)


# ------------------------------------------------------------ two processes
@needs_kernel
def test_two_process_precopy_of_a_guest_written_by_plain_stores(tmp):
    dst = Proc(tmp, "dst", "--incoming", "defer", "--memory", "kernel")
    src = Proc(tmp, "src", "--workload", "20000", "--memory", "kernel")
    try:
        src.cmd("migrate-set-capabilities",
                capabilities=[{"capability": "events", "state": True}])
        dst.cmd("migrate-incoming", uri=f"unix:{tmp}/mig.sock")
        # a few passes while the guest writes: what is re-sent is only what
        # the kernel's log says (the vCPU logs nothing itself)
        src.cmd("migrate-set-parameters", **{"max-bandwidth": 256 << 20,
                                             "downtime-limit": 300})
        src.cmd("migrate", uri=f"unix:{tmp}/mig.sock")
        assert src.wait_status({"completed", "failed"}) == "completed"
        assert dst.wait_status({"completed", "failed"}) == "completed"
        info = src.cmd("query-migrate")
        mem = info["x-livemig-memory"]
        assert mem["backend"] == "kernel" and mem["dirty-log"] in ("wp-async", "soft-dirty")
        assert info["ram"]["dirty-sync-count"] >= 2 and mem["dirty-syncs"] >= 1
        assert _memory(dst)["backend"] == "kernel"
        first = dst.cmd("x-livemig-check-memory")["first-byte"]
        _until("the guest runs on the destination",
               lambda: dst.cmd("x-livemig-check-memory")["first-byte"] != first)
        dst.cmd("stop")
        check = dst.cmd("x-livemig-check-memory")
        assert check["ok"], check
        seq, dseq = _logs(src, dst)
        assert seq[-2:] == ["active", "completed"] and dseq[-2:] == ["active", "completed"]
    finally:
        assert src.close() == 0
        assert dst.close() == 0


@needs_kernel
@pytest.mark.parametrize("breaker", ["src-pause", "dst-pause"])
def test_two_process_postcopy_faults_pause_and_recovery(tmp, breaker):
    # the destination's guest pulls at most 500 pages/s by faulting, and the
    # background sends 1 MiB/s: postcopy lasts ~25 s, long after the pause
    # even on a loaded machine; unthrottled once recovered
    dst = Proc(tmp, "dst", "--incoming", "defer", "--memory", "kernel", "--workload", "500")
    src = Proc(tmp, "src", "--workload", "20000", "--memory", "kernel")
    caps = [{"capability": c, "state": True} for c in ("events", "postcopy-ram")]
    for p in (src, dst):
        p.cmd("migrate-set-capabilities", capabilities=caps)
    # precopy never converges; postcopy's background is slow, so the guest
    # faults on pages that have not come yet, before and during the pause
    src.cmd("migrate-set-parameters", **{"max-bandwidth": 16 << 20,
                                         "max-postcopy-bandwidth": 1 << 20})
    uri = f"unix:{tmp}/mig.sock"
    dst.cmd("migrate-incoming", uri=uri)
    try:
        _switch(src, dst, uri)
        _until("the kernel reported a fault of the destination's guest",
               lambda: _memory(dst)["userfaultfd"]["faults"] > 0)
        (src if breaker == "src-pause" else dst).cmd("migrate-pause")
        src.wait_status({"postcopy-paused"})
        dst.wait_status({"postcopy-paused"})
        # paused: the guest touches a page nobody can send and sleeps in the
        # kernel (not in livemig), and stays asleep until after the recovery
        _until("a thread asleep on a missing page while paused",
               lambda: _memory(dst)["userfaultfd"]["sleeping-pages"] > 0)
        assert _asleep_on_a_fault(dst.proc.pid)
        assert dst.cmd("query-migrate")["status"] == "postcopy-paused"
        # stopping a guest asleep on a fault does not wait for the page (its
        # access runs again when it is there, after cont)
        t0 = time.monotonic()
        dst.cmd("stop")
        assert dst.cmd("query-status")["status"] == "paused"
        assert time.monotonic() - t0 < 10
        dst.cmd("cont")
        _recover(src, dst, tmp, "unix", 1)
        src.cmd("migrate-set-parameters", **{"max-postcopy-bandwidth": 0})
        _finish(src, dst)
        uf = _memory(dst)["userfaultfd"]
        assert not uf["registered"]  # the end of the load unregistered the RAM
        assert uf["sleeping-pages"] == 0
        assert uf["copies"] > 0 and uf["blocktime"]["count"] > 0
        assert uf["blocktime"]["p50-us"] <= uf["blocktime"]["p99-us"]
        seq, dseq = _logs(src, dst)
        # one pause, one recovery, no failure (7.2: migrate-recover emits setup)
        tail = ["postcopy-paused", "postcopy-recover", "postcopy-active", "completed"]
        assert (seq[-4:], dseq[-5:]) == (tail, tail[:1] + ["setup"] + tail[1:])
        assert "failed" not in seq + dseq
    finally:
        assert src.close() == 0
        assert dst.close() == 0


# ------------------------------------------------------------ one process
@contextlib.contextmanager
def _postcopy_pair(tmp: Path, memory: str = "kernel", *, caps: tuple = (),
                   dst_rate: float = 20000.0, bandwidth: int = 4 << 20,
                   background: int = 1 << 20, before_switch=None):
    """Two VMs of this process, a precopy slower than the guest, switched to
    postcopy (``before_switch(src)`` first); closed at the end."""
    from livemig.engine.vm import VM
    dst = VM(ram_size=16 << 20, incoming="defer", memory=memory, workload_rate=dst_rate)
    src = VM(ram_size=16 << 20, memory=memory)
    try:
        on = [{"capability": c, "state": True} for c in ("events", "postcopy-ram", *caps)]
        for v in (src, dst):
            v.execute("migrate-set-capabilities", {"capabilities": on})
        src.execute("migrate-set-parameters", {"max-bandwidth": bandwidth,
                                               "max-postcopy-bandwidth": background})
        dst.execute("migrate-incoming", {"uri": f"unix:{tmp}/mig.sock"})
        src.execute("migrate", {"uri": f"unix:{tmp}/mig.sock"})
        assert src.wait_for_status({"active"}, TIMEOUT)
        if before_switch is not None:
            before_switch(src)
        src.execute("migrate-start-postcopy")
        yield src, dst
    finally:
        src.close()
        dst.close()


@needs_kernel
def test_a_failing_fault_thread_fails_the_migration(tmp, monkeypatch):
    def broken(self, addresses, now):
        raise RuntimeError("injected")

    monkeypatch.setattr(backend.PostcopyRAM, "handle_faults", broken)
    with _postcopy_pair(tmp) as (src, dst):
        # the destination's vCPU faults at once: the fault thread raises
        assert dst.wait_for_status({"failed"}, TIMEOUT, side="destination")
        err = dst.incoming.error_desc
        assert "internal error in livemig-postcopy-fault: RuntimeError: injected" in err
        log = [a for a in dst.log.attempts if a.ok and a.side == "destination"]
        assert log[-1].id == "dst.listen.failed"
        assert dst.wait_incoming_done(TIMEOUT)
        # the registration is gone: no thread is left asleep on a fault
        assert not dst.incoming.kernel.registered


@needs_kernel
def test_a_fault_thread_failing_while_paused_fails_the_migration_once_recovered(
        tmp, monkeypatch):
    """While paused there is no row to failed; the error is kept, and the
    migration fails (not active again) as soon as the recovery makes it
    postcopy-active: a fault thread that died serves no fault."""
    broken = threading.Event()
    real = backend.PostcopyRAM.handle_faults

    def maybe_broken(self, addresses, now):
        if broken.is_set():
            raise RuntimeError("injected while paused")
        return real(self, addresses, now)

    monkeypatch.setattr(backend.PostcopyRAM, "handle_faults", maybe_broken)
    with _postcopy_pair(tmp, dst_rate=500) as (src, dst):
        assert dst.guest.wait_run_state({"running"}, TIMEOUT)
        src.execute("migrate-pause")
        assert dst.wait_for_status({"postcopy-paused"}, TIMEOUT, side="destination")
        assert src.wait_for_status({"postcopy-paused"}, TIMEOUT)
        broken.set()
        # a thread of the guest's touches the last page: not there, a fault
        ram = dst.guest.ram
        reader = threading.Thread(target=lambda: backend.read_first_bytes(
            ram.shared.address, ram.npages - 1, ram.npages, PS, np.zeros(1, np.uint8)),
            daemon=True)
        reader.start()
        _until("the fault thread failed", lambda: dst._dst_driver.fault_error is not None)
        assert dst.dst_cell.state == "postcopy-paused"  # no row from paused to failed
        dst.execute("migrate-recover", {"uri": f"unix:{tmp}/rec.sock"})
        src.execute("migrate", {"uri": f"unix:{tmp}/rec.sock", "resume": True})
        assert dst.wait_for_status({"failed"}, TIMEOUT, side="destination")
        assert "injected while paused" in dst.incoming.error_desc
        changes = [a.id for a in dst.log.changes() if a.side == "destination"]
        assert changes[-2:] == ["dst.resume", "dst.listen.failed"]
        reader.join(TIMEOUT)
        assert not reader.is_alive()  # unregistered: the sleeper woke


@needs_kernel
def test_precopy_resends_what_plain_numpy_threads_wrote(tmp):
    """Threads that have only a numpy view of the guest's RAM write it during
    precopy; the destination ends with exactly the source's RAM: their
    writes reached the migration only through the kernel's dirty log."""
    from livemig.engine.vm import VM
    # no vCPU writes on either side: the RAM is only what the threads wrote
    dst = VM(ram_size=8 << 20, incoming="defer", memory="kernel", workload_rate=0)
    src = VM(ram_size=8 << 20, memory="kernel", workload_rate=0)
    stop = threading.Event()
    written = [0, 0]

    def writer(slot: int, pages: np.ndarray) -> None:
        rng = np.random.default_rng(slot)
        while not stop.is_set():
            idx = rng.integers(0, len(pages), size=64)
            pages[idx, 100 + slot] = rng.integers(1, 255, size=64, dtype=np.uint8)
            written[slot] += 64
            stop.wait(0.002)

    threads = [threading.Thread(target=writer, args=(i, src.guest.ram.pages), daemon=True)
               for i in range(2)]
    try:
        uri = f"unix:{tmp}/mig.sock"
        dst.execute("migrate-incoming", {"uri": uri})
        src.execute("migrate-set-parameters", {"max-bandwidth": 8 << 20})  # ~1 s a pass
        for t in threads:
            t.start()
        src.execute("migrate", {"uri": uri})
        _until("three dirty syncs while the threads write",
               lambda: src.query_migrate().get("ram", {}).get("dirty-sync-count", 0) >= 3)
        stop.set()
        for t in threads:
            t.join(TIMEOUT)
        src.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
        assert src.wait_for_status({"completed", "failed"}, TIMEOUT)
        assert src.src_cell.state == "completed", src.source.error_desc
        assert dst.wait_incoming_done(TIMEOUT) and dst.dst_cell.state == "completed"
        assert min(written) > 0
        assert src.query_migrate()["x-livemig-memory"]["dirty-syncs"] >= 2
        assert src.query_ram() == dst.query_ram()
    finally:
        stop.set()
        src.close()
        dst.close()


@pytest.mark.parametrize("memory", [
    "simulated", pytest.param("kernel", marks=needs_kernel)])
def test_postcopy_pages_go_plain_with_xbzrle_on(tmp, memory):
    """With xbzrle on, the pages after the switch are sent whole (QEMU 7.2
    sends no delta in postcopy): a delta against a page the destination
    discarded left it wrong, and the kernel backend refuses to decode one."""
    def second_pass(src) -> None:  # xbzrle's cache is filled: deltas would go
        _until("a second pass", lambda: src.query_migrate().get("ram", {}).get(
            "dirty-sync-count", 0) >= 2)

    with _postcopy_pair(tmp, memory, caps=("xbzrle",), bandwidth=8 << 20, background=0,
                        before_switch=second_pass) as (src, dst):
        assert src.wait_for_status({"completed", "failed"}, TIMEOUT)
        assert src.src_cell.state == "completed", src.source.error_desc
        assert dst.wait_incoming_done(TIMEOUT) and dst.dst_cell.state == "completed", \
            dst.incoming.error_desc
        dst.execute("stop")
        check = dst.check_memory()
        assert check["ok"], check


#: a guest that lives in a child process: it maps the RAM memfds it was
#: given, hands its dirty tracking to the parent, and writes random pages
#: with numpy until told to stop; it exits when told to
CHILD_WRITER = r"""
import json, mmap, socket, sys
import numpy as np
from livemig.engine.kernelmem import backend
from livemig.engine.kernelmem.calls import buffer_address
sock = socket.socket(fileno=int(sys.argv[1]))
maps = {n: mmap.mmap(fd, size, mmap.MAP_SHARED) for n, (fd, size) in json.loads(sys.argv[2]).items()}
uffd = backend.export_dirty_log(sock, {n: (buffer_address(m), len(m)) for n, m in maps.items()})
pages = np.frombuffer(maps["pc.ram"], np.uint8).reshape(-1, mmap.PAGESIZE)
rng = np.random.default_rng(7)
sock.settimeout(0.002)
written = 0
while True:
    idx = rng.integers(0, len(pages), size=64)
    pages[idx, 200] = rng.integers(1, 255, size=64, dtype=np.uint8)
    written += 64
    try:
        if sock.recv(1) == b"s":
            break
    except socket.timeout:
        pass
sock.settimeout(60)
sock.sendall(json.dumps({"written": written}).encode() + b"\n")
sock.recv(1)  # stay alive (and tracked) until the migration is done
"""


@contextlib.contextmanager
def _child_guest(script: str, guest):
    """``script`` in a child process given ``guest``'s RAM memfds and one end
    of a socket pair, attached to the guest's kernel memory; yields (child,
    our end).  At the end the child is told to exit ("x") and must exit 0."""
    import json
    import socket
    mine, theirs = socket.socketpair()
    mems = {n: (m.fd, m.size) for n, m in guest.kernel.memories.items()}
    child = subprocess.Popen([sys.executable, "-c", script, str(theirs.fileno()),
                              json.dumps(mems)],
                             pass_fds=[theirs.fileno()] + [fd for fd, _s in mems.values()])
    theirs.close()
    try:
        assert guest.kernel.attach_process(mine, TIMEOUT) == child.pid
        mine.settimeout(TIMEOUT)
        yield child, mine
        mine.sendall(b"x")
        assert child.wait(TIMEOUT) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        mine.close()


@needs_kernel
def test_precopy_of_a_guest_in_a_child_process(tmp):
    """A child process writes the source's RAM (a shared memfd) by plain
    numpy stores; the kernel tracks them in the child's page tables, through
    the userfaultfd it sent over; the destination ends with the source's RAM."""
    import json
    from livemig.engine.vm import VM
    dst = VM(ram_size=8 << 20, incoming="defer", memory="kernel", workload_rate=0)
    src = VM(ram_size=8 << 20, memory="kernel", workload_rate=0)
    try:
        with _child_guest(CHILD_WRITER, src.guest) as (_child, sock):
            uri = f"unix:{tmp}/mig.sock"
            dst.execute("migrate-incoming", {"uri": uri})
            src.execute("migrate-set-parameters", {"max-bandwidth": 8 << 20})  # ~1 s a pass
            src.execute("migrate", {"uri": uri})
            _until("three dirty syncs while the child writes",
                   lambda: src.query_migrate().get("ram", {}).get("dirty-sync-count", 0) >= 3)
            sock.sendall(b"s")
            assert json.loads(sock.makefile().readline())["written"] > 0
            src.execute("migrate-set-parameters", {"max-bandwidth": 1 << 40})
            assert src.wait_for_status({"completed", "failed"}, TIMEOUT)
            assert src.src_cell.state == "completed", src.source.error_desc
            assert dst.wait_incoming_done(TIMEOUT) and dst.dst_cell.state == "completed"
            assert src.query_ram() == dst.query_ram()
    finally:
        src.close()
        dst.close()


#: a postcopy destination's guest in a child process: its mappings are
#: registered MISSING and handed over; on "g" it hashes its whole RAM with
#: plain reads (each missing page stops it in the kernel until the parent
#: placed it and woke it) and sends the hash
CHILD_READER = r"""
import hashlib, json, mmap, socket, sys
from livemig.engine.kernelmem import backend
from livemig.engine.kernelmem.calls import buffer_address
sock = socket.socket(fileno=int(sys.argv[1]))
maps = {n: mmap.mmap(fd, size, mmap.MAP_SHARED) for n, (fd, size) in json.loads(sys.argv[2]).items()}
uffd = backend.export_faults(sock, {n: (buffer_address(m), len(m)) for n, m in maps.items()})
assert sock.recv(1) == b"g"
sock.sendall(json.dumps({"sha256": hashlib.sha256(maps["pc.ram"]).hexdigest()}).encode() + b"\n")
sock.recv(1)
"""


@needs_kernel
def test_postcopy_to_a_guest_in_a_child_process_with_a_pause(tmp):
    """The destination's guest is a child process reading its RAM with plain
    loads; the kernel stops it on every page not there yet, through the
    userfaultfd it registered and sent over; a pause keeps it asleep; it ends
    with the source's RAM."""
    import json
    with _postcopy_pair(tmp, dst_rate=0, background=256 << 10) as (src, dst), \
            _child_guest(CHILD_READER, dst.guest) as (child, sock):
        assert dst.guest.wait_run_state({"running"}, TIMEOUT)
        sock.sendall(b"g")
        uf = lambda: dst.query_migrate()["x-livemig-memory"]["userfaultfd"]  # noqa: E731
        _until("the child faulted", lambda: uf()["faults"] > 10)
        src.execute("migrate-pause")
        assert dst.wait_for_status({"postcopy-paused"}, TIMEOUT, side="destination")
        assert src.wait_for_status({"postcopy-paused"}, TIMEOUT)
        _until("the child asleep on a page", lambda: uf()["sleeping-pages"] > 0)
        assert _asleep_on_a_fault(child.pid)
        dst.execute("migrate-recover", {"uri": f"unix:{tmp}/rec.sock"})
        src.execute("migrate", {"uri": f"unix:{tmp}/rec.sock", "resume": True})
        src.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
        got = json.loads(sock.makefile().readline())
        assert src.wait_for_status({"completed", "failed"}, TIMEOUT)
        assert src.src_cell.state == "completed", src.source.error_desc
        assert got["sha256"] == src.query_ram()[0]["sha256"]


@needs_kernel
def test_a_page_already_placed_is_not_placed_again(tmp):
    mem = SharedMemory("test-engine", 4 * PS)
    ram = backend.PostcopyRAM({"pc.ram": mem}, PS)
    try:
        received = np.zeros(4, dtype=bool)
        ram.listen({"pc.ram": received})
        data = np.full((2, PS), 0x5A, dtype=np.uint8)
        ram.copy("pc.ram", np.array([0, 1]), data, received)
        received[[0, 1]] = True
        again = np.full((1, PS), 0x77, dtype=np.uint8)
        ram.copy("pc.ram", np.array([1]), again, received)  # EEXIST: counted, kept
        assert ram.copies == 2 and ram.already_present == 1
        assert mem.mmap[PS:PS + 2] == b"\x5a\x5a"
        ram.fill("pc.ram", np.array([2]), np.array([0]), received)
        assert ram.zeropages == 1
        # a present page that was never received: bytes nobody sent -- an error
        with pytest.raises(PageExists, match="never received"):
            ram.fill("pc.ram", np.array([2]), np.array([0]), received)
    finally:
        ram.close()
        mem.close()


def test_default_is_simulated_and_shows_no_member():
    from livemig.engine.vm import VM
    vm = VM(ram_size=4 << 20, start_paused=True)
    try:
        assert vm.guest.memory.kind == "simulated" and vm.guest.kernel is None
        assert vm.guest.memory_info() == {"backend": "simulated"}
    finally:
        vm.close()


def test_auto_says_what_it_chose():
    choice = backend.resolve("auto")
    assert choice.kind == ("kernel" if AVAIL else "simulated")
    if not AVAIL:
        assert choice.reason == AVAIL.reason
    with_file = backend.resolve("auto", mem_path="/dev/null")
    assert with_file.kind == "simulated" and "--mem-path" in with_file.reason


def test_refused_kernel_memory_is_one_line_naming_why(tmp):
    # a --mem-path guest cannot have kernel memory on any kernel
    out = subprocess.run([sys.executable, "-m", "livemig", "migrate", f"unix:{tmp}/x.sock",
                          "--ram", "8M", "--memory", "kernel", "--mem-path", f"{tmp}/ram"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("livemig: error: --memory kernel: ") and "--mem-path" in lines[0]
    with pytest.raises(backend.MemoryUnavailable, match="mem-path"):
        backend.resolve("kernel", mem_path=f"{tmp}/ram")
