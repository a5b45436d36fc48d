"""``livemig monitor``: check a running QEMU's MIGRATION events live against the spec.

Attaches to a QMP socket with qemu.qmp (:class:`~.qmpsession.QMPSession`),
makes sure the ``events`` capability is on (turning it on with
``migrate-set-capabilities`` if needed, and saying so), then validates every
``MIGRATION`` event as it arrives with :class:`~.trace.SideChecker`, prints
each step with OK or ILLEGAL, optionally writes them as livemig NDJSON
transition lines, and at the end optionally draws the run over the side's
status diagram (``livemig.diagrams``).

Which side: ``--side``, else the VM's run state when attaching (``inmigrate``
means a destination).  Starting state: ``--from``, else what ``query-migrate``
reports when attaching, else the profile's initial status.  It stops at the
first status in ``--until`` (default: the profile's terminal statuses) or at
the timeout.  After an illegal step it carries on from the event's status.
"""
from __future__ import annotations

import json
import os
import socket
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Optional, Sequence

from livemig.conformance.qmpsession import QMPSession, QMPSessionError
from livemig.conformance.trace import (
    PASS_EVENT, STATUS_EVENT, SideChecker, allowed_from, initial_status,
)
from livemig.diagrams.trace import Step
from livemig.spec import Profile
from livemig.spec.invariants import MODEL

#: The capability that turns MIGRATION events on, the command that sets it,
#: and the run state of a waiting destination (from the spec's prover model).
EVENTS_CAPABILITY = MODEL.events_capability
CAPS_COMMAND = MODEL.caps_command
INMIGRATE_RUNSTATE = MODEL.runstates_of("destination")[0]


def socket_path(address: str) -> str:
    """``unix:PATH`` or ``PATH`` → PATH."""
    return address[len("unix:"):] if address.startswith("unix:") else address


@dataclass
class MonitorResult:
    side: str
    start: str
    steps: list[Step] = field(default_factory=list)
    passes: int = 0
    ended_by: str = ""  # the terminal status seen, or "timeout"

    @property
    def illegal(self) -> list[Step]:
        return [s for s in self.steps if not s.legal]


def ndjson_line(step: Step, status: str, side: str) -> str:
    """A step as a livemig NDJSON transition line (candidates when a QMP event is ambiguous)."""
    obj: dict = {"t": round(step.t, 6) if step.t is not None else None, "side": side,
                 "id": step.rows[0] if step.rows else None, "old": step.old,
                 "new": status if step.kind == "event" else step.new, "ok": True}
    if len(step.rows) > 1:
        obj["candidates"] = list(step.rows)
    if not step.legal:
        obj["illegal"] = step.reason
    return json.dumps(obj)


def ensure_events(session: QMPSession, out: IO[str]) -> None:
    """Turn the events capability on unless it already is; say what happened."""
    caps = session.command("query-migrate-capabilities")
    if any(c["capability"] == EVENTS_CAPABILITY and c["state"] for c in caps):
        print(f"monitor: the {EVENTS_CAPABILITY} capability is already on", file=out)
        return
    reply = session.execute(CAPS_COMMAND, {"capabilities": [
        {"capability": EVENTS_CAPABILITY, "state": True}]})
    if reply[0] == "error":
        raise QMPSessionError(f"cannot turn the {EVENTS_CAPABILITY} capability on: {reply[2]}")
    print(f"monitor: turned the {EVENTS_CAPABILITY} capability on "
          f"({CAPS_COMMAND})", file=out)


