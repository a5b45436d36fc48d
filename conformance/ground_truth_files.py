"""Ground truth: real QEMU's answers to capability, parameter and command requests.

Job
---
The recorded files: what each holds, the command that regenerates them
(:func:`generate`, :func:`main`), and :func:`read_cases` for the tests that
replay them.  The offline test ``tests/test_checkers_vs_qemu.py`` replays
every record through livemig's checkers; ``conformance/test_qapi_order.py``
reads them too.  The work is in three modules, one job each:

* :mod:`~livemig.conformance.ground_truth_cases`: the cases, generated from
  the spec profile (pure);
* :mod:`~livemig.conformance.ground_truth_qemu`: sending them to one
  long-lived QEMU per side, with verified resets;
* :mod:`~livemig.conformance.ground_truth_commands`: command preconditions,
  recorded in real migrations.

Rules
-----
* QEMU's reply is written verbatim, one JSON object a line; nothing decides
  what QEMU *should* answer: the files are ground truth.
* The first line of each file is a ``"kind": "meta"`` object saying what
  produced it: QEMU's version, the kernel, the seed, QEMU's own capability
  list and parameter defaults per side, the host facts the spec assumed.
* A given seed and QEMU give the same cases (the order of random choices is
  part of the format).

Files (each line is one JSON object; the first line has ``"kind": "meta"``):

``qemu72_caps.jsonl``
    ``{"kind": "caps", "side", "request", "setup_caps", "setup_params", "ok",
    "error", "error_class", "after_on"}`` -- ``request`` is the raw
    ``arguments`` object of ``migrate-set-capabilities``; ``after_on`` lists
    the capabilities that ``query-migrate-capabilities`` shows on after the
    call (rejected calls included, which proves they changed nothing).
``qemu72_params.jsonl``
    ``{"kind": "params", "side", "request", "setup_caps", "setup_params",
    "ok", "error", "error_class", "query_diff"}`` -- ``query_diff`` is
    ``query-migrate-parameters`` after the call, as the members that differ
    from the meta line's ``param_defaults`` (``None`` for a removed member).
``qemu72_commands.jsonl``
    ``{"kind": "command", "scenario", "side", "cmd", "args", "context",
    "ok", "error", "error_class", "result"}`` -- ``context`` is what a
    precondition may read: the migration status of both sides, the run
    state, the capabilities that are on, and the flags the scenario set.

Regenerate:  ``python -m livemig.conformance.ground_truth_files --out tests/data/``
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Optional, Sequence

from livemig.conformance.ground_truth_cases import (
    capability_cases, caps_setup_param_cases, parameter_cases,
)
from livemig.conformance.ground_truth_commands import CommandRecorder
from livemig.conformance.ground_truth_qemu import (
    SIDES, GroundTruthError, SideSession, run_cap_case, run_param_case,
)
from livemig.conformance.qemu_vm import qemu_binary, qemu_version
from livemig.spec import load_profile
from livemig.spec.schema import Profile

__all__ = ["FILES", "PROFILE", "generate", "main", "read_cases"]

PROFILE = "qemu-7.2"
FILES = {
    "caps": "qemu72_caps.jsonl",
    "params": "qemu72_params.jsonl",
    "commands": "qemu72_commands.jsonl",
}


def _meta(kind: str, profile: Profile, seed: int, sessions: dict[str, SideSession],
          binary: str) -> dict[str, Any]:
    return {
        "kind": "meta", "file": kind, "profile": profile.name, "qemu": qemu_version(binary),
        "kernel": platform.release(), "seed": seed,
        "generated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "generator": "python -m livemig.conformance.ground_truth_files",
        "capabilities": {s: list(v.cap_names) for s, v in sessions.items()},
        "param_defaults": {s: v.param_defaults for s, v in sessions.items()},
        "host_assumed": profile.host_defaults(),
    }


def _write(path: Path, meta: dict, records: Iterable[dict]) -> int:
    n = 0
    with open(path, "w") as f:
        f.write(json.dumps(meta, sort_keys=True) + "\n")
        for r in records:
            f.write(json.dumps(r, separators=(",", ":")) + "\n")
            n += 1
    return n


def generate(out_dir: str, seed: int = 72, n_random_caps: int = 350,
             n_from_current: int = 150, n_random_params: int = 500,
             binary: Optional[str] = None, only: Sequence[str] = ("caps", "params", "commands"),
             log: Callable[[str], None] = print) -> dict[str, int]:
    """Run every case against QEMU and write the JSON-lines files; returns counts."""
    binary = binary or qemu_binary()
    if binary is None:
        raise GroundTruthError("qemu-system-x86_64 is not installed")
    profile = load_profile(PROFILE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    counts: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="livemig-gt-") as work:
        sessions = {s: SideSession(s, workdir=work, binary=binary).start() for s in SIDES}
        try:
            for s in sessions.values():
                if s.cap_names != profile.capability_names():
                    log(f"note: QEMU's capability list differs from the spec: {s.cap_names}")
            # Each kind's cases per side, from a random stream of their own
            # (seed, kind, side), so that one kind can be regenerated alone.
            kinds = (
                ("caps", lambda rng: capability_cases(profile, rng, n_random_caps,
                                                      n_from_current)
                 + caps_setup_param_cases(profile), run_cap_case),
                ("params", lambda rng: parameter_cases(profile, rng, n_random_params),
                 run_param_case),
            )
            for kind, make_cases, run_case in kinds:
                if kind not in only:
                    continue
                t0 = time.monotonic()
                records = []
                for side, sess in sessions.items():
                    for case in make_cases(random.Random(f"{seed}-{kind}-{side}")):
                        record = run_case(sess, case)
                        if record:  # {}: the case's setup was refused, nothing to record
                            records.append(record)
                counts[kind] = _write(out / FILES[kind],
                                      _meta(kind, profile, seed, sessions, binary), records)
                log(f"{kind}: {counts[kind]} cases in {time.monotonic() - t0:.1f}s "
                    f"({sum(s.restarts for s in sessions.values())} restarts so far)")
        finally:
            for s in sessions.values():
                s.close()
        if "commands" in only:
            t0 = time.monotonic()
            rec = CommandRecorder(profile, work, binary)
            records = rec.run_all(log)
            meta = _meta("commands", profile, seed, {}, binary)
            meta["scenarios_broken"] = rec.failed
            counts["commands"] = _write(out / FILES["commands"], meta, records)
            log(f"commands: {counts['commands']} calls in {time.monotonic() - t0:.1f}s")
    return counts


def read_cases(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(meta, records)`` of one recorded file."""
    meta: dict = {}
    records: list[dict] = []
    with open(path) as f:
        for line in f:
            if not line.strip():
                continue
            obj = json.loads(line)
            if obj.get("kind") == "meta":
                meta = obj
            else:
                records.append(obj)
    return meta, records


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m livemig.conformance.ground_truth_files",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/data/", help="output directory")
    ap.add_argument("--seed", type=int, default=72)
    ap.add_argument("--random-caps", type=int, default=350)
    ap.add_argument("--from-current", type=int, default=150)
    ap.add_argument("--random-params", type=int, default=500)
    ap.add_argument("--only", nargs="*", default=["caps", "params", "commands"],
                    choices=["caps", "params", "commands"])
    ap.add_argument("--qemu", default=None, help="QEMU binary (default: on PATH)")
    args = ap.parse_args(argv)
    counts = generate(args.out, seed=args.seed, n_random_caps=args.random_caps,
                      n_from_current=args.from_current, n_random_params=args.random_params,
                      binary=args.qemu, only=args.only)
    print(json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
