"""What a tool that probes QEMU sees from livemig: query-qmp-schema,
query-commands, query-version, query-name and the human monitor, compared
with QEMU 7.2's answers recorded in tests/data/qemu72_monitor.json (by
``python -m livemig.conformance.ground_truth_monitor``)."""
import json
import re
from pathlib import Path

import pytest

from livemig.conformance.fakelink import FakeLink
from livemig.core.introspect import schema_info, shape, same_shape
from livemig.engine.hmp import parse_c_uint, parse_size
from livemig.engine.vm import VM
from livemig.spec import load_profile
from livemig.spec.qapi import qapi_schema

RECORD = json.loads((Path(__file__).parent / "data" / "qemu72_monitor.json").read_text())
PROFILE = load_profile("qemu-7.2")
RAM = 1 << 20

#: lines whose text cannot be QEMU's, and why (each checked on its own below)
NOT_QEMUS = {
    "info version": "livemig says its profile's version and its own package name",
    "info status": "QEMU -S is in prelaunch; livemig's paused VM is 'paused'",
}


def _vm(**kw):
    return VM(ram_size=RAM, vcpu_thread=False, transport=FakeLink().transport("x"),
              start_paused=True, **kw)


def _partial(masks):
    types = qapi_schema(PROFILE)[0]
    return frozenset(masks[n] for n, t in types.items()
                     if getattr(t, "partial", False) and n in masks)


def test_every_command_and_event_has_qemus_shape():
    ours, masks = schema_info(PROFILE)
    roots = [e["name"] for e in ours if e["meta-type"] in ("command", "event")]
    assert len(roots) == 29
    for name in roots:
        diff = same_shape(shape(ours, name, _partial(masks)), shape(RECORD["schema"], name), name)
        assert diff is None, diff


def test_a_changed_status_table_changes_the_schema():
    """MigrationStatus is the profile's statuses: the 3.0 profile (no
    wait-unplug) is not QEMU 7.2's."""
    ours, masks = schema_info(load_profile("qemu-3.0"))
    diff = same_shape(shape(ours, "query-migrate", _partial(masks)),
                      shape(RECORD["schema"], "query-migrate"))
    assert diff is not None and "wait-unplug" in diff


def test_schema_entries_are_well_formed_and_names_masked():
    ours, masks = schema_info(PROFILE)
    names = [e["name"] for e in ours]
    assert len(names) == len(set(names))
    referenced = set()
    for e in ours:
        for key in ("arg-type", "ret-type", "element-type"):
            if key in e:
                referenced.add(e[key])
        referenced.update(m["type"] for m in e.get("members", []) if "type" in m)
        referenced.update(v["type"] for v in e.get("variants", []))
    assert referenced <= set(names)
    assert "MigrationStatus" not in names and masks["MigrationStatus"] in names


def test_query_commands_are_qemus_plus_livemigs_own():
    vm = _vm()
    ours = [c["name"] for c in vm.execute("query-commands")]
    qemu = set(RECORD["query-commands"])
    assert {n for n in ours if not n.startswith("x-livemig-")} <= qemu
    assert {"query-qmp-schema", "human-monitor-command", "migrate"} <= set(ours)
    for name in ours:  # each one listed runs (not CommandNotFound)
        assert name in vm.COMMANDS or name == "qmp_capabilities"


def test_query_version_and_name_have_qemus_shape():
    vm = _vm()
    version, qemu = vm.execute("query-version"), RECORD["query-version"]
    assert set(version) == set(qemu) and set(version["qemu"]) == set(qemu["qemu"])
    assert (version["qemu"]["major"], version["qemu"]["minor"]) == (7, 2)
    assert vm.execute("query-name") == RECORD["query-name"] == {}
    assert _vm(name="guest1").execute("query-name") == RECORD["query-name with -name guest1"]
    assert (_vm(name="guest1").execute("human-monitor-command", {"command-line": "info name"})
            == RECORD["info name with -name guest1"])


def test_every_monitor_line_prints_what_qemu_printed():
    vm = _vm()
    compared = 0
    for line, want in RECORD["script"]:
        got = vm.execute("human-monitor-command", {"command-line": line})
        if line in NOT_QEMUS:
            continue
        assert got == want, f"{line!r}: livemig {got!r}, QEMU {want!r}"
        compared += 1
    assert compared >= 140


