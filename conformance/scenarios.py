"""Migration scenarios run on two live processes through qemu.qmp.

Theory of operation
-------------------
A :class:`Launcher` starts the two processes of a migration -- a source
running the test guest (:mod:`livemig.conformance.guest`) and a destination
waiting with ``-incoming defer`` -- and returns :class:`Process` handles: a
QMP socket path, a process handle and (optionally) a serial log.  The
scenarios only ever talk QMP to those sockets through
:class:`~livemig.conformance.qmpsession.QMPSession`, so the same scenario code
drives ``qemu-system-x86_64`` (:class:`QemuLauncher`) and, later, ``livemig vm
--qmp`` (a launcher that starts that command line instead).

The driver turns the ``events`` capability on at both ends, starts the
incoming side with ``migrate-incoming`` (so the destination's 7.2 ``setup``
event is seen on QMP), and records:

* every ``MIGRATION`` status each side emitted, in order;
* the error class and text of every misused command (``Run.misuse``);
* whether the guest's memory survived (QEMU's check, :mod:`.memcheck`) where
  a scenario completes.

Every wait is an event (or process exit) with a bounded timeout.  Scenario
names and what they do are in :data:`SCENARIOS`; :func:`run_scenario` runs
one, :func:`record` runs many and writes ``tests/data/qemu72_scenarios.json``.

What the processes must offer (QEMU does; ``livemig vm --qmp`` must):

* QMP on ``Process.qmp_path``: ``migrate-set-capabilities``,
  ``migrate-set-parameters``, ``migrate-incoming``, ``migrate`` (with
  ``resume``), ``migrate_cancel``, ``migrate-continue``,
  ``migrate-start-postcopy``, ``migrate-pause``, ``migrate-recover``,
  ``query-status``, ``stop``; events ``MIGRATION``, ``MIGRATION_PASS`` and
  the destination's ``RESUME`` once its VM runs after the postcopy switch;
* the destination started with ``-incoming defer`` semantics
  (``start_destination("defer")``) and run state ``inmigrate`` until then;
* optional: a serial log with the guest's ``A``/``B`` (``serial_path``;
  ``None`` skips the "guest is running" waits); guest memory for the memory
  check through ``pmemsave``, or a launcher method
  ``check_guest_memory(process, session) -> (ok, messages)`` that runs the
  check its own way (the VM is stopped when it is called).

Only the QMP command and capability names that a QEMU client must spell are
written here; migration status names come from the profile's transition rows
through :func:`status_of` (so a profile that renames a status breaks loudly).
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Protocol

from livemig.conformance import guest
from livemig.conformance.memcheck import check_guest_ram, qemu_guest_ram
from livemig.conformance.qmpsession import QMPSession, QMPSessionError
from livemig.spec import DEFAULT_PROFILE, Profile, load_profile
from livemig.spec.invariants import MODEL

RECORDING = Path(__file__).resolve().parent.parent / "tests" / "data" / "qemu72_scenarios.json"

#: generous: a loaded 2-core machine running TCG
STATE_TIMEOUT = 120.0

#: QEMU's migration-test settings (facts §8)
CONVERGE = {"max-bandwidth": 1 << 30, "downtime-limit": 30000}
NON_CONVERGE = {"max-bandwidth": 30_000_000, "downtime-limit": 1}


def status_of(profile: Profile, row_id: str) -> str:
    """The status a spec row moves to (or emits): scenario waits name rows, not strings."""
    row = profile.transition(row_id)
    return row.new if row.new is not None else row.emits  # type: ignore[return-value]


# ---------------------------------------------------------------- processes
@dataclass
class Process:
    """A started process with a QMP socket (and maybe a serial log)."""

    name: str
    qmp_path: str
    proc: subprocess.Popen
    serial_path: Optional[str] = None
    log_path: Optional[str] = None
    #: a second QMP socket for an observer such as ``livemig monitor``
    monitor_qmp_path: Optional[str] = None

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the process (its own session) and reap it."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)

    def wait_exit(self, timeout: float) -> int:
        """Wait (bounded) for the process to exit; its status."""
        return self.proc.wait(timeout=timeout)

    def log_tail(self, limit: int = 1500) -> str:
        if not self.log_path:
            return ""
        try:
            return Path(self.log_path).read_text(errors="replace")[-limit:]
        except OSError:
            return ""


class Launcher(Protocol):
    """Starts the two ends of a migration; the only thing that differs per implementation."""

    workdir: str

    def start_source(self) -> Process:
        """Start a source VM running the test guest."""

    def start_destination(self, incoming_uri: str) -> Process:
        """Start a destination VM; ``incoming_uri`` is its ``-incoming`` value (``defer``)."""

    def close(self) -> None:
        """Kill every process this launcher started (idempotent)."""


class _Launcher:
    """What both launchers share: a work directory (temporary unless given),
    processes in their own session with output to a log, killed on close."""

    def __init__(self, workdir: Optional[str], ram: str) -> None:
        self._tmp: Optional[tempfile.TemporaryDirectory] = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="livemig-scn-")
            workdir = self._tmp.name
        self.workdir = workdir
        self.ram = ram
        self.processes: list[Process] = []

    def _path(self, name: str, suffix: str) -> str:
        return os.path.join(self.workdir, f"{name}{suffix}")

    def _spawn(self, name: str, argv: list[str], qmp: str, serial: Optional[str] = None,
               monitor: Optional[str] = None) -> Process:
        log = self._path(name, ".log")
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        p = Process(name, qmp, proc, serial, log, monitor)
        self.processes.append(p)
        return p

    def close(self) -> None:
        for p in self.processes:
            p.kill()
        self.processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class QemuLauncher(_Launcher):
    """Starts ``qemu-system-x86_64`` processes booting the test guest."""

    def __init__(self, binary: Optional[str] = None, workdir: Optional[str] = None,
                 ram: str = guest.RAM, monitor_socket: bool = False) -> None:
        self.binary = binary or shutil.which("qemu-system-x86_64")
        if self.binary is None:
            raise FileNotFoundError("qemu-system-x86_64 is not installed")
        super().__init__(workdir, ram)
        self.monitor_socket = monitor_socket

    def _start(self, name: str, extra: list[str]) -> Process:
        qmp = self._path(name, "-qmp.sock")
        serial = self._path(name, "-serial.log")
        argv = [self.binary, *guest.machine_args(f"file:{serial}", ram=self.ram),
                "-name", name, "-qmp", f"unix:{qmp},server=on,wait=off"]
        mon = None
        if self.monitor_socket:
            mon = self._path(name, "-mon.sock")
            argv += ["-qmp", f"unix:{mon},server=on,wait=off"]
        return self._spawn(name, argv + extra, qmp, serial, mon)

    def start_source(self) -> Process:
        return self._start(f"src{len(self.processes)}", [])

    def start_destination(self, incoming_uri: str) -> Process:
        return self._start(f"dst{len(self.processes)}", ["-incoming", incoming_uri])


class LivemigLauncher(_Launcher):
    """Starts ``livemig vm --qmp`` processes (the engine) instead of QEMU.

    The engine's own guest dirties memory (``--workload``); it has no serial
    port, so the "guest is running" waits are skipped.  Each process also
    writes its NDJSON transition log (``Process.log_path`` + ``.ndjson``).
    """

    def __init__(self, workdir: Optional[str] = None, ram: str = guest.RAM,
                 extra: tuple[str, ...] = (), python: Optional[str] = None) -> None:
        import sys

        self.python = python or sys.executable
        super().__init__(workdir, ram)
        self.extra = extra

    def _start(self, name: str, extra: list[str]) -> Process:
        qmp = self._path(name, "-qmp.sock")
        argv = [self.python, "-m", "livemig", "vm", "--qmp", f"unix:{qmp}", "--ram", self.ram,
                "--log", self._path(name, ".log.ndjson"), *self.extra, *extra]
        return self._spawn(name, argv, qmp)

    def start_source(self) -> Process:
        return self._start(f"src{len(self.processes)}", [])

    def start_destination(self, incoming_uri: str) -> Process:
        return self._start(f"dst{len(self.processes)}", ["--incoming", incoming_uri])

    def check_guest_memory(self, process: Process, session: QMPSession) -> tuple[bool, list[str]]:
        """The engine runs QEMU's memory check itself (``x-livemig-check-memory``)."""
        r = session.command("x-livemig-check-memory")
        return bool(r["ok"]), list(r.get("messages", []))


