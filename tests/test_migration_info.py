"""query-migrate on the source: which MigrationInfo members each status shows
(the spec's MIGRATION_INFO, QEMU's fill_source_migration_info), checked on the
engine over the fake link in each status."""
from livemig.conformance.fakelink import FakeLink
from livemig.engine.vm import VM
from livemig.spec import load_profile

RAM = 1 << 20
TIMES_AND_RAM = {"status", "setup-time", "total-time", "expected-downtime", "ram"}
DONE = {"status", "setup-time", "total-time", "downtime", "ram"}


def pair(caps=()):
    link = FakeLink()
    src, dst = link.vm_pair(ram=RAM, caps=caps, listen="unix:/info/mig.sock", seed=2)
    src.execute("migrate", {"uri": "unix:/info/mig.sock"})
    return link, src, dst


def step_until(link, done, limit=2000):
    for i in range(limit):
        if done() or link.step(i) is None:
            break
    assert done()


def test_nothing_before_a_migration():
    vm = VM(ram_size=RAM, vcpu_thread=False, transport=FakeLink().transport("x"))
    assert vm.query_migrate() == {}


def test_setup_shows_only_the_status():
    link, src, dst = pair()
    assert src.query_migrate() == {"status": "setup"}


def test_active_shows_times_and_ram_then_completed_the_downtime():
    link, src, dst = pair(caps=("xbzrle",))
    step_until(link, lambda: src.src_cell.state == "active")
    info = src.query_migrate()
    assert set(info) == TIMES_AND_RAM | {"xbzrle-cache"}
    assert info["ram"]["remaining"] > 0
    link.run()
    info = src.query_migrate()
    assert info["status"] == "completed"
    assert set(info) == DONE | {"xbzrle-cache"}
    assert info["ram"]["remaining"] == 0 and info["ram"]["dirty-pages-rate"] == 0


def test_compression_is_shown_with_compress_even_once_completed():
    link, src, dst = pair(caps=("compress",))
    link.run()
    assert set(src.query_migrate()) == DONE | {"compression"}


def test_pre_switchover_and_postcopy_paused_are_in_progress():
    link, src, dst = pair(caps=("pause-before-switchover",))
    step_until(link, lambda: src.src_cell.state == "pre-switchover")
    assert set(src.query_migrate()) == TIMES_AND_RAM

    link, src, dst = pair(caps=("postcopy-ram",))
    src.execute("migrate-start-postcopy")
    step_until(link, lambda: dst.incoming.run_requested)
    link.network.break_connections()
    link.run()
    assert src.src_cell.state == "postcopy-paused"
    assert set(src.query_migrate()) == TIMES_AND_RAM


def test_failed_shows_the_error_and_cancelled_only_the_status():
    link, src, dst = pair()
    step_until(link, lambda: src.src_cell.state == "active")
    link.network.break_connections()
    link.run()
    info = src.query_migrate()
    assert info["status"] == "failed" and set(info) == {"status", "error-desc"}

    link, src, dst = pair()
    step_until(link, lambda: src.src_cell.state == "active")
    src.execute("migrate_cancel")
    link.run()
    assert src.query_migrate() == {"status": "cancelled"}


def test_every_member_of_the_table_has_a_value_in_the_engine():
    link, src, dst = pair()
    link.run()
    for member in src.profile.migration_info:
        src._info_value(member.name, src.source, "completed")  # raises if unknown


def test_each_bitmap_sync_counts_and_emits_the_spec_event():
    """The profile's bitmap_sync (migration_bitmap_sync): every sync adds one
    to its counter, and with its capability on emits its event with that
    count, so the events number 1, 2, ... up to the final counter."""
    sync = load_profile("qemu-7.2").bitmap_sync
    link, src, dst = pair(caps=(sync.event_cap,))
    seen = []
    src.subscribe(lambda e: seen.append(e) if e["event"] == sync.event else None)
    link.run()
    src.flush_events(30)
    info = src.query_migrate()
    assert info["status"] == "completed"
    count = info["ram"][sync.counter]
    assert count >= 2  # setup's, and the completion's at least
    assert [e["data"][sync.event_member] for e in seen] == list(range(1, count + 1))


def test_without_the_capability_a_sync_emits_nothing():
    sync = load_profile("qemu-7.2").bitmap_sync
    link, src, dst = pair()
    seen = []
    src.subscribe(lambda e: seen.append(e) if e["event"] == sync.event else None)
    link.run()
    src.flush_events(30)
    assert src.query_migrate()["ram"][sync.counter] >= 2 and seen == []
