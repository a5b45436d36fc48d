"""A real QEMU 7.2 as livemig's wire peer (issue 12): QEMU source -> livemig
destination with ``--machine pc-i440fx-7.2``, over unix and tcp, with the
return path; the RAM must be equal on both sides after completion (QEMU's RAM
is a ``memory-backend-file`` with ``share=on``, hashed from the file;
livemig's through ``x-livemig-query-ram``).

Skipped, with the reason, where qemu-system-x86_64 is missing or not 7.2.
"""
from __future__ import annotations

import hashlib
import subprocess

import numpy as np
import pytest
from qemuproc import pc_args, qemu, qemu_log, why_not_qemu_72

from livemig.engine.qmpclient import status_of
from livemig.engine.vm import VM
from livemig.errors import MigrationError, SpecError

MACHINE = "pc-i440fx-7.2"
RAM = 64 << 20
WAIT = 60.0

needs_qemu = pytest.mark.skipif(bool(why_not_qemu_72()), reason=why_not_qemu_72() or "qemu 7.2")


def _wait_end(qmp) -> str:
    """QEMU's migration status once it is completed or failed (bounded)."""
    at = qmp.wait_event(lambda e: status_of(e) in ("completed", "failed"), WAIT)
    return status_of(qmp.events[at])


@needs_qemu
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_qemu_source_to_livemig_destination(tmp_path, transport):
    mem = tmp_path / "ram.bin"
    rng = np.random.default_rng(3)
    content = rng.integers(0, 256, RAM, dtype=np.uint8)
    content[: RAM // 2 : 4096 * 3] = 0  # some zero pages too
    mem.write_bytes(content.tobytes())
    dst = VM(ram_size=RAM, incoming="defer", machine=MACHINE)
    uri = f"unix:{tmp_path}/mig.sock" if transport == "unix" else "tcp:127.0.0.1:0"
    dst.execute("migrate-incoming", {"uri": uri})
    if transport == "tcp":
        uri = dst._listener.connect_uri
    with qemu(tmp_path, pc_args(mem, "ram0") + ["-S"]) as (_proc, qmp):
        qmp.command("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True},
            {"capability": "return-path", "state": True}]})
        qmp.command("cont")  # a running guest: its firmware writes RAM meanwhile
        qmp.command("migrate", {"uri": uri})
        assert _wait_end(qmp) == "completed", (qmp.command("query-migrate"),
                                               dst.dst_cell.state, dst.incoming.error_desc,
                                               qemu_log(tmp_path))
        assert dst.wait_for_status({"completed"}, WAIT, side="destination"), \
            dst.incoming.error_desc
        info = qmp.command("query-migrate")
    try:
        blocks = {b["id"]: b for b in dst.execute("x-livemig-query-ram")}
        # the memory backend's block came with the stream: created as declared
        assert blocks["ram0"]["length"] == RAM
        assert blocks["ram0"]["sha256"] == hashlib.sha256(mem.read_bytes()).hexdigest()
        # QEMU's ROM blocks too (facts §11), and QEMU's 30 device sections kept opaque
        for name in ("pc.bios", "pc.rom", "/rom@etc/acpi/tables"):
            assert name in blocks, sorted(blocks)
        foreign = dst.incoming.decoder.foreign
        assert len(foreign) >= 29 and "cpu" in {s.name for s in foreign}
        assert info["ram"]["normal"] > 0 and info["ram"]["duplicate"] > 0
    finally:
        dst.close()


def test_a_bad_machine_type_names_the_allowed_ones():
    with pytest.raises(SpecError) as exc:
        VM(ram_size=4 << 20, machine="pc-i440fx-9.9")
    assert "unknown machine type 'pc-i440fx-9.9'" in exc.value.message
    assert "pc-i440fx-7.2" in exc.value.message and "livemig-pc" in exc.value.message


def test_the_qemu_30_profile_has_only_livemigs_own_machine():
    with pytest.raises(MigrationError, match="expected one of livemig-pc$"):
        VM(ram_size=4 << 20, profile="qemu-3.0", machine=MACHINE)