# ---------------------------------------------------------------- results
@dataclass
class Misuse:
    """One command sent where it must fail, and how it failed."""

    side: str
    command: str
    args: dict
    reply: str  # "error" | "ok"
    error_class: str = ""
    desc: str = ""


@dataclass
class ScenarioResult:
    """What one scenario observed."""

    name: str
    source: list[str] = field(default_factory=list)
    destination: list[str] = field(default_factory=list)
    errors: list[Misuse] = field(default_factory=list)
    memory_ok: Optional[bool] = None
    skipped: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    #: the raw QMP events of each side (not part of the recording)
    events: dict[str, list[dict]] = field(default_factory=dict)

    def to_json(self) -> dict:
        d = asdict(self)
        d.pop("seconds")
        d.pop("events")
        if not d["notes"]:
            d.pop("notes")
        if not d["skipped"]:
            d.pop("skipped")
        return d


class ScenarioSkipped(Exception):
    """The host cannot run this scenario (e.g. no userfaultfd for postcopy)."""


@dataclass
class End:
    """One end of the migration: its process and QMP session."""

    process: Process
    qmp: QMPSession

    @property
    def name(self) -> str:
        return self.process.name


class Run:
    """The live state of one scenario: both ends, the profile, what was recorded."""

    def __init__(self, launcher: Launcher, profile: Profile, name: str,
                 timeout: float = STATE_TIMEOUT) -> None:
        self.launcher = launcher
        self.profile = profile
        self.timeout = timeout
        self.result = ScenarioResult(name)
        self.ends: dict[str, End] = {}
        self._uris = 0

    # ------------------------------------------------------------ set-up
    def uri(self) -> str:
        """A fresh unix-socket migration URI in the launcher's directory."""
        self._uris += 1
        return f"unix:{os.path.join(self.launcher.workdir, f'mig{self._uris}.sock')}"

    def _open(self, role: str, process: Process) -> End:
        session = QMPSession(process.qmp_path, process.name, connect_timeout=self.timeout,
                             alive=process.alive)
        end = End(process, session)
        self.ends[role] = end
        return end

    def start(self, destination: bool = True, wait_guest: bool = True) -> None:
        """Start the source (and destination), events capability on both."""
        self._open("source", self.launcher.start_source())
        self.set_caps("source", {MODEL.events_capability: True})
        if destination:
            self._open("destination", self.launcher.start_destination("defer"))
            self.set_caps("destination", {MODEL.events_capability: True})
        src = self.src
        if wait_guest and src.process.serial_path:
            guest.wait_serial(Path(src.process.serial_path), "B", self.timeout,
                              src.process.alive)

    @property
    def src(self) -> End:
        return self.ends["source"]

    @property
    def dst(self) -> End:
        return self.ends["destination"]

    def caps_args(self, caps: dict[str, bool]) -> dict:
        """The capabilities command's arguments; names must be the profile's."""
        unknown = set(caps) - set(self.profile.capability_names())
        if unknown:
            raise ValueError(f"not capabilities of {self.profile.name}: {sorted(unknown)}")
        return {"capabilities": [{"capability": k, "state": v} for k, v in caps.items()]}

    def set_caps(self, side: str, caps: dict[str, bool]) -> None:
        self.ends[side].qmp.command(MODEL.caps_command, self.caps_args(caps))

    def caps(self, side: str, **caps: bool) -> None:
        """Set capabilities (``postcopy_ram=True`` → ``postcopy-ram``) on one side."""
        self.set_caps(side, {k.replace("_", "-"): v for k, v in caps.items()})

    def params(self, side: str, values: dict[str, Any]) -> None:
        unknown = set(values) - {p.name for p in self.profile.parameters}
        if unknown:
            raise ValueError(f"not parameters of {self.profile.name}: {sorted(unknown)}")
        self.ends[side].qmp.command(MODEL.params_command, values)

    def need_postcopy(self) -> None:
        """Turn postcopy-ram on at both ends, or skip when the host has no userfaultfd."""
        reply = self.dst.qmp.execute(MODEL.caps_command, self.caps_args({"postcopy-ram": True}))
        if reply[0] == "error":
            raise ScenarioSkipped(f"destination refuses postcopy-ram ({reply[2]}): "
                                  f"no usable userfaultfd on this host")
        self.caps("source", postcopy_ram=True)

    def incoming(self, uri: Optional[str] = None) -> str:
        uri = uri or self.uri()
        self.dst.qmp.command("migrate-incoming", {"uri": uri})
        return uri

    def migrate(self, uri: str, **extra: Any) -> None:
        self.src.qmp.command("migrate", {"uri": uri, **extra})

    # ------------------------------------------------------------ waits
    def wait(self, side: str, row_id: str, start: int = 0) -> int:
        """Wait for ``side`` to emit the status of spec row ``row_id``; the event index."""
        return self.ends[side].qmp.wait_status(status_of(self.profile, row_id),
                                               self.timeout, start)

    def wait_event(self, side: str, name: str, start: int = 0) -> int:
        return self.ends[side].qmp.wait_event(lambda e: e.get("event") == name, self.timeout,
                                              start, what=f"{name} event")

    def mark(self, side: str) -> int:
        """The index after the events received so far (a cursor for later waits)."""
        q = self.ends[side].qmp
        q.drain()
        return len(q.events)

    def misuse(self, side: str, command: str, args: Optional[dict] = None) -> Misuse:
        """Send a command expected to fail and record QEMU's answer."""
        reply = self.ends[side].qmp.execute(command, args)
        # Recorded without the run's private directory, so runs compare equal.
        shown = {k: v.replace(self.launcher.workdir, "WORKDIR") if isinstance(v, str) else v
                 for k, v in (args or {}).items()}
        m = Misuse(side, command, shown, reply[0],
                   *(reply[1:] if reply[0] == "error" else ()))
        self.result.errors.append(m)
        if reply[0] != "error":
            self.result.notes.append(f"{side} {command} {args or {}} unexpectedly succeeded")
        return m

    def check_destination_memory(self) -> None:
        """QEMU's end-of-test check on the destination: guest runs there, RAM is consistent."""
        dst = self.dst.process
        if dst.serial_path:
            guest.wait_serial(Path(dst.serial_path), "B", self.timeout, dst.alive)
        self.dst.qmp.command("stop")
        hook = getattr(self.launcher, "check_guest_memory", None)
        if hook is not None:
            ok, messages = hook(dst, self.dst.qmp)
        else:
            data = qemu_guest_ram(self.dst.qmp, workdir=self.launcher.workdir)
            check = check_guest_ram(data, base=guest.START_ADDRESS)
            ok, messages = check.ok, check.messages
        self.result.memory_ok = ok
        if not ok:
            self.result.notes.extend(messages)

    def finish(self) -> None:
        """Collect every event still queued, close the sessions."""
        for role, end in self.ends.items():
            end.qmp.drain()
            setattr(self.result, role, end.qmp.statuses())
            self.result.events[role] = list(end.qmp.events)
            end.qmp.close()


