"""Every counterexample `livemig prove` finds for the engine's profile,
replayed on the engine over the fake link (livemig/conformance/replay.py):
the engine walks the prover's path, or leaves it only where a documented
difference says why."""
import pytest

from livemig.conformance.replay import (
    KNOWN_ENGINE_DIFFERENCES, engine_supports, replay_on_engine,
)
from livemig.core.prove.catalogue import prove_all
from livemig.spec import DEFAULT_PROFILE

REFUTED = [r for r in prove_all([DEFAULT_PROFILE])
           if r.result == "refuted" and r.counterexample]


def test_the_engine_runs_on_the_default_profile():
    assert engine_supports(DEFAULT_PROFILE)
    assert REFUTED, "the prover found no counterexample to replay"


@pytest.mark.parametrize("result", REFUTED, ids=[r.invariant for r in REFUTED])
def test_counterexample_replays_on_the_engine(result):
    replay = replay_on_engine(result.counterexample)
    assert replay.complete or replay.known_difference, replay.explain()


def test_postcopy_with_compress_is_followed_to_the_end():
    """7.2 accepts compress with postcopy-ram; the engine migrates that way too."""
    trace = next(r.counterexample for r in REFUTED if r.invariant == "no_postcopy_with_compress")
    replay = replay_on_engine(trace)
    assert replay.complete, replay.explain()
    assert "src.postcopy_start.switch" in replay.engine_rows["source"]


def test_every_known_difference_is_still_met():
    """A difference nobody meets any more is stale: remove it from the table."""
    met = {replay_on_engine(r.counterexample).diverged for r in REFUTED}
    assert set(KNOWN_ENGINE_DIFFERENCES) <= met, set(KNOWN_ENGINE_DIFFERENCES) - met
