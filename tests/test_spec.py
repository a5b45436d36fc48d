"""The spec profiles: complete, consistent, and patched as declared."""
import pytest

from livemig.errors import SpecError
from livemig.spec import CURRENT, check_profile, load_profile, profile_names
from livemig.spec.diff import diff_profiles
from livemig.spec.loader import _apply_patch
from livemig.spec.schema import Patch, Status


@pytest.mark.parametrize("name", profile_names())
def test_profile_is_consistent(name):
    assert check_profile(load_profile(name)) == []


def test_7_2_statuses_in_qemu_enum_order():
    # facts §1.1: the C value is the position in qapi/migration.json
    p = load_profile("qemu-7.2")
    assert p.status_names == (
        "none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
        "postcopy-paused", "postcopy-recover", "completed", "failed", "colo",
        "pre-switchover", "device", "wait-unplug")


def test_7_2_has_21_capabilities_3_0_has_16():
    assert len(load_profile("qemu-7.2").capabilities) == 21
    assert len(load_profile("qemu-3.0").capabilities) == 16


def test_every_row_of_both_sides_names_known_states():
    for p in (load_profile(n) for n in profile_names()):
        for row in p.transitions:
            assert p.sources_of(row) <= set(p.status_names), row.id
            assert row.new is None or row.new in p.status_names


def test_wildcard_rows_are_marked_as_reading_the_state():
    p = load_profile("qemu-7.2")
    assert p.transition("src.postcopy_pause").old == CURRENT
    assert p.transition("src.postcopy_pause").reads_state
    assert p.transition("src.cancel").retry and p.transition("src.cancel").reads_state
    assert not p.transition("src.thread.active").reads_state


def test_event_only_row_is_declared_for_7_2_incoming_setup():
    row = load_profile("qemu-7.2").transition("dst.incoming.setup_event")
    assert row.event_only and row.emits == "setup" and not row.event_needs_cap


def test_diff_3_0_to_7_2_shows_the_known_changes():
    diffs = {d.table: d for d in diff_profiles(load_profile("qemu-3.0"), load_profile("qemu-7.2"))}
    assert "wait-unplug" in diffs["statuses"].added
    assert "postcopy-ram.compress" in diffs["cap_rules"].removed
    assert "src.cancel" in diffs["transitions"].changed
    assert diffs["terminal"].empty


def test_profile_diff_with_itself_is_empty():
    p = load_profile("qemu-7.2")
    assert all(d.empty for d in diff_profiles(p, p))


def test_patch_refuses_silent_drift():
    base = (Status("none", 0), Status("setup", 1))
    with pytest.raises(SpecError, match="cannot remove 'gone'"):
        _apply_patch("x", "STATUSES", base, Patch(remove=("gone",)))
    with pytest.raises(SpecError, match="cannot add 'setup'"):
        _apply_patch("x", "STATUSES", base, Patch(add=(Status("setup", 1),)))
    with pytest.raises(SpecError, match="cannot replace 'gone'"):
        _apply_patch("x", "STATUSES", base, Patch(replace=(Status("gone", 1),)))
    out = _apply_patch("x", "STATUSES", base, Patch(add=(Status("mid", 9),), after="none"))
    assert [s.name for s in out] == ["none", "mid", "setup"]


def test_unknown_profile_names_the_known_ones():
    with pytest.raises(SpecError, match="qemu-7.2"):
        load_profile("qemu-9.9")


def test_consistency_check_catches_a_bad_row():
    import dataclasses
    p = load_profile("qemu-7.2")
    bad_row = dataclasses.replace(p.transitions[0], id="bad", new="nowhere")
    broken = dataclasses.replace(p, transitions=p.transitions + (bad_row,))
    assert any("unknown new status 'nowhere'" in x for x in check_profile(broken))
