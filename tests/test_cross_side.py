"""The catalogue's cross-side entry (issue 11): with a return path, the
source reaches completed only after the destination did, in the same
migration.  The checker must catch a false success and accept real runs."""
from __future__ import annotations

from livemig.conformance.runtime import CrossSideChecker
from livemig.core.cell import Attempt
from livemig.spec import load_profile
from livemig.spec.invariants import CROSS_SIDE

P = load_profile("qemu-7.2")
RP = {"return-path": True}


def _a(t, side, row_id):
    row = P.transition(row_id)
    old = sorted(P.sources_of(row))[0] if P.sources_of(row) else row.new
    return Attempt(t, side, row_id, old, row.new, True)


def _run(src, dst, caps=RP):
    c = CrossSideChecker(P)
    c.feed(dst, caps)
    c.feed(src, caps)
    c.check()
    return c.violations


SETUP = "src.migrate_init.setup"


def test_entry_is_spec_data_about_rows_that_exist():
    (inv,) = CROSS_SIDE
    for profile in ("qemu-3.0", "qemu-7.2"):
        p = load_profile(profile)
        assert {inv.state, inv.peer_state, inv.start} <= set(p.status_names)
        assert set(inv.caps) <= {c.name for c in p.capabilities}


def test_false_success_is_caught():
    src = [_a(1.0, "source", SETUP), _a(2.0, "source", "src.completion.completed")]
    assert _run(src, [])  # the destination never completed
    # a destination completion of an earlier migration does not count
    dst_old = [_a(0.5, "destination", "dst.bh.completed")]
    assert _run(src, dst_old)
    # nor one after the source's
    assert _run(src, [_a(2.5, "destination", "dst.bh.completed")])


def test_real_order_passes_and_no_return_path_is_not_judged():
    src = [_a(1.0, "source", SETUP), _a(2.0, "source", "src.completion.completed")]
    assert not _run(src, [_a(1.9, "destination", "dst.bh.completed")])
    assert not _run(src, [], caps={})  # without a return path QEMU cannot know


def test_pending_until_final():
    c = CrossSideChecker(P)
    c.feed([_a(1.0, "source", SETUP), _a(2.0, "source", "src.completion.completed")], RP)
    c.check(final=False)
    assert not c.violations
    c.feed([_a(1.5, "destination", "dst.bh.completed")], RP)
    c.check(final=True)
    assert not c.violations
