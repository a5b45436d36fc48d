"""The migration-test guest: a boot sector that dirties memory, and how to boot it.

``dirty.S`` (livemig's own assembly; see its header for the behaviour) is
built by ``build.py`` into ``dirty.img``, which is committed.  QEMU boots it
as a raw disk; it prints ``A`` on the first serial port once in protected
mode, then increments the first byte of every 4 KiB page in [1 MiB, 100 MiB)
forever, printing ``B`` after every 64 sweeps.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

HERE = Path(__file__).resolve().parent
IMAGE = HERE / "dirty.img"
SOURCE = HERE / "dirty.S"

#: The address range the guest dirties, and its page size (facts §8).
START_ADDRESS = 1 << 20
END_ADDRESS = 100 << 20
PAGE_SIZE = 4096
#: Guest RAM the tests give the VM (QEMU's own x86 migration tests use 150M).
RAM = "150M"


def image_path() -> Path:
    """The committed boot-sector image."""
    return IMAGE


def machine_args(serial: str, image: Optional[Path] = None, ram: str = RAM,
                 extra: tuple[str, ...] = ()) -> list[str]:
    """QEMU arguments that boot the guest (TCG, ``pc``), serial to chardev spec ``serial``.

    ``serial`` is a ``-serial`` value such as ``file:/tmp/x.log`` or ``none``
    (the destination of a migration never prints ``A``).
    """
    return ["-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
            "-m", ram, "-serial", serial, "-monitor", "none",
            "-drive", f"file={image or IMAGE},format=raw,if=ide,snapshot=on", *extra]


def wait_serial(path: Path, wanted: str, timeout: float,
                alive: Optional[Callable[[], bool]] = None) -> str:
    """Wait until the serial log ``path`` contains ``wanted`` (bounded).

    Returns the log text.  Raises TimeoutError with what was seen, or
    RuntimeError when ``alive()`` says the process died, or ValueError when
    the guest printed a character other than ``A`` and ``B`` (QEMU's own
    test asserts the same).
    """
    deadline = time.monotonic() + timeout
    text = ""
    while True:
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        odd = set(text) - {"A", "B"}
        if odd:
            raise ValueError(f"guest printed unexpected characters {sorted(odd)!r}: {text[-80:]!r}")
        if wanted in text:
            return text
        if alive is not None and not alive():
            raise RuntimeError(f"QEMU exited before the guest printed {wanted!r}; saw {text!r}")
        if time.monotonic() >= deadline:
            raise TimeoutError(f"guest did not print {wanted!r} within {timeout}s; saw {text!r}")
        time.sleep(0.05)
