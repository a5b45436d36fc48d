"""A VM process (``livemig vm --qmp`` or ``qemu-system-x86_64 -qmp``) and its QMP
connection, for the demo and the benchmarks.

Job: start ``argv``, connect the engine's synchronous QMP client
(:class:`~livemig.engine.qmpclient.SyncQMPClient`) to its QMP socket, and stop
the process again.  Rules: every wait is bounded (connecting, each command,
:meth:`QMPProcess.wait_status`, the exit in :meth:`QMPProcess.close`);
:meth:`QMPProcess.cmd` raises
:class:`~livemig.engine.qmpclient.QMPCommandError` with QEMU's class and text
on a refusal; :meth:`QMPProcess.close` asks the process to ``quit`` and kills
it only if it does not exit.
"""
from __future__ import annotations

import subprocess
import time
from typing import Any, Iterable

from livemig.engine.qmpclient import QMPClientError, SyncQMPClient

POLL = 0.05  # seconds between two query-migrate calls in wait_status


class QMPProcess:
    """One started process and its QMP connection (:attr:`qmp`)."""

    def __init__(self, argv: list[str], qmp_path: str, *, name: str = "livemig",
                 timeout: float = 60.0, command_timeout: float = 120.0) -> None:
        self.name = name
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            self.qmp = SyncQMPClient(qmp_path, name, connect_timeout=timeout,
                                     command_timeout=command_timeout,
                                     alive=lambda: self.proc.poll() is None,
                                     diagnostics=self._diagnostics)
        except BaseException:
            self.proc.kill()
            self.proc.wait(5)
            raise

    def _diagnostics(self) -> str:
        if self.proc.poll() is None:
            return "the process still runs"
        # It has exited, so reading its stderr to the end cannot block.
        err = self.proc.stderr.read() if self.proc.stderr is not None else b""
        return f"exit status {self.proc.returncode}, stderr {err[-2000:]!r}"

    def cmd(self, name: str, **args: Any) -> Any:
        """Run one command with keyword arguments; its result."""
        return self.qmp.command(name, args or None)

    def wait_status(self, wanted: Iterable[str], timeout: float = 600.0) -> dict:
        """query-migrate until its status is one of ``wanted`` (bounded); its info."""
        names = set(wanted)
        deadline = time.monotonic() + timeout
        while True:
            info = self.cmd("query-migrate")
            if info.get("status") in names:
                return info
            if time.monotonic() > deadline:
                raise QMPClientError(f"{self.name}: status never reached {sorted(names)}: "
                               f"{info.get('status')}")
            time.sleep(POLL)  # the engine's status has no event without the events cap

    def close(self, timeout: float = 20.0) -> None:
        """Quit, disconnect, and wait for the exit (killed after ``timeout`` s)."""
        try:
            self.qmp.execute("quit")
        except QMPClientError:  # it may have exited already (a failed destination)
            pass
        self.qmp.close()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
