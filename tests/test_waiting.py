"""The waiting loop on a fake clock: completion, progress, back-off, timeouts, transient errors."""

from __future__ import annotations

import threading

import pytest

from recc.errors import BackendError
from recc.waiting import Observation, WaitCancelled, Waiter, WaitTimeout


class FakeClock:
    """A clock that only moves when the waiter sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def waiter(clock: FakeClock, **kwargs) -> Waiter:
    return Waiter(clock=clock, sleep=clock.sleep, **kwargs)


def counting_probe(values: list[int], total: int, detail: str = ""):
    looks = iter(values)

    def probe() -> Observation:
        return Observation(next(looks), total, detail)

    return probe


def test_returns_the_completing_observation_and_reports_each_change_once():
    clock = FakeClock()
    seen = []
    result = waiter(clock).until(
        "nodes ready",
        counting_probe([0, 0, 1, 1, 3], 3),
        timeout=60,
        progress=lambda *a: seen.append(a),
    )
    assert result == Observation(3, 3)
    assert seen == [("nodes ready", 0, 3), ("nodes ready", 1, 3), ("nodes ready", 3, 3)]


def test_progress_never_reports_more_than_the_total():
    clock = FakeClock()
    seen = []
    waiter(clock).until(
        "workers", counting_probe([5], 4), timeout=1, progress=lambda *a: seen.append(a)
    )
    assert seen == [("workers", 4, 4)]


def test_back_off_grows_to_the_maximum_and_not_beyond():
    clock = FakeClock()
    waiter(clock, initial=1, maximum=3).until("x", counting_probe([0] * 6 + [1], 1), timeout=100)
    assert clock.sleeps == [1, 1.5, 2.25, 3, 3, 3]


def test_timeout_names_phase_progress_detail_and_setting():
    clock = FakeClock()
    probe = lambda: Observation(1, 3, "node i-2 NotReady")  # noqa: E731
    with pytest.raises(WaitTimeout) as info:
        waiter(clock, initial=2, maximum=2).until(
            "nodes ready", probe, timeout=10, setting="recc.eks.timeouts.nodes-ready"
        )
    message = str(info.value)
    assert "nodes ready" in message and "1 of 3 after 10s" in message
    assert "node i-2 NotReady" in message and "recc.eks.timeouts.nodes-ready" in message
    assert isinstance(info.value, BackendError)
    assert clock.now == pytest.approx(10)  # the last sleep is cut to the deadline


def test_a_probe_that_never_answers_in_time_still_times_out():
    clock = FakeClock()

    def slow_probe() -> Observation:
        clock.now += 100  # the look itself took longer than the whole budget
        return Observation(0, 1)

    with pytest.raises(WaitTimeout, match="0 of 1"):
        waiter(clock).until("scheduler reachable", slow_probe, timeout=5)


def test_fatal_probe_errors_end_the_wait_at_once():
    clock = FakeClock()

    def probe() -> Observation:
        raise BackendError("node group CREATE_FAILED: AsgInstanceLaunchFailures")

    with pytest.raises(BackendError, match="CREATE_FAILED"):
        waiter(clock).until("node groups active", probe, timeout=60)
    assert clock.sleeps == []


def test_transient_errors_are_retried_and_shown_in_the_timeout():
    clock = FakeClock()
    looks = []

    def probe() -> Observation:
        looks.append(1)
        raise ConnectionError("connection refused")

    with pytest.raises(WaitTimeout) as info:
        waiter(clock).until(
            "workers joined", probe, timeout=3, transient=lambda e: isinstance(e, ConnectionError)
        )
    assert "last look failed: connection refused" in str(info.value)
    assert len(looks) > 3


def test_transient_error_then_success():
    clock = FakeClock()
    answers = iter([OSError("down"), Observation(2, 2)])

    def probe() -> Observation:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert waiter(clock).until("x", probe, timeout=5, transient=lambda e: True).done == 2


def test_cancellation_stops_the_wait():
    clock = FakeClock()
    cancelled = threading.Event()

    def probe() -> Observation:
        cancelled.set()
        return Observation(0, 1)

    with pytest.raises(WaitCancelled):
        waiter(clock, cancelled=cancelled).until("x", probe, timeout=60)
