"""livemig.diagrams: models from the spec, trace overlays on real inputs, profile diffs, CLI."""
import ast
import json
import shutil
from pathlib import Path

import pytest

from livemig.cli import main
from livemig.diagrams import (
    MACHINES, build_model, diff_model, machine_graph, overlay_marks, parse_trace, to_digraph,
)
from livemig.diagrams.model import node_id
from livemig.core.tracelog import infer_steps
from livemig.spec import load_all, load_profile, profile_names

DATA = Path(__file__).parent / "data"
P30 = load_profile("qemu-3.0")
P72 = load_profile("qemu-7.2")
needs_dot = pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz `dot`")

# facts §1.7, 7.2 column: every observed sequence, as QMP event logs; and events recorded
# from real QEMU 7.2 processes (tests/data/diagram_record_real72.py)
OBSERVED_72 = sorted(p.name for p in DATA.glob("diagram_qmp72_*.jsonl") if "illegal" not in p.name)
REAL_72 = sorted(p.name for p in DATA.glob("diagram_real72_*.jsonl"))


# ------------------------------------------------------------------ models
@pytest.mark.parametrize("profile", profile_names())
@pytest.mark.parametrize("machine", MACHINES)
def test_every_machine_of_every_profile_builds(profile, machine):
    model = build_model(load_profile(profile), machine)
    assert model.nodes and model.edges
    source = to_digraph(model).source
    for node in model.nodes:
        assert node in source


@needs_dot
@pytest.mark.parametrize("profile", profile_names())
@pytest.mark.parametrize("machine", MACHINES)
def test_every_machine_renders_with_dot(profile, machine):
    svg = machine_graph(load_profile(profile), machine).pipe(format="svg").decode()
    assert svg.lstrip().startswith("<?xml") and "</svg>" in svg


@pytest.mark.parametrize("profile", load_all(), ids=lambda p: p.name)
@pytest.mark.parametrize("side", ["source", "destination"])
def test_every_row_of_a_side_is_drawn(profile, side):
    model = build_model(profile, side)
    for row in profile.rows(side):
        keys = model.row_edges.get(row.id)
        assert keys, f"{row.id} not drawn"
        for tail, head, kind in keys:
            assert tail in model.nodes and head in model.nodes
            if row.event_only:
                assert kind == "event" and tail == head  # a loop: no state change
            elif row.store:
                assert kind == "store"
            elif row.old_is_state:
                assert (kind, tail) == ("exact", model.status_nodes[row.old])
            elif row.old == "current":
                assert kind == "current"
            else:
                assert kind == "group" and model.nodes[tail].label == f"any of {row.old}"
    unreachable = {u.status for u in profile.unreachable if u.side == side}
    assert unreachable.isdisjoint(model.status_nodes)
    for name in profile.terminal:
        if name not in unreachable:
            assert model.nodes[model.status_nodes[name]].terminal


def test_wildcard_rows_share_a_current_node_not_one_edge_per_state():
    model = build_model(P72, "source")
    row = P72.transition("src.completion.failed")
    (key,) = model.row_edges[row.id]
    tail = model.nodes[key[0]]
    assert tail.kind == "current"
    assert tail.sub.split(", ") == [s for s in P72.status_names if s in row.within]
    # the only edges into that node are the invisible/main layout links
    assert not [e for e in model.edges.values() if e.head == tail.id]


def test_clusters_nest_and_never_hold_start_and_end_together():
    for profile in load_all():
        for side in ("source", "destination"):
            model = build_model(profile, side)
            members = {cid: set(c.members) for cid, c in model.clusters.items()}
            for a in members.values():
                for b in members.values():
                    assert a <= b or b <= a or not (a & b)
            for cid, m in members.items():
                assert not ("none" in m and m & set(profile.terminal)), cid


def test_main_path_is_precopy_and_postcopy_not_shortcuts():
    model = build_model(P72, "source")
    main_rows = {rid for rid, keys in model.row_edges.items()
                 if any(model.edges[k].main for k in keys)}
    assert {"src.migrate_init.setup", "src.thread.active", "src.postcopy_start.switch",
            "src.completion.completed"} <= main_rows
    # savevm's synchronous shortcut and the background-snapshot thread are not the main path
    assert not main_rows & {"src.savevm.completed", "src.bg.completed", "src.cancel",
                            "src.completion.failed"}
    dst = build_model(P72, "destination")
    dst_main = {rid for rid, keys in dst.row_edges.items() if any(dst.edges[k].main for k in keys)}
    assert dst_main == {"dst.co.active", "dst.bh.completed", "dst.listen.start",
                        "dst.listen.completed"}


