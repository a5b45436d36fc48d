"""The Z3 prover against the invariant catalogue (livemig.core.prove)."""
from __future__ import annotations

import dataclasses
import json

import pytest

from livemig.cli import main
from livemig.core.prove import prove_all, prove_profile, render
from livemig.core.prove.cli import result_table, write_tests
from livemig.core.prove.mutants import check_mutant, mutants
from livemig.spec import load_profile, profile_names
from livemig.spec.expr import Cap, Not
from livemig.spec.invariants import INVARIANTS
from livemig.spec.schema import Expectation, Invariant, Transition


@pytest.fixture(scope="module")
def results():
    return {(r.profile, r.invariant): r for r in prove_all()}


@pytest.mark.parametrize("profile", profile_names())
@pytest.mark.parametrize("inv", INVARIANTS, ids=lambda i: i.name)
def test_result_matches_expectation(results, profile, inv):
    exp = inv.expectation(profile)
    assert exp is not None, f"{inv.name} has no expectation for {profile}"
    r = results[(profile, inv.name)]
    assert r.result in ("proved", "refuted"), r.details
    assert r.result == exp.result, (r.details, r.counterexample and render(r.counterexample))
    if exp.result == "refuted":
        assert exp.reason, "a refuted expectation must say why"


def test_compress_with_postcopy_is_a_readable_trace(results):
    r = results[("qemu-7.2", "no_postcopy_with_compress")]
    assert r.result == "refuted" and r.method == "bmc"
    table = render(r.counterexample)
    # the step table names the spec rows and the capability change
    assert "src.postcopy_start.switch" in table
    assert "src.migrate_init.setup" in table
    assert "+compress" in table and "+postcopy-ram" in table
    assert "active -> postcopy-active" in table
    assert results[("qemu-3.0", "no_postcopy_with_compress")].result == "proved"


def test_trap_trace_is_cancel_while_paused(results):
    for profile in profile_names():
        table = render(results[(profile, "source_no_trap")].counterexample)
        assert "src.postcopy_pause" in table and "src.cancel" in table
        assert table.rstrip().splitlines()[-1].startswith("  final: source=cancelling")


def test_unknown_never_matches():
    r = prove_profile("qemu-3.0", (INVARIANTS[0],), bmc_depth=0, max_k=0)[0]
    assert r.result == "unknown" and not r.ok


def test_wrong_expectation_is_reported():
    inv = Invariant("compress_never_on", "implies", "compress is never on", side="source",
                    when=Cap("compress"), then=Not(Cap("compress")),
                    expected=(Expectation("qemu-7.2", "proved"),))
    r = prove_profile("qemu-7.2", (inv,))[0]
    assert r.result == "refuted" and not r.ok
    assert r.counterexample["steps"][0]["action"].endswith("migrate-set-capabilities")


def test_illegal_edge_mutant_is_killed():
    p = load_profile("qemu-7.2")
    row = Transition("mutant.completed_to_active", "source", "migration_thread", "mutant",
                     "completed", "active", old_is_state=True)
    mutant = dataclasses.replace(p, transitions=p.transitions + (row,))
    res = {r.invariant: r for r in prove_profile(mutant, reference=p, sides=("source",))}
    assert res["terminal_states_stay"].result == "refuted"
    assert not res["terminal_states_stay"].ok
    table = render(res["terminal_states_stay"].counterexample, profile=mutant)
    assert "mutant.completed_to_active" in table


def test_dropping_the_compress_rule_is_killed():
    ms = {m.id for m, _ in mutants("qemu-3.0")}
    assert "drop-cap-rule:postcopy-ram.compress" in ms
    r = check_mutant("qemu-3.0", "drop-cap-rule:postcopy-ram.compress")
    assert r.killed and any(b.startswith(("no_postcopy_with_compress",
                                          "source_caps_satisfy_rules")) for b in r.by)


def test_cli_json_and_exit_status(capsys):
    assert main(["prove", "--profile", "qemu-3.0", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True
    row = next(r for r in doc["results"] if r["name"] == "no_postcopy_with_compress")
    assert set(row) >= {"name", "profile", "expected", "result", "method", "k", "seconds",
                        "counterexample"}
    assert row["result"] == "proved" and row["method"] == "k-induction"


def test_written_replay_tests_compile(tmp_path, results):
    paths = write_tests([results[("qemu-7.2", "no_postcopy_with_compress")]], str(tmp_path))
    assert len(paths) == 1
    src = open(paths[0]).read()
    compile(src, paths[0], "exec")
    assert "StatusCell" in src and "src.postcopy_start.switch" in src


def test_table_lists_every_result(results):
    text = result_table(list(results.values()))
    assert text.count("\n") == len(results) + 1
    assert "MISMATCH" not in text
