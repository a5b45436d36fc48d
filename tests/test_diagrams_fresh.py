"""The committed diagrams (diagrams/out, diagrams/README.md) match the spec.

Regenerates everything into a temporary directory and compares: DOT sources
and the index page exactly; SVG exactly when this machine's Graphviz is the
version that rendered the committed files; PNG by the manifest, which records
the sha256 of the DOT each picture was rendered from.  When this fails, run
``python -m livemig.diagrams`` and commit the result: the diff of the DOT
files is the diagram change a reviewer sees.
"""
import json
import shutil
from pathlib import Path

import pytest

from livemig.diagrams.output import (
    COMMITTED_INDEX, COMMITTED_OUT, EXAMPLE_TRACES, MANIFEST, dot_version, font_match, write_all,
)

pytestmark = pytest.mark.skipif(shutil.which("dot") is None, reason="needs Graphviz `dot`")

FIX = "run `python -m livemig.diagrams` and commit diagrams/"


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    root = tmp_path_factory.mktemp("diagrams")
    out = root / "out"
    write_all(out, traces=EXAMPLE_TRACES, index=root / "README.md")
    return root


def _files(base: Path, suffix: str) -> set[str]:
    return {p.relative_to(base).as_posix() for p in base.rglob(f"*{suffix}")}


@pytest.mark.parametrize("suffix", [".dot", ".svg", ".png"])
def test_same_set_of_files(fresh, suffix):
    expected = _files(fresh / "out", suffix)
    committed = _files(COMMITTED_OUT, suffix)
    assert expected, f"nothing generated for {suffix}"
    assert committed == expected, (
        f"missing: {sorted(expected - committed)}, stale: {sorted(committed - expected)}; {FIX}")


def test_dot_sources_are_fresh(fresh):
    stale = [name for name in sorted(_files(fresh / "out", ".dot"))
             if not (COMMITTED_OUT / name).exists()
             or (COMMITTED_OUT / name).read_text() != (fresh / "out" / name).read_text()]
    assert not stale, f"stale DOT: {stale}; {FIX}"


def test_index_page_is_fresh(fresh):
    assert COMMITTED_INDEX.read_text() == (fresh / "README.md").read_text(), FIX


def test_pictures_were_rendered_from_the_committed_dot(fresh):
    manifest = json.loads((COMMITTED_OUT / MANIFEST).read_text())
    shas = json.loads((fresh / "out" / MANIFEST).read_text())["dot_sha256"]
    assert manifest["dot_sha256"] == shas, f"PNG/SVG rendered from other DOT; {FIX}"
    for name in shas:
        for suffix in (".svg", ".png"):
            picture = COMMITTED_OUT / Path(name).with_suffix(suffix)
            assert picture.stat().st_size > 1000, f"{picture} is empty"
    # PNG: a real PNG of a plausible size at the recorded DPI
    for name in shas:
        head = (COMMITTED_OUT / Path(name).with_suffix(".png")).read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width = int.from_bytes(head[16:20], "big")
        assert 400 < width < 5000, f"{name}: PNG width {width}"


def test_svg_is_fresh_with_the_same_graphviz(fresh):
    manifest = json.loads((COMMITTED_OUT / MANIFEST).read_text())
    if manifest["graphviz"] != dot_version():
        pytest.skip(f"committed SVG made by Graphviz {manifest['graphviz']}, "
                    f"this is {dot_version()}")
    if manifest["font"] != font_match():  # text metrics move every coordinate
        pytest.skip(f"committed SVG laid out with font {manifest['font']}, here {font_match()}")
    stale = [name for name in sorted(_files(fresh / "out", ".svg"))
             if (COMMITTED_OUT / name).read_bytes() != (fresh / "out" / name).read_bytes()]
    assert not stale, f"stale SVG: {stale}; {FIX}"


def test_index_embeds_every_svg():
    text = COMMITTED_INDEX.read_text()
    for name in sorted(_files(COMMITTED_OUT, ".svg")):
        assert f"(out/{name})" in text, f"{name} not embedded in diagrams/README.md"
