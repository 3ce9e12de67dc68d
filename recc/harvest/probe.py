"""Ask schedulers whether they are working, without becoming one of their clients.

A ``distributed.Client`` registers with the scheduler, so a harvester connecting as one would
itself be a "connected client" (and would show up in the scheduler's idle bookkeeping). The
probe instead opens a bare RPC connection over TLS, with the cluster's own certificates, and
runs one small function on the scheduler (the ``run_function`` handler that
``Client.run_on_scheduler`` uses) that reports ``idle_since``, the connected clients and the
work in flight. The function travels by value, so the scheduler needs nothing of RECC.

Three outcomes per scheduler: its :class:`~recc.harvest.evidence.SchedulerEvidence`; an
:class:`Unanswered` that is *unreachable* (no connection within the timeout: it may be dead);
or an :class:`Unanswered` that is not (it answered, but not usefully, or TLS was refused: a
problem on our side, so the cluster is kept).

Example
-------
>>> from recc.harvest.probe import ask_all  # doctest: +SKIP
>>> ask_all({"c1": ("tls://127.0.0.1:40123", security)}, timeout=5)  # doctest: +SKIP
{'c1': SchedulerEvidence(idle_seconds=812.4, clients=0, processing=0, ...)}
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ssl
from collections.abc import Callable, Coroutine, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from distributed.security import Security

from recc.harvest.evidence import SchedulerEvidence

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")


@dataclass(frozen=True)
class Unanswered:
    """The scheduler gave no usable answer: ``why``; ``unreachable`` when no connection could
    be made at all (as opposed to an answer we could not use, or TLS refusing us)."""

    why: str
    unreachable: bool


def _scheduler_report() -> Callable[..., dict[str, Any]]:
    # Defined inside a function so that pickling sends it by value (cloudpickle): schedulers
    # in a Dask image have no RECC to import it from. It uses nothing but the scheduler.
    def recc_harvest_probe(dask_scheduler: Any) -> dict[str, Any]:
        import time

        return {
            "now": time.time(),
            "idle_since": dask_scheduler.idle_since,
            # "fire-and-forget" is the scheduler's own pseudo-client, always present.
            "clients": sum(1 for c in dask_scheduler.clients if c != "fire-and-forget"),
            "processing": sum(len(ws.processing) for ws in dask_scheduler.workers.values()),
            "queued": len(dask_scheduler.queued),
            "unrunnable": len(dask_scheduler.unrunnable),
            "graph_updates": getattr(dask_scheduler, "_active_graph_updates", 0),
            "workers": len(dask_scheduler.workers),
        }

    return recc_harvest_probe


def evidence_from(report: Mapping[str, Any]) -> SchedulerEvidence:
    """The probe's report as evidence; idle time measured on the scheduler's own clock."""
    since = report.get("idle_since")
    return SchedulerEvidence(
        idle_seconds=None if not since else max(0.0, float(report["now"]) - float(since)),
        clients=int(report["clients"]),
        processing=int(report["processing"]),
        queued=int(report["queued"]),
        unrunnable=int(report["unrunnable"]),
        graph_updates=int(report.get("graph_updates") or 0),
        workers=int(report.get("workers") or 0),
    )


async def ask(address: str, security: Security, timeout: float) -> SchedulerEvidence | Unanswered:
    """Ask the scheduler at ``address`` (``tls://host:port``) how busy it is."""
    from distributed.comm.core import CommClosedError
    from distributed.core import rpc
    from distributed.protocol.pickle import dumps

    try:
        connection_args = security.get_connection_args("client")
    except (OSError, ValueError) as e:  # the cluster's certificate files are missing or bad
        return Unanswered(f"cannot load the cluster's TLS credentials: {_describe(e)}", False)
    remote = rpc(address, connection_args=connection_args, timeout=timeout)
    try:
        # The connection's own timeout fires first and says why (refused, unreachable ...);
        # this one bounds a scheduler that accepts the connection and then never answers.
        response = await asyncio.wait_for(
            remote.run_function(function=dumps(_scheduler_report())), 2 * timeout
        )
    except (OSError, asyncio.TimeoutError, CommClosedError) as e:
        if _tls_refused(e):
            return Unanswered(f"TLS was refused: {_describe(e)}", unreachable=False)
        return Unanswered(_describe(e), unreachable=True)
    finally:
        await remote.close_rpc()
    if not isinstance(response, dict) or response.get("status") != "OK":
        text = response.get("text") if isinstance(response, dict) else repr(response)
        return Unanswered(f"the scheduler could not report its state: {text}", False)
    try:
        return evidence_from(response["result"])
    except (KeyError, TypeError, ValueError) as e:
        return Unanswered(f"the scheduler's report was unreadable: {e!r}", unreachable=False)


def ask_all(
    targets: Mapping[K, tuple[str, Security]], timeout: float, concurrency: int = 32
) -> dict[K, SchedulerEvidence | Unanswered]:
    """Ask every scheduler in ``targets`` (key -> (address, security)) at once, at most
    ``concurrency`` at a time; a dead one costs ``timeout`` without delaying the others."""
    if not targets:
        return {}

    async def everyone() -> dict[K, SchedulerEvidence | Unanswered]:
        gate = asyncio.Semaphore(concurrency)

        async def one(address: str, security: Security) -> SchedulerEvidence | Unanswered:
            async with gate:
                return await ask(address, security, timeout)

        keys = list(targets)
        answers = await asyncio.gather(*(one(*targets[k]) for k in keys))
        return dict(zip(keys, answers, strict=True))

    return run_coroutine(everyone)


def run_coroutine(make: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run a coroutine to completion from synchronous code, also when this thread already runs
    an event loop (a notebook): then in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make())
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="recc-probe") as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


def _tls_refused(error: BaseException) -> bool:
    """Whether a TLS error is somewhere in the chain (bad or mismatched certificates)."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError) or "SSL" in type(seen).__name__:
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(seen) or "UNKNOWN_CA" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _describe(error: BaseException) -> str:
    """The error's message, with its root cause when that says more (``Connection refused``)."""
    text = str(error) or type(error).__name__
    root = error
    while root.__cause__ is not None:
        root = root.__cause__
    if root is not error:
        text += f" ({type(root).__name__}: {root})"
    return text if len(text) <= 240 else text[:237] + "..."
