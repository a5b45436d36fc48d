"""No thread dies silently (issue 11).

* Statically: no module of the engine creates a ``threading.Thread`` (or a
  subclass of it) except through :func:`livemig.engine.threads.spawn`.
* Dynamically: a bug is injected into the body of each migration thread
  (an exception nobody expects, raised from the session the thread drives)
  and the migration must end in the spec's failure row with the thread's
  name and the exception in ``error-desc``; the source keeps running.
"""
from __future__ import annotations

import ast
import threading
import time
from pathlib import Path

import pytest

from livemig.engine import threads
from livemig.engine.rows import statuses
from livemig.engine.vm import VM
from livemig.spec import load_profile

P = load_profile("qemu-7.2")
ST = statuses(P)
ENGINE = Path(threads.__file__).parent
TIMEOUT = 30.0


class Boom(Exception):
    """The injected bug."""


def test_every_engine_thread_is_spawned_under_the_guard():
    offenders = []
    for path in sorted(ENGINE.glob("*.py")):
        if path.name == "threads.py":
            continue
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                f = node.func
                if isinstance(f, ast.Attribute) and f.attr == "Thread" or \
                        isinstance(f, ast.Name) and f.id == "Thread":
                    offenders.append(f"{path.name}:{node.lineno} creates a Thread")
            if isinstance(node, ast.ClassDef):
                for base in node.bases:
                    if isinstance(base, ast.Attribute) and base.attr == "Thread":
                        offenders.append(f"{path.name}:{node.lineno} subclasses Thread")
    assert not offenders, offenders


def test_guard_turns_any_exception_into_the_crash_handler():
    seen: list[str] = []
    t = threads.spawn("t-boom", lambda: (_ for _ in ()).throw(Boom("x")), seen.append)
    t.join(TIMEOUT)
    assert seen == ["internal error in t-boom: Boom: x"]


def test_guard_survives_a_failing_crash_handler(capsys):
    def bad_handler(text: str) -> None:
        raise RuntimeError("handler broke")

    t = threads.spawn("t-boom2", lambda: (_ for _ in ()).throw(Boom("y")), bad_handler)
    t.join(TIMEOUT)
    err = capsys.readouterr().err
    assert "internal error in t-boom2: Boom: y" in err and "handler broke" in err


def _pair(tmp_path, caps=(), params=None):
    dst = VM(ram_size=4 << 20, incoming="defer")
    src = VM(ram_size=4 << 20, workload_rate=5000)
    c = [{"capability": n, "state": True} for n in ("events",) + tuple(caps)]
    for vm in (src, dst):
        vm.execute("migrate-set-capabilities", {"capabilities": c})
        if params:
            vm.execute("migrate-set-parameters", params)
    uri = f"unix:{tmp_path}/t.sock"
    dst.execute("migrate-incoming", {"uri": uri})
    return src, dst, uri


def _raise_once(monkeypatch, cls, name: str):
    """Make ``cls.name`` raise Boom the first time it is called."""
    original = getattr(cls, name)
    fired = threading.Event()

    def broken(self, *a, **kw):
        if not fired.is_set():
            fired.set()
            raise Boom(f"injected into {name}")
        return original(self, *a, **kw)

    monkeypatch.setattr(cls, name, broken)
    return fired


# (thread, class whose method the thread calls, method, caps, params,
#  side that must fail, text expected in that side's error-desc).  A bug on
#  the destination reaches the source through the return path (SHUT 1): without
#  one, QEMU's source too completes whatever the destination did.
CASES = [
    ("migration", "livemig.engine.source:SourceMigration", "poll", (), None,
     "source", "internal error in livemig-migration: Boom"),
    ("return path", "livemig.engine.returnpath:ReturnPathDecoder", "feed", ("return-path",),
     None, "source", "internal error in livemig-return-path: Boom"),
    ("postcopy return path", "livemig.engine.postcopy:PostcopySource", "receive_rp",
     ("postcopy-ram",), None, "source", "internal error in livemig-return-path: Boom"),
    ("load", "livemig.engine.destination:DestinationMigration", "buffer_updated",
     ("return-path",), None,
     "destination", "internal error in livemig-load: Boom"),
    ("multifd send", "livemig.engine.transport:Channel", "send_buffers", ("multifd",),
     {"multifd-channels": 2}, "source", None),
    ("multifd receive", "livemig.engine.multifd:MultifdDecoder", "buffer_updated",
     ("multifd", "return-path"), {"multifd-channels": 2}, "destination",
     "internal error in livemig-multifd-recv: Boom"),
]


def _resolve(ref: str):
    import importlib
    mod, _, name = ref.partition(":")
    return getattr(importlib.import_module(mod), name)


@pytest.mark.parametrize("thread,ref,method,caps,params,side,text", CASES,
                         ids=[c[0] for c in CASES])
def test_a_bug_in_a_thread_body_fails_the_migration(tmp_path, monkeypatch, thread, ref,
                                                    method, caps, params, side, text):
    src, dst, uri = _pair(tmp_path, caps, params)
    try:
        fired = _raise_once(monkeypatch, _resolve(ref), method)
        src.execute("migrate", {"uri": uri})
        assert src.wait_for_status(ST.terminal, TIMEOUT), src.src_cell.state
        assert fired.is_set(), f"the {thread} thread never called {method}"
        info = src.execute("query-migrate")
        # never a false completion: the bug ended the migration in failed
        assert info["status"] == ST.failed, info
        if side == "source" and text:
            assert text in info.get("error-desc", ""), info
        if side == "destination":
            assert dst.wait_for_status({ST.failed}, TIMEOUT, side="destination")
            if text:
                assert text in (dst.incoming.error_desc or "")
        # a multifd thread fires the failure row itself (as QEMU's does) while
        # the migration thread restarts the vCPU: wait for it, bounded
        deadline = time.monotonic() + TIMEOUT
        while src.execute("query-status")["status"] != "running" and \
                time.monotonic() < deadline:
            time.sleep(0.01)
        assert src.execute("query-status")["status"] == "running"
    finally:
        src.close()
        dst.close()
