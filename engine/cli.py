"""``livemig vm``, ``livemig incoming`` and ``livemig migrate``.

* ``livemig vm --qmp unix:PATH [--qmp unix:PATH2 ...] [--incoming URI|defer]
  [--ram SIZE] [--fill F] [--workload RATE] [-S] [--uuid U] [--log PATH]`` -- a
  VM process serving QMP, driven like ``qemu-system-x86_64 -qmp
  unix:PATH,server=on,wait=off``; several ``--qmp`` are QEMU's several
  ``-qmp`` (every client on any of them gets the events).  A failed incoming
  load exits with status 1, as QEMU does.
* ``livemig incoming URI [--ram SIZE] [--caps ...] [--param k=v ...]`` --
  receive one migration, run the memory check, print a summary.
* ``livemig migrate URI [--ram SIZE] [--fill F] [--caps ...] [--param k=v ...]
  [--workload RATE] [--json]`` -- send one migration of a running, dirtying
  guest with a progress bar; ``--json`` prints the final MigrationInfo.
  Exit status is non-zero when the migration failed or was cancelled.  Ctrl-C
  cancels the migration (``migrate_cancel``), waits up to ``CANCEL_WAIT`` s for
  it to end, and exits 130.

A bad option value (``--ram``, ``--param``, ``--qmp``, the URI,
``--postcopy-after`` without postcopy) is refused before anything starts with
one line, ``livemig: error: ...``, naming the value and what is allowed, and
exit status 2.
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from livemig.cli import UsageError
from livemig.engine.guest import FILLS, parse_size
from livemig.errors import MigrationError
from livemig.spec import load_profile

#: seconds Ctrl-C or --timeout waits for a cancelled migration to end
CANCEL_WAIT = 30.0
#: the words ``--param NAME=VALUE`` reads as a boolean
BOOL_WORDS = {"on": True, "true": True, "yes": True, "1": True,
              "off": False, "false": False, "no": False, "0": False}
SIZE_TEXT = "bytes, or with a K, M, G or T suffix, e.g. 64M"
#: what a --param value of each QAPI type must look like
TYPE_TEXT = {"bool": "a boolean (on or off)", "size": f"a size ({SIZE_TEXT})", "uint8": "an integer",
             "uint32": "an integer", "uint64": "an integer", "int64": "an integer"}


def ram_size(profile: Any, text: str) -> int:
    """``--ram``'s bytes: a positive multiple of the profile's target page size."""
    page = profile.target_page_size
    allowed = f"expected a positive multiple of the target page size {page} ({SIZE_TEXT})"
    try:
        size = parse_size(text)
    except (ValueError, OverflowError):
        raise UsageError(f"--ram {text}: not a size; {allowed}") from None
    if size <= 0 or size % page:
        raise UsageError(f"--ram {text}: {size} bytes; {allowed}")
    return size


def _vm_kwargs(args: argparse.Namespace) -> dict:
    return dict(ram_size=ram_size(load_profile(args.profile), args.ram),
                fill="zero" if args.mem_path else args.fill, workload_rate=args.workload,
                profile=args.profile, uuid=getattr(args, "uuid", None), mem_path=args.mem_path,
                machine=args.machine, memory=memory_backend(args.memory, args.mem_path))


def memory_backend(memory: str, mem_path: Optional[str]) -> str:
    """``--memory``: a kernel backend this kernel cannot run is refused here,
    in one line naming why (before any VM exists)."""
    from livemig.engine.kernelmem.backend import MemoryUnavailable, resolve
    try:
        resolve(memory, mem_path=mem_path)
    except MemoryUnavailable as exc:
        raise UsageError(f"--memory {memory}: {exc.strerror}") from None
    return memory


def memory_text(vm: Any) -> str:
    """The RAM backend in a word or two, for the progress line."""
    m = vm.guest.memory
    return f"{m.kind} ({m.dirty_log})" if m.kind == "kernel" and m.dirty_log else m.kind


def _common(p: argparse.ArgumentParser, *, fill: bool = True) -> None:
    p.add_argument("--ram", default="128M", help="size of pc.ram (e.g. 64M, 1G); default 128M")
    if fill:
        p.add_argument("--fill", choices=FILLS, default="random",
                       help="initial RAM content (source); default random")
    else:
        p.set_defaults(fill="zero")
    p.add_argument("--workload", type=float, default=20000.0, metavar="RATE",
                   help="vCPU dirtying rate in pages per second (0: idle); default 20000")
    p.add_argument("--profile", default="qemu-7.2", help="spec profile; default qemu-7.2")
    p.add_argument("--uuid", default=None, help="the VM's UUID (validate-uuid)")
    p.add_argument("--log", default=None, metavar="PATH",
                   help="write the NDJSON transition log here")
    p.add_argument("--machine", default=None, metavar="NAME",
                   help="machine type the stream names (default: livemig's own, livemig-pc); "
                        "a QEMU type such as pc-i440fx-7.2 makes livemig send and accept what "
                        "QEMU 7.2 does: RAM and QEMU's globalstate, the RAM blocks the source "
                        "declares, QEMU's device sections kept opaque")
    p.add_argument("--mem-path", default=None, metavar="FILE",
                   help="back pc.ram with this file (shared mapping, like QEMU's "
                        "memory-backend-file share=on); its content is the RAM")
    p.add_argument("--memory", choices=("kernel", "simulated", "auto"), default="simulated",
                   help="guest RAM backend: kernel (shmem; dirty pages from the kernel, "
                        "postcopy faults through userfaultfd; needs root or "
                        "vm.unprivileged_userfaultfd=1), simulated (the vCPU logs its writes), "
                        "auto (kernel where available); default simulated")


def _migration_opts(p: argparse.ArgumentParser) -> None:
    p.add_argument("--caps", default="", metavar="CAP[,CAP...]",
                   help="capabilities to turn on (e.g. xbzrle,return-path)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a migration parameter (repeatable), e.g. max-bandwidth=1G")
    p.add_argument("--json", action="store_true", help="print the final MigrationInfo as JSON")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this many s")


def add_parser(subparsers: Any) -> None:
    """Register ``vm``, ``incoming``, ``migrate`` and ``stream inspect``."""
    p = subparsers.add_parser("vm", help="a livemig VM process serving QMP on a unix socket")
    p.add_argument("--qmp", required=True, action="append", metavar="unix:PATH",
                   help="a QMP socket; repeatable, as QEMU's -qmp: each socket takes its "
                        "own clients and every client gets every event")
    p.add_argument("--incoming", default=None, metavar="URI|defer",
                   help="wait for an incoming migration")
    p.add_argument("-S", dest="start_paused", action="store_true",
                   help="do not start the vCPU")
    p.add_argument("--name", default=None, metavar="NAME",
                   help="the VM's name, as QEMU's -name: what query-name and HMP "
                        "'info name' answer")
    _common(p)
    p.set_defaults(func=cmd_vm)

    p = subparsers.add_parser("incoming", help="receive one migration and check the memory")
    p.add_argument("uri", help="tcp:HOST:PORT, unix:PATH, fd:N or file:PATH")
    _common(p, fill=False)
    _migration_opts(p)
    p.set_defaults(func=cmd_incoming)

    p = subparsers.add_parser("migrate", help="migrate a running, dirtying guest to URI")
    p.add_argument("uri", help="tcp:HOST:PORT, unix:PATH, fd:N or file:PATH")
    p.add_argument("--postcopy-after", type=float, default=None, metavar="SECONDS",
                   help="run migrate-start-postcopy this long after migrate (needs "
                        "--caps postcopy-ram on both sides)")
    _common(p)
    _migration_opts(p)
    p.set_defaults(func=cmd_migrate)

    from livemig.engine.inspect import add_parser as add_stream_parser
    add_stream_parser(subparsers)  # stream inspect


def _open_log(path: Optional[str]):
    return open(path, "w", buffering=1) if path else None


def cmd_vm(args: argparse.Namespace) -> int:
    from livemig.engine.qmp import serve_vm
    from livemig.engine.vm import VM
    paths = qmp_paths(args.qmp)
    vm = VM(incoming=args.incoming, start_paused=args.start_paused, log=_open_log(args.log),
            exit_on_error=True, name=args.name, **_vm_kwargs(args))
    signal.signal(signal.SIGTERM, lambda *_: vm.quit())
    try:
        serve_vm(vm, paths)
    except OSError as exc:  # QEMU: "Failed to bind socket to PATH: <reason>"
        path = exc.filename if exc.filename in paths else paths[0]
        raise UsageError(f"--qmp unix:{path}: Failed to bind socket to {path}: "
                         f"{exc.strerror or exc}") from None
    finally:
        vm.close()
    return 0


def qmp_paths(values: list[str]) -> list[str]:
    """The socket paths of the ``--qmp unix:PATH`` options, each one once."""
    paths: list[str] = []
    for value in values:
        if not value.startswith("unix:") or not value[len("unix:"):]:
            raise UsageError(f"--qmp {value}: expected unix:PATH")
        path = value[len("unix:"):]
        if path in paths:
            raise UsageError(f"--qmp {value}: given twice; each --qmp needs its own socket")
        paths.append(path)
    return paths


def apply_options(vm: Any, caps: str, params: list[str]) -> None:
    """Apply ``--caps`` and ``--param`` through the QMP commands (same checks)."""
    names = [c.strip() for c in caps.split(",") if c.strip()]
    if names:
        vm.execute("migrate-set-capabilities",
                   {"capabilities": [{"capability": n, "state": True} for n in names]})
    request: dict[str, Any] = {}
    for item in params:
        name, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--param {item}: expected NAME=VALUE")
        request[name] = _param_value(vm.profile, name, value)
    if request:
        vm.execute("migrate-set-parameters", request)


def _param_value(profile: Any, name: str, text: str) -> Any:
    """``--param NAME=VALUE``'s VALUE as NAME's QAPI type; a bad one is a UsageError
    naming what the type takes and the range the profile's rule for NAME allows."""
    try:
        ptype = profile.parameter(name).type
    except KeyError:
        return text  # migrate-set-parameters answers "Parameter 'NAME' is unexpected"
    try:
        if ptype == "bool":
            return BOOL_WORDS[text.lower()]
        if ptype == "size":
            return parse_size(text)
        if ptype in ("uint8", "uint32", "uint64", "int64"):
            return int(text, 0)
    except (KeyError, ValueError, OverflowError):
        ranges = [r.error for r in profile.param_rules if r.param == name and r.when is None
                  and not r.alias_map]
        raise UsageError(f"--param {name}={text}: not {TYPE_TEXT[ptype]}"
                         + "".join(f"; {e}" for e in ranges)) from None
    return text


