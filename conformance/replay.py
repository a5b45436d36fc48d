"""A `livemig prove` counterexample replayed on the engine, over the fake link.

Theory of operation
-------------------
A counterexample is a path of steps chosen by the prover: capability
changes, QMP commands, and rows fired by QEMU's threads (sometimes as a
*read* of the state and a later *pending* CAS, when two threads race).
:func:`replay_on_engine` makes the engine walk the same path: two
:class:`~livemig.engine.vm.VM` objects on a :class:`FakeLink`, and for each
step

* ``caps`` -- migrate-set-capabilities on that side (and, for a trace of the
  source alone, the same on the destination: postcopy needs both);
* ``command`` and rows whose actor is the monitor -- the QMP command that
  fires them (``migrate`` for migrate_init, ``migrate_cancel`` for
  ``src.cancel``, ``migrate-incoming`` for the incoming setup event,
  ``migrate resume=true`` after a ``migrate-recover``);
* rows of the engine's threads -- the link runs, one blocking point at a
  time, until that row has fired on that side (the environment flags the
  prover chose, such as ``stream_error``, become a broken channel first);
* ``read`` -- nothing (the engine's thread reads when it runs), but a fault
  the prover put there breaks the channel.

The result says which of the trace's rows the engine fired, in order, and
where it went another way.  Where it does, the row must be one of
:data:`KNOWN_ENGINE_DIFFERENCES` (each with its reason), else the replay
found a difference nobody has explained.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from livemig.conformance.fakelink import FakeLink
from livemig.errors import MigrationError
from livemig.spec import load_profile

RAM = 1 << 20
LISTEN_URI = "unix:/replay/migration.sock"
RECOVER_URI = "unix:/replay/recover.sock"
#: environment flags the prover chose that the engine gets as a broken channel
FAULT_FLAGS = frozenset({"stream_error", "stream_eio", "resume_failed", "load_error",
                         "completion_error", "rp_error"})
def _destination_runs(vms: dict) -> bool:
    return bool(getattr(vms["destination"].incoming, "run_requested", False))


#: where the engine must be before a fault that fires a row is injected:
#: postcopy pauses (on both sides, so that it can recover) only once the
#: destination has the package; before, the same error is postcopy_start's
#: stream error and the destination's load failure
FAULT_READY = {"src.postcopy_pause": _destination_runs, "dst.pause": _destination_runs}
#: rows the engine does not fire where QEMU (by the spec) can, and why
KNOWN_ENGINE_DIFFERENCES = {
    "src.completion.failed": "QEMU 7.2's migration_completion can turn cancelling into failed "
                             "(code reading); the engine does not complete once cancelling is "
                             "set, so the cleanup gives cancelled",
    "src.migrate_init.setup": "the engine refuses migrate with x-colo or background-snapshot "
                              "(paths it does not implement) before any state change",
    "src.postcopy_start.switch": "with dirty-bitmaps alone QEMU switches to postcopy to move "
                                 "block dirty bitmaps; the engine has RAM only, so its "
                                 "migration converges in precopy",
}


@dataclass
class EngineReplay:
    """What the engine did with a trace."""

    profile: str
    wanted: list[str] = field(default_factory=list)  # the trace's rows, in order
    followed: list[str] = field(default_factory=list)  # those the engine fired
    diverged: Optional[str] = None  # the first row it did not fire
    why: str = ""
    engine_rows: dict[str, list[str]] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return self.diverged is None and self.followed == self.wanted

    @property
    def known_difference(self) -> bool:
        return self.diverged in KNOWN_ENGINE_DIFFERENCES

    def explain(self) -> str:
        if self.complete:
            return f"the engine followed all {len(self.wanted)} rows"
        reason = KNOWN_ENGINE_DIFFERENCES.get(self.diverged or "", "not a known difference")
        return (f"the engine followed {len(self.followed)}/{len(self.wanted)} rows, then did "
                f"not fire {self.diverged}: {self.why} ({reason}); engine rows: "
                f"{self.engine_rows}")


def engine_supports(profile_name: str) -> bool:
    """The engine's row tables exist in this profile (the engine runs on it)."""
    from livemig.engine.postcopy import POSTCOPY_DESTINATION_ROWS, POSTCOPY_SOURCE_ROWS
    from livemig.engine.rows import ALL_ROW_IDS
    profile = load_profile(profile_name)
    ids = {r.id for r in profile.transitions}
    return set(ALL_ROW_IDS) | set(POSTCOPY_SOURCE_ROWS.values()) | \
        set(POSTCOPY_DESTINATION_ROWS.values()) <= ids


class _Divergence(Exception):
    def __init__(self, row: str, why: str) -> None:
        super().__init__(why)
        self.row = row
        self.why = why


