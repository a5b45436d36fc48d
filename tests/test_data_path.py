"""The data path's shortcuts change no page.

The source's zero-page scan: a page is sent as ZERO only if every byte is
zero, whichever path the scan takes (first-word probe, full scan, split over
two threads) and however the chunks alternate between zero-heavy and not.
A page reported zero that is not would be a page lost.  The destination
copies a run of consecutive pages as a slice, anything else by index."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from livemig.core.caps import default_capabilities, default_params
from livemig.core.cell import StatusCell
from livemig.engine.guest import Guest
from livemig.engine.source import SCAN_SPLIT_PAGES, SourceMigration
from livemig.spec import load_profile

P = load_profile("qemu-7.2")
PAGE = 4096


def _session(threads: bool) -> SourceMigration:
    guest = Guest(1 << 20, fill="zero", vcpu_thread=False)
    s = SourceMigration(P, guest, StatusCell(P, "source"), caps=default_capabilities(P),
                        params=default_params(P))
    if threads:
        pool = ThreadPoolExecutor(1)

        def helped(fn, items):
            items = list(items)
            others = [pool.submit(fn, item) for item in items[1:]]
            return [fn(items[0])] + [f.result() for f in others]
        s.scan_map = helped
    return s


def _chunk(rng: np.random.Generator, n: int, zero_share: float) -> np.ndarray:
    pages = np.zeros((n, PAGE), dtype=np.uint8)
    data = rng.random(n) >= zero_share
    # each non-zero page has a single non-zero byte somewhere, often its last
    # word or last byte: the probe of the first word must not be trusted
    where = rng.choice([0, 8, PAGE - 8, PAGE - 1, 2048], size=n)
    pages[np.flatnonzero(data), where[data]] = rng.integers(1, 256, size=int(data.sum()))
    return pages


@pytest.mark.parametrize("threads", [False, True])
def test_a_page_is_zero_only_if_every_byte_is(threads):
    rng = np.random.default_rng(3)
    s = _session(threads)
    sizes = [1, 7, SCAN_SPLIT_PAGES, 2 * SCAN_SPLIT_PAGES, 2 * SCAN_SPLIT_PAGES + 1, 2048]
    shares = [0.0, 0.1, 0.5, 0.9, 0.99, 1.0]
    for i in range(60):  # chunk kinds alternate: the zero-heavy memory flips both ways
        pages = _chunk(rng, sizes[i % len(sizes)], shares[(i * 5) % len(shares)])
        got = s._nonzero_pages(pages.view(np.uint64))
        assert np.array_equal(got, pages.any(axis=1)), (i, len(pages))


@pytest.mark.parametrize("idx", [[5], [5, 6, 7], [5, 7, 6], [7, 6, 5], [5, 6, 8], [5, 5, 6],
                                 [0, 2, 1, 3], []])
def test_page_indexes_become_a_slice_only_when_they_are_a_run(idx):
    from livemig.engine.stream import _as_slice
    ram = np.arange(10)
    arr = np.array(idx, dtype=np.intp)
    where = _as_slice(arr)
    assert np.array_equal(ram[where], ram[arr])  # the same pages, in the same order
    assert isinstance(where, slice) == (len(idx) > 0 and list(idx) == list(
        range(idx[0], idx[0] + len(idx))))


def test_the_helped_map_keeps_order_and_raises_the_helpers_error():
    from livemig.engine.runner import ThreadRunner
    runner = ThreadRunner()
    try:
        helped = runner.helped_map()
        assert helped(lambda x: x * x, range(50)) == [x * x for x in range(50)]
        assert helped(lambda x: x, []) == []

        def fail_on_7(x):
            if x == 7:
                raise ValueError("piece 7")
            return x
        with pytest.raises(ValueError, match="piece 7"):
            helped(fail_on_7, range(20))
    finally:
        runner.end_parallel()
