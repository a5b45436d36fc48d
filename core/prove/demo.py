"""The proof stage of ``livemig demo``: the proof table and one counterexample."""
from __future__ import annotations

import argparse
import time

from livemig.core.prove.catalogue import prove_all
from livemig.core.prove.counterexample import render

#: the counterexample the demo prints in full (catalogue entry, profile)
SHOWCASE = ("no_postcopy_with_compress", "qemu-7.2")


def demo_stage(console, args: argparse.Namespace) -> int:
    """Prove the catalogue for every profile, print the table; 1 on any mismatch."""
    from rich.table import Table

    t0 = time.perf_counter()
    results = prove_all()
    seconds = time.perf_counter() - t0
    profiles = sorted({r.profile for r in results})
    table = Table(title=f"invariant catalogue, proved with Z3 ({seconds:.1f} s)",
                  title_justify="left")
    table.add_column("invariant")
    for p in profiles:
        table.add_column(p)
    by = {(r.profile, r.invariant): r for r in results}
    for name in dict.fromkeys(r.invariant for r in results):
        cells = []
        for p in profiles:
            r = by.get((p, name))
            if r is None:
                cells.append("-")
                continue
            colour = "green" if r.ok else "red"
            how = f"{r.method}, k={r.k}"
            mark = "" if r.ok else f" (expected {r.expected})"
            cells.append(f"[{colour}]{r.result}[/] [dim]{how}[/]{mark}")
        table.add_row(name, *cells)
    console.print(table)
    show = by.get((SHOWCASE[1], SHOWCASE[0]))
    if show is not None and show.counterexample:
        console.print(render(show.counterexample,
                             f"{show.profile} {show.invariant}: {show.result}"),
                      markup=False, highlight=False)
        console.print(f"  why: {show.reason}", markup=False)
    bad = [r for r in results if not r.ok]
    console.print(f"{len(results) - len(bad)}/{len(results)} results as expected; "
                  f"details: livemig prove --all")
    return 1 if bad else 0
