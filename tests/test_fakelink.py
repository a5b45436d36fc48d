"""The fake link: the engine's VMs and sessions on simulated threads over an
in-memory network (livemig/conformance/fakelink.py).  Deterministic: the
same steps give the same rows, byte for byte."""
from livemig.conformance.fakelink import FakeLink

RAM = 2 << 20


def pair(link, caps=()):
    return link.vm_pair(ram=RAM, caps=caps, listen="unix:/fake/mig.sock", seed=3)


def settle(link, vm):
    """Run, letting simulated time pass (rate-limit windows), until the
    source's migration ends (bounded)."""
    for _ in range(200):
        link.run()
        if vm.src_cell.state in vm.st.terminal:
            return
        link.advance(0.1)


def rows(vm, side):
    return [a.id for a in vm.log.attempts if a.ok and a.side == side]


def same_memory(src, dst):
    return all((src.guest.blocks[n].pages == dst.guest.blocks[n].pages).all()
               for n in src.guest.blocks)


def test_precopy_with_dirtying_completes_and_memory_matches():
    link = FakeLink()
    src, dst = pair(link, caps=("return-path",))
    src.execute("migrate", {"uri": "unix:/fake/mig.sock"})
    for i in range(40):  # the vCPU dirties pages between the migration's steps
        src.guest.step_workload(4)
        link.step(i)
    settle(link, src)
    assert src.src_cell.state == "completed" and dst.dst_cell.state == "completed"
    assert same_memory(src, dst) and dst.guest.check().ok
    assert rows(dst, "destination") == ["dst.incoming.setup_event", "dst.co.active",
                                        "dst.bh.completed"]


def _postcopy_pause_and_recover(read_chunk):
    link = FakeLink(read_chunk=read_chunk)
    src, dst = pair(link, caps=("postcopy-ram",))
    src.guest.device_state = b"livemig-device-v1:replay"  # a fresh guest's is random
    src.execute("migrate", {"uri": "unix:/fake/mig.sock"})
    src.execute("migrate-start-postcopy")
    for i in range(5000):
        if dst.dst_cell.state == "postcopy-active" and dst.incoming.run_requested:
            break
        link.step(i)
    dst.guest.step_workload(8)  # faults: page requests on the return path
    link.network.break_connections()
    link.run()
    assert (src.src_cell.state, dst.dst_cell.state) == ("postcopy-paused", "postcopy-paused")
    dst.execute("migrate-recover", {"uri": "unix:/fake/recover.sock"})
    src.execute("migrate", {"uri": "unix:/fake/recover.sock", "resume": True})
    link.run()
    for _ in range(64):  # the vCPU runs on the destination, pulling what it misses
        dst.guest.step_workload(8)
        link.run()
    assert src.src_cell.state == "completed" and dst.dst_cell.state == "completed"
    assert dst.guest.check().ok
    assert not link.crashes
    return (rows(src, "source"), rows(dst, "destination"), dst.incoming.postcopy_requests,
            link.fingerprint())


def test_postcopy_pause_and_recovery_is_deterministic():
    first = _postcopy_pause_and_recover(read_chunk=4096)
    assert first[0] == ["src.migrate_init.reset", "src.migrate_init.setup", "src.thread.active",
                        "src.postcopy_start.switch", "src.postcopy_pause",
                        "src.fd_connect.resume", "src.rp.resume_ack",
                        "src.completion.completed"]
    assert "dst.recover.accept" in first[1] and first[1][-1] == "dst.listen.completed"
    again = _postcopy_pause_and_recover(read_chunk=4096)
    assert again == first  # rows, requests, the schedule and every byte on every channel
    assert _postcopy_pause_and_recover(read_chunk=65536)[3] != first[3]  # the digest can differ


def test_killed_destination_fails_the_source_and_restarts_its_guest():
    link = FakeLink()
    src, dst = pair(link)
    src.execute("migrate", {"uri": "unix:/fake/mig.sock"})
    for i in range(20):
        if src.src_cell.state == "active":
            break
        link.step(i)
    assert src.src_cell.state == "active"
    link.kill("destination")
    link.run()
    assert src.src_cell.state == "failed"
    assert src.query_migrate()["error-desc"] in ("Broken pipe", "Connection reset by peer")
    assert src.guest.run_state == "running"


def test_refused_multifd_channel_is_the_multifd_row():
    link = FakeLink()
    src, dst = pair(link, caps=("multifd",))
    link.network.refuse_connect(after=1)  # the main channel connects, the first extra fails
    src.execute("migrate", {"uri": "unix:/fake/mig.sock"})
    link.run()
    assert rows(src, "source")[-1] == "src.multifd.send_failed"
    assert src.query_migrate()["error-desc"] == ("Failed to connect to '/fake/mig.sock': "
                                                    "Connection refused")


def test_multifd_over_the_fake_link_keeps_the_sync_barrier():
    link = FakeLink()
    src, dst = pair(link, caps=("multifd",))
    src.execute("migrate", {"uri": "unix:/fake/mig.sock"})
    for i in range(400):
        src.guest.step_workload(2)
        link.step(i, 3)
    settle(link, src)
    assert src.src_cell.state == "completed", src.query_migrate()
    assert same_memory(src, dst)
