"""``livemig demo``'s engine stage: a real two-process precopy migration.

:func:`run_precopy_demo` starts ``livemig incoming`` as a separate process
(the destination), migrates an in-process source VM whose vCPU keeps
dirtying memory to it over a unix socket with a progress bar, then shows the
source's final MigrationInfo and the destination's memory check (QEMU's
``check_guests_ram``).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any

from livemig.engine.cli import memory_check_text, print_summary, run_progress
from livemig.engine.vm import VM


def run_precopy_demo(console: Any, *, ram: str = "128M", workload: float = 20000.0,
                     timeout: float = 120.0) -> int:
    """Run the demo; print to ``console`` (a rich Console).  Returns 0 on success."""
    with tempfile.TemporaryDirectory(prefix="livemig-demo-") as tmp:
        sock = os.path.join(tmp, "migration.sock")
        console.print(f"[bold]Precopy migration[/] of a {ram} guest dirtying "
                      f"{workload:,.0f} pages/s, between two processes over unix:{sock}")
        # the kernel's memory where it can run (shmem RAM, the kernel's dirty
        # log), the simulated one otherwise: the progress line says which
        dst = subprocess.Popen([sys.executable, "-m", "livemig", "incoming", f"unix:{sock}",
                                "--ram", ram, "--json", "--memory", "auto"],
                               stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
        src = None
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                if dst.poll() is not None or time.monotonic() > deadline:
                    console.print("[red]the destination did not start[/]")
                    return 1
                time.sleep(0.05)
            src = VM(ram_size=int(ram[:-1]) << (30 if ram.endswith("G") else 20),
                     workload_rate=workload, memory="auto")
            src.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True},
                {"capability": "return-path", "state": True}]})
            src.execute("migrate-set-parameters", {"max-bandwidth": 512 << 20})
            src.execute("migrate", {"uri": f"unix:{sock}"})
            info = run_progress(src, console, timeout=timeout)
            print_summary(console, info, src.st.completed)
            out, err = dst.communicate(timeout=timeout)
            if dst.returncode != 0:
                console.print(f"[red]destination exited {dst.returncode}[/] {err.strip()}")
                return 1
            result = json.loads(out)
            check = result["memory-check"]
            console.print(f"destination: {result['status']}, "
                          f"{result['pages']['normal']:,} pages + "
                          f"{result['pages']['duplicate']:,} zero pages loaded; "
                          f"{memory_check_text(check)}", highlight=False)
            return 0 if (check["ok"] and info.get("status") == src.st.completed) else 1
        finally:
            if src is not None:
                src.close()
            if dst.poll() is None:
                dst.kill()
                dst.wait()
