"""The unknown-member order model (core/qapi_order.py) against QEMU's answers.

Every recorded call that QEMU refused with "Parameter '<path>' is unexpected"
is replayed through :func:`unexpected_member`: the member it predicts must be
the one QEMU named.  Offline; the data comes from tests/data.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from livemig.conformance.ground_truth_files import FILES, read_cases
from livemig.core.qapi_order import qdict_order, unexpected_member
from livemig.spec import load_profile

DATA = Path(__file__).resolve().parent.parent / "tests" / "data"
UNEXPECTED = re.compile(r"^Parameter '(.*)' is unexpected$")

# The members each nested QAPI struct declares, in schema order (7.2).
_NESTED = {
    "capabilities[]": ("capability", "state"),
    "block-bitmap-mapping[]": ("node-name", "alias", "bitmaps"),
    "block-bitmap-mapping[].bitmaps[]": ("name", "alias", "transform"),
    "block-bitmap-mapping[].bitmaps[].transform": ("persistent",),
}


def _split(path: str) -> list:
    """'a[0].b' -> ['a', 0, 'b']; '' (an empty member name) -> ['']"""
    if path == "":
        return [""]
    out: list = []
    for part in path.split("."):
        m = re.match(r"^(.*?)((?:\[\d+\])*)$", part)
        if m.group(1):
            out.append(m.group(1))
        out += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return out


def _cases():
    profile = load_profile("qemu-7.2")
    top = {
        "caps": ("capabilities",),
        "params": tuple(p.name for p in profile.parameters if p.in_set_command),
    }
    for kind in ("caps", "params"):
        _meta, records = read_cases(DATA / FILES[kind])
        for r in records:
            m = UNEXPECTED.match(r["error"] or "")
            if not m:
                continue
            parts = _split(m.group(1))
            obj, schema_key = r["request"], ""
            for p in parts[:-1]:
                obj = obj[p]
                schema_key += "[]" if isinstance(p, int) else (("." if schema_key else "") + p)
            known = _NESTED[schema_key] if schema_key else top[kind]
            yield kind, r, parts[-1], obj, known


def test_model_reproduces_every_unexpected_member_qemu_reported():
    cases = list(_cases())
    assert len(cases) >= 60, "too few recorded 'unexpected' cases"
    several = [c for c in cases if len([k for k in c[3] if k not in c[4]]) >= 2]
    assert len(several) >= 40, "too few cases with two or more unknown members"
    wrong = []
    for kind, rec, reported, obj, known in cases:
        predicted = unexpected_member(list(obj), known)
        if predicted != reported:
            wrong.append(f"{kind} {rec['side']}: keys {list(obj)} -> QEMU {reported!r}, "
                         f"model {predicted!r}")
    assert not wrong, f"{len(wrong)} of {len(cases)} wrong:\n" + "\n".join(wrong[:20])


def test_request_order_alone_does_not_explain_qemu():
    """Guard against a vacuous model: JSON order would get many cases wrong."""
    misses = sum(1 for _k, _r, reported, obj, known in _cases()
                 if next(k for k in obj if k not in known) != reported)
    assert misses >= 10


@pytest.mark.parametrize("keys", [["aaa", "zzz"], ["zzz", "aaa"]])
def test_examples_from_qemu(keys):
    # observed on 7.2 in both orders: "Parameter 'zzz' is unexpected"
    assert unexpected_member(keys, ()) == "zzz"
    assert sorted(qdict_order(keys)) == sorted(keys)
