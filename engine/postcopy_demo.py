"""``livemig demo``'s postcopy stage: precopy -> postcopy -> pause -> recover
-> completed, between two processes.

:func:`run_postcopy_demo` starts a destination ``livemig vm --qmp ...
--incoming defer`` process and drives it with qemu.qmp (as one drives QEMU),
migrates an in-process source VM whose vCPU keeps dirtying memory faster than
the bandwidth limit lets precopy converge, switches to postcopy with
``migrate-start-postcopy``, breaks the channel with the source's
``migrate-pause``, recovers with ``migrate-recover`` on the destination and
``migrate resume=true`` on the source, and shows a progress bar through every
phase, the final MigrationInfo (with postcopy-requests, postcopy-bytes and
the destination's fault round-trip latency) and the destination's memory
check.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from typing import Any

from livemig.engine.cli import memory_check_text, print_summary
from livemig.engine.guest import RUN_RUNNING, parse_size
from livemig.engine.postcopy import postcopy_statuses
from livemig.engine.qmpprocess import QMPProcess
from livemig.engine.vm import VM


def run_postcopy_demo(console: Any, *, ram: str = "128M", workload: float = 20000.0,
                      timeout: float = 120.0) -> int:
    """Run the demo; print to ``console`` (a rich Console).  Returns 0 on success."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    size = parse_size(ram)
    with tempfile.TemporaryDirectory(prefix="livemig-pcdemo-") as tmp:
        qmp_path = os.path.join(tmp, "destination.qmp")
        console.print(f"[bold]Postcopy migration with a pause and a recovery[/] of a {ram} "
                      f"guest dirtying {workload:,.0f} pages/s, between two processes "
                      f"(destination: livemig vm --qmp, driven by qemu.qmp)")
        dst = src = None
        try:
            dst = QMPProcess([sys.executable, "-m", "livemig", "vm", "--qmp",
                               f"unix:{qmp_path}", "--ram", ram, "--incoming", "defer",
                              # the kernel's memory where it can run: a vCPU that
                              # touches a missing page sleeps in userfaultfd
                              "--memory", "auto"],
                              qmp_path)
            src = VM(ram_size=size, workload_rate=workload, memory="auto")
            pst = postcopy_statuses(src.profile)
            caps = [{"capability": c, "state": True} for c in ("events", "postcopy-ram")]
            src.execute("migrate-set-capabilities", {"capabilities": caps})
            dst.cmd("migrate-set-capabilities", capabilities=caps)
            # precopy cannot converge at 32 MiB/s against this guest; postcopy
            # background pages at 64 MiB/s leave time to break the channel
            src.execute("migrate-set-parameters", {"max-bandwidth": 32 << 20,
                                                   "max-postcopy-bandwidth": 64 << 20})
            dst.cmd("migrate-incoming", uri=f"unix:{tmp}/mig.sock")
            src.execute("migrate", {"uri": f"unix:{tmp}/mig.sock"})
            columns = (TextColumn("[bold]{task.fields[status]:<17}"), BarColumn(),
                       TextColumn("{task.fields[xfer]}"), TextColumn("{task.fields[note]}"),
                       TimeElapsedColumn())
            deadline = time.monotonic() + timeout
            phase = "precopy"
            paused_at = 0.0
            with Progress(*columns, console=console, transient=False) as progress:
                task = progress.add_task("migrate", total=size, status=src.st.setup, xfer="",
                                         note="")
                while True:
                    info = src.execute("query-migrate")
                    status = info.get("status", "")
                    ram_info = info.get("ram", {})
                    sent = ram_info.get("transferred", 0)
                    progress.update(task, status=status,
                                    completed=max(0, size - ram_info.get("remaining", size)),
                                    xfer=f"{sent / 2**20:,.0f} MiB sent, "
                                         f"{ram_info.get('postcopy-requests', 0)} page "
                                         f"requests", note=phase)
                    if status in src.st.terminal:
                        if status == src.st.completed:
                            progress.update(task, completed=size)
                        break
                    if time.monotonic() > deadline:
                        console.print("[red]timed out[/]")
                        return 1
                    if phase == "precopy" and sent > size // 3:
                        src.execute("migrate-start-postcopy")
                        phase = "migrate-start-postcopy"
                    elif phase == "migrate-start-postcopy" and status == pst.active and \
                            dst.cmd("query-status")["status"] == RUN_RUNNING:
                        phase = "postcopy: destination vCPU running, faulting pages in"
                        paused_at = time.monotonic() + 0.5
                    elif phase.startswith("postcopy:") and time.monotonic() > paused_at:
                        src.execute("migrate-pause")
                        phase = "migrate-pause (source)"
                    elif phase.startswith("migrate-pause") and status == pst.paused and \
                            dst.cmd("query-migrate").get("status") == pst.paused:
                        dst.cmd("migrate-recover", uri=f"unix:{tmp}/recover.sock")
                        src.execute("migrate", {"uri": f"unix:{tmp}/recover.sock",
                                                "resume": True})
                        phase = "migrate-recover + migrate resume=true"
                    elif phase.startswith("migrate-recover") and status == pst.active:
                        phase = "recovered: postcopy-active again"
                    time.sleep(0.1)
            src.wait_outgoing_done(30)
            info = src.execute("query-migrate")
            print_summary(console, info, src.st.completed)
            ram_info = info.get("ram", {})
            console.print(f"postcopy: {ram_info.get('postcopy-bytes', 0) / 2**20:,.1f} MiB "
                          f"after the switch, {ram_info.get('postcopy-requests', 0)} page "
                          f"requests served", highlight=False)
            deadline = time.monotonic() + 30
            while dst.cmd("query-migrate").get("status") not in src.st.terminal:
                if time.monotonic() > deadline:
                    console.print("[red]the destination did not finish[/]")
                    return 1
                time.sleep(0.05)
            dinfo = dst.cmd("query-migrate")
            lat = dinfo.get("x-livemig-postcopy-latency", {})
            if lat.get("count"):
                console.print(f"destination: {lat['count']} faulted pages, request -> placed p50 "
                              f"{lat['p50-us'] / 1000:.2f} ms, p99 {lat['p99-us'] / 1000:.2f} ms",
                              highlight=False)
            memory = dinfo.get("x-livemig-memory", {})
            if memory:
                console.print(f"destination memory: {memory.get('backend')}"
                              + (f" (not the kernel's: {memory['kernel-unavailable']})"
                                 if memory.get("kernel-unavailable") else ""),
                              highlight=False)
            events = [a.new for a in src.log.changes() if a.side == "source"]
            console.print("source states: " + " -> ".join(events), highlight=False)
            dst.cmd("stop")
            check = dst.cmd("x-livemig-check-memory")
            console.print(f"destination {dinfo.get('status')}; {memory_check_text(check)}",
                          highlight=False)
            return 0 if (check["ok"] and info.get("status") == src.st.completed
                         and dinfo.get("status") == src.st.completed) else 1
        finally:
            if src is not None:
                src.close()
            if dst is not None:
                dst.close()
