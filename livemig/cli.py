"""The ``livemig`` command line.

Each area of the project contributes its subcommands through a module with
``add_parser(subparsers) -> None`` that registers parsers whose ``func``
attribute takes the parsed arguments and returns an exit status.  The list
below is the only place that knows them all.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from livemig import __version__
from livemig.errors import MigrationError

#: modules that add subcommands, in the order they appear in --help
SUBCOMMAND_MODULES = (
    "livemig.spec.cli",         # spec show / diff / check
    "livemig.core.cli",         # caps check, params check
    "livemig.core.prove.cli",   # prove
    "livemig.diagrams.cli",     # diagram
    "livemig.engine.cli",       # vm, incoming, migrate
    "livemig.conformance.cli",  # check-trace, monitor
    "livemig.demo",             # demo
)

DESCRIPTION = """\
livemig: QEMU's live-migration control plane as a checked state machine.

The spec (statuses, transitions, capability and parameter rules, QMP
preconditions, wire constants) is data, per QEMU version profile; the
commands below read it, check against it, prove properties of it, draw it,
and run a real migration engine driven by it.
"""


class UsageError(Exception):
    """A bad command-line value: ``main`` prints ``livemig: error: <message>`` and exits 2.

    The message names the option, the value and what is allowed, on one line
    (argparse's own refusals look the same, without argparse's usage lines)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="livemig", description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"livemig {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in SUBCOMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
                continue  # that area has no CLI (yet): not an error in a dependency

            raise
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (MigrationError, UsageError) as exc:
        print(f"livemig: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # e.g. `livemig spec show | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
