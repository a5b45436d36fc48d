"""livemig and a real QEMU 7.2 as the two ends of one migration (issue 12).

Theory of operation
-------------------
:class:`QemuPeerPair` runs a livemig :class:`~livemig.engine.vm.VM` in this
process (machine type ``pc-i440fx-7.2``) and one QEMU process
(:class:`~livemig.conformance.qemu_vm.QemuVM`); one of them is the source,
the other the destination.  Each is wrapped in a :class:`Side` that speaks
one vocabulary, so a test (or the stateful machine) says *the source* and
*the destination* and never which program that is:

* ``execute(cmd, args)`` -- a QMP command, raising on an error
  (:class:`~livemig.errors.MigrationError` from livemig,
  :class:`~livemig.engine.qmpclient.QMPCommandError` from QEMU);
* ``status()`` / ``wait_status(wanted, timeout)`` -- query-migrate's status;
* ``read(offset, length)`` on the destination -- the sha256 of a range of
  guest RAM read as the guest would: in postcopy a missing page is
  requested from the source and waited for;
* ``ram_sha256()`` and ``postcopy_requests()``.

Why QEMU runs the way it does:

* its RAM is a ``memory-backend-file`` with ``share=on`` named ``pc.ram``
  (livemig's main block has that name), so it can be hashed from the file
  after completion.  The file is in ``/dev/shm``: QEMU's postcopy
  destination registers RAM with userfaultfd in MISSING mode, which the
  kernel allows on anonymous, shmem and hugetlbfs memory only (a file on
  ext4 fails ``ram_block_enable_notify`` with EINVAL).
* a QEMU destination runs with ``-S``.  After POSTCOPY_RUN its guest stays
  paused, so nothing writes its RAM after the switch and it can be compared
  with the source's (frozen since the switch).  Its faults are real
  userfaultfd faults all the same: ``pmemsave`` reads guest-physical memory
  from QEMU's main thread, which blocks in the kernel until QEMU's fault
  thread has requested the page on the return path and placed it.  (A
  running guest would fault on its firmware's blocks too -- ``pc.bios``
  -- which a livemig guest does not have.)
* a livemig destination's guest does not write either (workload 0 pages/s);
  its reads are ``x-livemig-read-ram``, which faults the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import itertools
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Optional

import numpy as np

from livemig.conformance.qemu_vm import QemuVM, qemu_binary, qemu_version
from livemig.engine.vm import VM

__all__ = ["MACHINE", "QemuPeerPair", "Side", "pc_machine_args", "why_not_qemu_72"]

Role = Literal["source", "destination"]
#: the QEMU machine type both ends run (the qemu-7.2 profile declares it)
MACHINE = "pc-i440fx-7.2"
RAM_MIB = 64
#: the RAM block both ends call their main RAM (QEMU: the memory backend's id)
RAM_BLOCK = "pc.ram"
#: where QEMU's RAM file lives: shmem (see the module doc)
SHM_DIR = "/dev/shm"


def why_not_qemu_72() -> str:
    """Why a real QEMU 7.2 cannot be used here, or "" when it can (the
    qemu-7.2 profile and the recorded answers come from QEMU 7.2)."""
    if qemu_binary() is None:
        return "qemu-system-x86_64 is not installed"
    try:
        version = qemu_version()
    except (OSError, subprocess.SubprocessError) as exc:
        return f"qemu-system-x86_64 --version failed: {exc}"
    if "version 7.2" not in version:
        return f"qemu-system-x86_64 is not 7.2 (the qemu-7.2 profile's version): {version}"
    return ""


def pc_machine_args(mem: Path, backend_id: str = RAM_BLOCK, ram_mib: int = RAM_MIB) -> list[str]:
    """``-M pc -m RAM`` whose RAM is ``mem`` (a shared memory-backend-file,
    hashed from the file), its RAM block named ``backend_id``."""
    return ["-machine", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
            "-serial", "none", "-monitor", "none", "-m", str(ram_mib),
            "-object", f"memory-backend-file,id={backend_id},size={ram_mib}M,mem-path={mem},"
                       "share=on",
            "-machine", f"memory-backend={backend_id}"]


class Side:
    """One end of the migration (see the module doc)."""

    def __init__(self, program: str, role: Role) -> None:
        self.program = program  # "livemig" or "qemu"
        self.role = role

    def __repr__(self) -> str:
        return f"<{self.program} {self.role}>"

    def execute(self, cmd: str, args: Optional[dict] = None) -> Any:
        raise NotImplementedError

    def status(self) -> str:
        raise NotImplementedError

    def wait_status(self, wanted: Iterable[str], timeout: float) -> str:
        """Wait (bounded) until the status is one of ``wanted``; the status
        then.  Raises TimeoutError with the status seen last."""
        raise NotImplementedError

    def read(self, offset: int, length: int) -> str:
        raise NotImplementedError

    def wait_run(self, timeout: float) -> None:
        """A destination: until POSTCOPY_RUN is handled (its guest left
        inmigrate).  Before it a broken channel fails the destination
        instead of pausing it (7.2's dst.pause needs RUNNING)."""
        raise NotImplementedError

    def ram_sha256(self) -> str:
        raise NotImplementedError

    def error_desc(self) -> Optional[str]:
        raise NotImplementedError

    def postcopy_requests(self) -> int:
        return int(self.execute("query-migrate").get("ram", {}).get("postcopy-requests", 0))


class LivemigSide(Side):
    def __init__(self, vm: VM, role: Role) -> None:
        super().__init__("livemig", role)
        self.vm = vm

    def execute(self, cmd: str, args: Optional[dict] = None) -> Any:
        return self.vm.execute(cmd, args)

    def status(self) -> str:
        return (self.vm.src_cell if self.role == "source" else self.vm.dst_cell).state

    def wait_status(self, wanted: Iterable[str], timeout: float) -> str:
        wanted = set(wanted)
        if not self.vm.wait_for_status(wanted, timeout, side=self.role):
            raise TimeoutError(f"livemig {self.role}: not {sorted(wanted)} after {timeout} s "
                               f"(status {self.status()})")
        return self.status()

    def read(self, offset: int, length: int) -> str:
        return self.vm.execute("x-livemig-read-ram",
                               {"id": RAM_BLOCK, "offset": offset, "length": length})["sha256"]

    def wait_run(self, timeout: float) -> None:
        if not self.vm.guest.wait_run_state({"running", "paused"}, timeout):
            raise TimeoutError(f"livemig {self.role}: still {self.vm.guest.run_state}")

    def ram_sha256(self) -> str:
        blocks = {b["id"]: b for b in self.vm.execute("x-livemig-query-ram")}
        return blocks[RAM_BLOCK]["sha256"]

    def error_desc(self) -> Optional[str]:
        return self.vm.query_migrate().get("error-desc")


class QemuSide(Side):
    def __init__(self, qemu: QemuVM, role: Role, mem: Path) -> None:
        super().__init__("qemu", role)
        self.qemu = qemu
        self.mem = mem
        self._dumps = itertools.count()

    def execute(self, cmd: str, args: Optional[dict] = None) -> Any:
        return self.qemu.command(cmd, args)

    def status(self) -> str:
        return self.qemu.migration_status()

    def wait_status(self, wanted: Iterable[str], timeout: float) -> str:
        wanted = set(wanted)
        try:
            return self.qemu.wait_for(lambda q: q.migration_status(), wanted.__contains__,
                                      timeout, what=f"QEMU {self.role} status in {sorted(wanted)}")
        except Exception as exc:
            raise TimeoutError(str(exc)) from None

    def read(self, offset: int, length: int) -> str:
        """``pmemsave``: QEMU's main thread reads guest-physical memory (the
        guest's RAM starts at address 0 of the pc machine, below 3.5 GiB)."""
        dump = Path(self.qemu.workdir or tempfile.gettempdir()) / f"read-{next(self._dumps)}.bin"
        self.qemu.command("pmemsave", {"val": offset, "size": length, "filename": str(dump)})
        data = dump.read_bytes()
        dump.unlink()
        return hashlib.sha256(data).hexdigest()

    def wait_run(self, timeout: float) -> None:
        self.qemu.wait_for(lambda q: q.status(), lambda s: s != "inmigrate", timeout,
                           what="QEMU destination out of inmigrate")

    def ram_sha256(self) -> str:
        return hashlib.sha256(self.mem.read_bytes()).hexdigest()

    def error_desc(self) -> Optional[str]:
        return self.qemu.command("query-migrate").get("error-desc")


class QemuPeerPair:
    """A livemig VM and a QEMU process, ``qemu_role`` being QEMU's role.

    ``transport`` (``unix`` or ``tcp``) is the main channel's; recoveries
    listen on a fresh unix socket each.  ``caps`` are set on both ends.
    Use as a context manager: QEMU is killed and the livemig VM closed on
    exit, and QEMU's RAM file is removed."""

    def __init__(self, workdir: Path, *, qemu_role: Role, transport: str = "unix",
                 caps: Iterable[str] = ("events", "return-path", "postcopy-ram"),
                 seed: int = 7, source_workload: float = 2000.0) -> None:
        self.workdir = Path(workdir)
        self.transport = transport
        self.caps = [{"capability": c, "state": True} for c in caps]
        self._recoveries = itertools.count(1)
        self.mem = Path(tempfile.mkstemp(prefix="livemig-qemu-ram-", dir=SHM_DIR)[1])
        if qemu_role == "source":  # random pages (as livemig's guest): zero ones go in a blink
            self.mem.write_bytes(np.random.default_rng(seed).bytes(RAM_MIB << 20))
        livemig_role: Role = "destination" if qemu_role == "source" else "source"
        # -S: a QEMU source is started (cont) below; a destination stays paused
        self.qemu = QemuVM(role=qemu_role, name=f"qemu-{qemu_role}", workdir=str(self.workdir),
                           machine_args=pc_machine_args(self.mem), extra_args=["-S"])
        if livemig_role == "source":
            self.vm = VM(ram_size=RAM_MIB << 20, machine=MACHINE, seed=seed,
                         workload_rate=source_workload)
        else:
            self.vm = VM(ram_size=RAM_MIB << 20, machine=MACHINE, incoming="defer",
                         workload_rate=0.0)
        qemu_side = QemuSide(self.qemu, qemu_role, self.mem)
        ours = LivemigSide(self.vm, livemig_role)
        self.source, self.destination = ((qemu_side, ours) if qemu_role == "source"
                                         else (ours, qemu_side))
        try:
            self.qemu.start()
            for side in (self.source, self.destination):
                side.execute("migrate-set-capabilities", {"capabilities": self.caps})
            if qemu_role == "source":
                self.qemu.command("cont")  # a running guest: its firmware writes RAM meanwhile
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "QemuPeerPair":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.qemu.close()
        finally:
            self.vm.close()
            with contextlib.suppress(OSError):
                self.mem.unlink()

    # ------------------------------------------------------------ the channel
    def _listen(self, command: str, uri: str) -> str:
        """``command`` (migrate-incoming / migrate-recover) on the destination;
        the URI the source connects to (a tcp port 0 resolved)."""
        self.destination.execute(command, {"uri": uri})
        if not uri.endswith(":0"):
            return uri
        if isinstance(self.destination, LivemigSide):
            return self.vm._listener.connect_uri
        port = self.qemu.command("query-migrate")["socket-address"][0]["port"]
        return f"tcp:127.0.0.1:{port}"

    def start(self, *, bandwidth: int = 8 << 20, postcopy_bandwidth: int = 1 << 20,
              route: Optional[Callable[[str], str]] = None) -> str:
        """Listen on the destination and start the migration on the source;
        the URI the source connects to (``route(uri)`` when given: e.g. a
        fault relay's URI in front of the destination's).  The bandwidths are
        slow enough that a test can fault pages the background transfer has
        not sent yet, and that postcopy lasts (about a minute for 64 MiB)
        even when a loaded machine is slow to look: :meth:`unthrottle` or
        :meth:`finish` let it end."""
        uri = (f"unix:{self.workdir}/migrate.sock" if self.transport == "unix"
               else "tcp:127.0.0.1:0")
        uri = self._listen("migrate-incoming", uri)
        if route is not None:
            uri = route(uri)
        self.source.execute("migrate-set-parameters", {
            "max-bandwidth": bandwidth, "max-postcopy-bandwidth": postcopy_bandwidth})
        self.source.execute("migrate", {"uri": uri})
        return uri

    def recover(self, route: Optional[Callable[[str], str]] = None) -> str:
        """migrate-recover on the destination, then ``migrate resume=true``
        (to ``route(uri)`` when given)."""
        uri = self._listen("migrate-recover",
                           f"unix:{self.workdir}/recover-{next(self._recoveries)}.sock")
        if route is not None:
            uri = route(uri)
        self.source.execute("migrate", {"uri": uri, "resume": True})
        return uri

    def unthrottle(self) -> None:
        """Let the rest of postcopy go at full speed (both engines apply a
        changed max-postcopy-bandwidth at once)."""
        self.source.execute("migrate-set-parameters", {"max-postcopy-bandwidth": 0})

    def finish(self, timeout: float = 60.0) -> None:
        """Limits lifted; both ends must reach ``completed`` (bounded) and
        hold the same RAM (AssertionError with the failed side's error)."""
        self.unthrottle()
        for side in (self.source, self.destination):
            status = side.wait_status({"completed", "failed"}, timeout)
            assert status == "completed", f"{side}: {status}: {side.error_desc()}"
        assert self.source.ram_sha256() == self.destination.ram_sha256(), "RAM differs"
