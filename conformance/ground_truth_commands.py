"""Ground truth, job 3 of 3: command preconditions, recorded in real migrations.

Job
---
:class:`CommandRecorder` runs scenarios on fresh QEMUs (an idle source and
destination, a precopy paused before switchover, postcopy paused and
recovered, postcopy's dead ends) and, at each interesting state, sends the
migration commands and records each call with its *context*: the migration
status of both sides, the run state, the capabilities that are on, the flags
the scenario knows to hold and the host facts it brought about.

Rules
-----
* The states to reach come from the spec (capability names from the
  preconditions and guards, statuses from the rows), not from QEMU names
  written here.
* Every wait for a state is bounded (:meth:`QemuVM.wait_for`); a scenario
  that breaks is reported and the others still run, keeping its records.
* One scenario's QEMUs are killed when it ends (context managers); no state
  is carried from one scenario to the next.
"""
from __future__ import annotations

import os
import random
from typing import Callable, Optional, Sequence

from livemig.conformance.ground_truth_qemu import reply_fields
from livemig.conformance.qemu_vm import QemuVM, Reply
from livemig.spec import expr as E
from livemig.spec.schema import Profile

__all__ = ["CommandRecorder", "precondition_caps"]


def precondition_caps(profile: Profile, cmd: str) -> list[str]:
    """Capability names the preconditions of ``cmd`` read, in spec order."""
    out: list[str] = []
    for pre in profile.command(cmd).preconditions:
        for n in sorted(E.names(pre.when, E.Cap)):
            if n not in out:
                out.append(n)
    return out


