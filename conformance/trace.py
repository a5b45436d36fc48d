"""Is an observed run a legal path of one side of the spec?

Theory of operation
-------------------
The log is read by the one reader of observed runs,
:func:`livemig.core.tracelog.read_log`, strictly.  Two log kinds, told apart
line by line:

* livemig's NDJSON transition log (``core.cell``): ``{"t", "side", "id",
  "old", "new", "ok"}``.  Only ``ok: true`` lines are changes; ``ok: false``
  lines are CAS attempts that lost and changed nothing (counted, not
  checked).  Lines of the other side are ignored.
* QMP events as QEMU emits them: ``{"event": "MIGRATION", "data": {"status":
  S}, "timestamp": {...}}``.  ``MIGRATION_PASS`` events are counted; other
  events, the QMP greeting and command replies are skipped.

Anything else that is not a JSON object, or a MIGRATION event without a
status, is an input error naming the line (:class:`TraceInputError`).  A
file may not mix the two kinds.

A step ``old -> new`` of a side is legal iff some row of that side has
``row.new == new`` and ``old in profile.sources_of(row)``.  The per-step
matching is core's (``livemig.core.tracelog``: ``infer_steps`` for events,
``check_ndjson_line`` for NDJSON), the same the diagram overlay uses, so the
checker and the overlay agree by construction; this module adds the walk over a
whole log of one side, the starting state, the NDJSON continuity check
(each line's ``old`` must be the state the previous line left), and the
report of what the spec allowed where a step is illegal.

Two things a QMP event log cannot show, handled as follows:

* *Event-only rows.*  An event whose status is a row's ``emits`` and that
  changes nothing is legal where the row can fire: in 7.2 the destination
  emits ``setup`` on ``migrate-incoming`` while its state stays ``none``,
  and again on ``migrate-recover`` while it stays ``postcopy-paused``.  After
  such an event the checker's state is unchanged (still ``none``), so the
  destination's next event ``active`` is checked from ``none``.  A change row
  to the event's status is preferred when both could explain it.
* *Plain stores.*  Store rows (``migrate_init``'s reset before a new
  ``migrate``) emit nothing, so a QMP log silently crosses them: an event
  that no row explains from the current state is legal if a store row can
  fire from it and a change row then explains the event (e.g. ``completed``
  then ``setup`` on the source).  NDJSON logs record stores as lines.

``--from STATE`` (``start``) checks a log that begins mid-migration; the
default is the profile's initial status (the one with C value 0).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional

# The reader's names are this module's public API too (check-trace, monitor
# and the tests import them from here).
from livemig.core.tracelog import (
    NDJSON_KEYS, PASS_EVENT, STATUS_EVENT, Log, LogSource, Record, Step, TraceInputError,
    check_ndjson_line, infer_steps, initial_knowledge, initial_status, parse_line, read_log,
)
from livemig.spec import CURRENT, Profile

__all__ = [
    "Allowed", "Log", "NDJSON_KEYS", "PASS_EVENT", "Record", "STATUS_EVENT", "SideChecker",
    "TraceInputError", "Verdict", "allowed_from", "check_log", "check_statuses",
    "check_trace", "initial_status", "parse_line", "read_log",
]


# ---------------------------------------------------------------- checking
@dataclass(frozen=True)
class Allowed:
    """A row that could fire from a state: its id, kind and where it goes."""

    id: str
    old: str  # the row's old as written (status, group, or "current in {...}")
    target: str  # the new status, or the emitted status for event-only rows
    kind: str  # "change" | "event" | "store"

    def __str__(self) -> str:
        how = {"change": "->", "event": "emits (no change)", "store": "-> (plain store, no event)"}
        return f"{self.id}: {self.old} {how[self.kind]} {self.target}"


def allowed_from(profile: Profile, side: str, state: str) -> list[Allowed]:
    """Every row of ``side`` that can fire from ``state``, in spec order."""
    out = []
    for row in profile.rows(side):  # type: ignore[arg-type]
        if state not in profile.sources_of(row):
            continue
        kind = "event" if row.event_only else "store" if row.store else "change"
        old = row.old
        if row.old == CURRENT and row.within is not None:
            old = f"{row.old} in {{{', '.join(row.within)}}}"
        out.append(Allowed(row.id, old, row.emits if row.event_only else row.new, kind))
    return out


@dataclass
class Verdict:
    """The result of checking one side of a log."""

    profile: str
    side: str
    format: str
    start: str
    steps: list[Step] = field(default_factory=list)
    illegal: Optional[Step] = None
    allowed: list[Allowed] = field(default_factory=list)  # from illegal.old
    state: str = ""  # the state after the last legal step
    passes: int = 0
    failed_cas: int = 0
    other_side: int = 0

    @property
    def legal(self) -> bool:
        return self.illegal is None

    def lines(self) -> list[str]:
        """A human report."""
        head = (f"{self.side} ({self.format}, profile {self.profile}, from {self.start}): ")
        extra = []
        if self.passes:
            extra.append(f"{self.passes} {PASS_EVENT} events")
        if self.failed_cas:
            extra.append(f"{self.failed_cas} failed CAS (ok=false) not checked")
        if self.other_side:
            extra.append(f"{self.other_side} lines of the other side ignored")
        tail = f" ({'; '.join(extra)})" if extra else ""
        if self.legal:
            return [head + f"LEGAL: {len(self.steps)} steps, final state {self.state}{tail}"]
        s = self.illegal
        assert s is not None
        out = [head + f"ILLEGAL at line {s.line}: {s.old} -> {s.new}{tail}",
               f"  {s.reason}",
               f"  the spec allows from {s.old}:" if self.allowed
               else f"  no {self.side} row of {self.profile} can fire from {s.old}"]
        out += [f"    {a}" for a in self.allowed]
        return out


class SideChecker:
    """Checks one side's steps as they come (used by check-trace and ``monitor``)."""

    def __init__(self, profile: Profile, side: str, start: Optional[str] = None) -> None:
        if side not in ("source", "destination"):
            raise TraceInputError(f"unknown side {side!r}")
        start = start or initial_status(profile)
        if start not in profile.status_names:
            raise TraceInputError(f"unknown status {start!r} for --from; known: "
                                  f"{', '.join(profile.status_names)}")
        self.profile = profile
        self.side = side
        self.state = start
        self.start = start
        #: a log from the beginning knows the guards its events show (a
        #: command's own event, e.g. migrate-recover's setup); from the
        #: middle, none
        self.known = (initial_knowledge(profile, side) if start == initial_status(profile)
                      else None)

    def event(self, status: str, line: int = 0, t: Optional[float] = None) -> list[Step]:
        """One MIGRATION event: the steps explaining it (a store may precede the change)."""
        steps = infer_steps(self.profile, self.side, [(line, status, t)], start=self.state,
                            known=self.known)
        if steps and steps[-1].legal:
            self.state = steps[-1].new
        return steps

    def ndjson(self, record: Record) -> Step:
        """One ``ok: true`` NDJSON line of this side."""
        assert record.raw is not None
        if record.old != self.state:
            return Step(self.side, record.old or "", record.new, (), "illegal", record.line,
                        record.t, f"the line says the {self.side} went from {record.old}, "
                              f"but it was in {self.state}")
        step = check_ndjson_line(self.profile, record.raw, record.line)
        if step.legal:
            self.state = step.new
        return step


