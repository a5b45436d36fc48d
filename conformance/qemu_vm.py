"""A small harness that runs a real ``qemu-system-x86_64`` and talks QMP to it.

Theory of operation
-------------------
:class:`QemuVM` starts one QEMU process with a QMP server on a unix socket in
a private temporary directory and connects to it with livemig's one
synchronous QMP client (:class:`livemig.engine.qmpclient.SyncQMPClient`, on
top of the QEMU project's own ``qemu.qmp``).  On top of that client it offers:

* :meth:`QemuVM.execute` returns ``("ok", result)`` or
  ``("error", error_class, desc)`` -- QEMU's answer as data, never an
  exception, so a caller can record or compare it;
* :meth:`QemuVM.command` is the strict variant that raises :class:`QMPCallError`;
* :meth:`QemuVM.wait_event` / :meth:`QemuVM.drain_events` read QMP events
  (``MIGRATION``, ``STOP``, ...) with a bounded timeout;
* :meth:`QemuVM.wait_for` polls a QMP query until a predicate holds, with a
  bounded timeout (used instead of any fixed sleep).

This module's own job is the QEMU process: its command line, its log, and
killing it.  Errors of the connection carry QEMU's exit status and the tail
of its log.

A VM is a *source* (started normally, runstate ``running``) or a
*destination* (started with ``-incoming defer``, runstate ``inmigrate``).
The process is always killed when the context manager exits, also on errors.
A ``QemuVM`` is meant to be used from one thread (its client's rule).

    >>> with QemuVM(role="source") as vm:          # doctest: +SKIP
    ...     vm.execute("query-status")
    ('ok', {'status': 'running', 'singlestep': False, 'running': True})

Safety: machines are small (``-m 64``, ``-nodefaults``, ``-display none``,
TCG) and only unix sockets are used.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence

from livemig.engine.qmpclient import QMPClientError, QMPCommandError, Reply, SyncQMPClient

Role = Literal["source", "destination"]

__all__ = ["DEFAULT_BINARY", "DEFAULT_MACHINE_ARGS", "QMPCallError", "QemuVM", "QemuVMError",
           "Reply", "Role", "qemu_binary", "qemu_version", "start_pair"]

DEFAULT_BINARY = "qemu-system-x86_64"
DEFAULT_MACHINE_ARGS: tuple[str, ...] = (
    "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "64",
    "-serial", "none", "-monitor", "none",
)

#: The QEMU process could not be started, reached or talked to (the client's
#: error: a lost connection or a missed deadline).
QemuVMError = QMPClientError
#: A command sent with :meth:`QemuVM.command` failed; carries ``cmd``,
#: ``error_class`` and ``desc`` (a :class:`QemuVMError`).
QMPCallError = QMPCommandError


def qemu_binary(name: str = DEFAULT_BINARY) -> Optional[str]:
    """The full path of the QEMU binary, or None when it is not installed."""
    return shutil.which(name)


def qemu_version(binary: Optional[str] = None) -> str:
    """The first line of ``qemu-system-x86_64 --version``."""
    path = binary or qemu_binary()
    if path is None:
        raise QemuVMError(f"{DEFAULT_BINARY} is not installed")
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                         check=True)
    return out.stdout.splitlines()[0].strip()


@dataclass
class QemuVM:
    """One QEMU process with a QMP connection.  Use as a context manager.

    Parameters:
      role: ``"source"`` (runs normally) or ``"destination"`` (``-incoming defer``).
      incoming: for a destination, the ``-incoming`` value (default ``"defer"``);
        ``None`` gives a destination-less VM even for role destination.
      extra_args: more command-line arguments (e.g. ``-global migration.x-...``).
      machine_args: replaces :data:`DEFAULT_MACHINE_ARGS` (the machine, RAM size,
        serial and display options) when not ``None``; e.g. to boot a guest
        with ``-m 150M -serial file:LOG -drive file=IMG,format=raw``.
      binary: the QEMU binary (default: ``qemu-system-x86_64`` on ``PATH``).
      start_timeout: seconds to wait for the QMP socket to accept a connection.
      command_timeout: seconds to wait for one QMP reply.
      workdir: directory for the sockets and the log; a private temporary
        directory (removed on exit) when ``None``.
    """

    role: Role = "source"
    incoming: Optional[str] = "defer"
    extra_args: Sequence[str] = ()
    binary: Optional[str] = None
    start_timeout: float = 30.0
    command_timeout: float = 30.0
    workdir: Optional[str] = None
    name: str = "vm"
    machine_args: Optional[Sequence[str]] = None

    proc: Optional[subprocess.Popen] = field(default=None, init=False, repr=False)
    qmp_path: str = field(default="", init=False)
    log_path: str = field(default="", init=False)
    qmp: Optional[SyncQMPClient] = field(default=None, init=False, repr=False)
    _tmp: Optional[tempfile.TemporaryDirectory] = field(default=None, init=False, repr=False)
    # Index in qmp.events of the first event wait_event/drain_events have not read.
    _unread: int = field(default=0, init=False, repr=False)

    # ------------------------------------------------------------ lifecycle
    def argv(self) -> list[str]:
        """The full command line this VM is (or would be) started with."""
        binary = self.binary or qemu_binary()
        if binary is None:
            raise QemuVMError(f"{DEFAULT_BINARY} is not installed")
        base = DEFAULT_MACHINE_ARGS if self.machine_args is None else tuple(self.machine_args)
        args = [binary, *base, "-name", self.name,
                "-qmp", f"unix:{self.qmp_path},server=on,wait=off"]
        if self.role == "destination" and self.incoming is not None:
            args += ["-incoming", self.incoming]
        args += list(self.extra_args)
        return args

    def start(self) -> "QemuVM":
        """Start QEMU and connect QMP; waits (bounded) until QMP answers."""
        if self.proc is not None:
            raise QemuVMError("already started")
        if self.workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="livemig-qemu-")
            self.workdir = self._tmp.name
        self.qmp_path = os.path.join(self.workdir, f"{self.name}-qmp.sock")
        self.log_path = os.path.join(self.workdir, f"{self.name}.log")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.qmp = SyncQMPClient(self.qmp_path, self.name,
                                     connect_timeout=self.start_timeout,
                                     command_timeout=self.command_timeout,
                                     alive=lambda: self.alive, diagnostics=self._diagnostics)
        except BaseException:
            self.close()
            raise
        return self

    def _diagnostics(self) -> str:
        status = self.proc.poll() if self.proc is not None else None
        return f"QEMU exit status {status}; log: {self.log_tail()}"

    def close(self) -> None:
        """Disconnect and kill the QEMU process (idempotent)."""
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> "QemuVM":
        return self if self.proc is not None else self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:  # last resort: never leave a QEMU behind
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    @property
    def alive(self) -> bool:
        """True while the QEMU process runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, limit: int = 2000) -> str:
        """The end of QEMU's stdout/stderr log (for error messages)."""
        try:
            return Path(self.log_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""

    # ------------------------------------------------------------ commands
    def _client(self) -> SyncQMPClient:
        if self.qmp is None:
            raise QemuVMError(f"{self.name}: VM not started")
        return self.qmp

    def execute(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Reply:
        """Run one QMP command; QEMU's answer as data (see :meth:`SyncQMPClient.execute`)."""
        return self._client().execute(cmd, args)

    def command(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Any:
        """Run one QMP command and return its result; raise :class:`QMPCallError` on error."""
        return self._client().command(cmd, args)

    def status(self) -> str:
        """The VM run state (``query-status``'s ``status``: running, inmigrate, ...)."""
        return self.command("query-status")["status"]

    def migration_status(self) -> str:
        """``query-migrate``'s ``status``, or ``"none"`` when it has none yet."""
        return self.command("query-migrate").get("status", "none")

    def wait_for(self, query: Callable[["QemuVM"], Any], predicate: Callable[[Any], bool],
                 timeout: float = 30.0, interval: float = 0.05, what: str = "condition") -> Any:
        """Poll ``query(vm)`` until ``predicate(value)`` holds; return the value.

        Raises :class:`QemuVMError` after ``timeout`` seconds with the last value.
        """
        deadline = time.monotonic() + timeout
        value: Any = None
        while True:
            value = query(self)
            if predicate(value):
                return value
            if time.monotonic() >= deadline:
                raise QemuVMError(f"timed out after {timeout}s waiting for {what}; last: {value!r}")
            time.sleep(interval)  # QEMU has no event for most polled states; bounded above

    # ------------------------------------------------------------ events
    def wait_event(self, name: str, timeout: float = 30.0,
                   match: Optional[Callable[[Mapping[str, Any]], bool]] = None) -> dict:
        """The next unread QMP event called ``name`` (and matching ``match`` on its
        data); the unread events before it are passed over."""
        client = self._client()
        index = client.wait_event(
            lambda e: e.get("event") == name and (match is None or match(e.get("data", {}))),
            timeout, self._unread, what=f"{name} event")
        self._unread = index + 1
        return dict(client.events[index])

    def drain_events(self) -> list[dict]:
        """Every event received so far and not yet read."""
        if self.qmp is None:
            return []
        self.qmp.drain()
        events = [dict(e) for e in self.qmp.events[self._unread:]]
        self._unread = len(self.qmp.events)
        return events


def start_pair(workdir: Optional[str] = None, **kwargs: Any) -> tuple[QemuVM, QemuVM]:
    """Start a source and a ``-incoming defer`` destination (caller closes both)."""
    src = QemuVM(role="source", name="src", workdir=workdir, **kwargs).start()
    try:
        dst = QemuVM(role="destination", name="dst", workdir=workdir, **kwargs).start()
    except BaseException:
        src.close()
        raise
    return src, dst
