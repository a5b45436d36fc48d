"""Write diagrams to files: per profile, per profile pair, per trace; plus an index.

Layout of an output directory::

    <out>/<profile>/<machine>.{dot,svg,png}
    <out>/diff-<a>-<b>/<machine>.{dot,svg,png}
    <out>/trace-<name>/<side>.{dot,svg,png}
    <out>/MANIFEST.json   # Graphviz version, sha256 of every DOT source

DOT is the reviewed source of truth; SVG and PNG are rendered from it by the
real ``dot`` through the ``graphviz`` package.  PNG bytes differ between
Graphviz versions, so the manifest records which DOT each picture was
rendered from and the freshness test compares DOT (and SVG when the Graphviz
version matches) exactly.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional, Sequence

import graphviz

from livemig.diagrams.diff import diff_model
from livemig.diagrams.model import MACHINE_TITLES, MACHINES, build_model
from livemig.diagrams.render import FONT, to_digraph
from livemig.diagrams.trace import Trace, overlay_marks, parse_trace
from livemig.spec import load_profile, profile_names

FORMATS: tuple[str, ...] = ("dot", "svg", "png")
#: PNG resolution: legible labels at a size that keeps the committed output small
PNG_DPI = 96
MANIFEST = "MANIFEST.json"

#: the repository checkout this package runs from (editable install)
REPO_ROOT = Path(__file__).resolve().parent.parent
#: where the committed diagrams live, and their index page
COMMITTED_OUT = REPO_ROOT / "diagrams" / "out"
COMMITTED_INDEX = REPO_ROOT / "diagrams" / "README.md"


@dataclass(frozen=True)
class ExampleTrace:
    """An observed run drawn in the committed output."""

    name: str
    profile: str
    side: str
    path: str  # relative to the repository root
    caption: str


#: real inputs: QEMU 7.2's own events (recorded by tests/data/diagram_record_real72.py),
#: an observed sequence of the facts file (§1.7) and a livemig core CAS log
EXAMPLE_TRACES: tuple[ExampleTrace, ...] = (
    ExampleTrace("real72-postcopy-destination", "qemu-7.2", "destination",
                 "tests/data/diagram_real72_postcopy_destination.jsonl",
                 "real QEMU 7.2 destination, postcopy: its QMP events, edges inferred from "
                 "the spec (the first 'setup' is an event with no state change)"),
    ExampleTrace("ndjson72-source", "qemu-7.2", "source",
                 "tests/data/diagram_ndjson72_postcopy_recover.ndjson",
                 "livemig core CAS log, source: postcopy, pause, recover, complete; then a "
                 "second migration, cancelled"),
    ExampleTrace("qmp72-illegal-source", "qemu-7.2", "source",
                 "tests/data/diagram_qmp72_illegal_source.jsonl",
                 "a source event sequence with an illegal step (active → postcopy-paused)"),
)


def dot_version() -> str:
    """The installed Graphviz version, e.g. ``"2.43.0"``."""
    out = subprocess.run(["dot", "-V"], capture_output=True, text=True, check=True)
    text = (out.stderr or out.stdout).strip()
    for word in text.split():
        if word[:1].isdigit():
            return word
    return text


def font_match() -> str:
    """What the diagrams' font resolves to here (SVG text metrics depend on it)."""
    try:
        out = subprocess.run(["fc-match", FONT], capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return out.stdout.strip()


def render_files(graph: graphviz.Digraph, base: Path,
                 formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write ``base.<fmt>`` for each format; returns the paths written."""
    base.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = base.with_suffix("." + fmt)
        if fmt == "dot":
            path.write_text(graph.source)
        elif fmt == "png":
            png = graph.copy()
            png.graph_attr["dpi"] = str(PNG_DPI)
            path.write_bytes(png.pipe(format="png"))
        else:
            path.write_bytes(graph.pipe(format=fmt))
        written.append(path)
    return written


def write_profile(name: str, out_dir: Path, machines: Sequence[str] = MACHINES,
                  formats: Sequence[str] = FORMATS, guards: str = "auto") -> list[Path]:
    """Every machine of one profile under ``out_dir/<profile>/``."""
    profile = load_profile(name)
    written = []
    for machine in machines:
        graph = to_digraph(build_model(profile, machine), guards=guards)
        written += render_files(graph, out_dir / name / machine, formats)
    return written


def diff_dir_name(a: str, b: str) -> str:
    return f"diff-{a}-{b}"


def write_diff(a: str, b: str, out_dir: Path, machines: Sequence[str] = MACHINES,
               formats: Sequence[str] = FORMATS, guards: str = "auto") -> list[Path]:
    """One diagram per machine of what changed from profile ``a`` to ``b``."""
    pa, pb = load_profile(a), load_profile(b)
    written = []
    for machine in machines:
        model, marks = diff_model(pa, pb, machine)
        written += render_files(to_digraph(model, marks, guards=guards),
                                out_dir / diff_dir_name(a, b) / machine, formats)
    return written


def write_trace(profile_name: str, trace_path: Path, out_dir: Path, side: Optional[str] = None,
                formats: Sequence[str] = FORMATS, caption: str = "",
                guards: str = "auto") -> tuple[list[Path], Trace]:
    """The overlay of an observed run on the status diagram(s) of its side(s).

    ``side`` is required for a QMP event log and selects one side of an
    NDJSON log (default: every side in the log).  Returns the paths written
    and the trace (restricted to the drawn sides).
    """
    profile = load_profile(profile_name)
    trace = parse_trace(profile, trace_path, side=side or "source")
    sides = [side] if side else (trace.sides or ["source"])
    written = []
    for s in sides:
        steps = trace.side(s)
        model = build_model(profile, s)
        marks = overlay_marks(model, profile, steps)
        bad = sum(1 for st in steps if not st.legal)
        marks.caption = [caption or f"trace {trace_path.name}",
                         f"{trace.format} · {len(steps)} steps · "
                         f"{'no illegal step' if not bad else f'{bad} illegal step(s)'}"]
        marks.legend = [("visited", "visited, with counts"), ("illegal", "illegal step")]
        written += render_files(to_digraph(model, marks, guards=guards), out_dir / s, formats)
    trace.steps = [st for st in trace.steps if st.side in sides]
    return written, trace


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_manifest(out_dir: Path, dots: Iterable[Path]) -> Path:
    """Record the Graphviz version and the sha256 of the DOT files ``dots`` (under ``out_dir``)."""
    dots = sorted(dots)
    data = {
        "graphviz": dot_version(),
        "font": font_match(),
        "png_dpi": PNG_DPI,
        "dot_sha256": {p.relative_to(out_dir).as_posix(): _sha(p) for p in dots},
    }
    path = out_dir / MANIFEST
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    return path


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path, start)).as_posix()


def write_index(out_dir: Path, index: Path, profiles: Sequence[str],
                diffs: Sequence[tuple[str, str]], traces: Sequence[ExampleTrace] = ()) -> Path:
    """A Markdown page embedding every diagram (SVG), with PNG and DOT links."""
    here = index.parent
    lines = [
        "# State diagrams",
        "",
        "Generated from the spec tables (`spec/profiles/`) by `livemig diagram`; do not edit.",
        "Regenerate with `python -m livemig.diagrams` (the test `tests/test_diagrams_fresh.py` "
        "fails when these files are stale, so a spec change shows its diagram change in review).",
        "",
        "How to read them:",
        "",
        "- rounded box: a status; double border: terminal; bold border: the initial state;",
        "- heavy black: the main path, precopy and postcopy, to the first terminal state "
        "(derived: rows that move forward in QEMU's enum order, which follows the lifecycle);",
        "- solid: a CAS from one exact state (`migrate_set_state(&s, OLD, NEW)`);",
        "- dashed blue from **any of G**: a row whose OLD is the group G;",
        "- dashed purple from **current ∈ {…}**: QEMU passes the state it read earlier as OLD "
        "(it can overwrite a concurrent change, e.g. a cancel);",
        "- dashed grey: a plain store (no CAS, no event); dotted teal loop: an event with no "
        "state change;",
        "- each label line is one spec row: the QEMU function, then the actor (thread/context);",
        "- shaded boxes: state groups that nest; the others are listed under the title;",
        "- where two rows on one edge have the same function and actor, their guards are "
        "written under them (`livemig diagram --guards all` writes every guard);",
        "- SVG tooltips give each row's id, guard and notes;",
        "- PostcopyState: red dashed from **any other**: a handler that exchanges first and "
        "checks after, so on error the state has already moved;",
        "- capability rules: red line: both on is refused; blue arrow: requires; ✗ lines on a "
        "capability: refused under that host/parameter condition; conditions on an edge "
        "restrict the rule.",
        "",
    ]
    for name in profiles:
        title = load_profile(name).title
        lines += [f"## {name}: {title}", ""]
        for machine in MACHINES:
            base = out_dir / name / machine
            lines += [f"### {MACHINE_TITLES[machine]}", "",
                      f"![{name} {machine}]({_rel(base.with_suffix('.svg'), here)})", "",
                      f"[PNG]({_rel(base.with_suffix('.png'), here)}) · "
                      f"[DOT]({_rel(base.with_suffix('.dot'), here)})", ""]
    for a, b in diffs:
        lines += [f"## What changed: {a} → {b}", "",
                  "Green: only in the newer profile; red: only in the older; orange: changed "
                  "(the label says what it was); grey: unchanged.", ""]
        for machine in MACHINES:
            base = out_dir / diff_dir_name(a, b) / machine
            lines += [f"### {MACHINE_TITLES[machine]}", "",
                      f"![diff {machine}]({_rel(base.with_suffix('.svg'), here)})", "",
                      f"[PNG]({_rel(base.with_suffix('.png'), here)}) · "
                      f"[DOT]({_rel(base.with_suffix('.dot'), here)})", ""]
    if traces:
        lines += ["## Observed runs laid over the spec", "",
                  "`livemig diagram --trace FILE` draws a run: visited states and edges in green "
                  "with counts, an illegal step in red, the rest in grey.", ""]
        for t in traces:
            base = out_dir / f"trace-{t.name}" / t.side
            lines += [f"### {t.caption}", "",
                      f"Input: `{t.path}` ({t.profile}, {t.side})", "",
                      f"![trace {t.name}]({_rel(base.with_suffix('.svg'), here)})", "",
                      f"[PNG]({_rel(base.with_suffix('.png'), here)}) · "
                      f"[DOT]({_rel(base.with_suffix('.dot'), here)})", ""]
    index.write_text("\n".join(lines).rstrip() + "\n")
    return index


def profile_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Consecutive profile pairs, oldest first (each profile against the one it extends)."""
    pairs = []
    for name in names:
        parent = load_profile(name).extends
        if parent:
            pairs.append((parent, name))
    return pairs


def write_all(out_dir: Path, formats: Sequence[str] = FORMATS,
              traces: Iterable[ExampleTrace] = (), index: Optional[Path] = None,
              repo_root: Path = REPO_ROOT) -> list[Path]:
    """Every machine of every profile, each profile diff, the given example traces,
    the index page (``out_dir/index.md`` unless ``index`` is given) and the manifest.

    Returns every path written; ``livemig demo`` calls this.
    """
    out_dir = Path(out_dir)
    names = list(profile_names())
    written: list[Path] = []
    for name in names:
        written += write_profile(name, out_dir, formats=formats)
    pairs = profile_pairs(names)
    for a, b in pairs:
        written += write_diff(a, b, out_dir, formats=formats)
    traces = list(traces)
    for t in traces:
        files, _ = write_trace(t.profile, repo_root / t.path, out_dir / f"trace-{t.name}",
                               side=t.side, formats=formats, caption=t.caption)
        written += files
    written.append(write_index(out_dir, Path(index) if index else out_dir / "index.md",
                               names, pairs, traces))
    if "dot" in formats:
        written.append(write_manifest(out_dir, [p for p in written if p.suffix == ".dot"]))
    return written


def regenerate_committed(out_dir: Path = COMMITTED_OUT, index: Path = COMMITTED_INDEX) -> list[Path]:
    """Rewrite the committed diagrams (``diagrams/out`` and ``diagrams/README.md``).

    Diagram files under ``out_dir`` that are no longer generated are removed,
    so a machine or profile that disappears from the spec leaves nothing stale.
    """
    written = write_all(out_dir, traces=EXAMPLE_TRACES, index=index)
    keep = {p.resolve() for p in written}
    for path in sorted(Path(out_dir).rglob("*")):
        if path.is_file() and path.suffix in (".dot", ".svg", ".png") and path.resolve() not in keep:
            path.unlink()
    for path in sorted(Path(out_dir).rglob("*"), reverse=True):
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
    return written


def demo_stage(console: "object", args: "object") -> int:
    """The diagrams stage of ``livemig demo``: write everything under ``<out>/diagrams``.

    ``console`` is a ``rich`` console (anything with ``print``); ``args.out``
    is the demo's output directory.  Returns 0.
    """
    out = Path(getattr(args, "out", "out")) / "diagrams"
    traces = [t for t in EXAMPLE_TRACES if (REPO_ROOT / t.path).exists()]
    written = write_all(out, traces=traces)
    pictures = sorted(p for p in written if p.suffix == ".svg")
    console.print(f"wrote {len(written)} diagram files ({len(pictures)} pictures, each as "
                  f"SVG, PNG and DOT) under {out}")
    console.print(f"  index: {out / 'index.md'}")
    for p in pictures:
        console.print(f"  {p}")
    return 0
