"""RECCCluster and RECCClient: the Python face of RECC.

``RECCCluster`` is a handle on a cluster that a backend owns (like dask-kubernetes'
``KubeCluster``): it creates one from a spec, or connects to one by name. The creator shuts the
cluster down on close; whoever connects with :meth:`RECCCluster.from_name` does not.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path
from typing import Any

from distributed import Client
from distributed.core import Status, rpc
from distributed.deploy import Cluster
from distributed.diagnostics.plugin import WorkerPlugin

from recc.backends.base import Backend, Progress, get_backend, no_progress
from recc.clusters import check_quotas, delete_cluster, estimate_vcpus, record_created
from recc.cost import local_cost
from recc.errors import BackendError
from recc.estimate import Estimate, estimate
from recc.naming import check_cluster_name, current_user, default_cluster_name
from recc.spec import ClusterSpec, build_spec, resolve_spec
from recc.state import ClusterRecord
from recc.tags import rfc3339

logger = logging.getLogger("recc")


def cluster_estimate(spec: ClusterSpec, backend: str) -> Estimate:
    """The plan and $/h of ``spec`` on ``backend`` (the local backend costs nothing, but refuses
    a spec this machine cannot hold: :func:`~recc.backends.local.check_fits_machine`)."""
    if backend == "local":
        from recc.backends.local import check_fits_machine, machine

        check_fits_machine(spec, *machine())
        return Estimate(spec, None, local_cost())  # type: ignore[arg-type]
    return estimate(spec)


class RECCCluster(Cluster):
    """A Dask cluster that exists only while you need it.

    Parameters
    ----------
    template:
        A template name (``"default"``, ``"highmem"`` ...; see ``recc templates``) or the path
        of a YAML template file.
    backend:
        ``"local"`` or ``"eks"``; default from the dask config key ``recc.backend``, else
        ``eks`` when an EKS platform is configured, else ``local``.
    spec:
        A ready :class:`~recc.spec.ClusterSpec` instead of template + keywords.
    shutdown_on_close:
        Delete the cluster when this object closes (true for the creator).
    progress:
        Callback ``(phase, done, total)`` for long waits (the CLI draws bars with it).
    **spec_kwargs:
        Any ClusterSpec field: ``n_workers``, ``worker_memory``, ``worker_cpu``,
        ``scheduler_memory_GiB``, ``resources``, ``env``, ``source_git_branch``, ``name`` ...

    Examples
    --------
    >>> with RECCCluster(n_workers=2, worker_memory="1GiB") as cluster:  # doctest: +SKIP
    ...     with RECCClient(cluster) as client:
    ...         client.submit(lambda x: x + 1, 1).result()
    2
    """

    def __init__(
        self,
        template: str | Path | None = None,
        *,
        backend: str | None = None,
        spec: ClusterSpec | None = None,
        asynchronous: bool = False,
        loop: Any = None,
        quiet: bool = False,
        shutdown_on_close: bool = True,
        progress: Progress | None = None,
        _record: ClusterRecord | None = None,
        **spec_kwargs: Any,
    ):
        # Everything that can be wrong with the input fails here, before any resource exists.
        self.backend: Backend = get_backend(backend)
        if _record is not None:
            spec = build_spec(_record.spec)
        elif spec is None:
            spec = resolve_spec(template, **spec_kwargs)
        if spec.name is None:
            spec = spec.replace(name=default_cluster_name())
        self.spec = spec
        self.estimate = cluster_estimate(spec, self.backend.name)
        self.shutdown_on_close = shutdown_on_close
        self._progress = progress or no_progress
        self._record = _record
        self.security = None
        super().__init__(asynchronous=asynchronous, loop=loop, quiet=quiet, name=spec.name)
        if not self.asynchronous:
            self._loop_runner.start()
            self.sync(self._start)

    @classmethod
    def from_name(
        cls, name: str, *, backend: str | None = None, asynchronous: bool = False
    ) -> RECCCluster:
        """Connect to the running cluster ``name`` (from any process); closing it leaves the
        cluster running.

        Example
        -------
        >>> cluster = RECCCluster.from_name("recc-alice-1a2b3c")  # doctest: +SKIP

        Raises :class:`~recc.errors.SpecError` for a name that cannot be a cluster name and
        :class:`~recc.errors.ClusterNotFound` for an unknown one.
        """
        check_cluster_name(name)
        chosen = get_backend(backend)
        record = chosen.find(name)
        return cls(
            backend=chosen.name,
            asynchronous=asynchronous,
            shutdown_on_close=False,
            _record=record,
        )

    @property
    def record(self) -> ClusterRecord | None:
        """What the backend recorded about this cluster (None before it started)."""
        return self._record

    @property
    def dashboard_link(self) -> str:
        """The dashboard as reachable from here (on EKS: through the load balancer or a
        port-forward, over HTTPS), rather than the scheduler's own view of its address."""
        if self._record is not None and self._record.dashboard_link:
            return self._record.dashboard_link
        return super().dashboard_link

    @property
    def usd_per_hour(self) -> float:
        """Estimated cost per hour (0 on the local backend)."""
        return self.estimate.cost.usd_per_hour

    async def _start(self) -> None:
        if self.status in (Status.running, Status.starting):
            return
        created_here = self._record is None
        if created_here:  # quotas are checked before anything exists
            await asyncio.to_thread(check_quotas, self.estimate, self.backend, current_user())
        self.status = Status.starting
        try:
            if created_here:
                record = ClusterRecord(
                    name=self.spec.name or "",
                    backend=self.backend.name,
                    owner=current_user(),
                    created_at=rfc3339(dt.datetime.now(dt.timezone.utc)),
                    spec=self.spec.to_dict(),
                    usd_per_hour=self.usd_per_hour,
                    vcpus=estimate_vcpus(self.estimate),
                )
                self._log(f"Creating {record.name} on the {self.backend.name} backend")
                self._record = await asyncio.to_thread(
                    self.backend.create, record, self.estimate, self._progress
                )
                await asyncio.to_thread(record_created, self._record, self.estimate)
            assert self._record is not None and self._record.scheduler_address
            self.security = self.backend.security(self._record)
            self.scheduler_comm = rpc(
                self._record.scheduler_address,
                connection_args=self.security.get_connection_args("client"),
            )
            await super()._start()
        except Exception as e:
            self.status = Status.failed
            if created_here and self._record is not None:
                await asyncio.to_thread(self.backend.delete, self._record.name)
            raise BackendError(f"Cluster failed to start: {e}") from e

    def __await__(self):  # noqa: ANN204 - the awaitable protocol
        async def start() -> RECCCluster:
            if self.status == Status.created:
                await self._start()
            return self

        return start().__await__()

    def scale(self, n: int) -> Any:
        """Run ``n`` workers in the default worker group."""
        return self.sync(self._scale, n)

    async def _scale(self, n: int) -> None:
        if n < 0:
            raise ValueError(f"n={n!r}: the number of workers cannot be negative (e.g. 4)")
        self.spec.replace(n_workers=max(n, 1))  # SpecError for too many, before any change
        assert self._record is not None
        self._record = await asyncio.to_thread(self.backend.scale, self._record, n)
        self.spec = build_spec(self._record.spec)

    async def _close(self) -> None:
        if self.status == Status.closed:
            return
        await super()._close()
        if self.shutdown_on_close and self._record is not None:
            await asyncio.to_thread(delete_cluster, self._record.name, self.backend, "closed")

    def __repr__(self) -> str:
        workers = len(self.scheduler_info.get("workers", {}))
        return (
            f"RECCCluster({self.name!r}, backend={self.backend.name!r}, "
            f"scheduler={self.scheduler_address!r}, workers={workers}, "
            f"usd_per_hour={self.usd_per_hour:.2f}, dashboard={self.dashboard_link!r})"
        )

    def _repr_html_(self, cluster_status: Any = None) -> str:
        extra = (
            f"<p><b>RECC</b> backend: {self.backend.name} &middot; "
            f"estimated ${self.usd_per_hour:.2f}/h &middot; "
            f"workers requested: {self.spec.total_workers}</p>"
        )
        return super()._repr_html_(cluster_status=extra)


