"""livemig's checkers against a live QEMU 7.2, in the same run (needs qemu-system-x86_64).

A random sample of the ground-truth generator's cases (about 200: capability
and parameter calls on both sides) is sent to one QEMU per side and, in the
same step, to ``check_capabilities`` / ``check_parameters``; every answer must
match, message text included.  Two samples run: a fixed seed (reproducible in
CI) and a fresh random seed, printed so a failure can be replayed with
``LIVEMIG_LIVE_SEED=<seed> pytest conformance/test_qemu_checkers_live.py``.
"""
from __future__ import annotations

import os
import random
import tempfile

import pytest

from livemig.conformance.checker_compare import (
    Mismatch, Skip, compare_caps, compare_params, report,
)
from livemig.conformance.ground_truth_cases import (
    capability_cases, caps_setup_param_cases, invalid_capability_cases, parameter_cases,
)
from livemig.conformance.ground_truth_qemu import SIDES, SideSession, run_cap_case, run_param_case
from livemig.conformance.qemupeer import why_not_qemu_72
from livemig.spec import load_profile

WHY_NOT_72 = why_not_qemu_72()
pytestmark = [
    pytest.mark.qemu,
    # the answers are compared with the qemu-7.2 profile: another QEMU is skipped
    pytest.mark.skipif(bool(WHY_NOT_72), reason=WHY_NOT_72 or "qemu 7.2"),
]

FIXED_SEED = 72
N_CAPS = 60  # per side
N_PARAMS = 40  # per side


def _seeds() -> list[int]:
    env = os.environ.get("LIVEMIG_LIVE_SEED")
    if env:
        return [int(env)]
    return [FIXED_SEED, random.SystemRandom().randrange(1, 2 ** 31)]


@pytest.fixture(scope="module")
def sessions():
    with tempfile.TemporaryDirectory(prefix="livemig-live-") as work:
        started = {}
        try:
            for side in SIDES:
                started[side] = SideSession(side, workdir=work).start()
            yield started
        finally:
            for s in started.values():
                s.close()


@pytest.mark.parametrize("seed", _seeds())
def test_live_sample_agrees(sessions, seed):
    print(f"\nlive checker sample: seed {seed} "
          f"(replay: LIVEMIG_LIVE_SEED={seed} pytest {__file__})")
    profile = load_profile("qemu-7.2")
    host = profile.host_defaults()
    rng = random.Random(seed)
    mismatches: list[Mismatch] = []
    compared = 0
    for side, sess in sessions.items():
        cap_pool = (capability_cases(profile, rng, 40, 20) + caps_setup_param_cases(profile)
                    + invalid_capability_cases(profile, rng))
        for case in rng.sample(cap_pool, N_CAPS):
            rec = run_cap_case(sess, case)
            if not rec:  # the case's starting set was refused by QEMU: nothing to compare
                continue
            out = compare_caps(profile, rec, host=host)
            if isinstance(out, Mismatch):
                mismatches.append(out)
            elif not isinstance(out, Skip):
                compared += 1
        param_pool = parameter_cases(profile, rng, 60)
        for case in rng.sample(param_pool, N_PARAMS):
            rec = run_param_case(sess, case)
            out = compare_params(profile, rec, sess.param_defaults, host=host)
            if isinstance(out, Mismatch):
                mismatches.append(out)
            elif not isinstance(out, Skip):
                compared += 1
    assert compared >= 150, f"only {compared} live cases were comparable (seed {seed})"
    assert not mismatches, f"seed {seed}: " + report(mismatches, 30)