# ---------------------------------------------------------------- scenarios
def sc_precopy(run: Run) -> None:
    """Converging precopy to completion, then the memory check on the destination."""
    run.start()
    run.params("source", CONVERGE)
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.completion.completed")
    run.wait("destination", "dst.bh.completed")
    run.check_destination_memory()


def sc_pause_before_switchover(run: Run) -> None:
    """pause-before-switchover: wrong migrate-continue is refused, the right one completes."""
    run.start()
    run.caps("source", pause_before_switchover=True)
    run.params("source", CONVERGE)
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.completion.pre_switchover")
    run.misuse("source", "migrate-continue",
               {"state": status_of(run.profile, "src.thread.active")})
    run.src.qmp.command("migrate-continue",
                        {"state": status_of(run.profile, "src.completion.pre_switchover")})
    run.wait("source", "src.completion.completed")
    run.wait("destination", "dst.bh.completed")
    run.check_destination_memory()


def _start_postcopy(run: Run, postcopy_bandwidth: Optional[int] = None) -> None:
    run.start()
    run.need_postcopy()
    run.params("source", NON_CONVERGE)
    if postcopy_bandwidth is not None:
        run.params("source", {"max-postcopy-bandwidth": postcopy_bandwidth})
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.thread.active")
    run.wait_event("source", "MIGRATION_PASS")
    run.src.qmp.command("migrate-start-postcopy")
    run.wait("source", "src.postcopy_start.switch")
    run.wait("destination", "dst.listen.start")
    # The destination pauses (rather than fails) only once its PostcopyState is
    # RUNNING, i.e. once the VM resumed there: wait for that before any pause.
    run.wait_event("destination", "RESUME")


