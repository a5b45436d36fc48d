"""Ground truth, job 2 of 3: sending the cases to one long-lived QEMU per side.

Job
---
:class:`SideSession` keeps one ``qemu-system-x86_64`` per side (through
:class:`~livemig.conformance.qemu_vm.QemuVM`) for thousands of calls;
:func:`run_cap_case` and :func:`run_param_case` send one case of
:mod:`~livemig.conformance.ground_truth_cases` after its setup and return
QEMU's reply, verbatim, as one record.

Rules
-----
* Between cases the migration state is put back to QEMU's defaults, captured
  from QEMU itself at start-up (not from the spec), and every reset is
  verified: its reply must be ``ok`` and a query afterwards must show the
  defaults again, or :class:`GroundTruthError` stops the run.
* A case whose request set a value no call can take back
  (``block-bitmap-mapping`` appears in ``query-migrate-parameters`` once set)
  restarts that side's QEMU.
* A record holds QEMU's answer as data (``ok``, ``error``, ``error_class``)
  and what the queries showed after the call; nothing here judges it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

from livemig.conformance.ground_truth_cases import CapCase
from livemig.conformance.qemu_vm import QemuVM, Reply

__all__ = ["ABSENT", "SIDES", "GroundTruthError", "SideSession", "reply_fields",
           "run_cap_case", "run_param_case"]

SIDES: tuple[str, ...] = ("source", "destination")

#: A value that stands for "member absent" in query diffs cannot be JSON null
#: (null is a legal parameter value), so removals are written as this marker.
ABSENT = {"$absent": True}


class GroundTruthError(RuntimeError):
    """QEMU did something the generator relies on not happening (a reset failed)."""


@dataclass
class SideSession:
    """One long-lived QEMU for one side, plus its default caps and parameters."""

    side: str
    workdir: Optional[str] = None
    binary: Optional[str] = None
    vm: Optional[QemuVM] = None
    cap_names: tuple[str, ...] = ()
    param_defaults: dict[str, Any] = field(default_factory=dict)
    calls: int = 0
    restarts: int = 0

    def start(self) -> "SideSession":
        self.vm = QemuVM(role=self.side, name=f"gt-{self.side}", workdir=self.workdir,
                         binary=self.binary).start()
        caps = self.vm.command("query-migrate-capabilities")
        self.cap_names = tuple(c["capability"] for c in caps)
        if any(c["state"] for c in caps):
            raise GroundTruthError(f"{self.side}: capabilities not all off at start: {caps}")
        self.param_defaults = self.vm.command("query-migrate-parameters")
        return self

    def restart(self) -> None:
        """Kill and restart this side's QEMU (fresh defaults)."""
        if self.vm is not None:
            self.vm.close()
        self.restarts += 1
        defaults = self.param_defaults
        self.start()
        if self.param_defaults != defaults:
            raise GroundTruthError(f"{self.side}: defaults changed across a restart")

    def close(self) -> None:
        if self.vm is not None:
            self.vm.close()
            self.vm = None

    def execute(self, cmd: str, args: Optional[dict] = None) -> Reply:
        assert self.vm is not None
        self.calls += 1
        return self.vm.execute(cmd, args)

    # ---- capabilities
    def caps_on(self) -> list[str]:
        """The capabilities QEMU shows on, in QEMU's order."""
        reply = self.execute("query-migrate-capabilities")
        if reply[0] != "ok":
            raise GroundTruthError(f"query-migrate-capabilities failed: {reply}")
        return [c["capability"] for c in reply[1] if c["state"]]

    def set_caps(self, on: Iterable[str]) -> Reply:
        request = [{"capability": n, "state": True} for n in on]
        return self.execute("migrate-set-capabilities", {"capabilities": request})

    def reset_caps(self, known_on: Optional[Sequence[str]] = None) -> None:
        """All capabilities off; verified by a query."""
        on = self.caps_on() if known_on is None else list(known_on)
        if not on:
            return
        reply = self.execute("migrate-set-capabilities", {
            "capabilities": [{"capability": n, "state": False} for n in self.cap_names]})
        if reply[0] != "ok":
            raise GroundTruthError(f"{self.side}: capability reset refused: {reply}")
        left = self.caps_on()
        if left:
            raise GroundTruthError(f"{self.side}: capability reset left {left} on")

    # ---- parameters
    def query_params(self) -> dict[str, Any]:
        reply = self.execute("query-migrate-parameters")
        if reply[0] != "ok":
            raise GroundTruthError(f"query-migrate-parameters failed: {reply}")
        return reply[1]

    def params_diff(self, query: dict[str, Any]) -> dict[str, Any]:
        diff = {k: v for k, v in query.items()
                if k not in self.param_defaults or self.param_defaults[k] != v}
        for k in self.param_defaults:
            if k not in query:
                diff[k] = ABSENT
        return diff

    def reset_params(self, diff: dict[str, Any]) -> None:
        """Back to the defaults QEMU had at start; verified by a query.

        A member that appeared (``block-bitmap-mapping``) cannot be removed
        by any call: then the QEMU is restarted.
        """
        if not diff:
            return
        if any(k not in self.param_defaults or v == ABSENT for k, v in diff.items()):
            self.restart()
            return
        reply = self.execute("migrate-set-parameters", dict(self.param_defaults))
        if reply[0] != "ok":
            raise GroundTruthError(f"{self.side}: parameter reset refused: {reply}")
        left = self.params_diff(self.query_params())
        if left:
            raise GroundTruthError(f"{self.side}: parameter reset left {left}")