def test_caps_graph_derives_conflicts_and_requirements():
    model = build_model(P72, "caps")
    conflicts = {(e.tail, e.head) for e in model.edges.values() if e.kind == "conflict"}
    requires = {(e.tail, e.head) for e in model.edges.values() if e.kind == "requires"}
    cap = lambda n: node_id("cap", n)  # noqa: E731
    assert tuple(sorted((cap("multifd"), cap("compress")))) in conflicts
    assert (cap("postcopy-preempt"), cap("postcopy-ram")) in requires
    # zero-copy-send requires multifd only on Linux: the host fact is written on the edge
    edge = model.edges[(cap("zero-copy-send"), cap("multifd"), "requires")]
    assert edge.items[0].sub == "if host:linux"
    # host-only rules annotate the capability
    assert "host:uffd_wp" in model.nodes[cap("background-snapshot")].sub
    assert len([e for e in model.edges.values() if cap("background-snapshot") in (e.tail, e.head)
                and e.kind == "conflict"]) == 15
    # 3.0 refused postcopy-ram with compress; 7.2 does not
    assert (cap("compress"), cap("postcopy-ram"), "conflict") in build_model(P30, "caps").edges
    assert (cap("compress"), cap("postcopy-ram"), "conflict") not in model.edges


def test_postcopy_xchg_error_path_is_drawn():
    model = build_model(P30, "postcopy")
    run = [e for e in model.edges.values() if e.kind == "error"
           and e.head == node_id("ps", "RUNNING")]
    assert run, "3.0's RUN handler exchanges first: its error path moves the state"
    assert not [e for e in build_model(P72, "postcopy").edges.values()
                if e.kind == "error" and e.head == node_id("ps", "RUNNING")]


