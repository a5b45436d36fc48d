"""livemig.diagrams: state diagrams drawn from the spec tables with Graphviz.

For each profile: the source and destination MigrationStatus machines, the
destination's PostcopyState, and the capability rules; an observed run laid
over a status machine (``--trace``); and what changed between two profiles
(``--diff``).  Nothing here names a state, group or capability: everything is
read from ``livemig.spec``.

    >>> from livemig.diagrams import machine_graph
    >>> from livemig.spec import load_profile
    >>> g = machine_graph(load_profile("qemu-7.2"), "source")
    >>> "postcopy-active" in g.source
    True

Pipeline: ``model`` (spec -> nodes/edges/clusters) -> marks from ``trace`` or
``diff`` -> ``render`` (Graphviz) -> ``output`` (files, index, manifest).
"""
from livemig.diagrams.diff import diff_model
from livemig.diagrams.model import MACHINES, Model, build_model
from livemig.diagrams.output import (
    EXAMPLE_TRACES, demo_stage, regenerate_committed, write_all, write_diff, write_profile,
    write_trace,
)
from livemig.diagrams.render import Marks, machine_graph, to_digraph
from livemig.diagrams.trace import Step, Trace, overlay_marks, parse_trace

__all__ = [
    "EXAMPLE_TRACES",
    "MACHINES",
    "Marks",
    "Model",
    "Step",
    "Trace",
    "build_model",
    "demo_stage",
    "diff_model",
    "machine_graph",
    "overlay_marks",
    "parse_trace",
    "regenerate_committed",
    "to_digraph",
    "write_all",
    "write_diff",
    "write_profile",
    "write_trace",
]
