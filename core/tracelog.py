"""livemig.core.tracelog: the one reader of observed runs, and what a step of one is.

Job
---
Read the two kinds of log an observed migration leaves, and say which spec
rows explain each step.  Its users are the trace checker
(``livemig check-trace``, ``livemig monitor``: :mod:`livemig.conformance.trace`)
and the diagram overlay (``livemig diagram --trace``:
:mod:`livemig.diagrams.trace`); both read through :func:`read_log` and match
through :func:`check_ndjson_line` / :func:`infer_steps`, so the checker and
the picture agree by construction.

The two kinds, told apart line by line:

* livemig's NDJSON transition log, written by core's CAS cells
  (:class:`livemig.core.cell.TransitionLog`)::

      {"t": 0.12, "side": "source", "id": "src.thread.active",
       "old": "setup", "new": "active", "ok": true}

  Only ``ok: true`` lines are state changes; ``ok: false`` is a CAS that
  lost and changed nothing (kept, for counting).
* QMP events as QEMU emits them, one JSON object a line::

      {"event": "MIGRATION", "data": {"status": "active"},
       "timestamp": {"seconds": 1700000000, "microseconds": 1}}

  ``MIGRATION_PASS`` events are counted; other events, the QMP greeting and
  command replies are skipped.

Rules
-----
* A file holds one kind; a line of the other kind is an input error, in
  every mode (:class:`TraceInputError`, naming the line).
* ``strict=True`` (the checker): anything else that is not a JSON object, a
  ``MIGRATION`` event without a string status, an NDJSON line whose
  ``side``/``id``/``old``/``new`` are not strings, or an unreadable file, is
  an input error naming the line.  ``strict=False`` (the overlay draws what
  it can): such lines are counted in ``skipped``, except NDJSON lines with
  non-string fields, which are kept so that they are drawn as illegal steps.
* A trace file is user input: no line may make the reader fail otherwise
  than with :class:`TraceInputError` (a ``ValueError``); the fuzz target
  ``trace-file`` checks it.
* Matching a step: a step ``old -> new`` of a side is explained by a row of
  that side with ``row.new == new`` and ``old in profile.sources_of(row)``.
  QMP events carry only the new status, so their steps are inferred from
  the current status (:func:`infer_steps`): an event-only row whose emitted
  status is the event's is a legal "event" step that changes nothing; a
  plain store row (no event, e.g. ``migrate_init``'s reset before the next
  ``migrate``) may silently precede a matched row; an event that nothing
  explains is an "illegal" step, and the walk continues from its status.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from livemig.spec import Profile, Transition

#: The members that make a JSON object an NDJSON transition line.
NDJSON_KEYS = frozenset({"side", "id", "old", "new"})
#: The QMP event that carries a status change, and the one counted as a pass.
STATUS_EVENT = "MIGRATION"
PASS_EVENT = "MIGRATION_PASS"

#: A log file's path, or its lines.
LogSource = Union[str, Path, Iterable[str]]


class TraceInputError(ValueError):
    """The log cannot be read; ``line`` is the 1-based line number (0: the whole file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(f"line {line}: {message}" if line else message)
        self.line = line


# ---------------------------------------------------------------- reading
@dataclass(frozen=True)
class Record:
    """One status line of a log.

    For ``kind == "qmp"``: ``new`` is the event's status.  For ``"ndjson"``:
    the line's fields (``ok`` False lines are kept for counting).  ``raw`` is
    the decoded line; in a lenient read of a malformed NDJSON line the string
    fields are ``str()`` of what the line holds, and ``raw`` is what counts.
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
    passes: int = 0  # MIGRATION_PASS events
    skipped: int = 0  # lines of neither kind (and, lenient, malformed lines)


def _number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def qmp_time(obj: dict) -> Optional[float]:
    """A QMP event's timestamp in seconds, or None when it has none (or a
    malformed one: a trace file is user input)."""
    ts = obj.get("timestamp")
    if isinstance(ts, dict) and _number(ts.get("seconds")):
        micro = ts.get("microseconds", 0)
        return ts["seconds"] + (micro if _number(micro) else 0) / 1e6
    return None


def parse_line(obj: object, number: int, strict: bool = True) -> Optional[Record]:
    """One decoded JSON line as a Record, or None when it is not a status line.

    Raises :class:`TraceInputError` for a malformed line when ``strict``;
    otherwise returns None for it (see the module's rules).
    """
    def bad(message: str) -> None:
        if strict:
            raise TraceInputError(message, number)

    if not isinstance(obj, dict):
        bad(f"expected a JSON object, got {type(obj).__name__}")
        return None
    if "event" in obj:
        if obj["event"] != STATUS_EVENT:
            return None
        data = obj.get("data")
        status = data.get("status") if isinstance(data, dict) else None
        # An empty status is no status to the overlay; the checker reports it
        # as an illegal step instead.
        if not isinstance(status, str) or (not strict and not status):
            bad(f"{STATUS_EVENT} event without a status: {obj!r}")
            return None
        return Record(number, "qmp", status, t=qmp_time(obj), raw=obj)
    if NDJSON_KEYS <= obj.keys():
        for key in ("side", "id", "old", "new"):
            if not isinstance(obj[key], str):
                bad(f"NDJSON field {key!r} must be a string: {obj!r}")
        t = obj.get("t")
        return Record(number, "ndjson", str(obj["new"]), side=str(obj["side"]),
                      id=str(obj["id"]), old=str(obj["old"]), ok=bool(obj.get("ok", True)),
                      t=t if _number(t) else None, raw=obj)
    return None


def read_log(source: LogSource, strict: bool = True) -> Log:
    """Parse a log file (a path) or its lines; the kind is told line by line."""
    if isinstance(source, (str, Path)):
        try:
            lines: Iterable[str] = Path(source).read_text().splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise TraceInputError(f"cannot read {source}: {exc}") from None
    else:
        lines = source
    log = Log("empty")
    kinds: dict[str, int] = {}  # kind -> the line where it first appeared
    for number, text in enumerate(lines, 1):
        text = text.strip()
        if not text:
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            if strict:
                raise TraceInputError(f"not JSON ({exc.msg}): {text[:80]!r}", number) from None
            log.skipped += 1
            continue
        if isinstance(obj, dict) and obj.get("event") == PASS_EVENT:
            log.passes += 1
            continue
        record = parse_line(obj, number, strict)
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


# ---------------------------------------------------------------- steps
@dataclass(frozen=True)
class Step:
    """One observed step of one side.

    ``rows`` are the spec rows that explain it (several when a QMP event can
    be explained more than one way; empty when illegal).  ``kind``: "change"
    (the state changed), "event" (event-only, no change), "store" (a silent
    plain store inferred between two events), "illegal".
    """

    side: str
    old: str
    new: str
    rows: tuple[str, ...]
    kind: str
    line: int
    t: Optional[float] = None
    reason: str = ""

    @property
    def legal(self) -> bool:
        return self.kind != "illegal"


def initial_status(profile: Profile) -> str:
    """The profile's initial status: the one whose C value is 0."""
    return min(profile.statuses, key=lambda s: s.value).name


def _row_allows(profile: Profile, row: Transition, old: str, new: str) -> bool:
    if old not in profile.sources_of(row):
        return False
    if row.event_only:
        return new in (old, row.emits)
    return row.new == new


def check_ndjson_line(profile: Profile, obj: dict, line: int) -> Step:
    """One ``ok: true`` NDJSON line as a step, legal or not."""
    side, rid, old, new = obj.get("side"), obj.get("id"), obj.get("old"), obj.get("new")
    t = obj.get("t")
    if not _number(t):
        t = None
    if not all(isinstance(v, str) for v in (side, rid, old, new)):
        return Step(str(side), str(old), str(new), (), "illegal", line, t,
                    "NDJSON fields side, id, old and new must be strings")
    try:
        row = profile.transition(rid)
    except KeyError:
        return Step(side, old, new, (), "illegal", line, t, f"no row {rid!r} in {profile.name}")
    if row.side != side:
        return Step(side, old, new, (), "illegal", line, t,
                    f"row {rid} is a {row.side} row, logged on the {side}")
    if not _row_allows(profile, row, old, new):
        allowed = ", ".join(sorted(profile.sources_of(row)))
        return Step(side, old, new, (rid,), "illegal", line, t,
                    f"row {rid} goes from {{{allowed}}} to {row.new or '(no change)'}, "
                    f"not {old} -> {new}")
    if row.event_only:
        return Step(side, old, old, (rid,), "event", line, t)
    return Step(side, old, new, (rid,), "store" if row.store else "change", line, t)


# ---------------------------------------------------------------- guards
def _command_side(command: Any) -> str:
    """The side whose state a command's preconditions read (migrate-recover:
    the destination)."""
    return next((p.state_side for p in command.preconditions if p.state_side), "source")


def log_visible_flags(profile: Profile, side: str) -> dict[str, tuple[Any, ...]]:
    """The guard flags of ``side`` an event log can know: those set by a
    command that emits a MIGRATION status at once (``Command.event``, e.g.
    migrate-recover's ``setup``), by flag name -> those commands."""
    out: dict[str, tuple[Any, ...]] = {}
    for command in profile.commands:
        if command.event and _command_side(command) == side:
            for flag in command.sets_flags:
                out[flag] = out.get(flag, ()) + (command,)
    return out


def guard_may_hold(expr: Any, known: dict[str, bool],
                   where: Optional[tuple[Profile, str, str]] = None) -> Optional[bool]:
    """Three-valued: False when ``expr`` is false for what ``known`` says of
    its flags, True when true, None when it depends on what the log cannot
    know (capabilities, errors, the PostcopyState, other flags).  ``where``
    (profile, side, state) also decides that side's InState atoms."""
    from livemig.spec import expr as E
    if isinstance(expr, E.Const):
        return expr.value
    if isinstance(expr, E.Flag):
        return known.get(expr.name)
    if isinstance(expr, E.InState) and where is not None:
        profile, side, state = where
        if expr.side in (None, side):
            return state in profile.states_of(expr.name)
        return None
    if isinstance(expr, E.Not):
        inner = guard_may_hold(expr.arg, known, where)
        return None if inner is None else not inner
    if isinstance(expr, (E.All, E.AnyOf)):
        values = [guard_may_hold(a, known, where) for a in expr.args]
        decisive, other = (False, True) if isinstance(expr, E.All) else (True, False)
        if decisive in values:
            return decisive
        return other if all(v is other for v in values) else None
    return None


def _accepted_in(profile: Profile, command: Any, side: str, state: str) -> bool:
    """The command may have run in ``state``: none of its preconditions
    refuses it there for certain (migrate-recover: only postcopy-paused)."""
    return not any(guard_may_hold(p.when, {}, (profile, side, state)) is True
                   for p in command.preconditions)


def initial_knowledge(profile: Profile, side: str) -> dict[str, bool]:
    """What a log that starts at the beginning knows: no such command yet."""
    return {flag: False for flag in log_visible_flags(profile, side)}


def infer_steps(profile: Profile, side: str, statuses: Iterable[tuple[int, str, Optional[float]]],
                start: Optional[str] = None,
                known: Optional[dict[str, bool]] = None) -> list[Step]:
    """Steps explaining a sequence of ``(line, status, t)`` MIGRATION events of one side.

    ``known`` (updated in place): the log-visible guard flags
    (:func:`log_visible_flags`) and whether the log has shown them set; given,
    a row whose guard is false for them does not explain a step -- e.g. the
    destination's postcopy-paused -> postcopy-recover needs migrate-recover,
    whose ``setup`` event must come first.  None (a log that starts in the
    middle) evaluates no guard."""
    rows = profile.rows(side)  # type: ignore[arg-type]
    changing = [r for r in rows if not r.event_only and not r.store]
    events = [r for r in rows if r.event_only]
    stores = [r for r in rows if r.store]
    visible = log_visible_flags(profile, side) if known is not None else {}
    state = start or initial_status(profile)
    steps: list[Step] = []
    for line, status, t in statuses:
        candidates = [r for r in changing if r.new == status and state in profile.sources_of(r)]
        found = [r.id for r in candidates
                 if known is None or guard_may_hold(r.guard, known) is not False]
        if found:
            steps.append(Step(side, state, status, tuple(found), "change", line, t))
            state = status
            continue
        emitting = [r.id for r in events if r.emits == status and state in profile.sources_of(r)]
        if emitting:
            steps.append(Step(side, state, state, tuple(emitting), "event", line, t))
            if known is not None:
                for flag, commands in visible.items():
                    if any(c.event == status and _accepted_in(profile, c, side, state)
                           for c in commands):
                        known[flag] = True
            continue
        if candidates:  # a row goes there, but its guard is false by what the log showed
            from livemig.spec.expr import to_text
            row = candidates[0]
            missing = [f for f, v in (known or {}).items() if v is False]
            shown_by = ", ".join(f"{c.name} (its MIGRATION {c.event})"
                                 for f in missing for c in visible.get(f, ()))
            steps.append(Step(side, state, status, (), "illegal", line, t,
                              f"{row.id} goes from {state} to {status} only when "
                              f"{to_text(row.guard)}; the log shows no {shown_by} before it"))
            state = status
            continue
        via = None
        for store in stores:
            if state in profile.sources_of(store) and store.new != state:
                after = [r.id for r in changing
                         if r.new == status and store.new in profile.sources_of(r)]
                if after:
                    via = (store, after)
                    break
        if via:
            store, after = via
            if known is not None:  # migrate_init resets the command flags
                for flag in known:
                    known[flag] = False
            steps.append(Step(side, state, store.new, (store.id,), "store", line, t))
            steps.append(Step(side, store.new, status, tuple(after), "change", line, t))
            state = status
            continue
        steps.append(Step(side, state, status, (), "illegal", line, t,
                          f"no {side} row of {profile.name} goes from {state} to {status}"))
        state = status
    return steps


__all__ = [
    "Log", "LogSource", "NDJSON_KEYS", "PASS_EVENT", "Record", "STATUS_EVENT", "Step",
    "TraceInputError", "check_ndjson_line", "guard_may_hold", "infer_steps", "initial_knowledge",
    "initial_status", "log_visible_flags", "parse_line",
    "qmp_time", "read_log",
]
