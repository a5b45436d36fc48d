"""A small harness that runs a real ``qemu-system-x86_64`` and talks QMP to it.

Theory of operation
-------------------
:class:`QemuVM` starts one QEMU process with a QMP server on a unix socket in
a private temporary directory, connects to it with the QEMU project's own
client (``qemu.qmp.QMPClient``) and offers a synchronous API on top of it:

* :meth:`QemuVM.execute` returns ``("ok", result)`` or
  ``("error", error_class, desc)`` -- QEMU's answer as data, never an
  exception, so a caller can record or compare it;
* :meth:`QemuVM.command` is the strict variant that raises :class:`QMPCallError`;
* :meth:`QemuVM.wait_event` / :meth:`QemuVM.drain_events` read QMP events
  (``MIGRATION``, ``STOP``, ...) with a bounded timeout;
* :meth:`QemuVM.wait_for` polls a QMP query until a predicate holds, with a
  bounded timeout (used instead of any fixed sleep).

A VM is a *source* (started normally, runstate ``running``) or a
*destination* (started with ``-incoming defer``, runstate ``inmigrate``).
The process is always killed when the context manager exits, also on errors.

The async client runs on a private event loop owned by the VM object; every
public call runs that loop until the call is done.  A ``QemuVM`` is therefore
meant to be used from one thread.

    >>> with QemuVM(role="source") as vm:          # doctest: +SKIP
    ...     vm.execute("query-status")
    ('ok', {'status': 'running', 'singlestep': False, 'running': True})

Safety: machines are small (``-m 64``, ``-nodefaults``, ``-display none``,
TCG) and only unix sockets are used.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Optional, Sequence, Union

from qemu.qmp import ExecInterruptedError, ExecuteError, QMPClient, StateError
from qemu.qmp.events import EventListener

Role = Literal["source", "destination"]

#: ``("ok", result)`` or ``("error", error_class, desc)``
Reply = Union[tuple[Literal["ok"], Any], tuple[Literal["error"], str, str]]

DEFAULT_BINARY = "qemu-system-x86_64"
DEFAULT_MACHINE_ARGS: tuple[str, ...] = (
    "-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none", "-m", "64",
    "-serial", "none", "-monitor", "none",
)


class QemuVMError(RuntimeError):
    """The QEMU process could not be started, reached or talked to."""


class QMPCallError(QemuVMError):
    """A command sent with :meth:`QemuVM.command` failed; carries QEMU's error."""

    def __init__(self, cmd: str, error_class: str, desc: str) -> None:
        super().__init__(f"{cmd}: {error_class}: {desc}")
        self.cmd = cmd
        self.error_class = error_class
        self.desc = desc


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
    _tmp: Optional[tempfile.TemporaryDirectory] = field(default=None, init=False, repr=False)
    _loop: Optional[asyncio.AbstractEventLoop] = field(default=None, init=False, repr=False)
    _qmp: Optional[QMPClient] = field(default=None, init=False, repr=False)
    _listener: Optional[EventListener] = field(default=None, init=False, repr=False)

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
            self._loop = asyncio.new_event_loop()
            self._connect()
        except BaseException:
            self.close()
            raise
        return self

    def _connect(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last_error: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise QemuVMError(f"QEMU exited with status {self.proc.returncode} before QMP "
                                  f"was reachable: {self.log_tail()}")
            if os.path.exists(self.qmp_path):
                client = QMPClient(self.name)
                # The socket can exist a moment before QEMU listens on it; qemu.qmp
                # logs each refused attempt at ERROR level.  Quiet while polling.
                client.logger.setLevel(logging.CRITICAL)
                try:
                    self._run(client.connect(self.qmp_path), timeout=max(
                        0.1, deadline - time.monotonic()))
                except (OSError, asyncio.TimeoutError, Exception) as exc:  # noqa: BLE001
                    last_error = exc
                else:
                    client.logger.setLevel(logging.NOTSET)
                    self._qmp = client
                    self._listener = EventListener()
                    client.register_listener(self._listener)
                    return
            # Poll for the socket: QEMU creates it early, before the machine is up.
            time.sleep(0.02)
        raise QemuVMError(f"QMP socket {self.qmp_path} not reachable within "
                          f"{self.start_timeout}s (last error: {last_error!r}); "
                          f"log: {self.log_tail()}")

    def close(self) -> None:
        """Disconnect and kill the QEMU process (idempotent)."""
        if self._qmp is not None and self._loop is not None:
            try:
                self._run(self._qmp.disconnect(), timeout=5)
            except Exception:  # noqa: BLE001 - the process is killed below anyway
                pass
            self._qmp = None
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
        if self._loop is not None:
            # Let the client's background tasks finish or cancel them, so
            # closing the loop leaves nothing pending behind.
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.close()
            self._loop = None
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
    def _run(self, coro: Any, timeout: Optional[float] = None) -> Any:
        if self._loop is None:
            raise QemuVMError("VM not started")
        return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))

    def execute(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Reply:
        """Run one QMP command; QEMU's answer as data.

        ``args`` is sent as the raw JSON ``arguments`` object (``None``: no
        ``arguments`` member at all).  Returns ``("ok", result)`` or
        ``("error", error_class, desc)``.  Raises :class:`QemuVMError` when
        QEMU does not answer (connection lost, or no reply within
        ``command_timeout``).
        """
        if self._qmp is None:
            raise QemuVMError("VM not connected")
        try:
            result = self._run(self._qmp.execute(cmd, args), timeout=self.command_timeout)
        except ExecuteError as exc:
            err = exc.received["error"]  # the raw reply: exact class and text
            return ("error", err["class"], err["desc"])
        except (ExecInterruptedError, StateError, ConnectionError) as exc:
            status = self.proc.poll() if self.proc is not None else None
            raise QemuVMError(f"{cmd}: QMP connection lost ({exc!r}); QEMU exit status "
                              f"{status}; log: {self.log_tail()}") from exc
        except asyncio.TimeoutError as exc:
            raise QemuVMError(f"{cmd}: no reply within {self.command_timeout}s (QEMU's "
                              f"monitor is blocked?)") from exc
        return ("ok", result)

    def command(self, cmd: str, args: Optional[Mapping[str, Any]] = None) -> Any:
        """Run one QMP command and return its result; raise :class:`QMPCallError` on error."""
        reply = self.execute(cmd, args)
        if reply[0] == "error":
            raise QMPCallError(cmd, reply[1], reply[2])
        return reply[1]

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
            time.sleep(interval)

    # ------------------------------------------------------------ events
    def wait_event(self, name: str, timeout: float = 30.0,
                   match: Optional[Callable[[Mapping[str, Any]], bool]] = None) -> dict:
        """The next QMP event called ``name`` (and matching ``match``); others are dropped."""
        if self._listener is None:
            raise QemuVMError("VM not connected")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise QemuVMError(f"no {name} event within {timeout}s")
            try:
                event = self._run(self._listener.get(), timeout=left)
            except asyncio.TimeoutError:
                raise QemuVMError(f"no {name} event within {timeout}s") from None
            if event.get("event") == name and (match is None or match(event.get("data", {}))):
                return dict(event)

    def drain_events(self) -> list[dict]:
        """Every event received so far and not yet read."""
        if self._listener is None or self._loop is None:
            return []
        # Let the reader task deliver what is already on the socket.
        self._loop.run_until_complete(asyncio.sleep(0))
        events = []
        while not self._listener.empty():
            events.append(dict(self._loop.run_until_complete(self._listener.get())))
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