def connect(path: str, timeout: float) -> QMPSession:
    """A session on the QMP socket ``path``; QMPSessionError naming it and the reason.

    A path that is missing or not a socket is refused at once; a socket that
    refuses connections is retried for ``timeout`` s (its process may be
    starting)."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise QMPSessionError(f"QMP socket {path} not reachable: {exc.strerror}") from None
    if not stat.S_ISSOCK(mode):
        raise QMPSessionError(f"QMP socket {path} not reachable: not a socket")
    try:
        return QMPSession(path, "monitor", connect_timeout=timeout)
    except QMPSessionError:
        pass
    # Why, in the OS's words: one plain connect, only once QMP has failed.
    with socket.socket(socket.AF_UNIX) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
            reason = "it accepts connections but no QMP session started"
        except OSError as exc:
            reason = exc.strerror or str(exc)
    raise QMPSessionError(f"QMP socket {path} not reachable within {timeout:g} s: {reason}")


def monitor(profile: Profile, address: str, side: Optional[str] = None,
            start: Optional[str] = None, until: Optional[Sequence[str]] = None,
            timeout: float = 600.0, ndjson: Optional[IO[str]] = None,
            out: IO[str] = sys.stdout) -> MonitorResult:
    """Attach, check events until a status of ``until`` or ``timeout``; the steps seen."""
    until = tuple(until or profile.terminal)
    with connect(socket_path(address), min(timeout, 30.0)) as s:
        if side is None:
            runstate = s.command("query-status")["status"]
            side = "destination" if runstate == INMIGRATE_RUNSTATE else "source"
            print(f"monitor: run state {runstate}: checking as the {side}", file=out)
        if start is None:
            start = s.command("query-migrate").get("status") or initial_status(profile)
        ensure_events(s, out)
        checker = SideChecker(profile, side, start)
        result = MonitorResult(side, start)
        print(f"monitor: {side} starts in {start}; stopping at {', '.join(until)} "
              f"or after {timeout:g}s", file=out)
        deadline = time.monotonic() + timeout
        seen = 0
        while not result.ended_by:
            left = deadline - time.monotonic()
            if left <= 0:
                result.ended_by = "timeout"
                break
            s.pump(min(left, 1.0))
            for event in s.events[seen:]:
                seen += 1
                if event.get("event") == PASS_EVENT:
                    result.passes += 1
                    continue
                if event.get("event") != STATUS_EVENT:
                    continue
                status = event.get("data", {}).get("status", "")
                ts = event.get("timestamp", {})
                t = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6 if ts else None
                before = checker.state
                steps = checker.event(status, seen, t)
                for step in steps:
                    result.steps.append(step)
                    if ndjson is not None:
                        ndjson.write(ndjson_line(step, status, side) + "\n")
                        ndjson.flush()
                    if step.legal:
                        what = "(event only, no change)" if step.kind == "event" else \
                            "(plain store, no event)" if step.kind == "store" else ""
                        print(f"OK       {step.old} -> {status if step.kind == 'event' else step.new}"
                              f" {what} [{', '.join(step.rows)}]".rstrip(), file=out)
                    else:
                        allowed = ", ".join(f"{a.id}->{a.target}"
                                            for a in allowed_from(profile, side, before))
                        print(f"ILLEGAL  {before} -> {status}: {step.reason}; allowed from "
                              f"{before}: {allowed or 'nothing'}", file=out)
                        checker.state = status  # carry on from what QEMU says it is now
                out.flush()
                if status in until:
                    result.ended_by = status
                    break
    print(f"monitor: {len(result.steps)} steps, {len(result.illegal)} illegal, "
          f"{result.passes} {PASS_EVENT}; ended by {result.ended_by}", file=out)
    return result


def write_overlay(profile: Profile, side: str, steps: list[Step], path: Path,
                  caption: str = "") -> Path:
    """Draw ``steps`` over the side's status diagram; format from the file suffix (svg)."""
    from livemig.diagrams import build_model, overlay_marks, to_digraph

    model = build_model(profile, side)
    marks = overlay_marks(model, profile, steps)
    bad = sum(1 for s in steps if not s.legal)
    marks.caption = [caption or f"livemig monitor: {side}",
                     f"{len(steps)} steps · {'no illegal step' if not bad else f'{bad} illegal'}"]
    marks.legend = [("visited", "visited, with counts"), ("illegal", "illegal step")]
    fmt = path.suffix.lstrip(".") or "svg"
    graph = to_digraph(model, marks)
    data = graph.source.encode() if fmt in ("dot", "gv") else graph.pipe(format=fmt)
    path.write_bytes(data)
    return path
