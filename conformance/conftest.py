"""pytest hooks for the conformance tests: the stateful runs' coverage
reports (rows hit per backend, QEMU-side rows reached) are printed at the
end of the run -- a test's own prints are captured, so ``make test`` would
not show them."""
from __future__ import annotations

from typing import Any


def pytest_terminal_summary(terminalreporter: Any) -> None:
    from livemig.conformance.stateful import SUMMARY
    if not SUMMARY:
        return
    terminalreporter.section("spec coverage of the stateful runs")
    for report in SUMMARY:
        terminalreporter.write_line(report)
