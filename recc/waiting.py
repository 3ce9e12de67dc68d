"""Bounded waits with progress: poll a probe until it reports done, or give up with a reason.

Cloud resources move through states on their own time (a node group takes minutes to become
ACTIVE), so every wait in RECC is a loop over a *probe*, a function that looks once and says
how far things got. :class:`Waiter` owns the loop: the deadline, the back-off between looks,
the progress callback and the error that names the phase and the setting that bounds it. The
clock and the sleep are injectable, so the loop is tested without waiting.

Example
-------
>>> ticks = iter(range(10))
>>> waiter = Waiter(clock=lambda: 0.0, sleep=lambda s: None)
>>> waiter.until("nodes ready", lambda: Observation(min(next(ticks), 3), 3), timeout=60)
Observation(done=3, total=3, detail='')
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from recc.backends.base import Progress, no_progress
from recc.errors import BackendError


@dataclass(frozen=True)
class Observation:
    """What one look at a phase found: ``done`` of ``total`` things ready, and why not more."""

    done: int
    total: int
    detail: str = ""

    @property
    def complete(self) -> bool:
        return self.done >= self.total


class WaitTimeout(BackendError):
    """A phase did not complete within its timeout; the message says how far it got."""

    def __init__(
        self, phase: str, timeout: float, last: Observation | None, setting: str | None = None
    ):
        self.phase = phase
        self.timeout = timeout
        self.last = last
        got = (
            f"{last.done} of {last.total} after {timeout:g}s"
            + (f" ({last.detail})" if last.detail else "")
            if last is not None
            else f"no answer within {timeout:g}s"
        )
        hint = f"; to wait longer, raise {setting}" if setting else ""
        super().__init__(f"timed out waiting for {phase}: {got}{hint}")


class WaitCancelled(BackendError):
    """The wait was cancelled from another thread (e.g. a parallel step failed)."""


def never_transient(error: BaseException) -> bool:
    """Every probe error is fatal (the default)."""
    return False


@dataclass
class Waiter:
    """Polls probes with back-off: ``initial`` seconds between looks, growing 1.5x up to
    ``maximum``. ``clock`` and ``sleep`` default to the real ones; tests pass fakes."""

    initial: float = 0.1
    maximum: float = 5.0
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    cancelled: threading.Event | None = None

    def until(
        self,
        phase: str,
        probe: Callable[[], Observation],
        timeout: float,
        progress: Progress = no_progress,
        setting: str | None = None,
        transient: Callable[[BaseException], bool] = never_transient,
    ) -> Observation:
        """Call ``probe`` until it reports complete; return its last observation.

        ``progress(phase, done, total)`` is called whenever the count changes. Errors for which
        ``transient(error)`` is true count as "not yet" (their text becomes the detail of a
        timeout); any other error from the probe ends the wait at once. Raises
        :class:`WaitTimeout` after ``timeout`` seconds, naming ``setting`` as the knob.
        """
        deadline = self.clock() + timeout
        interval = self.initial
        last: Observation | None = None
        reported: tuple[int, int] | None = None
        while True:
            if self.cancelled is not None and self.cancelled.is_set():
                raise WaitCancelled(f"stopped waiting for {phase}: cancelled")
            try:
                last = probe()
            except Exception as e:
                if not transient(e):
                    raise
                done, total = (last.done, last.total) if last else (0, 1)
                last = Observation(done, total, f"last look failed: {e}")
            shown = (min(last.done, last.total), last.total)
            if shown != reported:
                progress(phase, *shown)
                reported = shown
            if last.complete:
                return last
            remaining = deadline - self.clock()
            if remaining <= 0:
                raise WaitTimeout(phase, timeout, last, setting)
            self.sleep(min(interval, remaining))
            interval = min(interval * 1.5, self.maximum)
