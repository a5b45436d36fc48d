"""A VM process (``livemig vm --qmp`` or ``qemu-system-x86_64 -qmp``) with a
synchronous qemu.qmp client, for the demo and the benchmarks.

:class:`QMPProcess` starts ``argv``, waits (bounded) for the QMP socket to
appear, connects with qemu.qmp on a private event loop, and offers
:meth:`~QMPProcess.cmd` (raises qemu.qmp's ExecuteError with QEMU's text on
a refusal), :meth:`~QMPProcess.wait_status` (bounded) and
:meth:`~QMPProcess.close` (quit, then kill if it does not exit).
"""
from __future__ import annotations

import asyncio
import os
import subprocess
import time
from typing import Any, Iterable

POLL = 0.05  # seconds between looks at the socket path / the status


class QMPProcess:
    """One started process and its QMP connection."""

    def __init__(self, argv: list[str], qmp_path: str, *, name: str = "livemig",
                 timeout: float = 60.0, command_timeout: float = 120.0) -> None:
        from qemu.qmp import QMPClient  # the engine does not need qemu.qmp otherwise

        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.command_timeout = command_timeout
        self.loop = asyncio.new_event_loop()
        deadline = time.monotonic() + timeout
        while not os.path.exists(qmp_path):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.poll() is not None else b""
                self.proc.kill()
                raise RuntimeError(f"{name} did not start: {err!r}")
            time.sleep(POLL)
        self.qmp = QMPClient(name)
        self.loop.run_until_complete(asyncio.wait_for(self.qmp.connect(qmp_path), timeout))

    def cmd(self, name: str, **args: Any) -> Any:
        return self.loop.run_until_complete(
            asyncio.wait_for(self.qmp.execute(name, args or None), self.command_timeout))

    def wait_status(self, wanted: Iterable[str], timeout: float = 600.0) -> dict:
        """query-migrate until its status is one of ``wanted`` (bounded)."""
        names = set(wanted)
        deadline = time.monotonic() + timeout
        while True:
            info = self.cmd("query-migrate")
            if info.get("status") in names:
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"status never reached {sorted(names)}: {info.get('status')}")
            time.sleep(POLL)

    def close(self, timeout: float = 20.0) -> None:
        try:
            self.cmd("quit")
        except Exception:  # it may have exited already (a failed destination)
            pass
        try:
            self.loop.run_until_complete(asyncio.wait_for(self.qmp.disconnect(), 5))
        except Exception:
            pass
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.loop.close()
