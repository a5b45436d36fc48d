"""The one way the engine starts a thread: no thread dies silently.

Every engine thread (migration, return path, multifd senders and receivers,
load, fault handling, the vCPU, event dispatch) is started by :func:`spawn`
with an ``on_crash`` callback.  A body that raises anything, expected or not,
ends in that callback, and the callback's job is to fire the spec row that
fails (or pauses) the migration with the error in ``error-desc``: QEMU's
threads end the same way (``migrate_set_error`` then a FAILED transition, or
``mark_source_rp_bad`` on the return path), never by vanishing.

Rules:

* bodies catch the errors they expect (``OSError``, ``MigrationError``) and
  turn them into their own rows; :func:`spawn` is the net under them for
  everything else (a bug, an ``IndexError`` from bytes nobody validated);
* ``on_crash`` must not raise either: if it does, the failure is printed to
  stderr with both tracebacks, which is the last thing a thread can do;
* :func:`crash_text` is the ``error-desc`` of such a failure, so a user sees
  which thread failed and why.

``tests/test_threads.py`` checks that no module of the engine creates a
``threading.Thread`` any other way, and that each body's crash reaches a row.
"""
from __future__ import annotations

import sys
import threading
import traceback
from typing import Callable

CrashHandler = Callable[[str], None]
#: how every crash text starts (tests look for it: a crash is a bug)
CRASH_PREFIX = "internal error in "


def crash_text(thread_name: str, exc: BaseException) -> str:
    """The error-desc of a thread ended by an exception it did not expect."""
    return f"{CRASH_PREFIX}{thread_name}: {type(exc).__name__}: {exc}"


def guarded(name: str, body: Callable[[], None], on_crash: CrashHandler) -> Callable[[], None]:
    """``body`` wrapped so that any exception ends in ``on_crash``."""

    def run() -> None:
        try:
            body()
        except BaseException as exc:  # noqa: BLE001 - the point of this module
            text = crash_text(name, exc)
            try:
                on_crash(text)
            except BaseException:  # noqa: BLE001
                sys.stderr.write(f"livemig: {text}\n{traceback.format_exc()}")

    return run


def spawn(name: str, body: Callable[[], None], on_crash: CrashHandler, *,
          start: bool = True, daemon: bool = True) -> threading.Thread:
    """A thread named ``name`` running ``body`` under :func:`guarded`."""
    thread = threading.Thread(target=guarded(name, body, on_crash), name=name, daemon=daemon)
    if start:
        thread.start()
    return thread


def report_only(name: str) -> CrashHandler:
    """For threads that carry no migration (event dispatch): print and go on."""

    def handler(text: str) -> None:
        sys.stderr.write(f"livemig: {text}\n")

    return handler


__all__ = ["CRASH_PREFIX", "CrashHandler", "crash_text", "guarded", "spawn", "report_only"]