def test_info_version_and_status_keep_qemus_format():
    vm = _vm()
    hmp = lambda line: vm.execute("human-monitor-command", {"command-line": line})  # noqa: E731
    assert hmp("info version") == "7.2.0livemig\r\n"
    assert hmp("info status") == "VM status: paused\r\n"
    vm.execute("cont")
    assert hmp("info status") == "VM status: running\r\n"


def test_a_rejected_monitor_line_changes_nothing():
    vm = _vm()
    before = (vm.execute("query-migrate-parameters"), vm.execute("query-migrate-capabilities"))
    for line in ("migrate_set_parameter compress-level 10", "migrate_set_parameter max-bandwidth abc",
                 "migrate_set_capability xbzrle maybe", "migrate_set_parameter bogus 1"):
        assert vm.execute("human-monitor-command", {"command-line": line}) != ""
    assert (vm.execute("query-migrate-parameters"),
            vm.execute("query-migrate-capabilities")) == before


@pytest.mark.parametrize("text,shift,want", [
    ("1K", 0, 1024), ("1.5K", 0, 1536), ("1.5", 0, None), ("1.5", 20, 3 << 19),
    ("10", 20, 10 << 20), ("16E", 0, None), ("8E", 0, 1 << 63), ("-1", 0, None),
    ("0x10", 0, 16), ("abc", 0, None), ("1Q", 0, None)])
def test_sizes_read_as_qemu_strtosz(text, shift, want):
    assert parse_size(text, shift) == want


@pytest.mark.parametrize("text,want", [
    ("3", 3), ("0x3", 3), ("010", 8), ("-1", (1 << 64) - 1), ("1K", None), ("", None)])
def test_integers_read_as_strtoull(text, want):
    assert parse_c_uint(text) == want


# ------------------------------------------------------------ info migrate
def _skeleton(text):
    """The lines with numbers and socket paths blanked: what must be QEMU's
    when the guests (and so the counts) differ."""
    text = re.sub(r"unix:\S+", "unix:PATH", text)
    text = re.sub(r"'[^']*/[^']*'", "'PATH'", text)
    return re.sub(r"\d+(\.\d+)?", "N", text)


def _hmp(vm, line):
    return vm.execute("human-monitor-command", {"command-line": line})


def _steps(link, done, limit=5000):
    for i in range(limit):
        if done() or link.step(i) is None:
            break
    assert done()


def test_info_migrate_through_a_migration_has_qemus_lines():
    rec = RECORD["migrations"]
    link = FakeLink()
    src, dst = link.vm_pair(ram=4 * RAM, caps=("xbzrle",), seed=3)
    sock = "unix:/hmp/mig.sock"
    assert _hmp(dst, f"migrate_incoming {sock}") == ""
    assert _skeleton(_hmp(dst, "info migrate")) == _skeleton(rec["destination listening"])
    assert _hmp(src, f"migrate {sock}") == rec["migrate unix (no -d)"]
    _steps(link, lambda: src.src_cell.state == "active" and dst.dst_cell.state == "active")
    assert _skeleton(_hmp(src, "info migrate")) == _skeleton(rec["source active"])
    assert _skeleton(_hmp(dst, "info migrate")) == _skeleton(rec["destination active"])
    link.run()
    assert src.src_cell.state == "completed"
    assert _skeleton(_hmp(dst, "info migrate")) == _skeleton(rec["destination completed"])
    # a livemig guest dirties pages while it runs: QEMU's idle one did not
    # send precopy bytes after the first pass; both have the same lines
    assert _skeleton(_hmp(src, "info migrate")) == _skeleton(rec["source completed"])


def test_info_migrate_after_a_failed_and_a_cancelled_migration():
    rec = RECORD["migrations"]
    link = FakeLink()
    src, dst = link.vm_pair(ram=4 * RAM, seed=4)
    assert _hmp(src, "migrate -d unix:/hmp/missing.sock") == rec["migrate to a missing socket (-d)"]
    link.run()
    assert src.src_cell.state == "failed"
    assert _skeleton(_hmp(src, "info migrate")) == _skeleton(rec["source failed"])

    link = FakeLink()
    src, dst = link.vm_pair(ram=4 * RAM, listen="unix:/hmp/mig2.sock", seed=5)
    _hmp(src, "migrate -d unix:/hmp/mig2.sock")
    _steps(link, lambda: src.src_cell.state == "active")
    assert _hmp(src, "migrate_cancel") == rec["migrate_cancel while active"]
    link.run()
    assert src.src_cell.state == "cancelled"
    assert _skeleton(_hmp(src, "info migrate")) == _skeleton(rec["source cancelled"])