def check_uri(profile: Any, uri: str) -> None:
    """Refuse a URI no transport takes with QEMU's text for it (the qapi error bad_uri)."""
    from livemig.engine.transport import UriError, parse_uri
    try:
        parse_uri(uri)
    except UriError:
        raise UsageError(profile.qapi_error("bad_uri")) from None


def check_postcopy_caps(profile: Any, caps: dict) -> None:
    """``--postcopy-after`` needs migrate-start-postcopy's capabilities: refuse at once
    (with that command's precondition text) when they are off."""
    from livemig.core.guards import GuardEnv, evaluate
    command = profile.command("migrate-start-postcopy")
    for pre in command.preconditions:
        if pre.id == f"{command.name}.caps" and evaluate(pre.when, GuardEnv(profile, caps=caps)):
            raise UsageError(f"--postcopy-after: {pre.error} (--caps postcopy-ram, on both "
                             f"sides)")


def cmd_incoming(args: argparse.Namespace) -> int:
    from rich.console import Console
    from livemig.engine.vm import VM
    console = Console(stderr=args.json, soft_wrap=True)  # a line is one line: for logs and grep
    check_uri(load_profile(args.profile), args.uri)
    vm = VM(incoming="defer", log=_open_log(args.log), **_vm_kwargs(args))
    failed = threading.Event()
    vm.on_fatal = lambda msg: failed.set()
    try:
        apply_options(vm, args.caps, args.param)
        vm.execute("migrate-incoming", {"uri": args.uri})
        info = vm.execute("query-migrate")
        where = args.uri
        if "socket-address" in info and info["socket-address"][0]["type"] == "inet":
            a = info["socket-address"][0]
            where = f"tcp:{a['host']}:{a['port']}"
        console.print(f"[bold]listening[/] on {where}", highlight=False)
        if not run_incoming_progress(vm, console, timeout=args.timeout):
            console.print(f"[red]timed out[/]: no completed migration within --timeout "
                          f"{args.timeout:g} s; {received_text(received(vm))}",
                          highlight=False)
            return 1
        info = vm.execute("query-migrate")
        status = info.get("status")
        got = received(vm)
        if status != vm.st.completed:
            console.print(f"[red]incoming migration {status}[/] after "
                          f"{received_text(got)}: "
                          f"{vm.incoming.error_desc if vm.incoming else ''}", highlight=False)
            return 1
        vm.execute("stop")
        check = vm.execute("x-livemig-check-memory")
        if args.json:
            counters = vm.incoming.decoder.counters if vm.incoming else None
            pages = dict(vars(counters), multifd=got["multifd"]) if counters else {}
            print(json.dumps({"status": status, "memory-check": check, "pages": pages}))
        else:
            console.print(f"[green]completed[/]: {got['pages']:,} pages, "
                          f"{got['duplicate']:,} zero pages; {memory_check_text(check)}",
                          highlight=False)
            for m in check["messages"]:
                console.print(m, highlight=False)
        return 0 if check["ok"] else 1
    finally:
        vm.close()


