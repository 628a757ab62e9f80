"""The featurizer's bounded prefetch: results in order, never more than ``ahead`` loads in advance."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from fruits.featurize.fetch import prefetched


def test_results_come_in_order_and_loads_stay_bounded() -> None:
    started: list[int] = []
    lock = threading.Lock()

    def load(i: int) -> int:
        with lock:
            started.append(i)
        return i * i

    consumed = []
    with ThreadPoolExecutor(4) as pool:
        for value in prefetched(load, 50, pool, ahead=5):
            # When the consumer holds item j, at most j + 1 + ahead loads were ever submitted.
            assert len(started) <= len(consumed) + 1 + 5
            consumed.append(value)
    assert consumed == [i * i for i in range(50)]


def test_an_empty_batch_yields_nothing() -> None:
    with ThreadPoolExecutor(2) as pool:
        assert list(prefetched(lambda i: i, 0, pool, ahead=3)) == []
