"""A ``livemig vm`` process seen through QMP, shaped like the in-process VM the
stateful machine drives.

Theory of operation
-------------------
The stateful machine (``livemig.conformance.stateful``) reads a few things
from its VMs: ``execute``, ``caps``, ``params``, the transition log's
``attempts``, the two status cells' ``state`` and whether it listens.
:class:`ProcessVM` gives exactly those for a real process started by
:class:`~livemig.conformance.scenarios.LivemigLauncher`: commands go over
qemu.qmp (:class:`~livemig.conformance.qmpsession.QMPSession`), capabilities
and parameters are queried, and the log is the process's own NDJSON
transition log (``--log``), read back line by line.  A refused command
raises :class:`RemoteError` carrying QMP's error class and text.

A destination whose load failed exits, as QEMU's does; :attr:`alive` says
so and the machine replaces it with a fresh one.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional

from livemig.conformance.qmpsession import QMPSession, QMPSessionError
from livemig.conformance.scenarios import LivemigLauncher, Process
from livemig.core.cell import Attempt
from livemig.errors import MigrationError
from livemig.spec import load_profile

POLL = 0.02  # seconds between looks at a process's log while waiting


class RemoteError(MigrationError):
    """A command the process refused (``qmp_class`` is QMP's error class)."""

    def __init__(self, qmp_class: str, message: str) -> None:
        super().__init__(message)
        self.qmp_class = qmp_class


class ProcessGone(RuntimeError):
    """The process has exited (a destination whose migration failed)."""

    process_gone = True


class _Log:
    """The process's NDJSON transition log, parsed as it grows."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.attempts: list[Attempt] = []
        self._offset = 0

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self._offset)
                data = fh.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1  # whole lines only: the writer may be mid-line
        for line in data[:end].splitlines():
            if line.strip():
                obj = json.loads(line)
                self.attempts.append(Attempt(obj["t"], obj["side"], obj["id"], obj["old"],
                                             obj["new"], obj["ok"]))
        self._offset += end


@dataclass
class _Cell:
    state: str


class ProcessVM:
    """One ``livemig vm`` process (see the module docstring)."""

    def __init__(self, launcher: LivemigLauncher, role: str, profile: str) -> None:
        self.profile = load_profile(profile)
        self.role = role
        self.process: Process = (launcher.start_source() if role == "source"
                                 else launcher.start_destination("defer"))
        self.session = QMPSession(self.process.qmp_path, name=self.process.name,
                                  alive=self.process.alive)
        assert self.process.log_path is not None
        self._log = _Log(self.process.log_path + ".ndjson")
        self._listener: Optional[str] = None
        self.incoming = None
        self.on_fatal: Optional[Callable[[str], None]] = None
        self._caps: dict[str, bool] = {}
        self._params: dict[str, Any] = {}

    # ------------------------------------------------------------ what the machine reads
    @property
    def alive(self) -> bool:
        return self.process.alive()

    @property
    def log(self) -> _Log:
        self._log.refresh()
        return self._log

    def _state(self, side: str) -> str:
        state = self.profile.status_names[0]
        for a in self.log.attempts:
            if a.ok and a.side == side and not self.profile.transition(a.id).event_only:
                state = a.new
        return state

    @property
    def src_cell(self) -> _Cell:
        return _Cell(self._state("source"))

    @property
    def dst_cell(self) -> _Cell:
        return _Cell(self._state("destination"))

    @property
    def caps(self) -> dict[str, bool]:
        if self.alive:
            try:
                reply = self.session.command("query-migrate-capabilities")
                self._caps = {c["capability"]: bool(c["state"]) for c in reply}
            except QMPSessionError:
                pass  # it exited meanwhile: the last answer stands
        return self._caps

    @property
    def params(self) -> dict[str, Any]:
        if self.alive:
            try:
                self._params = dict(self.session.command("query-migrate-parameters"))
            except QMPSessionError:
                pass
        return self._params

    # ------------------------------------------------------------ commands
    def execute(self, name: str, args: Optional[dict] = None) -> Any:
        if not self.alive:
            raise ProcessGone(f"{self.process.name} has exited")
        try:
            reply = self.session.execute(name, args or {})
        except (QMPSessionError, OSError, EOFError) as exc:
            raise ProcessGone(f"{self.process.name}: {exc}") from None
        if reply[0] == "error":
            raise RemoteError(reply[1], reply[2])
        if name in ("migrate-incoming", "migrate-recover"):
            self._listener = (args or {}).get("uri")
        return reply[1]

    def wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Look at the log until ``done()`` (bounded); True if it came."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done():
                return True
            time.sleep(POLL)
        return done()

    def kill(self) -> None:
        self.process.kill()

    def close(self) -> None:
        self.session.close()
        self.process.kill()