def sc_postcopy(run: Run) -> None:
    """Non-converging precopy switched to postcopy, to completion; memory check."""
    _start_postcopy(run)
    run.wait("source", "src.completion.completed")
    run.wait("destination", "dst.listen.completed")
    run.check_destination_memory()


def sc_cancel_precopy(run: Run) -> None:
    """migrate_cancel during a non-converging precopy; the destination exits."""
    run.start()
    run.params("source", NON_CONVERGE)
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.thread.active")
    run.wait("destination", "dst.co.active")
    run.src.qmp.command("migrate_cancel")
    run.wait("source", "src.cleanup.cancelled")
    status = run.dst.process.wait_exit(run.timeout)
    run.result.notes.append(f"destination exit status {status}")
    run.result.notes.append(f"source run state {run.src.qmp.command('query-status')['status']}")


def sc_destination_killed(run: Run) -> None:
    """SIGKILL the destination during a non-converging precopy; the source fails."""
    run.start()
    run.params("source", NON_CONVERGE)
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.thread.active")
    run.wait("destination", "dst.co.active")
    run.dst.process.kill()
    run.wait("source", "src.detect_error.failed")
    run.result.notes.append(f"source run state {run.src.qmp.command('query-status')['status']}")


def _pause_and_recover(run: Run, pause_side: str) -> None:
    _start_postcopy(run, postcopy_bandwidth=4096)
    s0, d0 = run.mark("source"), run.mark("destination")
    run.ends[pause_side].qmp.command("migrate-pause")
    run.wait("source", "src.postcopy_pause", s0)
    run.wait("destination", "dst.pause", d0)
    # What a paused migration refuses:
    run.misuse("source", "migrate", {"uri": run.uri()})
    d1 = run.mark("destination")
    uri = run.uri()
    run.dst.qmp.command("migrate-recover", {"uri": uri})
    run.wait("destination", "dst.incoming.setup_event", d1)
    run.migrate(uri, resume=True)
    run.wait("source", "src.rp.resume_ack", s0)
    run.wait("destination", "dst.resume", d1)
    run.params("source", {"max-postcopy-bandwidth": 0})
    run.wait("source", "src.completion.completed")
    run.wait("destination", "dst.listen.completed")
    run.check_destination_memory()