def received(vm: Any) -> dict:
    """What the destination has loaded so far, from its session's counters
    (QEMU's destination query-migrate has no ram member to read it from):
    ``pages`` carrying data (main channel, xbzrle, compressed and multifd),
    ``multifd`` (of those, the multifd channels'), ``duplicate`` (zero pages)
    and ``bytes`` (the data pages' guest bytes).  Re-sent pages count again,
    as the source's transferred does."""
    inc = vm.incoming
    if inc is None:
        return {"pages": 0, "multifd": 0, "duplicate": 0, "bytes": 0}
    c = inc.decoder.counters
    # the load thread appends channels and counts pages while we read: copy the
    # list; each count is a plain int, read whole
    multifd = sum(d.pages for d in list(inc.multifd))
    pages = c.normal + c.xbzrle + c.compressed + multifd
    return {"pages": pages, "multifd": multifd, "duplicate": c.duplicate,
            "bytes": pages * vm.guest.page_size}


def received_text(got: dict) -> str:
    """``received(vm)`` in words, for the lines that end an incoming migration."""
    return (f"receiving {got['bytes'] / 2**20:,.1f} MiB ({got['pages']:,} pages + "
            f"{got['duplicate']:,} zero pages)")


def memory_check_text(check: dict) -> str:
    """``x-livemig-check-memory``'s verdict in words, saying what an edge is.

    The guest's workload sweeps the pages from 1 MiB up in address order,
    adding one to each page's first byte, round and round; so in the RAM of a
    stopped guest every first byte equals its neighbour's except at most at one
    *edge*, where the sweep stopped: the page after it is one behind.  QEMU's
    check_guests_ram allows that one edge; anything else is a page lost or
    left stale on the way."""
    edges = check.get("edges", 0)
    if check["ok"]:
        where = ("1 edge: the page where the stopped guest's last sweep ended, one behind "
                 "its neighbour, as QEMU's check_guests_ram allows" if edges == 1
                 else "no edge: the guest stopped between two sweeps, or never ran")
        return (f"memory check [green]passed[/]: every page as the source left it "
                f"({where})")
    return (f"memory check [red]FAILED[/]: {check.get('bad', '?')} pages out of the guest's "
            f"sweep pattern (first bytes equal but for one edge, where a page is one behind "
            f"its neighbour), i.e. lost or stale; {edges} edges seen")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_incoming_progress(vm: Any, console: Any, *, timeout: float = 600.0) -> bool:
    """A progress line for the incoming side until its load ends (True) or
    ``timeout`` s pass (False): status, guest RAM received (data pages; the bar
    is capped at the guest's pages, as re-sent pages count again), zero pages,
    mean receive rate since the first data."""
    from rich.progress import BarColumn, Progress, TextColumn
    total = vm.guest.total_bytes()
    page = vm.guest.page_size
    columns = (TextColumn("[bold]{task.fields[status]:<10}"),
               TextColumn("memory " + memory_text(vm)), BarColumn(bar_width=16),
               TextColumn("{task.fields[data]}"), TextColumn("zero {task.fields[zero]}"),
               TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[elapsed]}"))
    start = time.monotonic()
    deadline = start + timeout
    first_data: Optional[float] = None  # when data first arrived: the rate is the mean since
    with Progress(*columns, console=console, transient=False) as progress:
        # rich's elapsed column stops when the bar is full, which re-sent pages reach
        # early: the time is a field of its own
        task = progress.add_task("incoming", total=total // page, status="", data="",
                                 zero="", rate="", elapsed="")
        while True:
            # one bounded tick: the load thread's end, or 0.2 s
            done = vm.wait_incoming_done(0.2)
            got, now = received(vm), time.monotonic()
            if first_data is None and got["bytes"]:
                first_data = now
            rate = got["bytes"] / max(now - first_data, 1e-3) if first_data is not None else 0
            progress.update(
                task, completed=min(total // page, got["pages"] + got["duplicate"]),
                status=vm.execute("query-migrate").get("status", ""),
                data=f"{got['bytes'] / 2**20:,.0f}/{total / 2**20:,.0f} MiB",
                zero=f"{got['duplicate']:,} pg", rate=f"{rate / 1e6:,.0f} MB/s",
                elapsed=_clock(now - start))
            if done:
                return True
            if now > deadline:
                return False


def _start_postcopy(vm: Any, console: Any) -> None:
    try:
        vm.execute("migrate-start-postcopy")
    except MigrationError as exc:
        console.print(f"[red]migrate-start-postcopy[/]: {exc.message}")


def cmd_migrate(args: argparse.Namespace) -> int:
    from rich.console import Console
    from livemig.engine.vm import VM
    console = Console(stderr=args.json, soft_wrap=True)  # a line is one line: for logs and grep
    check_uri(load_profile(args.profile), args.uri)
    vm = VM(log=_open_log(args.log), **_vm_kwargs(args))
    # Ctrl-C only sets a flag the progress loop reads (a KeyboardInterrupt
    # raised inside the engine's locks could leave them held).
    interrupted = threading.Event()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.set())
    try:
        apply_options(vm, args.caps, args.param)
        if args.postcopy_after is not None:
            check_postcopy_caps(vm.profile, vm.caps)
        vm.execute("migrate", {"uri": args.uri})
        if args.postcopy_after is not None:
            timer = threading.Timer(args.postcopy_after, _start_postcopy, (vm, console))
            timer.daemon = True
            timer.start()
        outcome = watch_progress(vm, console, timeout=args.timeout, interrupted=interrupted)
        info = outcome.info
        if args.json:
            print(json.dumps(info, indent=2))
        else:
            print_summary(console, info, vm.st.completed, outcome.ram)
        if interrupted.is_set():
            return 130
        return 0 if info.get("status") == vm.st.completed else 1
    finally:
        signal.signal(signal.SIGINT, previous)
        vm.close()


