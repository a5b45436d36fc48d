"""Is an observed run a legal path of one side of the spec?

Theory of operation
-------------------
Two log kinds are read, told apart line by line (:func:`read_log`):

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
matching is the diagrams package's (``livemig.diagrams.trace``:
``infer_steps`` for events, ``check_ndjson_line`` for NDJSON), so the checker
and the overlay agree by construction; this module adds the walk over a
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

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional, Union

from livemig.diagrams.trace import Step, check_ndjson_line, infer_steps, qmp_time
from livemig.spec import CURRENT, Profile

NDJSON_KEYS = frozenset({"side", "id", "old", "new"})
#: The QMP event that carries a status change, and the one counted as a pass.
STATUS_EVENT = "MIGRATION"
PASS_EVENT = "MIGRATION_PASS"


class TraceInputError(ValueError):
    """The log cannot be read; ``line`` is the 1-based line number (0: the whole file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


@dataclass(frozen=True)
class Record:
    """One relevant line of a log.

    For ``kind == "qmp"``: ``new`` is the event's status.  For ``"ndjson"``:
    the line's fields (``ok`` False lines are kept for counting).
    """

    line: int
    kind: str
    new: str
    side: Optional[str] = None
    id: Optional[str] = None
    old: Optional[str] = None
    ok: bool = True
    t: Optional[float] = None
    raw: Optional[dict] = None


@dataclass
class Log:
    """A parsed log: its kind, its status records, and what was skipped or counted."""

    format: str  # "ndjson" | "qmp" | "empty"
    records: list[Record] = field(default_factory=list)
    passes: int = 0
    skipped: int = 0


def parse_line(obj: object, number: int) -> Optional[Record]:
    """One decoded JSON line as a Record, or None when it is not a status line."""
    if not isinstance(obj, dict):
        raise TraceInputError(f"expected a JSON object, got {type(obj).__name__}", number)
    if "event" in obj:
        if obj["event"] != STATUS_EVENT:
            return None
        data = obj.get("data")
        status = data.get("status") if isinstance(data, dict) else None
        if not isinstance(status, str):
            raise TraceInputError(f"{STATUS_EVENT} event without a status: {obj!r}", number)
        return Record(number, "qmp", status, t=qmp_time(obj), raw=obj)
    if NDJSON_KEYS <= obj.keys():
        for key in ("side", "id", "old", "new"):
            if not isinstance(obj[key], str):
                raise TraceInputError(f"NDJSON field {key!r} must be a string: {obj!r}", number)
        return Record(number, "ndjson", obj["new"], side=obj["side"], id=obj["id"],
                      old=obj["old"], ok=bool(obj.get("ok", True)), t=obj.get("t"), raw=obj)
    return None


def read_log(source: Union[str, Path, Iterable[str]]) -> Log:
    """Parse a log file (a path) or its lines; kind detected per line."""
    if isinstance(source, (str, Path)):
        try:
            lines: Iterable[str] = Path(source).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceInputError(f"cannot read {source}: {exc}") from None
    else:
        lines = source
    log = Log("empty")
    kinds: dict[str, int] = {}
    for number, text in enumerate(lines, 1):
        text = text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TraceInputError(f"not JSON ({exc.msg}): {text[:80]!r}", number) from None
        if isinstance(obj, dict) and obj.get("event") == PASS_EVENT:
            log.passes += 1
            continue
        record = parse_line(obj, number)
        if record is None:
            log.skipped += 1
            continue
        kinds.setdefault(record.kind, number)
        if len(kinds) > 1:
            other = next(k for k in kinds if k != record.kind)
            raise TraceInputError(f"a {record.kind} line in a file that began as {other} "
                                  f"(line {kinds[other]}); one kind per file", number)
        log.records.append(record)
    if kinds:
        log.format = next(iter(kinds))
    return log


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


def initial_status(profile: Profile) -> str:
    """The profile's initial status: the one whose C value is 0."""
    return min(profile.statuses, key=lambda s: s.value).name


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

    def event(self, status: str, line: int = 0, t: Optional[float] = None) -> list[Step]:
        """One MIGRATION event: the steps explaining it (a store may precede the change)."""
        steps = infer_steps(self.profile, self.side, [(line, status, t)], start=self.state)
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


def check_trace(profile: Profile, source: Union[str, Path, Iterable[str]], side: str,
                start: Optional[str] = None) -> Verdict:
    """Read a log (path or lines) and check one side of it."""
    return check_log(profile, read_log(source), side, start)


def check_statuses(profile: Profile, statuses: Iterable[str], side: str,
                   start: Optional[str] = None) -> Verdict:
    """Check a bare sequence of MIGRATION statuses (line numbers count from 1)."""
    log = Log("qmp", [Record(i, "qmp", s) for i, s in enumerate(statuses, 1)])
    return check_log(profile, log, side, start)