def reply_fields(reply: Reply) -> dict[str, Any]:
    """A reply as the ``ok``, ``error``, ``error_class`` members of a record."""
    if reply[0] == "ok":
        return {"ok": True, "error": None, "error_class": None}
    return {"ok": False, "error": reply[2], "error_class": reply[1]}


def run_cap_case(sess: SideSession, case: CapCase) -> dict[str, Any]:
    """Send one capability case (after its setup) and record the outcome."""
    setup_caps: Optional[list[str]] = None
    if case.setup_params:
        reply = sess.execute("migrate-set-parameters", case.setup_params)
        if reply[0] != "ok":
            raise GroundTruthError(f"setup params {case.setup_params} refused: {reply}")
    if case.setup_caps:
        reply = sess.set_caps(case.setup_caps)
        if reply[0] != "ok":  # not a usable starting point: record as such and skip
            sess.reset_params(sess.params_diff(sess.query_params()))
            return {}
        setup_caps = sess.caps_on()
    reply = sess.execute("migrate-set-capabilities", case.request)
    after = sess.caps_on()
    record = {"kind": "caps", "side": sess.side, "request": case.request,
              "setup_caps": setup_caps, "setup_params": case.setup_params,
              **reply_fields(reply), "after_on": after, "note": case.note}
    sess.reset_caps(after)
    if case.setup_params:
        sess.reset_params(sess.params_diff(sess.query_params()))
    return record



def run_param_case(sess: SideSession, case: dict) -> dict[str, Any]:
    setup_caps: Optional[list[str]] = None
    if case.get("setup_caps"):
        reply = sess.set_caps(case["setup_caps"])
        if reply[0] != "ok":
            raise GroundTruthError(f"setup caps {case['setup_caps']} refused: {reply}")
        setup_caps = sess.caps_on()
    if case.get("setup_params"):
        reply = sess.execute("migrate-set-parameters", case["setup_params"])
        if reply[0] != "ok":
            raise GroundTruthError(f"setup params {case['setup_params']} refused: {reply}")
    before = sess.params_diff(sess.query_params()) if case.get("setup_params") else {}
    reply = sess.execute("migrate-set-parameters", case["request"])
    diff = sess.params_diff(sess.query_params())
    record = {"kind": "params", "side": sess.side, "request": case["request"],
              "setup_caps": setup_caps, "setup_params": case.get("setup_params"),
              "setup_diff": before or None,
              **reply_fields(reply), "query_diff": diff, "note": case.get("note", "")}
    sess.reset_params(diff)
    if setup_caps:
        sess.reset_caps(setup_caps)
    return record

