"""``livemig demo``: the main job, a tour of what livemig does, on real data.

1. A summary of every spec profile and what changed between them.
2. The capability and parameter checkers on examples whose outcome differs
   between QEMU versions (postcopy-ram with compress, ...).
3. The proof table of the invariant catalogue, for every profile.
4. The state diagrams, written to ``--out`` (default ./out).
5. A real precopy migration of a dirtying guest between two processes.
6. Precopy -> postcopy -> migrate-pause -> recovery -> completed between two
   processes.
Each stage says what it did and where its output went; the exit status is
non-zero if any stage failed (a proof not as expected, a failed migration or
memory check).
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable

from rich.console import Console
from rich.table import Table

from livemig.core.caps import check_capabilities
from livemig.core.cli import cap_request
from livemig.core.params import check_parameters
from livemig.spec import load_all, load_profile
from livemig.spec.diff import diff_profiles
from livemig.spec.render import profile_summary

#: (description, side, capability request) — inputs, not rules: the outcome is the checker's.
CAPABILITY_EXAMPLES = (
    ("postcopy with compression", "source", ["postcopy-ram", "compress"]),
    ("multifd with compression", "source", ["multifd", "compress"]),
    ("postcopy preempt alone", "source", ["postcopy-preempt"]),
    ("zero-copy send without multifd", "source", ["zero-copy-send"]),
    ("background snapshot with xbzrle", "source", ["background-snapshot", "xbzrle"]),
    ("postcopy on the destination", "destination", ["postcopy-ram", "return-path"]),
    ("an unknown capability", "source", ["turbo"]),
)

PARAMETER_EXAMPLES = (
    ("throttle ceiling below the start", {"cpu-throttle-initial": 50, "max-cpu-throttle": 40}),
    ("no multifd channels", {"multifd-channels": 0}),
    ("too many multifd channels", {"multifd-channels": 256}),
    ("xbzrle cache not a power of two", {"xbzrle-cache-size": 100000}),
    ("max-bandwidth of -1 (wraps)", {"max-bandwidth": -1}),
    ("downtime limit as a string", {"downtime-limit": "300"}),
)


def show_spec(console: Console) -> None:
    profiles = load_all()
    table = Table(title="spec profiles", title_justify="left")
    table.add_column("")
    for profile in profiles:
        table.add_column(profile.name, justify="right")
    summaries = [profile_summary(p) for p in profiles]
    for key in summaries[0]:
        table.add_row(key, *[str(s.get(key, "-")) for s in summaries])
    console.print(table)
    for older, newer in zip(profiles, profiles[1:]):
        changes = [d for d in diff_profiles(older, newer) if not d.empty]
        parts = ", ".join(f"{d.table} +{len(d.added)}/-{len(d.removed)}/~{len(d.changed)}"
                          for d in changes)
        console.print(f"[bold]{older.name} -> {newer.name}[/]: {parts}")
        console.print(f"  full diff: livemig spec diff {older.name} {newer.name}\n")


def show_checkers(console: Console) -> None:
    profiles = load_all()
    table = Table(title="migrate-set-capabilities, as each QEMU answers", title_justify="left")
    table.add_column("request")
    for profile in profiles:
        table.add_column(profile.name)
    for description, side, caps in CAPABILITY_EXAMPLES:
        cells = []
        for profile in profiles:
            result = check_capabilities(profile, cap_request(caps), side=side)
            cells.append("[green]accepted[/]" if result.ok else f"[red]{result.error}[/]")
        table.add_row(f"{description}\n[dim]{side}: {' '.join(caps)}[/]", *cells)
    console.print(table)

    profile = load_profile("qemu-7.2")
    table = Table(title=f"migrate-set-parameters ({profile.name})", title_justify="left")
    table.add_column("request")
    table.add_column("answer")
    for description, request in PARAMETER_EXAMPLES:
        result = check_parameters(profile, request)
        if result.ok:
            shown = {k: result.value[k] for k in request}
            answer = f"[green]accepted[/] -> {shown}"
        else:
            answer = f"[red]{result.error}[/]"
        table.add_row(f"{description}\n[dim]{request}[/]", answer)
    console.print(table)


#: the demo's stages in order; later areas append theirs
def _diagrams(console: Console, args: argparse.Namespace) -> object:
    from livemig.diagrams import demo_stage
    return demo_stage(console, args)


def _proofs(console: Console, args: argparse.Namespace) -> object:
    from livemig.core.prove.demo import demo_stage
    return demo_stage(console, args)


def _precopy(console: Console, args: argparse.Namespace) -> object:
    from livemig.engine.demo import run_precopy_demo
    return run_precopy_demo(console)


def _postcopy(console: Console, args: argparse.Namespace) -> object:
    from livemig.engine.postcopy_demo import run_postcopy_demo
    return run_postcopy_demo(console)


STAGES: list[tuple[str, Callable[[Console, argparse.Namespace], object]]] = [
    ("The spec", lambda console, args: show_spec(console)),
    ("The checkers", lambda console, args: show_checkers(console)),
    ("The proofs", _proofs),
    ("The diagrams", _diagrams),
    ("A precopy migration between two processes", _precopy),
    ("Postcopy, pause and recovery between two processes", _postcopy),
]


def run(args: argparse.Namespace) -> int:
    console = Console()
    status = 0
    for number, (title, stage) in enumerate(STAGES, 1):
        console.rule(f"[bold]{number}. {title}")
        result = stage(console, args)
        if isinstance(result, int) and result != 0:
            status = result
    return status


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    demo = subparsers.add_parser(
        "demo", help="a tour: spec summary, checkers, proofs, diagrams, a real migration",
        description="Run every part of livemig on real data and say where output went.")
    demo.add_argument("--out", type=Path, default=Path("out"),
                      help="where generated files (diagrams, logs) go (default: ./out)")
    demo.set_defaults(func=run)