class CommandRecorder:
    """Runs command scenarios and records each call with its context."""

    def __init__(self, profile: Profile, workdir: str, binary: Optional[str]) -> None:
        self.profile = profile
        self.workdir = workdir
        self.binary = binary
        self.records: list[dict] = []
        self._n = 0
        self._outgoing: set[int] = set()
        self.failed: list[str] = []
        self._incoming_seen: dict[int, str] = {}

    def vm(self, side: str, extra_args: Sequence[str] = ()) -> QemuVM:
        self._n += 1
        return QemuVM(role=side, name=f"cmd{self._n}-{side}", workdir=self.workdir,
                      binary=self.binary, extra_args=tuple(extra_args)).start()

    def ram_blob_args(self, size: int = 16 << 20) -> list[str]:
        """Arguments that preload ``size`` random bytes at guest address 1 MiB.

        An idle guest's RAM is nearly all zero pages, which cost almost
        nothing on the wire; random pages make postcopy last long enough to
        be paused under a small bandwidth limit.
        """
        path = os.path.join(self.workdir, "ram-blob.bin")
        if not os.path.exists(path):
            with open(path, "wb") as f:
                f.write(random.Random(0).randbytes(size))
        return ["-device", f"loader,file={path},addr=0x100000,force-raw=on"]

    def call(self, scenario: str, vm: QemuVM, side: str, cmd: str,
             args: Optional[dict] = None, flags: Optional[dict] = None,
             peer: Optional[QemuVM] = None, host: Optional[dict] = None) -> Reply:
        """Run ``cmd`` on ``vm`` (started as ``side``) and record it with its context.

        ``context.states`` is the process's own view: a source process has
        no incoming migration (``none``); a destination process has no
        outgoing one until it runs ``migrate`` itself (QMP's query-migrate
        shows the outgoing state once there is one, so the last incoming
        state seen is kept).  ``peer_status`` is the other VM's status.
        ``flags`` are the spec's environment/command flags the scenario
        knows to hold (e.g. ``uri_invalid`` when it passes a bad URI); ``host``
        overrides of the spec's host facts that the scenario brought about.
        """
        caps = [c["capability"] for c in vm.command("query-migrate-capabilities") if c["state"]]
        key = id(vm)
        status = vm.migration_status()
        none = self.profile.status_names[0]
        if side == "source":
            states = {"source": status, "destination": none}
        elif key in self._outgoing:
            states = {"source": status, "destination": self._incoming_seen.get(key, none)}
        else:
            self._incoming_seen[key] = status
            states = {"source": none, "destination": status}
        context = {"states": states, "runstate": vm.status(), "caps_on": caps,
                   "flags": flags or {}, "host": host or {},
                   "peer_status": peer.migration_status() if peer is not None else None}
        reply = vm.execute(cmd, args)
        if side == "destination" and cmd == "migrate" and reply[0] == "ok":
            self._outgoing.add(key)
        self.records.append({"kind": "command", "scenario": scenario, "side": side, "cmd": cmd,
                             "args": args, "context": context, **reply_fields(reply),
                             "result": reply[1] if reply[0] == "ok" else None,
                             "status_after": vm.migration_status() if vm.alive else None})
        return reply

    def _slow_postcopy_ready(self, src: QemuVM, dst: QemuVM, uri: str,
                             src_caps: Sequence[str], dst_caps: Sequence[str]) -> str:
        """Make ready a postcopy slow enough to be caught in any state.

        The destination listens on ``uri``, the capabilities are switched on,
        and postcopy is throttled to 4 KiB/s (precopy to 1 MiB/s) so that it
        lasts until the scenario pauses it.  Returns the destination's run
        state before the migration, to see postcopy's RUN arrive by.
        """
        incoming_runstate = dst.status()
        dst.command("migrate-incoming", {"uri": uri})
        src.command("migrate-set-capabilities", {"capabilities": [
            {"capability": c, "state": True} for c in src_caps]})
        dst.command("migrate-set-capabilities", {"capabilities": [
            {"capability": c, "state": True} for c in dst_caps]})
        src.command("migrate-set-parameters", {"max-postcopy-bandwidth": 4096,
                                               "max-bandwidth": 1 << 20})
        return incoming_runstate

    @staticmethod
    def _wait_postcopy_run(dst: QemuVM, incoming_runstate: str) -> None:
        """Until the destination has processed postcopy's RUN (it leaves ``incoming_runstate``)."""
        dst.wait_for(lambda v: v.status(), lambda r: r != incoming_runstate, timeout=60,
                     what="the destination to process postcopy's RUN")

    def _call_with_each_cap_on(self, scenario: str, vm: QemuVM, side: str, cmd: str) -> None:
        """``cmd`` once with each capability its preconditions read switched on alone."""
        for cap in precondition_caps(self.profile, cmd):
            vm.command("migrate-set-capabilities",
                       {"capabilities": [{"capability": cap, "state": True}]})
            self.call(scenario + f", {cap} on", vm, side, cmd)
            vm.command("migrate-set-capabilities",
                       {"capabilities": [{"capability": cap, "state": False}]})

    # ---- scenarios -----------------------------------------------------
    def idle_source(self) -> None:
        """A running VM that never migrated: every command in state none."""
        p = self.profile
        with self.vm("source") as vm:
            sc = "source idle"
            self.call(sc, vm, "source", "migrate-start-postcopy")
            self._call_with_each_cap_on(sc, vm, "source", "migrate-start-postcopy")
            for status in [*p.status_names, "nope", ""]:
                self.call(sc, vm, "source", "migrate-continue", {"state": status})
            self.call(sc, vm, "source", "migrate-continue", {})
            self.call(sc, vm, "source", "migrate-pause")
            self.call(sc, vm, "source", "migrate-recover", {"uri": "unix:/nonexistent"})
            self.call(sc, vm, "source", "migrate-incoming", {"uri": "unix:/nonexistent"})
            self.call(sc, vm, "source", "migrate-incoming", {"uri": "nope:x"},
                      {"uri_invalid": True})
            self.call(sc, vm, "source", "migrate_cancel")
            self.call(sc, vm, "source", "migrate-cancel")
            self.call(sc, vm, "source", "migrate", {"uri": "unix:/nonexistent", "resume": True})
            for cap in precondition_caps(p, "migrate"):
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": True}]})
                for args in ({"uri": "nope:x", "resume": True}, {"uri": "nope:x", "blk": True},
                             {"uri": "nope:x", "inc": True}):
                    self.call(sc + f", {cap} on", vm, "source", "migrate", args,
                              {"uri_invalid": True})
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})
            self.call(sc, vm, "source", "migrate", {})
            self.call(sc, vm, "source", "migrate", {"uri": 5})
            self.call(sc, vm, "source", "migrate", {"uri": "unix:/x", "resume": "yes"})
            self.call(sc, vm, "source", "migrate", {"uri": "unix:/x", "bogus": 1})
        # bad URIs: each fails and leaves the source in failed; one VM per URI family
        with self.vm("source") as vm:
            sc = "source bad uri"
            for uri in ("nope:x", "", "unix", "tcp", "foo", "file:/tmp/x"):
                self.call(sc, vm, "source", "migrate", {"uri": uri}, {"uri_invalid": True})
            # the migration now failed: commands in state failed
            self.call(sc + " (after)", vm, "source", "migrate-start-postcopy")
            for cap in precondition_caps(p, "migrate-start-postcopy")[:1]:
                vm.command("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": True}]})
                self.call(sc + f" (after), {cap} on", vm, "source", "migrate-start-postcopy")
            for status in p.status_names:
                self.call(sc + " (after)", vm, "source", "migrate-continue", {"state": status})
            self.call(sc + " (after)", vm, "source", "migrate-pause")
            self.call(sc + " (after)", vm, "source", "migrate", {"uri": "unix:/x",
                                                                 "resume": True})
        # a URI that parses but cannot connect: async failure
        with self.vm("source") as vm:
            sc = "source unreachable uri"
            path = os.path.join(self.workdir, "nobody-listens.sock")
            self.call(sc, vm, "source", "migrate", {"uri": f"unix:{path}"})
            vm.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                        timeout=20, what="the failed connect to settle")
            self.call(sc + " (after)", vm, "source", "migrate-start-postcopy")

    def idle_destination(self) -> None:
        """A ``-incoming defer`` VM: commands before and after migrate-incoming."""
        p = self.profile
        with self.vm("destination") as vm:
            sc = "destination deferred"
            self.call(sc, vm, "destination", "migrate", {"uri": "unix:/nonexistent"})
            self.call(sc, vm, "destination", "migrate", {"uri": "nope:x"},
                      {"uri_invalid": True})
            self.call(sc, vm, "destination", "migrate", {"uri": "unix:/x", "resume": True})
            self.call(sc, vm, "destination", "migrate-start-postcopy")
            self._call_with_each_cap_on(sc, vm, "destination", "migrate-start-postcopy")
            self.call(sc, vm, "destination", "migrate-pause")
            self.call(sc, vm, "destination", "migrate-recover", {"uri": "unix:/nonexistent"})
            for status in p.status_names:
                self.call(sc, vm, "destination", "migrate-continue", {"state": status})
            self.call(sc, vm, "destination", "migrate_cancel")
            self.call(sc, vm, "destination", "migrate-incoming", {})
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": 1})
            # an unknown protocol fails and does not consume the "once" flag
            for uri in ("nope:x", "", "unix"):
                self.call(sc, vm, "destination", "migrate-incoming", {"uri": uri},
                          {"uri_invalid": True})
            path = os.path.join(self.workdir, f"in{self._n}.sock")
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": f"unix:{path}"})
            sc = "destination listening"
            flags = {"incoming_started": True}
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": f"unix:{path}2"},
                      flags)
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": "nope:x"},
                      {**flags, "uri_invalid": True})
            self.call(sc, vm, "destination", "migrate-recover", {"uri": f"unix:{path}3"},
                      flags)
            self.call(sc, vm, "destination", "migrate-pause", None, flags)
            self.call(sc, vm, "destination", "migrate", {"uri": "unix:/x"}, flags)
            self.call(sc, vm, "destination", "query-migrate", None, flags)
            # capabilities may still change on a listening destination (7.2)
            for cap in p.capability_names():
                self.call(sc, vm, "destination", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": True}]}, flags)
                vm.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})
        # a destination listening on a transport that allows one channel only
        with self.vm("destination") as vm:
            sc = "destination listening on exec"
            self.call(sc, vm, "destination", "migrate-incoming", {"uri": "exec:sleep 60"})
            flags = {"incoming_started": True}
            # exec: carries one channel only: the spec's host fact for it is now false
            host = {"multi_channels_allowed": False}
            for cap in p.capability_names():
                self.call(sc, vm, "destination", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": True}]}, flags,
                          host=host)
                vm.execute("migrate-set-capabilities",
                           {"capabilities": [{"capability": cap, "state": False}]})

    def running_migration(self) -> None:
        """A real migration paused before switchover, then completed.

        The pausing capability and the pause status come from the spec row
        ``src.completion.pre_switchover`` (a precopy that converges with that
        capability on stops there until migrate-continue).
        """
        p = self.profile
        row = p.transition("src.completion.pre_switchover")
        pause_caps = sorted(E.names(row.guard, E.Cap))
        pause_state = row.new
        settled = set(p.terminal) | {pause_state}
        with self.vm("source") as src, self.vm("destination") as dst:
            sock = os.path.join(self.workdir, f"mig{self._n}.sock")
            dst.command("migrate-incoming", {"uri": f"unix:{sock}"})
            caps = [{"capability": c, "state": True} for c in pause_caps]
            src.command("migrate-set-capabilities", {"capabilities": caps})
            dst.command("migrate-set-capabilities", {"capabilities": caps})
            self.call("source migrate", src, "source", "migrate", {"uri": f"unix:{sock}"},
                      peer=dst)
            paused = src.wait_for(lambda v: v.migration_status(), lambda s: s in settled,
                                  timeout=120, what="the source to pause before switchover")
            sc = f"source {paused}"
            for status in [*p.status_names, "nope"]:
                if status != paused:
                    self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities",
                      {"capabilities": []}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities",
                      {"capabilities": [{"capability": "nope", "state": True}]}, peer=dst)
            for cap in p.capability_names()[:3]:
                self.call(sc, src, "source", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": False}]}, peer=dst)
            self.call(sc, src, "source", "migrate-set-parameters",
                      {"downtime-limit": 301}, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}"}, peer=dst)
            bad = {"uri_invalid": True}
            self.call(sc, src, "source", "migrate", {"uri": "nope:x"}, bad, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": "nope:x", "resume": True}, bad,
                      peer=dst)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, dst, "destination", "migrate-pause", peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": "unix:/x"}, peer=src)
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": "unix:/x"},
                      {"incoming_started": True}, peer=src)
            # 7.2 checks only the source object's status: a destination whose
            # incoming migration is active may still change capabilities.
            for cap in p.capability_names()[:4]:
                self.call(sc, dst, "destination", "migrate-set-capabilities",
                          {"capabilities": [{"capability": cap, "state": False}]},
                          {"incoming_started": True}, peer=src)
            self.call(sc, dst, "destination", "migrate-set-parameters", {"downtime-limit": 299},
                      {"incoming_started": True}, peer=src)
            if paused == pause_state:
                self.call(sc, src, "source", "migrate-continue", {"state": paused}, peer=dst)
            done = src.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                                timeout=120, what="the migration to finish")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                         timeout=60, what="the destination to finish")
            sc = f"source {done} (after migration)"
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}"}, peer=dst)
            for status in p.status_names:
                self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities",
                      {"capabilities": [{"capability": c, "state": False} for c in pause_caps]},
                      peer=dst)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, src, "source", "migrate_cancel", peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": "unix:/x", "resume": True}, peer=dst)
            sc = "destination after migration"
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": "unix:/x"},
                      {"incoming_started": True}, peer=src)
            self.call(sc, dst, "destination", "migrate", {"uri": "unix:/x"}, peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": "unix:/x"}, peer=src)
            self.call(sc, dst, "destination", "migrate-pause", peer=src)

    def postcopy_pause_recover(self) -> None:
        """A real postcopy migration, paused with migrate-pause and recovered.

        Capabilities and statuses come from spec rows: the destination pause
        row's capability, the postcopy switch row's new status, the pause
        rows' new status.  The source's postcopy bandwidth is throttled (as
        QEMU's own recovery test does) so that postcopy lasts long enough.
        """
        p = self.profile
        pc_caps = sorted(E.names(p.transition("dst.pause").guard, E.Cap))
        pc_active = p.transition("src.postcopy_start.switch").new
        paused = p.transition("src.postcopy_pause").new
        recover = p.transition("dst.recover.accept").new
        caps = [{"capability": c, "state": True} for c in pc_caps]
        blob = self.ram_blob_args()
        # -S on the destination: after postcopy's RUN its vCPUs stay stopped, so no
        # vCPU can block on a missing page while holding the big lock, which on
        # TCG intermittently froze the destination's monitor once paused.
        with self.vm("source", blob) as src, self.vm("destination", blob + ["-S"]) as dst:
            sock = os.path.join(self.workdir, f"pc{self._n}")
            incoming_runstate = self._slow_postcopy_ready(src, dst, f"unix:{sock}-1",
                                                          pc_caps, pc_caps)
            started = {"incoming_started": True}
            self.call("postcopy", src, "source", "migrate", {"uri": f"unix:{sock}-1"}, peer=dst)
            self.call("postcopy", src, "source", "migrate-start-postcopy", peer=dst)
            src.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                         or s in p.terminal, timeout=120, what="the source to enter postcopy")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                         or s in p.terminal, timeout=60, what="the destination to enter postcopy")
            self._wait_postcopy_run(dst, incoming_runstate)
            sc = f"both {src.migration_status()}"
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            for status in p.status_names:
                self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities", {"capabilities": caps},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-x"}, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-x", "resume": True},
                      peer=dst)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-x"},
                      started, peer=src)
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": f"unix:{sock}-x"},
                      started, peer=src)
            self.call(sc, dst, "destination", "migrate-set-capabilities",
                      {"capabilities": caps}, started, peer=src)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            src.wait_for(lambda v: v.migration_status(), lambda s: s == paused
                         or s in p.terminal, timeout=60, what="the source to pause")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s == paused
                         or s in p.terminal, timeout=60, what="the destination to pause")
            sc = f"both {src.migration_status()}"
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, dst, "destination", "migrate-pause", None, started, peer=src)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            for status in p.status_names:
                self.call(sc, src, "source", "migrate-continue", {"state": status}, peer=dst)
            self.call(sc, src, "source", "migrate-set-capabilities", {"capabilities": []},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-x"}, peer=dst)
            self.call(sc, src, "source", "migrate-recover", {"uri": f"unix:{sock}-x"}, peer=dst)
            # (not `migrate` on the paused destination: 7.2 answers "duplicate yank
            # instance" and leaves that process's outgoing status in setup, which
            # hides the incoming status from query-migrate for the rest of the run)
            self.call(sc, dst, "destination", "migrate-incoming", {"uri": f"unix:{sock}-x"},
                      started, peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": "nope:x"},
                      {**started, "uri_invalid": True}, peer=src)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-2"},
                      started, peer=src)
            sc = f"{sc}, destination recovering"
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-3"},
                      {**started, "recover_listening": True}, peer=src)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-3", "resume": True},
                      peer=dst)
            back = src.wait_for(lambda v: v.migration_status(),
                                lambda s: s not in (paused, recover), timeout=60,
                                what="the source to leave recovery")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s not in (paused, recover),
                         timeout=60, what="the destination to leave recovery")
            sc = f"both {back} again"
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-3", "resume": True},
                      peer=dst)
            self.call(sc, dst, "destination", "migrate-recover", {"uri": f"unix:{sock}-4"},
                      started, peer=src)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            src.command("migrate-set-parameters", {"max-postcopy-bandwidth": 0})
            done = src.wait_for(lambda v: v.migration_status(), lambda s: s in p.terminal,
                                timeout=120, what="the postcopy migration to finish")
            self.call(f"source {done} after postcopy", src, "source", "migrate-pause", peer=dst)
            self.call(f"source {done} after postcopy", src, "source", "migrate-start-postcopy",
                      peer=dst)

    def postcopy_paused_dead_ends(self) -> None:
        """Postcopy paused with release-ram on: the calls that cannot recover.

        ``migrate resume=true`` is refused because of release-ram (the
        capability comes from the spec's precondition); ``migrate`` on the
        paused destination; then ``migrate_cancel`` on the paused source,
        which 7.2 accepts and leaves in cancelling (facts §1.7).  No recovery
        is attempted: both QEMUs are killed at the end.
        """
        p = self.profile
        pc_caps = sorted(E.names(p.transition("dst.pause").guard, E.Cap))
        pre = next(x for x in p.command("migrate").preconditions
                   if E.names(x.when, E.Arg) == {"resume"} and E.names(x.when, E.Cap))
        release = sorted(E.names(pre.when, E.Cap))
        pc_active = p.transition("src.postcopy_start.switch").new
        paused = p.transition("src.postcopy_pause").new
        blob = self.ram_blob_args()
        # -S on the destination: after postcopy's RUN its vCPUs stay stopped, so no
        # vCPU can block on a missing page while holding the big lock, which on
        # TCG intermittently froze the destination's monitor once paused.
        with self.vm("source", blob) as src, self.vm("destination", blob + ["-S"]) as dst:
            sock = os.path.join(self.workdir, f"pd{self._n}")
            incoming_runstate = self._slow_postcopy_ready(src, dst, f"unix:{sock}-1",
                                                          pc_caps + release, pc_caps)
            started = {"incoming_started": True}
            sc = "postcopy with " + ",".join(release)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-1"}, peer=dst)
            self.call(sc, src, "source", "migrate-start-postcopy", peer=dst)
            for vm, who in ((src, "source"), (dst, "destination")):
                vm.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                            or s in p.terminal, timeout=120, what=f"the {who} to enter postcopy")
            # Pause only after postcopy's RUN (the destination leaves inmigrate).
            self._wait_postcopy_run(dst, incoming_runstate)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            for vm, who in ((src, "source"), (dst, "destination")):
                vm.wait_for(lambda v: v.migration_status(), lambda s: s == paused
                            or s in p.terminal, timeout=60, what=f"the {who} to pause")
            sc = f"both {src.migration_status()}, " + ",".join(release) + " on"
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-2", "resume": True},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": "nope:x", "resume": True},
                      {"uri_invalid": True}, peer=dst)
            self.call(sc, src, "source", "migrate-pause", peer=dst)
            self.call(sc, src, "source", "migrate_cancel", peer=dst)
            src.wait_for(lambda v: v.migration_status(), lambda s: s != paused, timeout=30,
                         what="the cancel to be seen")
            sc = f"source {src.migration_status()} after cancel while paused"
            self.call(sc, src, "source", "migrate-set-capabilities", {"capabilities": []},
                      peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-2"}, peer=dst)
            self.call(sc, src, "source", "migrate", {"uri": f"unix:{sock}-2", "resume": True},
                      peer=dst)
            self.call(sc, src, "source", "migrate_cancel", peer=dst)
            # Last: 7.2 refuses `migrate` on a paused destination with "duplicate yank
            # instance" and leaves that process's outgoing status in setup.
            self.call("destination " + paused, dst, "destination", "migrate",
                      {"uri": f"unix:{sock}-3"}, started, peer=src)

    def postcopy_destination_migrate(self) -> None:
        """``migrate`` in a destination process while its incoming postcopy is active."""
        p = self.profile
        pc_caps = sorted(E.names(p.transition("dst.pause").guard, E.Cap))
        pc_active = p.transition("src.postcopy_start.switch").new
        blob = self.ram_blob_args()
        with self.vm("source", blob) as src, self.vm("destination", blob + ["-S"]) as dst:
            sock = os.path.join(self.workdir, f"pm{self._n}")
            incoming_runstate = self._slow_postcopy_ready(src, dst, f"unix:{sock}-1",
                                                          pc_caps, pc_caps)
            src.command("migrate", {"uri": f"unix:{sock}-1"})
            src.command("migrate-start-postcopy")
            dst.wait_for(lambda v: v.migration_status(), lambda s: s == pc_active
                         or s in p.terminal, timeout=120, what="the destination in postcopy")
            self._wait_postcopy_run(dst, incoming_runstate)
            self.call(f"destination {pc_active}", dst, "destination", "migrate",
                      {"uri": f"unix:{sock}-2"}, {"incoming_started": True}, peer=src)

    def run_all(self, log: Callable[[str], None] = print) -> list[dict]:
        """Every scenario; one that breaks (e.g. a QEMU stops answering) is
        reported and the others still run.  Its records so far are kept."""
        for scenario in (self.idle_source, self.idle_destination, self.running_migration,
                         self.postcopy_pause_recover, self.postcopy_paused_dead_ends,
                         self.postcopy_destination_migrate):
            try:
                scenario()
            except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                log(f"commands: scenario {scenario.__name__} broke off: {exc!r}")
                self.failed.append(scenario.__name__)
        return self.records

