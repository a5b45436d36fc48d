"""State cells with QEMU's semantics.

Theory of operation.  QEMU changes a migration status only through
``migrate_set_state(&state, old, new)``: an atomic compare-and-swap that, if
and only if it succeeds, traces and emits a MIGRATION event.  A failed CAS is
silent: no error, no event.  :class:`StatusCell` is that, plus two things
QEMU does not have:

* every attempt names the spec row (transition id) it models, and in strict
  mode a CAS whose row does not exist on this side, or whose (old, new) the
  row does not allow, raises :class:`IllegalTransition` and changes nothing;
* every attempt can be logged as NDJSON (time, side, id, old, new, ok).

Listeners run under the cell's lock, in CAS order, so the event stream is
exactly the sequence of successful CASes; they must be quick (queue, don't
block).

:class:`PostcopyCell` is the destination's PostcopyState: an atomic exchange
that returns the old value (QEMU's ``postcopy_state_set``), and
:meth:`PostcopyCell.handle` which runs a spec handler row, including its
exchange-then-check quirk.
"""
from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import IO, Callable, Optional

from livemig.errors import IllegalTransition, StreamError
from livemig.spec.schema import CURRENT, Profile, Transition


@dataclass(frozen=True)
class Attempt:
    """One CAS attempt, as logged."""

    t: float
    side: str
    id: str
    old: str
    new: str
    ok: bool

    def to_json(self) -> str:
        return json.dumps({"t": round(self.t, 6), "side": self.side, "id": self.id,
                           "old": self.old, "new": self.new, "ok": self.ok})


Listener = Callable[[Attempt], None]


class TransitionLog:
    """A thread-safe NDJSON log of attempts, kept in memory and/or written to a stream."""

    def __init__(self, stream: Optional[IO[str]] = None, keep: bool = True) -> None:
        self._lock = threading.Lock()
        self._stream = stream
        self._keep = keep
        self.attempts: list[Attempt] = []

    def record(self, attempt: Attempt) -> None:
        with self._lock:
            if self._keep:
                self.attempts.append(attempt)
            if self._stream is not None:
                self._stream.write(attempt.to_json() + "\n")
                self._stream.flush()

    def changes(self) -> list[Attempt]:
        """The successful attempts: the state path."""
        with self._lock:
            return [a for a in self.attempts if a.ok]