def sc_postcopy_pause_source(run: Run) -> None:
    """Postcopy paused by migrate-pause on the source, recovered on a new socket."""
    _pause_and_recover(run, "source")


def sc_postcopy_pause_destination(run: Run) -> None:
    """Postcopy paused by migrate-pause on the destination, recovered on a new socket."""
    _pause_and_recover(run, "destination")


def sc_cancel_postcopy(run: Run) -> None:
    """migrate_cancel in postcopy-active (7.2 accepts it): the destination is left paused."""
    _start_postcopy(run, postcopy_bandwidth=4096)
    d0 = run.mark("destination")
    run.src.qmp.command("migrate_cancel")
    run.wait("source", "src.cleanup.cancelled")
    run.wait("destination", "dst.pause", d0)
    run.result.notes.append(f"source run state {run.src.qmp.command('query-status')['status']}")


def sc_cancel_postcopy_paused(run: Run) -> None:
    """migrate_cancel while postcopy-paused: 7.2 accepts it and the source stays cancelling."""
    _start_postcopy(run, postcopy_bandwidth=4096)
    s0, d0 = run.mark("source"), run.mark("destination")
    run.src.qmp.command("migrate-pause")
    run.wait("source", "src.postcopy_pause", s0)
    run.wait("destination", "dst.pause", d0)
    run.src.qmp.command("migrate_cancel")
    run.wait("source", "src.cancel", s0)
    run.result.notes.append(
        f"source query-migrate status after cancel: "
        f"{run.src.qmp.command('query-migrate').get('status')}")


