"""Ordered, reversible creation: each step knows how to undo itself; a failure undoes the lot.

A :class:`Saga` runs steps (``do``) and remembers their ``undo``. When anything fails, the
caller calls :meth:`Saga.rollback`, which undoes the completed steps newest first and returns
what could not be undone, each with the command that removes it by hand. Independent steps
run in parallel branches (:meth:`Saga.parallel`); when one branch fails the others stop at
their next step, and everything that any branch made is undone.

A step whose ``do`` failed in a way that leaves it unknown whether the thing was made (a
timeout, a 5xx, a dropped connection) is undone too, so undo functions must be idempotent and
must leave alone what is not theirs.

Example
-------
>>> made = []
>>> saga = Saga()
>>> saga.run("a", lambda: made.append("a"), undo=lambda: made.remove("a"))
>>> try:
...     saga.run("b", lambda: 1 / 0)
... except StepFailed as e:
...     print(e.step, saga.rollback(), made)
b [] []
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from recc.errors import RECCError

T = TypeVar("T")


class StepFailed(RECCError):
    """Step ``step`` failed with ``cause`` (also the ``__cause__``)."""

    def __init__(self, step: str, cause: BaseException):
        self.step = step
        self.cause = cause
        super().__init__(f"{step}: {describe(cause)}")


class Aborted(RECCError):
    """A step was not started because another branch of the saga failed."""


@dataclass(frozen=True)
class Leftover:
    """Something that could not be undone: which step, why, and how to remove it by hand."""

    step: str
    error: str
    remedy: str


@dataclass(frozen=True)
class _Undo:
    step: str
    undo: Callable[[], Any]
    remedy: str


def describe(error: BaseException) -> str:
    """A one-line reason for ``error`` (AWS and Kubernetes errors without their noise)."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "Error" in response:  # botocore ClientError
        err = response["Error"]
        return f"{err.get('Code', 'Error')}: {err.get('Message', '')}".strip()
    status = getattr(error, "status", None)
    if status is not None and hasattr(error, "reason") and hasattr(error, "body"):
        # kubernetes ApiException: the Status message says what the API server objected to.
        import json

        try:
            message = json.loads(error.body or "{}").get("message", "")
        except (TypeError, ValueError):
            message = ""
        return f"HTTP {status} {error.reason}" + (f": {message}" if message else "")
    return str(error) or type(error).__name__


def maybe_done(error: BaseException) -> bool:
    """Whether a failed call may still have had its effect: True unless the service answered
    with a definite refusal (HTTP 4xx), after which nothing was made."""
    response = getattr(error, "response", None)
    if isinstance(response, dict) and "ResponseMetadata" in response:
        code = response["ResponseMetadata"].get("HTTPStatusCode") or 0
        return not 400 <= code < 500
    status = getattr(error, "status", None)
    if isinstance(status, int) and hasattr(error, "reason"):
        return not 400 <= status < 500
    return True


class Saga:
    """Runs reversible steps and undoes them on request (see the module docstring)."""

    def __init__(self, maybe_done: Callable[[BaseException], bool] = maybe_done):
        self._maybe_done = maybe_done
        self._undo: list[_Undo] = []
        self._lock = threading.Lock()
        self.aborted = threading.Event()
        """Set when a step fails; parallel branches and waits watch it to stop early."""

    @property
    def completed(self) -> list[str]:
        """Steps that will be undone by :meth:`rollback`, oldest first."""
        with self._lock:
            return [u.step for u in self._undo]

    def run(
        self,
        step: str,
        do: Callable[[], T],
        undo: Callable[[], Any] | None = None,
        remedy: str = "",
    ) -> T:
        """Run ``do`` and remember ``undo``; on failure raise :class:`StepFailed`.

        ``remedy`` is the command that removes the step's result by hand, shown when the undo
        fails too.
        """
        if self.aborted.is_set():
            raise Aborted(f"{step}: not started, another step failed")
        try:
            result = do()
        except BaseException as e:
            self.aborted.set()
            if undo is not None and self._maybe_done(e):
                self._remember(step, undo, remedy)
            if isinstance(e, (StepFailed, Aborted)):
                raise
            raise StepFailed(step, e) from e
        if undo is not None:
            self._remember(step, undo, remedy)
        return result

    def _remember(self, step: str, undo: Callable[[], Any], remedy: str) -> None:
        with self._lock:
            self._undo.append(_Undo(step, undo, remedy))

    def parallel(self, *branches: Callable[[], Any]) -> list[Any]:
        """Run ``branches`` at once (each a function calling :meth:`run`) and wait for all.

        When one fails, the others stop before their next step; the first real failure is
        raised once every branch has stopped, so :meth:`rollback` sees everything made.
        """
        with ThreadPoolExecutor(len(branches), thread_name_prefix="recc-saga") as pool:
            futures = [pool.submit(self._branch, b) for b in branches]
            outcomes = [f.exception() or f.result() for f in futures]
        errors = [o for o in outcomes if isinstance(o, BaseException)]
        real = [e for e in errors if not isinstance(e, Aborted)]
        if real or errors:
            raise (real or errors)[0]
        return outcomes

    def _branch(self, branch: Callable[[], T]) -> T:
        try:
            return branch()
        except BaseException:
            self.aborted.set()
            raise

    def rollback(self) -> list[Leftover]:
        """Undo every remembered step, newest first; return what could not be undone."""
        with self._lock:
            pending, self._undo = self._undo, []
        leftovers = []
        for item in reversed(pending):
            try:
                item.undo()
            except Exception as e:  # keep undoing the rest; report this one
                leftovers.append(Leftover(item.step, describe(e), item.remedy))
        return leftovers


def failure_message(
    what: str, step: str, cause: BaseException | str, leftovers: list[Leftover], remedy: str = ""
) -> str:
    """The one error a user sees after a failed, rolled-back create.

    >>> failure_message("creating cluster c", "namespace c", "HTTP 403 Forbidden", [])
    "creating cluster c failed at step 'namespace c': HTTP 403 Forbidden. Everything created \
before the failure was removed; nothing was left behind."
    """
    why = cause if isinstance(cause, str) else describe(cause)
    head = f"{what} failed at step {step!r}: {why}."
    if not leftovers:
        return head + " Everything created before the failure was removed; nothing was left behind."
    lines = [head, "These could not be removed; remove them by hand:"]
    for left in leftovers:
        fix = f"\n      {left.remedy}" if left.remedy else ""
        lines.append(f"  - {left.step} ({left.error}){fix}")
    if remedy:
        lines.append(f"or retry the whole clean-up with: {remedy}")
    return "\n".join(lines)