class RECCIdentity(WorkerPlugin):
    """Tells each worker which RECC cluster it serves (``get_worker().recc_cluster``), so tasks
    can name outputs or metrics after their cluster."""

    name = "recc-identity"

    def __init__(self, cluster: str, user: str):
        self.cluster = cluster
        self.user = user

    def setup(self, worker: Any) -> None:
        worker.recc_cluster = self.cluster
        worker.recc_user = self.user


class RECCClient(Client):
    """A ``distributed.Client`` for RECC clusters: TLS is set from the cluster, and RECC's
    default worker plugins are registered.

    ``address`` may be a :class:`RECCCluster` or a cluster name.

    Example
    -------
    >>> with RECCClient("recc-alice-1a2b3c") as client:  # doctest: +SKIP
    ...     client.submit(sum, [1, 2]).result()
    3
    """

    def __init__(self, address: Any = None, *args: Any, security: Any = None, **kwargs: Any):
        if isinstance(address, str) and "://" not in address:
            address = RECCCluster.from_name(address, asynchronous=kwargs.get("asynchronous", False))
        if isinstance(address, RECCCluster):
            security = security or address.security
        super().__init__(address, *args, security=security, **kwargs)
        if isinstance(address, RECCCluster) and not self.asynchronous:
            self.register_plugin(RECCIdentity(address.name, current_user()))
