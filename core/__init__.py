"""livemig.core: the runtime built from the spec.

* :class:`StatusCell` / :class:`PostcopyCell` — QEMU's CAS and exchange semantics,
  strict about spec rows, with an NDJSON :class:`TransitionLog`;
* :func:`build_machine` — ``transitions`` machines generated from the rows;
* :func:`check_capabilities`, :func:`check_parameters`, :func:`check_command` —
  pure checkers returning QEMU's exact messages;
* :func:`evaluate` — the runtime reading of the spec's guard expressions.
"""
from livemig.core.caps import CheckResult, apply_capabilities, check_capabilities, \
    check_set_capabilities, default_capabilities, default_params
from livemig.core.cell import Attempt, PostcopyCell, StatusCell, TransitionLog
from livemig.core.commands import check_command
from livemig.core.guards import GuardEnv, evaluate
from livemig.core.machine import build_machine, machine_step
from livemig.core.params import apply_parameters, check_parameters

__all__ = [
    "Attempt",
    "CheckResult",
    "GuardEnv",
    "PostcopyCell",
    "StatusCell",
    "TransitionLog",
    "apply_capabilities",
    "apply_parameters",
    "build_machine",
    "check_capabilities",
    "check_command",
    "check_set_capabilities",
    "check_parameters",
    "default_capabilities",
    "default_params",
    "evaluate",
    "machine_step",
]