class StatusCell:
    """A MigrationStatus variable of one side, changed only by spec rows."""

    def __init__(self, profile: Profile, side: str, *, initial: str = "none",
                 strict: bool = True, log: Optional[TransitionLog] = None,
                 clock: Callable[[], float] = time.time) -> None:
        if initial not in profile.status_names:
            raise IllegalTransition(f"unknown status {initial!r}; known: "
                                    f"{', '.join(profile.status_names)}")
        self.profile = profile
        self.side = side
        self.strict = strict
        self.log = log
        self._clock = clock
        self._state = initial
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._changed = threading.Condition(self._lock)
        self._rows = {row.id: row for row in profile.rows(side)}

    # ------------------------------------------------------------ reading
    @property
    def state(self) -> str:
        return self._state

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(attempt)`` for every successful change (under the lock)."""
        with self._lock:
            self._listeners.append(listener)

    def wait_for(self, predicate: Callable[[str], bool], timeout: float) -> bool:
        """Block until ``predicate(state)`` holds; False if ``timeout`` passed first."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self._state), timeout)

    def row(self, row_id: str) -> Transition:
        try:
            return self._rows[row_id]
        except KeyError:
            raise IllegalTransition(
                f"transition {row_id!r} is not a {self.side} row of profile "
                f"{self.profile.name}") from None

    # ------------------------------------------------------------ writing
    def set_state(self, row_id: str, old: str, new: str) -> bool:
        """``migrate_set_state(&state, old, new)`` as the spec row ``row_id``.

        Returns True if the CAS succeeded.  In strict mode raises
        IllegalTransition (changing nothing) if the row does not allow it.
        """
        row = self.row(row_id) if (self.strict or row_id in self._rows) else None
        if self.strict:
            self._check_allowed(row, old, new)
        with self._lock:
            ok = self._state == old
            if ok:
                self._state = new
            self._finish(row_id, old, new, ok)
        return ok

    def fire(self, row_id: str) -> bool:
        """Run row ``row_id`` as QEMU's call site does.

        Exact rows CAS their declared old state.  Rows whose old is a group or
        ``current`` read the state and CAS with what they read (one attempt;
        a retried row loops until the state is the row's new state or no
        longer in its sources, as migrate_fd_cancel does).  Store rows store.
        """
        row = self.row(row_id)
        if row.event_only:
            raise IllegalTransition(f"{row_id} is event-only: use emit()")
        if row.store:
            return self.store(row_id)
        if not row.reads_state:
            return self.set_state(row_id, row.old, row.new)
        sources = self.profile.sources_of(row)
        while True:
            seen = self._state
            if seen not in sources:
                return False
            if self.set_state(row_id, seen, row.new):
                return True
            if not row.retry:
                return False
            # Someone changed the state between our read and our CAS: read again.

    def store(self, row_id: str) -> bool:
        """A plain store row (``s->state = NONE``): no CAS, no event, logged."""
        row = self.row(row_id)
        if not row.store:
            raise IllegalTransition(f"{row_id} is a CAS row, not a plain store")
        with self._lock:
            old = self._state
            if old not in self.profile.sources_of(row):
                raise IllegalTransition(
                    f"{row_id}: cannot store {row.new!r} from {old!r}; allowed from "
                    f"{sorted(self.profile.sources_of(row))}")
            self._state = row.new
            attempt = Attempt(self._clock(), self.side, row_id, old, row.new, True)
            if self.log is not None:
                self.log.record(attempt)
            self._changed.notify_all()
        return True

    def emit(self, row_id: str) -> Attempt:
        """An event-only row: an event with ``row.emits``, no state change."""
        row = self.row(row_id)
        if not row.event_only:
            raise IllegalTransition(f"{row_id} changes state: use fire() or set_state()")
        with self._lock:
            attempt = Attempt(self._clock(), self.side, row_id, self._state, row.emits, True)
            if self.log is not None:
                self.log.record(attempt)
            for listener in self._listeners:
                listener(attempt)
        return attempt

    # ------------------------------------------------------------ internals
    def _check_allowed(self, row: Transition, old: str, new: str) -> None:
        if row.event_only or row.store:
            raise IllegalTransition(f"{row.id} is not a CAS row")
        if new != row.new:
            raise IllegalTransition(f"{row.id} goes to {row.new!r}, not {new!r}")
        sources = self.profile.sources_of(row)
        if old not in sources:
            raise IllegalTransition(
                f"{row.id} cannot compare against {old!r}; its old is "
                f"{row.old!r} ({', '.join(sorted(sources))})"
                if row.old != CURRENT or row.within else
                f"{row.id} cannot compare against {old!r}")

    def _finish(self, row_id: str, old: str, new: str, ok: bool) -> None:
        """Log, notify and emit; called with the lock held."""
        attempt = Attempt(self._clock(), self.side, row_id, old, new, ok)
        if self.log is not None:
            self.log.record(attempt)
        if ok:
            self._changed.notify_all()
            for listener in self._listeners:
                listener(attempt)


class PostcopyCell:
    """The destination's PostcopyState, with QEMU's exchange semantics."""

    def __init__(self, profile: Profile, initial: str = "NONE") -> None:
        self.profile = profile
        self._states = profile.postcopy_states
        if initial not in self._states:
            raise IllegalTransition(f"unknown PostcopyState {initial!r}")
        self._state = initial
        self._lock = threading.Lock()

    @property
    def state(self) -> str:
        return self._state

    def value(self, name: str) -> int:
        """QEMU's numeric value of a PostcopyState (what its messages print)."""
        return self._states.index(name)

    def exchange(self, new: str) -> str:
        """``postcopy_state_set``: store ``new``, return the old value."""
        if new not in self._states:
            raise IllegalTransition(f"unknown PostcopyState {new!r}")
        with self._lock:
            old, self._state = self._state, new
        return old

    def handle(self, name: str) -> str:
        """Run the spec handler ``name``; returns the old state.

        Raises StreamError with QEMU's text when the old state is not
        accepted.  For "xchg" handlers the new state is already stored when
        that happens, exactly as in QEMU; other handlers change nothing.
        """
        handler = self.profile.postcopy_handler(name)
        with self._lock:
            old = self._state
            if handler.op == "xchg":
                self._state = handler.new
            elif old in handler.accepted and handler.new is not None and (
                    handler.set_new_from is None or old in handler.set_new_from):
                self._state = handler.new
        if old not in handler.accepted:
            text = (handler.error or f"{name} in wrong postcopy state (%d)")
            raise StreamError(text.replace("%d", str(self.value(old)), 1))
        return old