def sc_migrate_while_running(run: Run) -> None:
    """A second migrate during a running precopy is refused; then it converges."""
    run.start()
    run.params("source", NON_CONVERGE)
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.thread.active")
    run.misuse("source", "migrate", {"uri": run.uri()})
    run.misuse("destination", "migrate-incoming", {"uri": run.uri()})
    run.params("source", CONVERGE)
    run.wait("source", "src.completion.completed")
    run.wait("destination", "dst.bh.completed")


def sc_resume_nothing_paused(run: Run) -> None:
    """migrate resume=true and migrate-recover with nothing paused."""
    run.start(wait_guest=False)
    run.misuse("source", "migrate", {"uri": run.uri(), "resume": True})
    run.misuse("destination", "migrate-recover", {"uri": run.uri()})
    run.misuse("source", "migrate-pause")


def sc_start_postcopy_without_cap(run: Run) -> None:
    """migrate-start-postcopy without postcopy-ram: refused idle and during precopy."""
    run.start()
    run.misuse("source", "migrate-start-postcopy")
    run.params("source", NON_CONVERGE)
    uri = run.incoming()
    run.migrate(uri)
    run.wait("source", "src.thread.active")
    run.misuse("source", "migrate-start-postcopy")
    run.params("source", CONVERGE)
    run.wait("source", "src.completion.completed")
    run.wait("destination", "dst.bh.completed")


@dataclass(frozen=True)
class Scenario:
    name: str
    fn: Callable[[Run], None]
    postcopy: bool = False

    @property
    def doc(self) -> str:
        return (self.fn.__doc__ or "").strip()


SCENARIOS: dict[str, Scenario] = {s.name: s for s in (
    Scenario("precopy", sc_precopy),
    Scenario("pause-before-switchover", sc_pause_before_switchover),
    Scenario("postcopy", sc_postcopy, postcopy=True),
    Scenario("cancel-precopy", sc_cancel_precopy),
    Scenario("destination-killed", sc_destination_killed),
    Scenario("postcopy-pause-source", sc_postcopy_pause_source, postcopy=True),
    Scenario("postcopy-pause-destination", sc_postcopy_pause_destination, postcopy=True),
    Scenario("cancel-postcopy", sc_cancel_postcopy, postcopy=True),
    Scenario("cancel-postcopy-paused", sc_cancel_postcopy_paused, postcopy=True),
    Scenario("migrate-while-running", sc_migrate_while_running),
    Scenario("resume-nothing-paused", sc_resume_nothing_paused),
    Scenario("start-postcopy-without-cap", sc_start_postcopy_without_cap),
)}


