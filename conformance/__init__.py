"""livemig.conformance: is an observed run, or a real QEMU, what the spec says?

* trace validation: :func:`check_trace` / :func:`check_log` /
  :func:`check_statuses` judge one side of a log (``livemig check-trace``)
  into a :class:`Verdict`; :class:`SideChecker` judges steps as they come;
  :func:`monitor` checks a live process over QMP (``livemig monitor``);
  :class:`RuntimeChecker` and :class:`CrossSideChecker` check a running
  engine's log against the proved invariants;
* QEMU: :class:`QemuVM` / :func:`start_pair` run a real
  ``qemu-system-x86_64``; :class:`QMPSession` attaches to any QMP socket;
* differential scenarios: :func:`run_scenario` on :class:`QemuLauncher`'s or
  :class:`LivemigLauncher`'s processes, compared with the committed
  recording (:func:`load_recording`); :class:`ProcessVM` is one ``livemig vm``
  process as the stateful runs see it; :func:`replay_on_engine` walks a
  prover counterexample on the engine;
* the engine's own thread programs on an in-memory network
  (:class:`FakeLink`), faults for them on real threads (:class:`FaultPlan`,
  :class:`FaultyTransport`), and the spec-generated state machines
  (:func:`build_machine`);
* the ground truth recorded from QEMU 7.2: :func:`generate_ground_truth`,
  :func:`read_cases`, :data:`GROUND_TRUTH_FILES`, and the comparisons with
  livemig's checkers (:func:`compare_caps`, :func:`compare_params`,
  :func:`compare_command`).

    >>> from livemig.conformance import check_statuses
    >>> from livemig.spec import load_profile
    >>> check_statuses(load_profile("qemu-7.2"), ["setup", "active", "completed"],
    ...                "source").legal
    True

Names are imported on first use (PEP 562): ``import livemig.conformance``
loads no submodule, so neither qemu.qmp nor Hypothesis (a test extra) is
imported until a name that needs it is read.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from livemig.lazy import lazy_exports

#: public name -> the submodule that defines it
_EXPORTS: dict[str, str] = {
    # trace validation (check-trace, monitor)
    "TraceInputError": "trace",
    "Verdict": "trace",
    "SideChecker": "trace",
    "check_trace": "trace",
    "check_log": "trace",
    "check_statuses": "trace",
    "allowed_from": "trace",
    "monitor": "monitor",
    "MonitorResult": "monitor",
    "RuntimeChecker": "runtime",
    "CrossSideChecker": "runtime",
    # QEMU and QMP
    "QemuVM": "qemu_vm",
    "start_pair": "qemu_vm",
    "qemu_binary": "qemu_vm",
    "qemu_version": "qemu_vm",
    "QMPSession": "qmpsession",
    # differential scenarios
    "run_scenario": "scenarios",
    "load_recording": "scenarios",
    "ScenarioResult": "scenarios",
    "QemuLauncher": "scenarios",
    "LivemigLauncher": "scenarios",
    "ProcessVM": "processvm",
    "replay_on_engine": "replay",
    # ground truth and the checker comparisons
    "read_cases": "ground_truth_files",
    "generate_ground_truth": "ground_truth_files:generate",
    "GROUND_TRUTH_FILES": "ground_truth_files:FILES",
    "compare_caps": "checker_compare",
    "compare_params": "checker_compare",
    "compare_command": "checker_compare",
    # the engine's programs on a fake network, faults on real threads, and
    # the spec-generated state machines
    "FakeLink": "fakelink",
    "FaultPlan": "faultrunner",
    "FaultyTransport": "faultrunner",
    "build_machine": "stateful",
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


if TYPE_CHECKING:  # what type checkers and editors see; never run
    from livemig.conformance.checker_compare import compare_caps, compare_command, compare_params
    from livemig.conformance.ground_truth_files import FILES as GROUND_TRUTH_FILES
    from livemig.conformance.ground_truth_files import generate as generate_ground_truth
    from livemig.conformance.fakelink import FakeLink
    from livemig.conformance.faultrunner import FaultPlan, FaultyTransport
    from livemig.conformance.ground_truth_files import read_cases
    from livemig.conformance.monitor import MonitorResult, monitor
    from livemig.conformance.processvm import ProcessVM
    from livemig.conformance.qemu_vm import QemuVM, qemu_binary, qemu_version, start_pair
    from livemig.conformance.qmpsession import QMPSession
    from livemig.conformance.replay import replay_on_engine
    from livemig.conformance.runtime import CrossSideChecker, RuntimeChecker
    from livemig.conformance.stateful import build_machine
    from livemig.conformance.scenarios import (
        LivemigLauncher, QemuLauncher, ScenarioResult, load_recording, run_scenario,
    )
    from livemig.conformance.trace import (
        SideChecker, TraceInputError, Verdict, allowed_from, check_log, check_statuses,
        check_trace,
    )
