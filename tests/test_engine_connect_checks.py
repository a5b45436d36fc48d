"""migrate_fd_connect's checks on a real channel: a one-way file: cannot carry
the return path, and only socket protocols carry multifd channels (QEMU 7.2
fails both with the rows and texts checked here, verified on a 7.2 binary
for multifd over exec:)."""
import pytest

from livemig.engine.guest import RUN_RUNNING
from livemig.engine.vm import VM


@pytest.mark.parametrize("cap,row,text", [
    ("return-path", "src.fd_connect.rp_failed", "Unable to open return-path for postcopy"),
    ("postcopy-ram", "src.fd_connect.rp_failed", "Unable to open return-path for postcopy"),
    ("multifd", "src.fd_connect.multifd_failed", "multifd is not supported by current protocol"),
])
def test_file_uri_fails_what_needs_more_than_one_channel(tmp_path, cap, row, text):
    vm = VM(ram_size=1 << 20, workload_rate=0.0)
    try:
        vm.execute("migrate-set-capabilities",
                   {"capabilities": [{"capability": cap, "state": True}]})
        vm.execute("migrate", {"uri": f"file:{tmp_path}/stream"})
        assert vm.wait_for_status({"failed"}, timeout=30)
        assert vm.wait_outgoing_done(timeout=30)
        fired = [a.id for a in vm.log.attempts if a.ok and a.side == "source"]
        assert fired == ["src.migrate_init.reset", "src.migrate_init.setup", row]
        assert vm.query_migrate()["error-desc"] == text
        assert vm.guest.run_state == RUN_RUNNING  # the guest never stopped
    finally:
        vm.close()


def test_file_uri_without_those_capabilities_completes(tmp_path):
    vm = VM(ram_size=1 << 20, workload_rate=0.0)
    try:
        vm.execute("migrate", {"uri": f"file:{tmp_path}/stream"})
        assert vm.wait_for_status({"completed"}, timeout=60)
    finally:
        vm.close()
