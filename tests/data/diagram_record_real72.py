"""Record real QEMU MIGRATION events for the diagram overlay fixtures.

Runs two loopback ``qemu-system-x86_64`` processes (Debian's 7.2) through
livemig's QemuVM harness and writes every QMP event each side emitted, one
JSON object a line, exactly as QEMU sent it:

    diagram_real72_precopy_{source,destination}.jsonl   migrate, completes
    diagram_real72_postcopy_{source,destination}.jsonl  migrate, start-postcopy, completes
    diagram_real72_cancel_source.jsonl                  migrate with a tiny bandwidth, cancel

Usage (from the repository root): python tests/data/diagram_record_real72.py
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from livemig.conformance.qemu_vm import QemuVM, start_pair

HERE = Path(__file__).parent


def _write(name: str, events: list[dict]) -> None:
    path = HERE / name
    path.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in events))
    print(f"{path}: {[e['data']['status'] for e in events if e['event'] == 'MIGRATION']}")


def _events_on(vm: QemuVM, caps: list[str]) -> None:
    vm.command("migrate-set-capabilities", {"capabilities": [
        {"capability": c, "state": True} for c in ["events", *caps]]})


def _until_done(vm: QemuVM, timeout: float = 60.0) -> str:
    return vm.wait_for(lambda v: v.migration_status(),
                       lambda s: s in ("completed", "failed", "cancelled"), timeout=timeout,
                       what="the end of the migration")


def run(kind: str) -> None:
    with tempfile.TemporaryDirectory(prefix="livemig-diagram-") as tmp:
        src, dst = start_pair(workdir=tmp)
        try:
            caps = ["postcopy-ram"] if kind == "postcopy" else []
            _events_on(src, caps)
            _events_on(dst, caps)
            sock = f"unix:{tmp}/mig.sock"
            dst.command("migrate-incoming", {"uri": sock})
            if kind == "cancel":
                src.command("migrate-set-parameters", {"max-bandwidth": 1024})
            if kind == "postcopy":  # slow precopy down so postcopy starts before it converges
                src.command("migrate-set-parameters", {"max-bandwidth": 2 * 1024 * 1024})
            src.command("migrate", {"uri": sock})
            if kind == "postcopy":
                src.wait_for(lambda v: v.migration_status(), lambda s: s == "active", timeout=30)
                src.execute("migrate-start-postcopy")
            if kind == "cancel":
                src.wait_for(lambda v: v.migration_status(), lambda s: s == "active", timeout=30)
                src.command("migrate_cancel")
            _until_done(src)
            if kind != "cancel":
                _until_done(dst)
            s_events, d_events = src.drain_events(), dst.drain_events()
        finally:
            src.close()
            dst.close()
    _write(f"diagram_real72_{kind}_source.jsonl", s_events)
    if kind != "cancel":
        _write(f"diagram_real72_{kind}_destination.jsonl", d_events)


if __name__ == "__main__":
    for kind in sys.argv[1:] or ["precopy", "postcopy", "cancel"]:
        run(kind)
