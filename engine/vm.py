"""A livemig VM: a guest plus QEMU's migration commands, for embedding.

Theory of operation
-------------------
:class:`VM` owns a :class:`~livemig.engine.guest.Guest`, the migration
capabilities and parameters, and one status cell per side (QEMU keeps a
source object and an incoming object in every process).  Its methods are
the QMP commands with QMP's names, arguments, replies and error texts
(:meth:`execute` dispatches by command name; the methods are the same
commands for Python callers).  Every precondition, capability and parameter
check is the core checkers' decision over the spec; every status change is
a session firing a spec row on the cell; every attempt is written to the
NDJSON :class:`~livemig.core.cell.TransitionLog`.

Events (QMP's shape: ``{"event", "data", "timestamp"}``) are queued by the
cells' listeners and delivered to :meth:`subscribe` callbacks on a
dispatcher thread: MIGRATION (needs the ``events`` capability, except the
incoming ``setup`` row), MIGRATION_PASS (``events``), STOP and RESUME.

    >>> vm = VM(ram_size=64 << 20)                      # doctest: +SKIP
    >>> vm.execute("migrate", {"uri": "tcp:127.0.0.1:4444"})
    {}
    >>> vm.wait_for_status(vm.st.terminal, timeout=60)
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import sys
import threading
import time
import uuid as uuidlib
from typing import IO, Any, Callable, Iterable, Optional

from livemig.core.caps import check_capabilities, default_capabilities, default_params
from livemig.core.cell import Attempt, StatusCell, TransitionLog
from livemig.core.commands import check_arguments, check_command
from livemig.core.guards import GuardEnv
from livemig.core.introspect import command_names, schema_info
from livemig.core.params import check_parameters, param
from livemig.engine.destination import DestinationMigration
from livemig.engine.hmp import HumanMonitor
from livemig.engine.guest import (
    Guest, MiB, RUN_INMIGRATE, RUN_PAUSED, RUN_RUNNING,
)
from livemig.engine.destination_driver import DestinationDriver
from livemig.engine.postcopy import PostcopyDestination, PostcopySource, postcopy_statuses
from livemig.engine.rows import SOURCE_ROWS, statuses, unimplemented_capabilities
from livemig.engine.runner import SocketTransport
from livemig.engine.source import SourceMigration
from livemig.engine.source_driver import SourceDriver
from livemig.engine.threads import report_only, spawn
from livemig.engine.tls import ObjectRegistry, TLSEndpoint
from livemig.engine.transport import Listener, Uri, UriError, parse_uri
from livemig.errors import CapabilityError, CommandError, MigrationError, ParameterError
from livemig.spec import DEFAULT_PROFILE, load_profile

Event = dict[str, Any]


class CommandNotFound(MigrationError):
    qmp_class = "CommandNotFound"


def _timestamp() -> dict[str, int]:
    t = time.time()
    return {"seconds": int(t), "microseconds": int((t % 1) * 1e6)}


class VM:
    """A guest with QEMU's migration commands (see the module docstring)."""

    def __init__(self, *, ram_size: int = 128 * MiB, fill: str = "random",
                 incoming: Optional[str] = None, profile: str = DEFAULT_PROFILE,
                 workload_rate: float = 20000.0, start_paused: bool = False,
                 uuid: Optional[str] = None, log: Optional[IO[str]] = None,
                 exit_on_error: bool = False, mem_path: Optional[str] = None,
                 extra_blocks: Optional[dict[str, int]] = None, seed: int = 0,
                 transport: Optional[SocketTransport] = None, vcpu_thread: bool = True,
                 machine: Optional[str] = None, name: Optional[str] = None,
                 memory: str = "simulated") -> None:
        self.profile = load_profile(profile)
        #: QEMU's ``-name``: what query-name and ``info name`` answer
        self.name = name
        #: the machine type this VM's streams name (a SpecError for an unknown one)
        self.machine = self.profile.machine(machine).name
        self.transport = transport if transport is not None else SocketTransport()
        self.st = statuses(self.profile)
        self.log = TransitionLog(stream=log)
        self.src_cell = StatusCell(self.profile, "source", log=self.log)
        self.dst_cell = StatusCell(self.profile, "destination", log=self.log)
        self.caps: dict[str, bool] = default_capabilities(self.profile)
        self.params: dict[str, Any] = default_params(self.profile)
        self.uuid = uuidlib.UUID(uuid).bytes if uuid else None
        self.exit_on_error = exit_on_error
        self.guest = Guest(ram_size, fill="zero" if incoming else fill,
                           workload_rate=workload_rate, mem_path=mem_path,
                           extra_blocks=self._blocks_for_machine(extra_blocks), seed=seed,
                           populate=incoming is not None or mem_path is not None,
                           vcpu_thread=vcpu_thread, memory=memory)
        self.guest.on_run_state = self._run_state_changed
        self.source: Optional[SourceMigration] = None
        self._src_driver: Optional[SourceDriver] = None
        self.incoming: Optional[DestinationMigration] = None
        self._dst_driver: Optional[DestinationDriver] = None
        self._listener: Optional[Listener] = None
        #: the incoming side's socket-address, kept after its listener closed
        self._incoming_address: list[dict] = []
        self._incoming_started = False
        self._inmigrate_cli = incoming is not None
        self._autostart = not start_paused
        self._subscribers: list[Callable[[Event], None]] = []
        self._events: queue.Queue = queue.Queue()
        self._lock = threading.RLock()
        #: object-add's objects: TLS credentials and authorization lists
        self.objects = ObjectRegistry(self.profile)
        #: what error_report printed (a refused TLS peer on the destination)
        self.reports: list[str] = []
        self._reported = threading.Condition()
        self.on_quit: Optional[Callable[[], None]] = None
        self.on_fatal: Optional[Callable[[str], None]] = None
        self.src_cell.subscribe(self._status_event)
        self.dst_cell.subscribe(self._status_event)
        self._dispatcher = spawn("livemig-events", self._dispatch, report_only("livemig-events"))
        if incoming is not None:
            self.guest.set_run_state(RUN_INMIGRATE)
            if incoming != "defer":
                self.migrate_incoming(incoming)
        elif not start_paused:
            self.guest.vm_start()

    # ------------------------------------------------------------ events
    def subscribe(self, callback: Callable[[Event], None]) -> None:
        """Call ``callback(event)`` for every QMP event, on the dispatcher thread."""
        self._subscribers.append(callback)

    def _emit(self, name: str, data: Optional[dict] = None) -> None:
        event: Event = {"event": name, "timestamp": _timestamp()}
        if data is not None:
            event["data"] = data
        self._events.put(event)

    def _dispatch(self) -> None:
        while True:
            event = self._events.get()
            if event is None:
                return
            if isinstance(event, threading.Event):  # a flush marker
                event.set()
                continue
            for cb in list(self._subscribers):
                try:
                    cb(event)
                except Exception:  # a subscriber's bug must not stop the others
                    pass

    def flush_events(self, timeout: float, grace: float = 0.1) -> None:
        """Wait until every queued event went to the subscribers."""
        marker = threading.Event()
        self._events.put(marker)
        marker.wait(timeout)
        time.sleep(grace)

    def _status_event(self, attempt: Attempt) -> None:
        row = self.profile.transition(attempt.id)
        if row.store:
            return
        if self.caps.get("events") or not row.event_needs_cap:
            self._emit("MIGRATION", {"status": attempt.new})

    def _pass_event(self, count: int) -> None:
        sync = self.profile.bitmap_sync  # migration_bitmap_sync's event
        if self.caps.get(sync.event_cap):
            self._emit(sync.event, {sync.event_member: count})

    def _blocks_for_machine(self, extra: Optional[dict[str, int]]) -> Optional[dict[str, int]]:
        """A QEMU machine type's guest has only pc.ram (a QEMU destination
        refuses a block it does not have); livemig's own keeps its extra one."""
        if extra is None and self.profile.machine(self.machine).qemu:
            return {}
        return extra

    def _run_state_changed(self, old: str, new: str) -> None:
        if new == RUN_RUNNING:
            self._emit("RESUME")
        elif old == RUN_RUNNING:
            self._emit("STOP")

    # ------------------------------------------------------------ dispatch
    COMMANDS = {
        "migrate": "migrate", "migrate-incoming": "migrate_incoming",
        "migrate_cancel": "migrate_cancel", "migrate-continue": "migrate_continue",
        "migrate-set-capabilities": "migrate_set_capabilities",
        "migrate-set-parameters": "migrate_set_parameters",
        "query-migrate": "query_migrate",
        "query-migrate-capabilities": "query_migrate_capabilities",
        "query-migrate-parameters": "query_migrate_parameters",
        "query-status": "query_status", "stop": "stop", "cont": "cont", "quit": "quit",
        "query-version": "query_version", "query-name": "query_name",
        "migrate-start-postcopy": "migrate_start_postcopy", "migrate-pause": "migrate_pause",
        "migrate-recover": "migrate_recover",
        "x-livemig-check-memory": "check_memory",
        "x-livemig-set-workload": "set_workload",
        "x-livemig-query-ram": "query_ram",
        "x-livemig-read-ram": "read_ram",
        "object-add": "object_add", "object-del": "object_del",
        "query-commands": "query_commands", "query-qmp-schema": "query_qmp_schema",
        "human-monitor-command": "human_monitor_command",
    }

    def execute(self, name: str, args: Optional[dict] = None) -> Any:
        """Run QMP command ``name``; raises a MigrationError (QEMU's text)."""
        method = self.COMMANDS.get(name)
        if method is None:
            raise CommandNotFound(f"The command {name} has not been found")
        args = dict(args or {})
        if name == "migrate-set-parameters":
            return self.migrate_set_parameters(**args)
        if name == "object-add":  # its members are the object type's (spec data)
            return self.object_add(**args)
        if name == "human-monitor-command":  # members with dashes
            checked = _qapi_args(self.profile, name, args)
            return self.human_monitor_command(checked["command-line"])
        return getattr(self, method)(**_qapi_args(self.profile, name, args))

    def _env(self, args: dict) -> GuardEnv:
        flags = {"incoming_started": self._incoming_started}
        return GuardEnv(profile=self.profile, side="source",
                        states={"source": self.src_cell.state,
                                "destination": self.dst_cell.state},
                        caps=self.caps, flags=flags, runstate=self.guest.run_state,
                        args=args, params=self.params)

    # ------------------------------------------------------------ commands
    def migrate(self, uri: str, blk: bool = False, inc: bool = False, detach: bool = False,
                resume: bool = False) -> dict:
        """QMP ``migrate``: start an outgoing precopy migration to ``uri``."""
        with self._lock:
            args = {"uri": uri, "blk": blk, "inc": inc, "detach": detach, "resume": resume}
            check_command(self.profile, "migrate", args, self._env(args))
            refused = unimplemented_capabilities(self.profile)
            unsupported = [c for c in refused if self.caps.get(c)]
            if unsupported:
                # QEMU would take another state path (the spec's reason) that
                # this engine does not have: refuse before anything changes.
                raise CommandError(f"livemig: capability '{unsupported[0]}' is not implemented "
                                   f"by this engine ({refused[unsupported[0]]}); "
                                   f"turn it off to migrate")
            if resume:
                try:
                    parsed = parse_uri(uri)
                except UriError:
                    raise CommandError(self.profile.qapi_error("bad_uri")) from None
                assert self._src_driver is not None  # check_command: a paused migration
                self._src_driver.resume(parsed)
                return {}
            session = PostcopySource(self.profile, self.guest, self.src_cell,
                                     caps=self.caps, params=self.params, uuid=self.uuid,
                                     on_pass=self._pass_event, machine=self.machine)
            runner = self._runner(server=False)
            # the runner's clock (simulated on the fake link) times the whole
            # migration: setup-time and total-time subtract its readings
            session.begin(runner.clock())
            self.source = session
            try:
                parsed = parse_uri(uri)
            except UriError:
                self.src_cell.fire(SOURCE_ROWS["bad_uri"])
                raise CommandError(self.profile.qapi_error("bad_uri")) from None
            driver = SourceDriver(session, parsed, runner)
            self._src_driver = driver
            driver.start()
            return {}

    def _runner(self, *, server: bool) -> Any:
        """A runner for one migration's channels, with TLS on them when
        ``tls-creds`` is set (the destination is the server)."""
        runner = self.transport.runner()
        creds = self.params.get("tls-creds") or ""
        if creds:
            runner.tls = TLSEndpoint(self.profile, self.objects, server=server, creds=creds,
                                     hostname=self.params.get("tls-hostname") or "",
                                     authz=self.params.get("tls-authz") or "",
                                     report=self._report)
        return runner

    def _report(self, text: str) -> None:
        """QEMU's error_report: on stderr, and kept for QMP-less callers."""
        with self._reported:
            self.reports.append(text)
            self._reported.notify_all()
        print(f"livemig: {text}", file=sys.stderr, flush=True)

    def wait_for_report(self, prefix: str, timeout: float) -> bool:
        """Block (bounded) until error_report printed a text with ``prefix``."""
        with self._reported:
            return self._reported.wait_for(
                lambda: any(r.startswith(prefix) for r in self.reports), timeout)

    def object_add(self, **args: Any) -> dict:
        """QMP ``object-add``: TLS credentials or an authorization list (the
        spec's object types); QEMU 7.2's errors, nothing changed on one."""
        with self._lock:
            self.objects.add(args)
        return {}

    def object_del(self, id: str) -> dict:
        """QMP ``object-del``; an object a running migration uses is refused."""
        with self._lock:
            self.objects.delete(id, self._object_in_use)
        return {}

    def _object_in_use(self, obj_id: str) -> bool:
        running = set(self.profile.states_of("running"))
        busy = self.src_cell.state in running or self.dst_cell.state not in (
            set(self.profile.terminal) | {self.profile.status_names[0]})
        return busy and obj_id in (self.params.get("tls-creds"), self.params.get("tls-authz"))

    def migrate_incoming(self, uri: str) -> dict:
        """QMP ``migrate-incoming``: listen on ``uri`` for the stream."""
        with self._lock:
            args = {"uri": uri}
            env = self._env(args)
            try:
                parsed = parse_uri(uri)
            except UriError:
                parsed = None
                env.flags = dict(env.flags, uri_invalid=True)  # type: ignore[assignment]
            if self.guest.run_state != RUN_INMIGRATE and self._inmigrate_cli is False:
                env.runstate = self.guest.run_state
            check_command(self.profile, "migrate-incoming", args, env)
            assert parsed is not None
            try:
                listener = self.transport.listen(parsed)
            except OSError as exc:
                raise CommandError(f"Failed to bind socket: {exc.strerror}") from None
            self._incoming_started = True
            session = PostcopyDestination(self.profile, self.guest, self.dst_cell,
                                          caps=self.caps, uuid=self.uuid, machine=self.machine)
            self.incoming = session
            self._listener = listener
            session.listening()
            channels = int(param(self.profile, self.params, "multifd-channels")) if self.caps.get(
                "multifd") else 0
            driver = DestinationDriver(session, listener, self._runner(server=True),
                                       multifd_channels=channels, on_done=self._incoming_done,
                                       on_run=self._postcopy_run)
            self._dst_driver = driver
            driver.start()
            return {}

    def _postcopy_run(self) -> None:
        """POSTCOPY_RUN: the vCPU runs here now, faulting on missing pages."""
        session = self.incoming
        driver = self._dst_driver
        assert isinstance(session, PostcopyDestination) and driver is not None
        name = self.guest.ram.name
        self.guest.fault_hook = lambda a, b: driver.fault(name, a, b)
        if session.autostart and self._autostart:
            self.guest.vm_start()
        else:
            self.guest.set_run_state(RUN_PAUSED)

    def migrate_start_postcopy(self) -> dict:
        """QMP ``migrate-start-postcopy``: switch at the next iteration."""
        check_command(self.profile, "migrate-start-postcopy", {}, self._env({}))
        if self.source is not None:
            self.source.start_postcopy = True  # type: ignore[attr-defined]
        if self._src_driver is not None:
            self._src_driver.start_postcopy()
        return {}

    def migrate_pause(self) -> dict:
        """QMP ``migrate-pause``: break the channel of a postcopy-active side."""
        check_command(self.profile, "migrate-pause", {}, self._env({}))
        active = postcopy_statuses(self.profile).active
        if self.src_cell.state == active and self._src_driver is not None:
            self._src_driver.pause()
        elif self.dst_cell.state == active and self._dst_driver is not None:
            self._dst_driver.pause()
        return {}

    def migrate_recover(self, uri: str) -> dict:
        """QMP ``migrate-recover``: listen on ``uri`` for the resumed channel.

        The state check and the setup event happen under the session's
        recover lock: the load thread accepting an earlier recovery channel
        (postcopy-paused -> postcopy-recover) cannot slip in between (QEMU's
        main loop serialises the two)."""
        session = self.incoming
        recover_lock = (self._dst_driver.recover_lock if self._dst_driver is not None
                        else contextlib.nullcontext())
        with self._lock, recover_lock:
            args = {"uri": uri}
            env = self._env(args)
            try:
                parsed = parse_uri(uri)
            except UriError:
                parsed = None
                env.flags = dict(env.flags, uri_invalid=True)  # type: ignore[assignment]
            check_command(self.profile, "migrate-recover", args, env)
            assert parsed is not None
            try:
                listener = self.transport.listen(parsed)
            except OSError as exc:
                raise CommandError(f"Failed to bind socket: {exc.strerror}") from None
            self._listener = listener
            assert isinstance(session, PostcopyDestination)
            assert self._dst_driver is not None
            session.recover_listening()
            self._dst_driver.recover(listener)
            return {}

    def _incoming_done(self, ok: bool) -> None:
        session = self.incoming
        assert session is not None
        if ok:
            if session.autostart and self._autostart:
                self.guest.vm_start()
            else:
                self.guest.set_run_state(RUN_PAUSED)
            return
        message = session.error_desc or "load of migration failed"
        if self.exit_on_error:
            # QEMU emits MIGRATION{failed} before it exits: deliver the queued
            # events (and give the QMP server a moment to write them) first
            self.flush_events(1.0)
            print(f"livemig: {message}", file=sys.stderr, flush=True)
            if self.on_fatal is not None:
                self.on_fatal(message)
            else:
                os._exit(1)
        elif self.on_fatal is not None:
            self.on_fatal(message)

    def migrate_cancel(self) -> dict:
        """QMP ``migrate_cancel``: always succeeds; a no-op when nothing runs."""
        with self._lock:
            if self.source is not None and self._src_driver is not None:
                self.source.cancel()
                if self.src_cell.state == self.st.cancelling:
                    self._src_driver.abort()
            return {}

    def migrate_continue(self, state: str) -> dict:
        """QMP ``migrate-continue``: leave the pre-switchover pause."""
        args = {"state": state}
        check_command(self.profile, "migrate-continue", args, self._env(args))
        if self._src_driver is not None:
            self._src_driver.post_continue()
        return {}

    def migrate_set_capabilities(self, capabilities: Any) -> dict:
        """QMP ``migrate-set-capabilities`` (core.caps decides)."""
        side = "destination" if self.guest.run_state == RUN_INMIGRATE else "source"
        result = check_capabilities(self.profile, capabilities, side=side, current=self.caps,
                                    params=self.params, state=self.src_cell.state)
        if not result.ok:
            raise CapabilityError(result.error or "rejected")
        # In place: capabilities are global in QEMU and read when used, so a
        # destination session created by an earlier migrate-incoming sees them.
        self.caps.clear()
        self.caps.update(result.value)
        return {}

    def migrate_set_parameters(self, **params: Any) -> dict:
        """QMP ``migrate-set-parameters`` (core.params decides)."""
        result = check_parameters(self.profile, params, current=self.params, caps=self.caps)
        if not result.ok:
            raise ParameterError(result.error or "rejected")
        self.params = dict(result.value)
        if self.source is not None:
            self.source.params = dict(self.params)  # bandwidth etc. apply at once
        return {}

    def query_migrate_capabilities(self) -> list[dict]:
        return [{"capability": n, "state": bool(self.caps.get(n, False))}
                for n in self.profile.capability_names()]

    def query_migrate_parameters(self) -> dict:
        return dict(self.params)

    def query_status(self) -> dict:
        rs = self.guest.run_state
        return {"status": rs, "singlestep": False, "running": rs == RUN_RUNNING}

    def query_version(self) -> dict:
        """The profile's QEMU version (what the engine answers as), and livemig."""
        major, minor, micro = self.profile.monitor.version
        return {"qemu": {"major": major, "minor": minor, "micro": micro},
                "package": self.profile.monitor.package}

    def query_name(self) -> dict:
        return {} if self.name is None else {"name": self.name}

    def query_commands(self) -> list[dict]:
        """Every command this VM runs: the schema's, then livemig's own x-livemig-*."""
        names = command_names(self.profile)
        names += [n for n in self.COMMANDS if n not in names and n.startswith("x-")]
        return [{"name": n} for n in names]

    def query_qmp_schema(self) -> list[dict]:
        """QAPI introspection of the schema's commands and events (spec/qapi.py)."""
        return schema_info(self.profile)[0]

    def human_monitor_command(self, command_line: str) -> str:
        """HMP's migration commands (engine/hmp.py), QEMU 7.2's output."""
        return HumanMonitor(self).run(command_line)

    def stop(self) -> dict:
        if self.guest.run_state == RUN_RUNNING:
            self.guest.vm_stop(RUN_PAUSED)
        return {}

    def cont(self) -> dict:
        if self.guest.run_state == RUN_INMIGRATE:
            self._autostart = True
            return {}
        self.guest.vm_start()
        return {}

    def quit(self) -> dict:
        if self.on_quit is not None:
            self.on_quit()
        return {}

    def check_memory(self) -> dict:
        """livemig extension: QEMU's memory check on this guest's RAM."""
        r = self.guest.check()
        return {"ok": r.ok, "bad": r.bad, "edges": r.edges, "first-byte": r.first_byte,
                "messages": r.messages}

    def query_ram(self) -> list[dict]:
        """livemig extension: every RAM block, its used length and the sha256
        of its content now (to compare with a peer's RAM after a migration;
        QEMU's side is hashed from its memory-backend-file)."""
        out = []
        for name, block in self.guest.blocks.items():
            out.append({"id": name, "length": block.used_length,
                        "sha256": hashlib.sha256(block.bytes[:block.used_length]).hexdigest()})
        return out

    def read_ram(self, id: str, offset: int, length: int) -> dict:
        """livemig extension: read ``length`` bytes of RAM block ``id`` from
        ``offset`` as the vCPU would, and return their sha256.  On a postcopy
        destination the pages not placed yet are requested from the source
        and waited for first (QEMU's ``xp`` / ``pmemsave`` fault the same
        way), so a test can fault chosen pages without the guest writing.
        A block that does not exist or a range outside it is refused."""
        block = self.guest.blocks.get(id)
        fmt = self.profile.qapi_error("range")  # "Parameter '%s' expects %s"
        if block is None:
            raise ParameterError(fmt % ("id", f"a RAM block, one of {', '.join(self.guest.blocks)};"
                                              f" got {id!r}"))
        size = block.used_length
        if not 0 <= offset < size:
            raise ParameterError(fmt % ("offset", f"an offset in the range of 0 to {size - 1} "
                                                  f"of block {id}, got {offset}"))
        if not 1 <= length <= size - offset:
            raise ParameterError(fmt % ("length", f"a length in the range of 1 to "
                                                  f"{size - offset}, got {length}"))
        first, last = offset // block.page_size, -(-(offset + length) // block.page_size)
        requested = 0
        driver, session = self._dst_driver, self.incoming
        if (isinstance(session, PostcopyDestination) and driver is not None
                and session.listening_started and not session.closed):
            # from POSTCOPY_LISTEN on, the pages belong to postcopy (QEMU has
            # registered them with userfaultfd there): a read faults
            requested = session.missing_pages(id, first, last)
            if not driver.fault(id, first, last):
                raise MigrationError(f"x-livemig-read-ram: pages {first} to {last - 1} of "
                                     f"{id} were not placed (the migration ended)")
        data = block.bytes[offset:offset + length]
        return {"sha256": hashlib.sha256(data).hexdigest(), "requested": requested}

    def set_workload(self, rate: float, batch: Optional[int] = None) -> dict:
        """livemig extension: the vCPU's dirtying rate in pages per second and,
        optionally, the pages it touches per step (1: every page is its own
        fault in postcopy).  A rate that is negative, NaN or infinite, or a
        batch below 1, is refused and nothing changes."""
        fmt = self.profile.qapi_error("range")  # "Parameter '%s' expects %s"
        if not (isinstance(rate, (int, float)) and not isinstance(rate, bool)
                and 0 <= rate < float("inf")):
            raise ParameterError(fmt % ("rate", f"a finite number of pages per second in the "
                                                f"range of 0 to {sys.float_info.max!r}, "
                                                f"got {rate!r}"))
        if batch is not None and not (isinstance(batch, int) and not isinstance(batch, bool)
                                      and batch >= 1):
            raise ParameterError(fmt % ("batch", f"an integer of pages per step of at least 1, "
                                                 f"got {batch!r}"))
        self.guest.workload_rate = float(rate)
        if batch is not None:
            self.guest.batch = batch
        return {}

    # ------------------------------------------------------------ query-migrate
    def query_migrate(self) -> dict:
        """QMP ``query-migrate``: destination info, overridden by the source's.

        Which source members are shown in which status is the spec's
        MIGRATION_INFO table (QEMU's fill_source_migration_info); the values
        come from the session (:meth:`_info_value`)."""
        info: dict[str, Any] = {}
        st = self.st
        dst_state = self.dst_cell.state
        if self._listener is not None and dst_state not in self.profile.terminal:
            # QEMU keeps the listening addresses (mis->socket_address_list)
            # until the incoming migration ends, not just while it listens
            if self._listener.sock is not None:
                self._incoming_address = self._listener.socket_address
            if self._incoming_address:
                info["socket-address"] = self._incoming_address
        if dst_state != st.none:
            info["status"] = dst_state
            self._memory_member(info)
        inc = self.incoming
        if isinstance(inc, PostcopyDestination) and inc.in_postcopy:
            # livemig extension: the fault round trip (request -> placed)
            info["x-livemig-postcopy-latency"] = inc.latency.to_json()
            info["x-livemig-postcopy-requests"] = inc.postcopy_requests
        s = self.source
        src_state = self.src_cell.state
        if s is None or src_state == st.none:
            return info
        info = {}
        for member in self.profile.migration_info:
            if src_state not in self._info_states(member.states):
                continue
            if member.cap is not None and not self.caps.get(member.cap):
                continue
            if member.only_if == "throttling" and not s.throttle:
                continue
            if member.only_if == "error" and not s.error_desc:
                continue
            value = self._info_value(member.name, s, src_state)
            if value is not None:
                info[member.name] = value
        self._memory_member(info)
        return info

    def _memory_member(self, info: dict) -> None:
        """livemig extension: which RAM backend moves (x-livemig-memory); not
        shown for the default simulated one, so the default's query-migrate is
        QEMU's members only."""
        memory = self.guest.memory
        if memory.kind != "simulated" or memory.asked != "simulated":
            info["x-livemig-memory"] = self.guest.memory_info()

    def _info_states(self, names: tuple[str, ...]) -> frozenset[str]:
        out: set[str] = set()
        for name in names:
            out |= self.profile.states_of(name)
        return frozenset(out)

    def _info_value(self, name: str, s: SourceMigration, state: str) -> Any:
        """One MigrationInfo member's value (None: nothing to show, e.g. an
        xbzrle cache the migration never had because the capability came on
        later)."""
        completed = state == self.st.completed
        if name == "status":
            return state
        if name == "setup-time":
            return int((s.setup_time or 0) * 1000)
        if name == "total-time":
            total = s.total_time if s.total_time is not None else (
                time.monotonic() - (s.start_time or time.monotonic()))
            return int(total * 1000)
        if name == "expected-downtime":
            return int((s.expected_downtime or 0) * 1000)
        if name == "downtime":
            return int((s.downtime or 0) * 1000)
        if name == "ram":
            return self._ram_stats(s, completed)
        if name == "xbzrle-cache":
            return s.xbzrle.stats() if s.xbzrle is not None else None
        if name == "compression":
            return {"pages": s.stats.compressed_pages, "busy": 0, "busy-rate": 0.0,
                    "compressed-size": s.stats.compressed_size,
                    "compression-rate": (s.stats.compressed_pages * s.page_size
                                         / s.stats.compressed_size)
                    if s.stats.compressed_size else 0.0}
        if name == "cpu-throttle-percentage":
            return s.throttle
        if name == "error-desc":
            return s.error_desc
        raise KeyError(f"MigrationInfo member {name!r} of the spec has no value in the engine")

    def _ram_stats(self, s: SourceMigration, completed: bool) -> dict:
        ps = s.page_size
        total = self.guest.total_bytes()
        x = s.stats
        # QEMU fills remaining and dirty-pages-rate only before completion
        # (zero-initialised members after)
        remaining = 0 if completed else s.remaining_bytes()
        return {
            "transferred": x.transferred, "remaining": remaining, "total": total,
            "duplicate": x.duplicate, "skipped": 0, "normal": x.normal,
            "normal-bytes": x.normal_bytes,
            "dirty-pages-rate": 0 if completed else x.dirty_pages_rate,
            "mbps": round(x.mbps, 3), "dirty-sync-count": x.dirty_sync_count,
            "postcopy-requests": getattr(s, "postcopy_requests", 0), "page-size": ps,
            "multifd-bytes": x.multifd_bytes,
            "pages-per-second": x.pages_per_second, "precopy-bytes": x.precopy_bytes,
            "downtime-bytes": x.downtime_bytes,
            "postcopy-bytes": getattr(s, "postcopy_bytes", 0),
            "dirty-sync-missed-zero-copy": 0,
        }

    # ------------------------------------------------------------ helpers
    def wait_for_status(self, wanted: Iterable[str], timeout: float, *,
                        side: str = "source") -> bool:
        """Block until the side's status is one of ``wanted``."""
        cell = self.src_cell if side == "source" else self.dst_cell
        names = set(wanted)
        return cell.wait_for(lambda s: s in names, timeout)

    def wait_incoming_done(self, timeout: float) -> bool:
        driver = self._dst_driver
        return driver is not None and driver.join(timeout)

    def wait_outgoing_done(self, timeout: float) -> bool:
        driver = self._src_driver
        return driver is not None and driver.join(timeout)

    def close(self) -> None:
        """Stop threads and release RAM."""
        if self._src_driver is not None:
            self._src_driver.abort()
            self._src_driver.join(10)
        if self._dst_driver is not None:
            self._dst_driver.abort()
            self._dst_driver.join(10)
        self.guest.shutdown()
        self._events.put(None)


def _qapi_args(profile: Any, name: str, args: dict) -> dict:
    """QAPI's input checks: the spec's member types for its commands
    (``core.commands.check_arguments``), a small table for livemig's own."""
    if name in {c.name for c in profile.commands}:
        return check_arguments(profile, name, args)
    spec: dict[str, dict[str, tuple[type, str, bool]]] = {
        "x-livemig-set-workload": {"rate": (float, "number", True),
                                   "batch": (int, "int", False)},
        "x-livemig-read-ram": {"id": (str, "string", True), "offset": (int, "int", True),
                               "length": (int, "int", True)},
        "object-del": {"id": (str, "string", True)},
        "human-monitor-command": {"command-line": (str, "string", True),
                                  "cpu-index": (int, "int", False)},
    }.get(name, {})
    for key, (typ, tname, required) in spec.items():
        if key not in args:
            if required:
                raise ParameterError(profile.qapi_error("missing") % key)
            continue
        value = args[key]
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            continue
        if not isinstance(value, typ) or isinstance(value, bool):
            raise ParameterError(profile.qapi_error("type") % (key, tname))
    for key in args:
        if key not in spec:
            raise ParameterError(profile.qapi_error("unexpected") % key)
    return args
