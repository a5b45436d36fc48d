"""The dirtying guest: the image builds, QEMU runs it, and the memory check works."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from livemig.conformance import guest
from livemig.conformance.guest import build
from livemig.conformance.memcheck import check_guest_ram, first_bytes, qemu_guest_ram

QEMU = shutil.which("qemu-system-x86_64")
needs_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                                "(Debian package qemu-system-x86)")
PAGES = (guest.END_ADDRESS - guest.START_ADDRESS) // guest.PAGE_SIZE


def test_committed_image_is_a_boot_sector():
    data = guest.image_path().read_bytes()
    assert len(data) == 512
    assert data[-2:] == b"\x55\xaa"


@pytest.mark.skipif(not build.tools_available(), reason="GNU binutils (as, ld, objcopy) missing")
def test_committed_image_equals_a_fresh_build(tmp_path):
    assert build.build_image() == guest.image_path().read_bytes(), \
        "dirty.img is stale: run python conformance/guest/build.py"
    out = tmp_path / "x.img"
    done = subprocess.run([sys.executable, str(Path(build.__file__)), "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == guest.image_path().read_bytes()
    done = subprocess.run([sys.executable, str(Path(build.__file__)), "--check", "-o", str(out)],
                          capture_output=True, text=True)
    assert done.returncode == 0


# ---------------------------------------------------------------- memory check
def ram_with(values: np.ndarray) -> bytes:
    """A RAM image of [START, END) whose pages' first bytes are ``values``."""
    ram = np.zeros((PAGES, guest.PAGE_SIZE), dtype=np.uint8)
    ram[:, 0] = values
    ram[:, 1:] = 0xEE  # only first bytes matter
    return ram.tobytes()


def test_memcheck_accepts_uniform_and_one_edge():
    assert check_guest_ram(ram_with(np.full(PAGES, 7)), base=guest.START_ADDRESS).ok
    vals = np.full(PAGES, 8, dtype=np.uint8)
    vals[1000:] = 7  # the incrementer stopped at page 1000
    r = check_guest_ram(ram_with(vals), base=guest.START_ADDRESS)
    assert r.ok and r.edges == 1 and r.first_byte == 8
    vals = np.full(PAGES, 0, dtype=np.uint8)
    vals[5:] = 255  # the edge wraps mod 256
    assert check_guest_ram(ram_with(vals), base=guest.START_ADDRESS).ok


def test_memcheck_finds_stale_pages():
    vals = np.full(PAGES, 8, dtype=np.uint8)
    vals[1000:] = 7
    vals[20000] = 6  # a page that was not re-sent
    r = check_guest_ram(ram_with(vals), base=guest.START_ADDRESS)
    assert not r.ok and r.bad == 2 and len(r.messages) == 2
    assert r.messages[0].startswith("Memory content inconsistency at 4f20000 ")
    vals = np.full(PAGES, 8, dtype=np.uint8)
    vals[100:] = 7
    vals[200:] = 6  # two edges: the second is bad
    assert check_guest_ram(ram_with(vals), base=guest.START_ADDRESS).bad == 1
    vals = np.full(PAGES, 8, dtype=np.uint8)
    vals[300:] = 9  # a step upwards is never allowed
    assert check_guest_ram(ram_with(vals), base=guest.START_ADDRESS).bad == 1


def test_memcheck_reader_and_numpy_views_agree():
    vals = np.full(PAGES, 3, dtype=np.uint8)
    vals[50:] = 2
    vals[60] = 9
    data = ram_with(vals)
    by_bytes = check_guest_ram(data, base=guest.START_ADDRESS)
    by_array = check_guest_ram(np.frombuffer(data, dtype=np.uint8), base=guest.START_ADDRESS)
    by_reader = check_guest_ram(
        lambda addr, n: data[addr - guest.START_ADDRESS:addr - guest.START_ADDRESS + n])
    assert by_bytes == by_array == by_reader
    assert by_bytes.bad == 2
    with pytest.raises(ValueError):
        first_bytes(data, base=0)  # the view does not cover [1 MiB, 100 MiB)


# ---------------------------------------------------------------- in QEMU
@pytest.mark.qemu
@needs_qemu
def test_guest_prints_a_then_b_and_dirties_memory():
    from livemig.conformance.qemu_vm import QemuVM

    with tempfile.TemporaryDirectory(prefix="livemig-guest-") as d:
        log = Path(d) / "serial.log"
        with QemuVM(role="source", name="guest", workdir=d,
                    machine_args=guest.machine_args(f"file:{log}")) as vm:
            text = guest.wait_serial(log, "A", 60, lambda: vm.alive)
            assert text.startswith("A")
            text = guest.wait_serial(log, "B", 120, lambda: vm.alive)
            assert text.startswith("AB")
            guest.wait_serial(log, "BB", 120, lambda: vm.alive)  # it keeps going
            vm.command("stop")
            first = qemu_guest_ram(vm, workdir=d)
            check = check_guest_ram(first, base=guest.START_ADDRESS)
            assert check.ok, check.messages
            assert check.edges <= 1
            # Running again changes the counters: the guest really dirties memory.
            vm.command("cont")
            deadline = time.monotonic() + 60
            while True:
                vm.command("stop")
                later = qemu_guest_ram(vm, workdir=d)
                if later[0] != first[0]:
                    break
                assert time.monotonic() < deadline, "guest stopped incrementing"
                vm.command("cont")
                guest.wait_serial(log, "B" * (log.read_text().count("B") + 1), 60,
                                  lambda: vm.alive)
            assert check_guest_ram(later, base=guest.START_ADDRESS).ok
            # A corrupted copy fails the check.
            bad = bytearray(later)
            bad[guest.PAGE_SIZE * 777] ^= 0x40
            assert not check_guest_ram(bytes(bad), base=guest.START_ADDRESS).ok