@needs_qemu
@pytest.mark.parametrize("transport", ["unix", "tcp"])
def test_livemig_source_to_qemu_destination(tmp_path, transport):
    """livemig (a running, dirtying guest) -> QEMU -incoming defer, with the
    return path: QEMU loads RAM and QEMU's globalstate and completes; its RAM
    (a memory backend named pc.ram, as livemig's block) equals livemig's."""
    mem = tmp_path / "qemu-ram.bin"
    src = VM(ram_size=RAM, machine=MACHINE, workload_rate=5000.0, seed=5)
    with qemu(tmp_path, pc_args(mem, "pc.ram") + ["-incoming", "defer"]) as (_proc, qmp):
        caps = [{"capability": "events", "state": True},
                {"capability": "return-path", "state": True}]
        qmp.command("migrate-set-capabilities", {"capabilities": caps})
        src.execute("migrate-set-capabilities", {"capabilities": caps})
        src.execute("migrate-set-parameters", {"max-bandwidth": 1 << 30})
        uri = f"unix:{tmp_path}/mig.sock" if transport == "unix" else "tcp:127.0.0.1:0"
        qmp.command("migrate-incoming", {"uri": uri})
        if transport == "tcp":
            port = qmp.command("query-migrate")["socket-address"][0]["port"]
            uri = f"tcp:127.0.0.1:{port}"
        src.execute("migrate", {"uri": uri})
        assert src.wait_for_status({"completed", "failed"}, WAIT), src.query_migrate()
        assert src.src_cell.state == "completed", src.query_migrate()
        assert _wait_end(qmp) == "completed", qemu_log(tmp_path)
        qmp.command("stop")  # its RAM file is final from here
    try:
        ours = {b["id"]: b for b in src.execute("x-livemig-query-ram")}
        assert set(ours) == {"pc.ram"}  # a QEMU machine's guest has no livemig block
        assert src.source.stats.dirty_sync_count >= 1
        assert ours["pc.ram"]["sha256"] == hashlib.sha256(mem.read_bytes()).hexdigest()
    finally:
        src.close()


@pytest.mark.parametrize("postcopy", [False, True])
def test_livemig_pair_speaking_a_qemu_machine_type(postcopy):
    """Two livemig VMs with a QEMU machine type (no QEMU needed): the stream
    carries no livemig-private section, QEMU's globalstate and a vmdesc, and
    still migrates precopy and postcopy with the RAM equal."""
    from livemig.conformance.fakelink import FakeLink
    from livemig.engine.vm import VM
    link = FakeLink()
    src = VM(ram_size=2 << 20, seed=4, vcpu_thread=False, machine=MACHINE,
             transport=link.transport("source"))
    dst = VM(ram_size=2 << 20, incoming="defer", vcpu_thread=False, machine=MACHINE,
             transport=link.transport("destination"))
    try:
        if postcopy:
            caps = [{"capability": "postcopy-ram", "state": True}]
            for vm in (src, dst):
                vm.execute("migrate-set-capabilities", {"capabilities": caps})
        dst.execute("migrate-incoming", {"uri": "unix:/fake/q.sock"})
        src.execute("migrate", {"uri": "unix:/fake/q.sock"})
        if postcopy:
            src.execute("migrate-start-postcopy")
        for _ in range(200):
            link.run()
            if src.src_cell.state == "completed" and dst.dst_cell.state == "completed":
                break
            if postcopy:  # the vCPU runs on the destination, pulling what it misses
                dst.guest.step_workload(8)
        assert src.src_cell.state == "completed" == dst.dst_cell.state, src.query_migrate()
        assert set(dst.guest.blocks) == {"pc.ram"}  # no livemig-private block either
        if not postcopy:  # (in postcopy the destination's vCPU wrote on: the check says)
            assert src.execute("x-livemig-query-ram") == dst.execute("x-livemig-query-ram")
        assert dst.guest.check().ok
        assert not link.crashes
        if not postcopy:
            assert dst.incoming.source_runstate == src.guest.run_state_before_stop
    finally:
        link.close()


def test_cli_refuses_an_unknown_machine_in_one_line(tmp_path):
    import sys
    r = subprocess.run([sys.executable, "-m", "livemig", "incoming", f"unix:{tmp_path}/x.sock",
                        "--machine", "bogus"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "livemig: error: unknown machine type 'bogus' for profile qemu-7.2; expected one of "
        "livemig-pc, pc-i440fx-7.2, pc-q35-7.2"]


def test_a_qemu_that_is_not_72_is_skipped_with_the_reason(monkeypatch):
    """Debian 13 ships QEMU 10.0: the tests that compare a live QEMU with the
    qemu-7.2 profile must skip there, saying why, not fail."""
    import livemig.conformance.qemupeer as qemupeer
    monkeypatch.setattr(qemupeer, "qemu_binary", lambda: "/usr/bin/qemu-system-x86_64")
    monkeypatch.setattr(qemupeer, "qemu_version",
                        lambda: "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)")
    assert qemupeer.why_not_qemu_72() == (
        "qemu-system-x86_64 is not 7.2 (the qemu-7.2 profile's version): "
        "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-1)")
    monkeypatch.setattr(qemupeer, "qemu_binary", lambda: None)
    assert qemupeer.why_not_qemu_72() == "qemu-system-x86_64 is not installed"