def test_diagrams_code_names_no_state_group_or_capability():
    names = set()
    for p in load_all():
        names |= set(p.status_names) | {g.name for g in p.groups} | set(p.capability_names())
        names |= set(p.postcopy_states) | {t.id for t in p.transitions}
    code = Path(__file__).parent.parent / "diagrams"
    for path in sorted(code.glob("*.py")):
        tree = ast.parse(path.read_text())
        # Graphviz attribute values (arrowhead="none", attrs["dir"] = "none") are not spec names
        attr_values = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.keyword)}
        attr_values |= {id(n.value) for n in ast.walk(tree)
                        if isinstance(n, ast.Assign) and isinstance(n.targets[0], ast.Subscript)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and id(node) not in attr_values:
                assert node.value not in names, f"{path.name} writes spec name {node.value!r}"


# ------------------------------------------------------------------ traces
def test_real_qemu_logs_are_present():
    assert len(REAL_72) == 5 and len(OBSERVED_72) == 11


@pytest.mark.parametrize("name", OBSERVED_72 + REAL_72)
def test_observed_72_event_sequences_are_legal(name):
    side = "destination" if "destination" in name else "source"
    trace = parse_trace(P72, DATA / name, side=side)
    assert trace.format == "qmp"
    assert trace.steps and not trace.illegal, [s.reason for s in trace.illegal]
    statuses = [json.loads(line)["data"]["status"] for line in (DATA / name).read_text().splitlines()
                if json.loads(line)["event"] == "MIGRATION"]
    assert len([s for s in trace.steps if s.kind in ("change", "event")]) == len(statuses)


def test_destination_setup_event_is_an_event_only_step():
    trace = parse_trace(P72, DATA / "diagram_qmp72_recover_destination.jsonl", side="destination")
    events = [s for s in trace.steps if s.kind == "event"]
    assert [(s.old, s.new) for s in events] == [("none", "none"),
                                                ("postcopy-paused", "postcopy-paused")]
    assert all(s.rows == ("dst.incoming.setup_event",) for s in events)


def test_illegal_step_is_found_and_drawn_red():
    trace = parse_trace(P72, DATA / "diagram_qmp72_illegal_source.jsonl", side="source")
    assert [(s.old, s.new) for s in trace.illegal] == [("active", "postcopy-paused")]
    assert "no source row" in trace.illegal[0].reason
    # the run goes on from the event's status: the recovery after it is legal
    assert [s.kind for s in trace.steps[3:]] == ["change"] * 3
    model = build_model(P72, "source")
    marks = overlay_marks(model, P72, trace.steps)
    red = [(e.tail, e.head) for e, mark, count in marks.extra_edges if mark == "illegal"]
    assert red == [(model.status_nodes["active"], model.status_nodes["postcopy-paused"])]
    dot = to_digraph(model, marks).source
    assert "#d01010" in dot and "illegal step" in dot


def test_setup_to_completed_on_the_source_is_legal_through_savevm():
    steps = infer_steps(P72, "source", [(1, "setup", None), (2, "completed", None)])
    assert [s.legal for s in steps] == [True, True]
    assert steps[1].rows == ("src.savevm.completed",)
    # but not on the destination, where nothing goes to setup
    steps = infer_steps(P72, "destination", [(1, "active", None), (2, "setup", None),
                                             (3, "cancelled", None)])
    assert [s.kind for s in steps] == ["change", "illegal", "illegal"]


def test_second_migration_goes_through_migrate_inits_silent_store():
    steps = infer_steps(P72, "source", [(i, s, None) for i, s in
                                        enumerate(["setup", "active", "completed", "setup"])])
    assert [s.kind for s in steps] == ["change", "change", "change", "store", "change"]
    assert steps[3].rows == ("src.migrate_init.reset",) and (steps[3].old, steps[3].new) == (
        "completed", "none")


def test_wildcard_steps_list_every_row_that_explains_them():
    steps = infer_steps(P72, "source", [(1, "setup", None), (2, "active", None),
                                        (3, "failed", None)])
    assert steps[2].legal
    assert {"src.detect_error.failed", "src.completion.failed", "src.bg.failed"} <= set(steps[2].rows)


def test_ndjson_log_from_core_cells():
    trace = parse_trace(P72, DATA / "diagram_ndjson72_postcopy_recover.ndjson")
    assert trace.format == "ndjson" and trace.sides == ["destination", "source"]
    assert not trace.illegal and trace.failed_cas == 1
    model = build_model(P72, "source")
    marks = overlay_marks(model, P72, trace.side("source"))
    pa = model.status_nodes["postcopy-active"]
    assert marks.node_counts[pa] == 2  # entered by the switch and by the resume ack
    assert marks.node_counts[model.status_nodes["setup"]] == 2  # two migrations
    (key,) = model.row_edges["src.completion.completed"]
    assert marks.edge_counts[key] == 1 and marks.links[(pa, key[0])] == 1
    (cancel,) = model.row_edges["src.cancel"]
    assert marks.edges[cancel] == "visited"
    assert model.status_nodes["wait-unplug"] not in marks.nodes  # not visited: greyed


def test_ndjson_illegal_lines_name_the_rule():
    trace = parse_trace(P72, DATA / "diagram_ndjson72_illegal.ndjson")
    reasons = [s.reason for s in trace.illegal]
    assert len(reasons) == 2
    assert "src.thread.active goes from {setup} to active" in reasons[0]
    assert "no row 'src.no_such_row'" in reasons[1]


def test_a_file_mixing_both_formats_is_refused():
    lines = (DATA / "diagram_ndjson72_illegal.ndjson").read_text().splitlines()[:1] + \
        (DATA / "diagram_qmp72_precopy_source.jsonl").read_text().splitlines()[:1]
    with pytest.raises(ValueError, match="one kind per file"):
        parse_trace(P72, lines)


# ------------------------------------------------------------------ diffs
def test_diff_3_0_to_7_2_source():
    model, marks = diff_model(P30, P72, "source")
    wait_unplug = model.status_nodes["wait-unplug"]
    assert marks.nodes[wait_unplug] == "added"
    old_cancel = (node_id("grp", "setup_or_active"), model.status_nodes["cancelling"], "group")
    new_cancel = (node_id("grp", "running"), model.status_nodes["cancelling"], "group")
    assert marks.edges[old_cancel] == "removed" and marks.edges[new_cancel] == "added"
    (colo,) = [k for k, e in model.edges.items() if any(i.id == "src.colo.start" for i in e.items)]
    assert marks.items[(colo, "src.colo.start")] == "removed"
    (active,) = [k for k, e in model.edges.items() if any(i.id == "src.thread.active" for i in e.items)]
    assert marks.items[(active, "src.thread.active")] == "changed"
    assert marks.item_notes[(active, "src.thread.active")] == "was migration_thread"
    assert any("group setup_or_active: +wait-unplug, +colo" in c for c in marks.caption)


def test_diff_of_caps_and_postcopy():
    model, marks = diff_model(P30, P72, "caps")
    key = (node_id("cap", "compress"), node_id("cap", "postcopy-ram"), "conflict")
    assert marks.edges[key] == "removed"
    # capabilities both profiles declare are not "added", even if newly constrained
    assert node_id("cap", "xbzrle") not in marks.nodes
    assert marks.nodes[node_id("cap", "background-snapshot")] == "added"
    model, marks = diff_model(P30, P72, "postcopy")
    changed = {i for (k, i), m in marks.items.items() if m == "changed"}
    assert "run" in changed


@pytest.mark.parametrize("machine", MACHINES)
def test_a_profile_diffed_with_itself_has_no_changes(machine):
    model, marks = diff_model(P72, P72, machine)
    assert not marks.edges and not marks.items and not marks.nodes


# ------------------------------------------------------------------ CLI
@needs_dot
def test_cli_trace_exit_status_and_files(tmp_path, capsys):
    ok = main(["diagram", "--trace", str(DATA / "diagram_qmp72_postcopy_source.jsonl"),
               "--side", "source", "--out", str(tmp_path), "--format", "dot,svg"])
    assert ok == 0
    out = tmp_path / "trace-diagram_qmp72_postcopy_source"
    assert (out / "source.svg").exists() and (out / "source.dot").exists()
    assert not (out / "source.png").exists()
    bad = main(["diagram", "--trace", str(DATA / "diagram_qmp72_illegal_source.jsonl"),
                "--out", str(tmp_path), "--format", "dot"])
    assert bad == 1
    assert "active -> postcopy-paused" in capsys.readouterr().out


@needs_dot
def test_cli_diff_and_profile(tmp_path):
    assert main(["diagram", "--diff", "qemu-3.0", "qemu-7.2", "--out", str(tmp_path),
                 "--format", "dot"]) == 0
    assert sorted(p.stem for p in (tmp_path / "diff-qemu-3.0-qemu-7.2").glob("*.dot")) == \
        sorted(MACHINES)
    assert main(["diagram", "--profile", "qemu-3.0", "--machine", "caps", "--out", str(tmp_path),
                 "--format", "png"]) == 0
    assert (tmp_path / "qemu-3.0" / "caps.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_rejects_unknown_profile_and_format(tmp_path, capsys):
    assert main(["diagram", "--profile", "qemu-9.9", "--out", str(tmp_path)]) == 2
    assert "unknown profile" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["diagram", "--format", "jpg"])


def test_cli_help_mentions_trace_formats(capsys):
    with pytest.raises(SystemExit):
        main(["diagram", "--help"])
    text = capsys.readouterr().out
    assert "--trace" in text and "MIGRATION" in text and "--diff" in text


@needs_dot
def test_demo_stage_writes_everything_and_says_where(tmp_path):
    from argparse import Namespace

    from livemig.diagrams import demo_stage

    class Console:
        lines: list = []

        def print(self, text):
            self.lines.append(str(text))

    console = Console()
    assert demo_stage(console, Namespace(out=tmp_path)) == 0
    out = tmp_path / "diagrams"
    index = (out / "index.md").read_text()
    for profile in profile_names():
        for machine in MACHINES:
            for suffix in (".dot", ".svg", ".png"):
                assert (out / profile / f"{machine}{suffix}").stat().st_size > 500
            assert f"({profile}/{machine}.svg)" in index
    assert any(str(out) in line for line in console.lines)


def test_a_spec_change_changes_the_committed_source():
    """What the freshness test relies on: any row or group change reaches the DOT."""
    import dataclasses

    before = to_digraph(build_model(P72, "source")).source
    row = dataclasses.replace(P72.transition("src.cleanup.cancelled"), id="src.test.extra",
                              trigger="a_new_call_site", old="cancelled", new="none")
    added = dataclasses.replace(P72, transitions=P72.transitions + (row,))
    after = to_digraph(build_model(added, "source")).source
    assert "a_new_call_site" in after and "a_new_call_site" not in before
    guard = dataclasses.replace(P72.transition("src.thread.active"), actor="another_thread")
    changed = dataclasses.replace(P72, transitions=tuple(
        guard if t.id == guard.id else t for t in P72.transitions))
    assert to_digraph(build_model(changed, "source")).source != before
    groups = tuple(dataclasses.replace(g, members=g.members[:-1]) if g.name == "setup_or_active"
                   else g for g in P72.groups)
    assert to_digraph(build_model(dataclasses.replace(P72, groups=groups), "source")).source \
        != before