def replay_on_engine(trace: dict, *, max_steps: int = 20000) -> EngineReplay:
    """Walk ``trace`` (a counterexample's JSON) on the engine; see the module."""
    profile = load_profile(trace["profile"])
    sides = list(trace.get("sides", ("source",)))
    link = FakeLink()
    source, destination = link.vm_pair(ram=RAM, profile=profile.name)
    vms = {"source": source, "destination": destination}
    result = EngineReplay(profile.name)
    marks = {side: 0 for side in vms}

    def fired_since(side: str, row: str) -> bool:
        attempts = vms[side].log.attempts
        for i in range(marks[side], len(attempts)):
            if attempts[i].id == row and attempts[i].ok:
                marks[side] = i + 1
                return True
        return False

    def execute(side: str, name: str, args: dict, row: str) -> None:
        try:
            vms[side].execute(name, args)
        except MigrationError as exc:
            raise _Divergence(row, f"{side} refused {name}: {exc.message}") from None

    def run_until(side: str, row: str) -> None:
        idle_rounds = 0
        for i in range(max_steps):
            if fired_since(side, row):
                return
            if link.step(i) is None:
                idle_rounds += 1
                if idle_rounds > 100:
                    break
                link.advance(0.1)  # rate windows, timeouts: simulated time passes
        raise _Divergence(row, f"the {side} never fired it")

    def fault(row: str) -> None:
        """Break the channel once the engine is where ``row`` takes the error."""
        ready = FAULT_READY.get(row)
        for i in range(max_steps):
            if ready is None or ready(vms) or link.step(i) is None:
                break
        link.network.break_connections()

    try:
        for i, step in enumerate(trace["steps"]):
            kind, side, row = step["kind"], step["side"], step.get("row")
            before, after = trace["states"][i], trace["states"][i + 1]
            if kind == "read" and FAULT_FLAGS & set(step.get("env", ())):
                fault(row)  # the thread reads after the error
            if kind in ("idle", "read"):
                continue
            if kind == "caps":
                wanted = set(after.get(f"caps:{side}", ()))
                targets = [side] + (["destination"] if "destination" not in sides else [])
                for target in targets:
                    _set_caps(vms[target], wanted, execute, target)
                continue
            if kind == "command":
                if step["command"] == "migrate" and "destination" not in sides:
                    # the traced source resumes: the destination the trace leaves out
                    # has seen the same broken channel (it pauses when its thread runs)
                    paused = vms["destination"].profile.transition("dst.pause").new
                    for n in range(max_steps):
                        if vms["destination"].dst_cell.state == paused or \
                                link.step(n) is None:
                            break
                _command(step["command"], side, vms, execute, step)
                continue
            if kind == "pending" and after.get(side) == before.get(side) and \
                    after.get(side) != profile.transition(row).new:
                continue  # the model's CAS failed: nothing to fire
            result.wanted.append(row)
            if profile.transition(row).actor == "monitor":
                _monitor_row(row, side, vms, execute, fired_since)
            else:
                if FAULT_FLAGS & set(step.get("env", ())):
                    fault(row)
                run_until(side, row)
            result.followed.append(row)
    except _Divergence as d:
        result.diverged, result.why = d.row, d.why
        if d.row not in result.wanted:
            result.wanted.append(d.row)
    finally:
        result.engine_rows = {side: [a.id for a in vm.log.attempts if a.ok]
                              for side, vm in vms.items()}
        link.close()
        for vm in vms.values():
            vm.close()
    return result


def _set_caps(vm: Any, wanted: set[str], execute: Any, side: str) -> None:
    changes = [{"capability": name, "state": name in wanted}
               for name in vm.profile.capability_names() if bool(vm.caps.get(name)) !=
               (name in wanted)]
    if changes:
        execute(side, "migrate-set-capabilities", {"capabilities": changes},
                "migrate-set-capabilities")


def _listen(vms: dict, execute: Any) -> None:
    if vms["destination"]._listener is None:
        execute("destination", "migrate-incoming", {"uri": LISTEN_URI}, "dst.incoming.setup_event")


def _command(name: str, side: str, vms: dict, execute: Any, step: dict) -> None:
    vm = vms[side]
    if name == "migrate":
        if "resume" in step.get("args", ()) or vm.src_cell.state in vm.profile.states_of(
                "in_postcopy"):
            execute("destination", "migrate-recover", {"uri": RECOVER_URI}, name)
            execute(side, "migrate", {"uri": RECOVER_URI, "resume": True}, name)
            return
        _listen(vms, execute)
        execute(side, "migrate", {"uri": LISTEN_URI}, name)
    elif name == "migrate-continue":
        execute(side, name, {"state": vm.src_cell.state}, name)
    elif name in ("migrate-incoming", "migrate-recover"):
        execute(side, name, {"uri": RECOVER_URI if name == "migrate-recover" else LISTEN_URI},
                name)
    else:
        execute(side, name, {}, name)


def _monitor_row(row: str, side: str, vms: dict, execute: Any, fired_since: Any) -> None:
    """The QMP command that fires a monitor row (once: migrate fires two)."""
    if fired_since(side, row):
        return  # an earlier command of this step fired it (migrate_init: reset + setup)
    if row.startswith("src.migrate_init."):
        _listen(vms, execute)
        execute(side, "migrate", {"uri": LISTEN_URI}, row)
    elif row == "src.qmp_migrate.bad_uri":
        try:
            vms[side].execute("migrate", {"uri": "nope:x"})
        except MigrationError:
            pass  # refused, and the row fired on the way
    elif row == "src.cancel":
        execute(side, "migrate_cancel", {}, row)
    elif row == "dst.incoming.setup_event":
        _listen(vms, execute)
    else:
        raise _Divergence(row, "no QMP command of the engine fires this monitor row")
    if not fired_since(side, row):
        raise _Divergence(row, f"the command did not fire it on the {side}")