@dataclass
class Outcome:
    """How a migration ended, as :func:`watch_progress` saw it."""

    #: the final query-migrate
    info: dict
    #: the last ram counters seen: the final info's, or, where the final info has
    #: none (QEMU shows only the status of a failed or cancelled migration), the
    #: last ones before it ended
    ram: dict = field(default_factory=dict)


def run_progress(vm: Any, console: Any, *, timeout: float = 600.0,
                 interrupted: Optional[threading.Event] = None) -> dict:
    """:func:`watch_progress`'s final info (for callers that need no more)."""
    return watch_progress(vm, console, timeout=timeout, interrupted=interrupted).info


def watch_progress(vm: Any, console: Any, *, timeout: float = 600.0,
                   interrupted: Optional[threading.Event] = None) -> Outcome:
    """Show a rich progress bar until the migration ends; returns how it ended.

    After ``timeout`` s, or once ``interrupted`` is set (Ctrl-C), it says so and
    cancels the migration (:func:`cancel`)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    total = vm.guest.total_bytes()
    columns = (TextColumn("[bold]{task.fields[status]:<10}"),
               TextColumn("memory " + memory_text(vm)), BarColumn(),
               TextColumn("{task.fields[xfer]}"), TextColumn("{task.fields[rate]}"),
               TextColumn("dirty {task.fields[dirty]}"), TextColumn("pass {task.fields[pass]}"),
               TextColumn("exp. downtime {task.fields[downtime]}"), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    terminal = vm.st.terminal
    last_ram: dict = {}
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("migrate", total=total, status=vm.st.setup, xfer="", rate="",
                                 dirty="", downtime="", **{"pass": 0})
        while True:
            info = vm.execute("query-migrate")
            # a failed or cancelled info has no ram: keep showing what was sent
            ram = last_ram = info.get("ram") or last_ram
            sent = ram.get("transferred", 0)
            progress.update(
                task, completed=min(total, total - ram.get("remaining", total)) if ram else 0,
                status=info.get("status", ""),
                xfer=f"{sent / 2**20:,.0f}/{total / 2**20:,.0f} MiB",
                rate=f"{ram.get('mbps', 0) / 8:,.0f} MB/s",
                dirty=f"{ram.get('dirty-pages-rate', 0):,} pg/s",
                downtime=f"{info.get('expected-downtime', info.get('downtime', 0))} ms",
                **{"pass": ram.get("dirty-sync-count", 0)})
            if info.get("status") in terminal:
                if info.get("status") == vm.st.completed:
                    progress.update(task, completed=total)
                vm.wait_outgoing_done(30)
                final = vm.execute("query-migrate")
                return Outcome(final, final.get("ram") or last_ram)
            why = ("interrupted (Ctrl-C)" if interrupted is not None and interrupted.is_set()
                   else f"timed out: not completed within --timeout {timeout:g} s"
                   if time.monotonic() > deadline else None)
            if why:
                progress.stop()
                console.print(f"{why}; cancelling the migration (migrate_cancel)",
                              highlight=False, soft_wrap=True)
                # the counters just before the cancel: afterwards query-migrate has none
                last_ram = vm.execute("query-migrate").get("ram") or last_ram
                final = cancel(vm, console)
                return Outcome(final, final.get("ram") or last_ram)
            vm.src_cell.wait_for(lambda s: s in terminal, 0.2)


def cancel(vm: Any, console: Any) -> dict:
    """``migrate_cancel``, then wait (at most CANCEL_WAIT s) for the end; the final info."""
    vm.execute("migrate_cancel")
    if not vm.wait_outgoing_done(CANCEL_WAIT):
        console.print(f"the migration did not end within {CANCEL_WAIT:g} s of migrate_cancel",
                      highlight=False)
    return vm.execute("query-migrate")


def _passes(n: int) -> str:
    return f"{n} pass" if n == 1 else f"{n} passes"


def print_summary(console: Any, info: dict, completed: str,
                  last_ram: Optional[dict] = None) -> None:
    """A final summary of a MigrationInfo (``completed``: the profile's name for it).

    ``last_ram``: the last ram counters seen before the end (:class:`Outcome`),
    said as what was sent when the final info has none, as for a failed or
    cancelled migration."""
    ram = info.get("ram", {})
    status = info.get("status")
    colour = "green" if status == completed else "red"
    console.print(f"[{colour}]{status}[/]", end="")
    if ram:
        mib = ram.get("transferred", 0) / 2**20
        secs = info.get("total-time", 0) / 1000
        console.print(f": {mib:,.1f} MiB in {secs:.2f} s ({mib / max(secs, 1e-9):,.0f} MiB/s), "
                      f"{ram.get('normal', 0):,} pages + {ram.get('duplicate', 0):,} zero pages, "
                      f"{ram.get('dirty-sync-count', 0)} passes, downtime "
                      f"{info.get('downtime', '?')} ms", highlight=False)
    elif last_ram:
        total = last_ram.get("total", 0) / 2**20
        console.print(f": sent {last_ram.get('transferred', 0) / 2**20:,.1f} MiB "
                      f"(of {total:,.0f} MiB of RAM) before it ended: "
                      f"{last_ram.get('normal', 0):,} pages + "
                      f"{last_ram.get('duplicate', 0):,} zero pages, "
                      f"{_passes(last_ram.get('dirty-sync-count', 0))} "
                      f"(the last counters query-migrate showed)", highlight=False,
                      soft_wrap=True)
    else:
        console.print()
    if info.get("error-desc"):
        console.print(f"error: {info['error-desc']}")
