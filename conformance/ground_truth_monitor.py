"""Ground truth for the monitor: what QEMU 7.2 answers to the probes tools
send first, and what its human monitor prints.

``python -m livemig.conformance.ground_truth_monitor [--out FILE]`` starts
the installed ``qemu-system-x86_64`` (``-M pc -m 64``, paused) and records,
verbatim:

* ``query-version``, ``query-name`` (with and without ``-name``),
  ``query-commands``;
* the part of ``query-qmp-schema`` that livemig's commands and events reach
  (every SchemaInfo entry reachable from them, QEMU's masked names kept);
* ``human-monitor-command`` answers: the ``SCRIPT`` of lines below, run in
  order on one QEMU (so a set parameter shows in the next ``info``), and
  ``info migrate`` on a source and a destination during and after a
  migration between two QEMUs, and after a failed and a cancelled one.

``tests/test_monitor_vs_qemu.py`` replays the same lines on livemig's VM and
compares.  Nothing here judges QEMU's answers; it only writes them down.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from livemig.conformance.qemupeer import pc_machine_args, why_not_qemu_72
from livemig.engine.qmpclient import SyncQMPClient

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "qemu72_monitor.json"

#: commands and events whose schema livemig serves (the closure is recorded)
SCHEMA_ROOTS = (
    "migrate", "migrate-incoming", "migrate_cancel", "migrate-continue",
    "migrate-set-capabilities", "migrate-set-parameters", "query-migrate",
    "query-migrate-capabilities", "query-migrate-parameters", "query-status", "stop",
    "cont", "quit", "query-version", "query-name", "migrate-start-postcopy",
    "migrate-pause", "migrate-recover", "object-add", "object-del", "query-commands",
    "query-qmp-schema", "human-monitor-command", "qmp_capabilities",
    "MIGRATION", "MIGRATION_PASS", "STOP", "RESUME", "SHUTDOWN",
)

#: probe values for every parameter (a valid one first, then wrong ones)
PARAM_PROBES: dict[str, tuple[str, ...]] = {
    "announce-initial": ("60", "abc", "-1", "1.5", "1K"),
    "announce-max": ("600", "abc"),
    "announce-rounds": ("6", "abc"),
    "announce-step": ("110", "abc"),
    "compress-level": ("2", "10", "abc", "-1", "0x3", "1K"),
    "compress-threads": ("4", "0", "abc", "300"),
    "compress-wait-thread": ("off", "maybe", "1"),
    "decompress-threads": ("3", "0", "abc"),
    "throttle-trigger-threshold": ("60", "0", "101", "abc"),
    "cpu-throttle-initial": ("30", "0", "100", "abc"),
    "cpu-throttle-increment": ("20", "0", "100", "abc"),
    "cpu-throttle-tailslow": ("on", "maybe"),
    "max-cpu-throttle": ("90", "0", "100", "abc"),
    "tls-creds": ("creds0", ""),
    "tls-hostname": ("host.example",),
    "tls-authz": ("authz0",),
    "max-bandwidth": ("100M", "abc", "-1", "1.5", "0", "16E", "8E", "10"),
    "downtime-limit": ("400", "abc", "1.5", "2000001", "1K", "1.5K", "0x10"),
    "x-checkpoint-delay": ("5000", "abc", "-1"),
    "block-incremental": ("on", "maybe"),
    "multifd-channels": ("4", "0", "256", "abc"),
    "multifd-compression": ("zlib", "lz", "none"),
    "xbzrle-cache-size": ("1M", "abc", "1000", "0"),
    "max-postcopy-bandwidth": ("1K", "abc", "-1"),
    "multifd-zlib-level": ("2",),
    "multifd-zstd-level": ("2",),
    "block-bitmap-mapping": ("x",),
    "bogus": ("1",),
}


def _script() -> list[str]:
    """The idle-source lines, in order."""
    lines = ["info migrate", "info migrate_capabilities", "info migrate_parameters",
             "info version", "info name", "info status"]
    lines += ["migrate_set_capability xbzrle on", "migrate_set_capability events on",
              "migrate_set_capability postcopy-ram on", "migrate_set_capability xbzrle off",
              "migrate_set_capability bogus on", "migrate_set_capability xbzrle maybe",
              "migrate_set_capability xbzrle", "migrate_set_capability",
              "migrate_set_capability zero-copy-send on",
              "migrate_set_capability x-colo on",
              # livemig refuses to migrate with x-colo (no COLO loop): off again
              "migrate_set_capability x-colo off"]
    for name, values in PARAM_PROBES.items():
        lines += [f"migrate_set_parameter {name} {v}".rstrip() for v in values]
        lines.append("info migrate_parameters")  # what each accepted value became
    lines += ["migrate_set_parameter tls-creds", "migrate_set_parameter",
              "migrate_set_parameter tls-creds ''",
              "info migrate_parameters", "info migrate_capabilities",
              "migrate_set_parameter multifd-compression none",
              "migrate_set_parameter max-bandwidth 1G",
              "migrate_cancel", "migrate", "migrate bogus:x", "info migrate",
              "bogus", "info bogus", "migrate_continue pre-switchover",
              "migrate_start_postcopy", "migrate_pause", "migrate_recover unix:/x"]
    return lines


SCRIPT = tuple(_script())


def _hmp(qmp: SyncQMPClient, line: str) -> str:
    return qmp.command("human-monitor-command", {"command-line": line})


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"QEMU: {what} not seen after {timeout} s")
        time.sleep(0.05)  # polling a QEMU we do not control: query-migrate is cheap


class _Qemu:
    """One QEMU 7.2 with a QMP socket; killed on close."""

    def __init__(self, workdir: Path, name: str, extra: list[str]) -> None:
        sock = workdir / f"{name}.qmp"
        self.log = workdir / f"{name}.log"
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["qemu-system-x86_64", *pc_machine_args(workdir / f"{name}.ram"), *extra,
                 "-qmp", f"unix:{sock},server=on,wait=off"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.qmp = SyncQMPClient(str(sock), name, connect_timeout=30, command_timeout=60,
                                 alive=lambda: self.proc.poll() is None)
        self.qmp.__enter__()

    def close(self) -> None:
        self.qmp.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _status(q: _Qemu) -> str:
    return q.qmp.command("query-migrate").get("status", "none")


def record_static(workdir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    named = _Qemu(workdir, "named", ["-S", "-name", "guest1"])
    try:
        out["query-version"] = named.qmp.command("query-version")
        out["query-name with -name guest1"] = named.qmp.command("query-name")
        out["query-commands"] = sorted(c["name"] for c in named.qmp.command("query-commands"))
        out["schema"] = _closure(named.qmp.command("query-qmp-schema"))
        out["info name with -name guest1"] = _hmp(named.qmp, "info name")
    finally:
        named.close()
    idle = _Qemu(workdir, "idle", ["-S"])
    try:
        out["query-name"] = idle.qmp.command("query-name")
        out["script"] = [[line, _hmp(idle.qmp, line)] for line in SCRIPT]
    finally:
        idle.close()
    return out


def _closure(schema: list[dict]) -> list[dict]:
    by_name = {e["name"]: e for e in schema}
    seen: dict[str, dict] = {}

    def walk(name: str) -> None:
        if name in seen or name not in by_name:
            return
        entry = seen[name] = by_name[name]
        for key in ("arg-type", "ret-type", "element-type"):
            if key in entry:
                walk(entry[key])
        for member in entry.get("members", []):
            if "type" in member:
                walk(member["type"])
        for variant in entry.get("variants", []):
            walk(variant["type"])

    for root in SCHEMA_ROOTS:
        walk(root)
    return list(seen.values())


def record_migrations(workdir: Path) -> dict[str, str]:
    """``info migrate`` at the points of a migration between two QEMUs."""
    out: dict[str, str] = {}
    sock = workdir / "mig.sock"
    src = _Qemu(workdir, "src", [])
    dst = _Qemu(workdir, "dst", ["-incoming", "defer"])
    try:
        _hmp(src.qmp, "migrate_set_capability xbzrle on")
        _hmp(dst.qmp, "migrate_set_capability xbzrle on")
        dst.qmp.command("migrate-incoming", {"uri": f"unix:{sock}"})
        out["destination listening"] = _hmp(dst.qmp, "info migrate")
        _hmp(src.qmp, "migrate_set_parameter max-bandwidth 32K")
        out["migrate unix (no -d)"] = _hmp(src.qmp, f"migrate unix:{sock}")
        _wait(lambda: _status(src) == "active", 60, "source active")
        out["source active"] = _hmp(src.qmp, "info migrate")
        out["destination active"] = _hmp(dst.qmp, "info migrate")
        _hmp(src.qmp, "migrate_set_parameter max-bandwidth 1G")
        _wait(lambda: _status(src) == "completed", 120, "source completed")
        _wait(lambda: _status(dst) == "completed", 60, "destination completed")
        out["source completed"] = _hmp(src.qmp, "info migrate")
        out["destination completed"] = _hmp(dst.qmp, "info migrate")
    finally:
        src.close()
        dst.close()
    src = _Qemu(workdir, "src2", [])
    dst = _Qemu(workdir, "dst2", ["-incoming", "defer"])
    try:
        out["migrate to a missing socket (-d)"] = _hmp(src.qmp,
                                                       f"migrate -d unix:{workdir}/missing.sock")
        _wait(lambda: _status(src) == "failed", 60, "source failed")
        out["source failed"] = _hmp(src.qmp, "info migrate")
        dst.qmp.command("migrate-incoming", {"uri": f"unix:{sock}2"})
        _hmp(src.qmp, "migrate_set_parameter max-bandwidth 32K")
        _hmp(src.qmp, f"migrate -d unix:{sock}2")
        _wait(lambda: _status(src) == "active", 60, "source active")
        out["migrate_cancel while active"] = _hmp(src.qmp, "migrate_cancel")
        _wait(lambda: _status(src) == "cancelled", 60, "source cancelled")
        out["source cancelled"] = _hmp(src.qmp, "info migrate")
    finally:
        src.close()
        dst.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON file to write")
    args = ap.parse_args(argv)
    why = why_not_qemu_72()
    if why:
        print(f"ground_truth_monitor: {why}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="gt-monitor-", dir="/dev/shm") as tmp:
        data = record_static(Path(tmp))
        data["migrations"] = record_migrations(Path(tmp))
    qemu = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                          text=True).stdout.splitlines()[0]
    data["meta"] = {"qemu": qemu, "generator": "python -m livemig.conformance.ground_truth_monitor",
                    "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {args.out}: {len(data['script'])} monitor lines, {len(data['schema'])} "
          f"schema entries, {len(data['migrations'])} migration points")
    return 0


if __name__ == "__main__":
    sys.exit(main())
