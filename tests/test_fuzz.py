"""The standing fuzz harness (issue 11): corpus replay, short runs, the CLI contract."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from livemig.conformance import fuzz as F

TARGETS = list(F.FACTORIES)

#: committed regression inputs that still crash (xfail, strict): none now.
#: The four trace-file finds of issue 11 are fixed; a new find goes here,
#: with its reason, until its decoder is.
KNOWN_CRASHES: dict[str, str] = {}


def _corpus_params():
    out = []
    for name in TARGETS:
        for path in F.get_target(name).corpus_files():
            key = f"{name}/{path.name}"
            marks = ()
            if key in KNOWN_CRASHES:
                marks = (pytest.mark.xfail(strict=True, reason=KNOWN_CRASHES[key]),)
            out.append(pytest.param(name, path, id=key, marks=marks))
    return out


def _target(name):
    t = F.get_target(name)
    if t.skip:
        pytest.skip(t.skip)
    return t


def _known_signatures():
    sigs = set()
    for key in KNOWN_CRASHES:
        name, file = key.split("/")
        f, _ = F.run_one(F.get_target(name), (F.CORPUS / name / file).read_bytes())
        if f is not None:
            sigs.add((name, f.signature))
    return sigs


@pytest.mark.parametrize("name,path", _corpus_params())
def test_corpus_replays_clean(name, path):
    t = _target(name)
    finding, _ = F.run_one(t, path.read_bytes())
    assert finding is None, f"{finding.kind}: {finding.error}\n{finding.traceback}"


def test_every_target_has_a_corpus():
    for name in TARGETS:
        assert F.get_target(name).corpus_files(), name
    total = sum(p.stat().st_size for p in F.CORPUS.rglob("*") if p.is_file())
    assert total < 2 << 20


@pytest.mark.parametrize("name", TARGETS)
def test_short_run(name):
    t = _target(name)
    n = 600 if name == "multifd" else 1000
    res = F.fuzz(t, n, seed=11)
    assert res.inputs == n
    known = _known_signatures()
    new = [f for f in res.findings if (name, f.signature) not in known]
    assert not new, "\n".join(f"{f.kind} {f.error} input={f.data[:64].hex()}\n{f.traceback}"
                              for f in new[:3])
    assert res.peak_buffered_bytes <= t.meter.bound


@pytest.mark.parametrize("name", TARGETS)
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.binary(max_size=512))
def test_hypothesis_bytes(name, data):
    t = _target(name)
    seeds = t.seeds()
    if seeds:  # half the time: Hypothesis bytes spliced into a real seed
        seed = seeds[len(data) % len(seeds)]
        cut = (len(data) * 7919) % (len(seed) + 1)
        if len(data) % 2:
            data = seed[:cut] + data
    finding, _ = F.run_one(t, data)
    if finding is not None:
        assert (name, finding.signature) in _known_signatures(), finding.traceback


def test_same_seed_same_inputs():
    t = F.get_target("precopy-stream")
    a = list(F._inputs(t, 200, 5, False))
    b = list(F._inputs(t, 200, 5, False))
    c = list(F._inputs(t, 200, 6, False))
    assert a == b and a != c


def test_canaries_catch_an_out_of_block_write(monkeypatch):
    t = F.get_target("multifd")
    block = t.blocks["pc.ram"]

    def scribble(data):
        block._backing[F.GUARD + block.used_length] = 0  # one byte past the block
    monkeypatch.setattr(t, "run", scribble)
    finding, _ = F.run_one(t, b"x")
    assert finding is not None and finding.kind == "out-of-block-write"


def test_watchdog_reports_a_hang(monkeypatch):
    t = F.get_target("xbzrle-page")

    def spin(data):
        while True:
            pass
    monkeypatch.setattr(t, "run", spin)
    monkeypatch.setattr(F, "HANG_SECONDS", 0.2)
    finding, _ = F.run_one(t, b"x")
    assert finding is not None and finding.kind == "hang"


# ------------------------------------------------------------------ the CLI
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "livemig.conformance.fuzz", *args],
                          capture_output=True, text=True, timeout=300)


def test_cli_list():
    p = _cli("--list")
    assert p.returncode == 0
    lines = p.stdout.strip().splitlines()
    assert [line.split("\t")[0] for line in lines] == TARGETS
    assert all(len(line.split("\t")) == 2 and line.split("\t")[1] for line in lines)


def test_cli_json_line_shape():
    p = _cli("xbzrle-page", "--inputs", "300", "--seed", "3", "--json")
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert len(lines) == 1
    out = json.loads(lines[0])
    assert {"target", "inputs", "crashes", "hangs", "seconds"} <= out.keys()
    assert out["target"] == "xbzrle-page" and out["inputs"] == 300
    assert out["crashes"] == 0 and out["hangs"] == 0
    again = json.loads(_cli("xbzrle-page", "--inputs", "300", "--seed", "3",
                            "--json").stdout)
    assert again["inputs"] == out["inputs"] and again["signatures"] == out["signatures"]


def test_cli_exit_1_on_a_crash(tmp_path):
    """A deliberately crashing decoder: the CLI reports it and exits 1."""
    script = tmp_path / "crashy.py"
    script.write_text(
        "import sys\n"
        "from livemig.conformance import fuzz as F\n"
        "t = F.get_target('xbzrle-page')\n"
        "def boom(data):\n"
        "    if len(data) > 3:\n"
        "        raise KeyError('toy decoder bug')\n"
        "t.run = boom\n"
        f"sys.exit(F.main(['xbzrle-page', '--inputs', '50', '--json', '--save-crashes', "
        f"{str(tmp_path / 'crashes')!r}]))\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 1, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["crashes"] > 0 and out["signatures"][0].startswith("crash:KeyError")
    assert list((tmp_path / "crashes" / "xbzrle-page").glob("crash-*.bin"))


def test_cli_corpus_only_reports_the_known_crashes():
    p = _cli("trace-file", "--corpus-only")
    assert p.returncode == (1 if _known_signatures() else 0)
    assert "input (" in p.stdout or p.returncode == 0


def test_atheris_engine_runs():
    pytest.importorskip("atheris")
    p = _cli("xbzrle-page", "--engine", "atheris", "--inputs", "500", "--json")
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert p.returncode == 0 and out["inputs"] == 500 and out["engine"] == "atheris"
