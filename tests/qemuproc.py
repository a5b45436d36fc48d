"""A real qemu-system-x86_64 for tests: is it there and 7.2, and one process
with a QMP client that is always killed at the end."""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator, Sequence

from livemig.conformance.qemupeer import why_not_qemu_72  # noqa: F401 (re-exported)
from livemig.engine.qmpclient import SyncQMPClient

QEMU = shutil.which("qemu-system-x86_64")


def pc_args(mem: Path, backend_id: str) -> list[str]:
    """``-M pc -m 64`` whose RAM is ``mem`` (a shared memory-backend-file, so
    its content can be hashed from the file), the block named ``backend_id``."""
    return ["-M", "pc", "-m", "64", "-display", "none", "-nodefaults",
            "-object", f"memory-backend-file,id={backend_id},size=64M,mem-path={mem},share=on",
            "-machine", f"memory-backend={backend_id}"]


@contextlib.contextmanager
def qemu(workdir: Path, args: Sequence[str]) -> Iterator[tuple[subprocess.Popen, SyncQMPClient]]:
    """QEMU with ``args`` and a QMP socket in ``workdir``; killed on exit."""
    assert QEMU is not None
    sock = workdir / "qemu.qmp"
    log = open(workdir / "qemu.log", "wb")  # QEMU's error_report lines: see qemu_log()
    proc = subprocess.Popen([QEMU, *args, "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        with SyncQMPClient(str(sock), "qemu", connect_timeout=30, command_timeout=30,
                           alive=lambda: proc.poll() is None) as qmp:
            yield proc, qmp
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def record_qemu_stream(workdir: Path) -> tuple[bytes, str, dict]:
    """A real QEMU 7.2 stream of ``-M pc -m 64`` (paused) migrated to
    ``exec:cat > FILE``: (stream bytes, RAM file sha256, query-migrate).
    Skips the calling test, with the reason, without QEMU 7.2."""
    import hashlib

    import pytest
    why = why_not_qemu_72()
    if why:
        pytest.skip(why)
    out, mem = workdir / "stream.mig", workdir / "ram.bin"
    with qemu(workdir, pc_args(mem, "ram0") + ["-S"]) as (_proc, qmp):
        qmp.command("migrate-set-capabilities",
                    {"capabilities": [{"capability": "events", "state": True}]})
        # cat may still be writing when QEMU says completed: it marks its end
        qmp.command("migrate", {"uri": f"exec:cat > {out} && touch {out}.done"})
        qmp.wait_status("completed", 60)
        info = qmp.command("query-migrate")
    deadline = time.monotonic() + 60
    while not (workdir / "stream.mig.done").exists():
        assert time.monotonic() < deadline, "cat did not finish writing the stream"
        time.sleep(0.01)
    return out.read_bytes(), hashlib.sha256(mem.read_bytes()).hexdigest(), info


def qemu_log(workdir: Path) -> str:
    """What the QEMU of :func:`qemu` printed (why it failed a migration)."""
    try:
        return (workdir / "qemu.log").read_text(errors="replace")[-2000:]
    except OSError:
        return ""
