"""The spec rows the engine fires, in one table, and the statuses they name.

Theory of operation.  The engine never writes a status name: every state
change is ``cell.fire(ROW)`` (or ``store``/``emit``) with a row id from the
tables below, and every status the engine must *recognise* (to decide which
query-migrate fields to show, or whether a cancel landed) is read from the
``new`` column of a row.  ``tests/test_engine_rows.py`` checks that every id
here exists on its side of every profile the engine supports, so a renamed
row breaks the build, not a migration.

Run states (``running``, ``paused``, ``inmigrate``, ``finish-migrate``,
``postmigrate``) are VM run states, not migration statuses: they live in
:mod:`livemig.engine.guest`.

The capabilities the engine refuses at ``migrate`` are spec data too
(``ENGINE_UNIMPLEMENTED``); :func:`unimplemented_capabilities` reads them.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from livemig.spec.schema import Profile

#: source rows: engine name -> spec row id.  Not here, because nothing in
#: the engine can take QEMU's path: the COLO, unplug, background-snapshot and
#: savevm rows (features the engine refuses).
SOURCE_ROWS = {
    "reset": "src.migrate_init.reset",
    "setup": "src.migrate_init.setup",
    "bad_uri": "src.qmp_migrate.bad_uri",
    "connect_error": "src.fd_error",
    "rp_failed": "src.fd_connect.rp_failed",
    "multifd_failed": "src.fd_connect.multifd_failed",
    "active": "src.thread.active",
    "cancel": "src.cancel",
    "cancelled": "src.cleanup.cancelled",
    "pre_switchover": "src.completion.pre_switchover",
    "device": "src.completion.device",
    "completed": "src.completion.completed",
    "completion_failed": "src.completion.failed",
    "stream_failed": "src.detect_error.failed",
    "multifd_send_failed": "src.multifd.send_failed",
}

#: destination rows: engine name -> spec row id
DESTINATION_ROWS = {
    "setup_event": "dst.incoming.setup_event",
    "active": "dst.co.active",
    "failed": "dst.co.failed",
    "completed": "dst.bh.completed",
}

#: postcopy source rows (livemig.engine.postcopy): engine name -> spec row id
POSTCOPY_SOURCE_ROWS = {
    "switch": "src.postcopy_start.switch",
    "pre_switchover": "src.postcopy_start.pre_switchover",
    "continue": "src.postcopy_start.continue",
    "start_stream_error": "src.postcopy_start.stream_error",
    "pause": "src.postcopy_pause",
    "resume": "src.fd_connect.resume",
    "resume_ack": "src.rp.resume_ack",
    "completed": "src.completion.completed",
}

#: postcopy destination rows: engine name -> spec row id
POSTCOPY_DESTINATION_ROWS = {
    "setup_event": "dst.incoming.setup_event",
    "listen": "dst.listen.start",
    "listen_failed": "dst.listen.failed",
    "listen_completed": "dst.listen.completed",
    "pause": "dst.pause",
    "recover": "dst.recover.accept",
    "resume": "dst.resume",
}

#: every row id the engine fires (each once)
ALL_ROW_IDS: tuple[str, ...] = tuple(dict.fromkeys(
    (*SOURCE_ROWS.values(), *DESTINATION_ROWS.values(), *POSTCOPY_SOURCE_ROWS.values(),
     *POSTCOPY_DESTINATION_ROWS.values())))


@lru_cache(maxsize=None)
def unimplemented_capabilities(profile: Profile) -> dict[str, str]:
    """Capability -> reason, for the capabilities the engine refuses at
    ``migrate`` (the spec's ``ENGINE_UNIMPLEMENTED``; the checkers accept
    them, as QEMU does)."""
    return {u.name: u.reason for u in profile.engine_unimplemented}


@dataclass(frozen=True)
class Statuses:
    """Status names the engine must recognise, all read from spec rows."""

    none: str
    setup: str
    active: str
    cancelling: str
    cancelled: str
    completed: str
    failed: str
    pre_switchover: str
    device: str
    running: frozenset[str]  # migration_is_running: guard of migrate
    terminal: frozenset[str]


@lru_cache(maxsize=None)
def statuses(profile: Profile) -> Statuses:
    """The engine's status names for ``profile``."""
    t = profile.transition
    return Statuses(
        none=t(SOURCE_ROWS["reset"]).new,
        setup=t(SOURCE_ROWS["setup"]).new,
        active=t(SOURCE_ROWS["active"]).new,
        cancelling=t(SOURCE_ROWS["cancel"]).new,
        cancelled=t(SOURCE_ROWS["cancelled"]).new,
        completed=t(SOURCE_ROWS["completed"]).new,
        failed=t(SOURCE_ROWS["completion_failed"]).new,
        pre_switchover=t(SOURCE_ROWS["pre_switchover"]).new,
        device=t(SOURCE_ROWS["device"]).new,
        running=profile.states_of(t(SOURCE_ROWS["cancel"]).old),
        terminal=frozenset(profile.terminal),
    )