def check_log(profile: Profile, log: Log, side: str, start: Optional[str] = None) -> Verdict:
    """Walk one side of ``log``; stop at the first illegal step."""
    checker = SideChecker(profile, side, start)
    verdict = Verdict(profile.name, side, log.format, checker.start, passes=log.passes)
    for record in log.records:
        if record.kind == "ndjson":
            if record.side != side:
                verdict.other_side += 1
                continue
            if not record.ok:
                verdict.failed_cas += 1
                continue
            steps = [checker.ndjson(record)]
        else:
            before = checker.state
            steps = checker.event(record.new, record.line, record.t)
            if steps and not steps[-1].legal:  # report from the state before the event
                steps[-1] = Step(side, before, record.new, (), "illegal", record.line,
                                 record.t, steps[-1].reason)
        for step in steps:
            if not step.legal:
                verdict.illegal = step
                verdict.allowed = allowed_from(profile, side, step.old)
                verdict.state = checker.state
                return verdict
            verdict.steps.append(step)
    verdict.state = checker.state
    return verdict


def check_trace(profile: Profile, source: LogSource, side: str,
                start: Optional[str] = None) -> Verdict:
    """Read a log (path or lines) and check one side of it."""
    return check_log(profile, read_log(source), side, start)


def check_statuses(profile: Profile, statuses: Iterable[str], side: str,
                   start: Optional[str] = None) -> Verdict:
    """Check a bare sequence of MIGRATION statuses (line numbers count from 1)."""
    log = Log("qmp", [Record(i, "qmp", s) for i, s in enumerate(statuses, 1)])
    return check_log(profile, log, side, start)
