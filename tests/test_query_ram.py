"""x-livemig-query-ram: one entry per RAM block, its used length and the
sha256 of its content (issue 12: RAM compared with a peer after a migration)."""
import hashlib

import pytest

from livemig.conformance.fakelink import FakeLink
from livemig.errors import MigrationError

RAM = 2 << 20


def test_query_ram_lists_every_block_with_its_hash():
    link = FakeLink()
    src, _dst = link.vm_pair(ram=RAM)
    blocks = src.execute("x-livemig-query-ram")
    assert [b["id"] for b in blocks] == list(src.guest.blocks)
    for entry in blocks:
        block = src.guest.blocks[entry["id"]]
        assert entry["length"] == block.used_length
        assert entry["sha256"] == hashlib.sha256(bytes(block.bytes[:block.used_length])).hexdigest()
    link.close()


def test_hashes_agree_after_a_migration_and_differ_before():
    link = FakeLink()
    src, dst = link.vm_pair(ram=RAM, listen="unix:/fake/ram.sock")
    assert src.execute("x-livemig-query-ram") != dst.execute("x-livemig-query-ram")
    src.execute("migrate", {"uri": "unix:/fake/ram.sock"})
    link.run()
    assert src.src_cell.state == "completed" == dst.dst_cell.state, src.query_migrate()
    assert src.execute("x-livemig-query-ram") == dst.execute("x-livemig-query-ram")
    link.close()


def test_query_ram_takes_no_argument():
    link = FakeLink()
    src, _dst = link.vm_pair(ram=RAM)
    with pytest.raises(MigrationError, match="Parameter 'x' is unexpected"):
        src.execute("x-livemig-query-ram", {"x": 1})
    link.close()


def test_read_ram_hashes_a_range_and_refuses_what_is_outside_a_block():
    import hashlib

    import pytest

    from livemig.engine.vm import VM
    from livemig.errors import MigrationError
    vm = VM(ram_size=4 << 20, seed=2, vcpu_thread=False)
    try:
        block = vm.guest.blocks["pc.ram"]
        got = vm.execute("x-livemig-read-ram", {"id": "pc.ram", "offset": 4096, "length": 100})
        assert got == {"sha256": hashlib.sha256(block.bytes[4096:4196]).hexdigest(),
                       "requested": 0}  # not a postcopy destination: nothing to fault
        for args, text in (
                ({"id": "nope", "offset": 0, "length": 1}, "Parameter 'id' expects a RAM block"),
                ({"id": "pc.ram", "offset": 4 << 20, "length": 1},
                 "Parameter 'offset' expects an offset in the range of 0 to 4194303"),
                ({"id": "pc.ram", "offset": 0, "length": 0},
                 "Parameter 'length' expects a length in the range of 1 to 4194304, got 0"),
                ({"id": "pc.ram", "offset": 4096, "length": 4 << 20},
                 "Parameter 'length' expects a length in the range of 1 to 4190208")):
            with pytest.raises(MigrationError) as exc:
                vm.execute("x-livemig-read-ram", args)
            assert exc.value.message.startswith(text), exc.value.message
    finally:
        vm.close()