def run_scenario(name: str, launcher: Launcher, profile: Optional[Profile] = None,
                 timeout: float = STATE_TIMEOUT) -> ScenarioResult:
    """Run scenario ``name`` on the launcher's processes; always kills them."""
    scenario = SCENARIOS[name]
    run = Run(launcher, profile or load_profile(DEFAULT_PROFILE), name, timeout)
    t0 = time.monotonic()
    try:
        scenario.fn(run)
    except ScenarioSkipped as exc:
        run.result.skipped = str(exc)
    except (QMPSessionError, TimeoutError, subprocess.TimeoutExpired) as exc:
        logs = "; ".join(f"{e.name}: {e.process.log_tail(400)!r}" for e in run.ends.values())
        raise QMPSessionError(f"scenario {name}: {exc}; logs: {logs}") from exc
    finally:
        try:
            run.finish()
        finally:
            launcher.close()
        run.result.seconds = time.monotonic() - t0
    return run.result


def dump_recording(data: dict) -> str:
    """The recording as JSON with one scenario field a line (diffs stay readable)."""
    out = ["{", f' "qemu": {json.dumps(data.get("qemu", ""))},', ' "scenarios": {']
    names = list(data["scenarios"])
    for i, name in enumerate(names):
        fields = data["scenarios"][name]
        out.append(f"  {json.dumps(name)}: {{")
        keys = list(fields)
        for j, key in enumerate(keys):
            comma = "," if j < len(keys) - 1 else ""
            out.append(f"   {json.dumps(key)}: {json.dumps(fields[key])}{comma}")
        out.append("  }" + ("," if i < len(names) - 1 else ""))
    out += [" }", "}", ""]
    return "\n".join(out)


def load_recording(path: Path = RECORDING) -> dict[str, dict]:
    """The committed recording: scenario name → result JSON."""
    return json.loads(path.read_text())["scenarios"]


def write_event_log(events: list[dict], path: Path) -> None:
    """Raw QMP events, one JSON object a line (a QMP event log for check-trace)."""
    path.write_text("".join(json.dumps(e) + "\n" for e in events))


def record(names: Optional[list[str]] = None, path: Path = RECORDING,
           launcher_factory: Callable[[], Launcher] = QemuLauncher,
           event_logs: Optional[Path] = None) -> dict[str, ScenarioResult]:
    """Run scenarios on fresh launchers and write (merge into) the recording file.

    With ``event_logs``, each side's raw events also go to
    ``event_logs/qemu72_<scenario>_<side>.jsonl``.
    """
    from livemig.conformance.qemu_vm import qemu_version

    results = {}
    data = json.loads(path.read_text()) if path.exists() else {"scenarios": {}}
    data["qemu"] = qemu_version()
    for name in names or list(SCENARIOS):
        res = run_scenario(name, launcher_factory())
        results[name] = res
        data["scenarios"][name] = res.to_json()
        if event_logs is not None:
            for side, events in res.events.items():
                write_event_log(events, event_logs / f"qemu72_{name}_{side}.jsonl")
        print(f"{name}: {res.seconds:.1f}s src={res.source} dst={res.destination} "
              f"errors={[(e.command, e.desc) for e in res.errors]} mem={res.memory_ok} "
              f"{res.skipped}", flush=True)
    data["scenarios"] = {k: data["scenarios"][k] for k in SCENARIOS if k in data["scenarios"]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_recording(data))
    return results


def main(argv: Optional[list[str]] = None) -> int:
    """``python -m livemig.conformance.scenarios [--event-logs DIR] [NAME...]``."""
    import argparse

    parser = argparse.ArgumentParser(description="Record QEMU's behaviour in the scenarios "
                                                 f"into {RECORDING.name}.")
    parser.add_argument("names", nargs="*", choices=[[], *SCENARIOS], metavar="NAME",
                        help=f"default: all of {', '.join(SCENARIOS)}")
    parser.add_argument("--output", type=Path, default=RECORDING)
    parser.add_argument("--event-logs", type=Path, metavar="DIR",
                        help="also write each side's raw QMP events there")
    args = parser.parse_args(argv)
    record(args.names or None, args.output, event_logs=args.event_logs)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
