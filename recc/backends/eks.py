"""The EKS backend: per cluster, a namespace and Dask resources (Kubernetes) and one managed
node group per worker group (AWS), created in order, each step reversible, found again from
tags and labels alone.

Create (see DESIGN.md, "The cluster lifecycle"):

1. identity: STS says who the caller is; that names the owner and the Kubernetes user bound
   to the namespace's Role;
2. in parallel: the Kubernetes objects (namespace, service account, RBAC, quota, network
   policies, TLS Secret, DaskCluster and DaskWorkerGroups, in render order) | per worker group
   a launch template and a managed node group;
3. bounded waits, each with progress and its own timeout: node groups ACTIVE, nodes Ready,
   scheduler reachable (load balancer, else port-forward), workers joined.

Any failure undoes what was made (:class:`recc.lifecycle.Saga`), checks that nothing of the
cluster is left, and raises one :class:`BackendError` naming the step, the reason, and what
(if anything) must be removed by hand.

Delete: Dask resources -> node groups scaled to 0 and deleted (waited for) -> launch
templates -> namespace; every step idempotent and guarded by ``recc:managed-by=recc`` /
``app.kubernetes.io/managed-by=recc``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import closing
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from distributed.security import Security
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from recc import __version__, config, nodegroups, state
from recc.backends.base import ClusterStatus, Progress, no_progress
from recc.backends.eks_platform import (
    MANAGED_SELECTOR,
    Connection,
    EKSPlatform,
    Found,
    discover,
    discover_all,
    namespace_ref,
    tag_map,
)
from recc.errors import BackendError, ClusterNotFound, ConfigError
from recc.estimate import Estimate
from recc.estimate import estimate as estimate_cost
from recc.kube import apply
from recc.kube.apply import Ref
from recc.kube.auth import eks_username, kubernetes_user
from recc.kube.connect import (
    COMM_PORT_NAME,
    PORT_FORWARD,
    PortForwarder,
    Route,
    choose_route,
    kubernetes_opener,
    load_balancer_host,
    scheduler_service,
    service_ports,
    tcp_reachable,
)
from recc.lifecycle import Leftover, Saga, StepFailed, describe, failure_message
from recc.nodegroups import NodeGroupSpec
from recc.plan import plan_cluster
from recc.render import (
    NODEGROUP_LABEL,
    PlatformSettings,
    TLSMaterial,
    nodegroup_name,
    render_manifests,
)
from recc.spec import ClusterSpec, build_spec
from recc.state import ClusterRecord
from recc.tags import Ownership, aws_tags, parse_rfc3339
from recc.tls import TLSFiles, create_cluster_tls, write_tls
from recc.waiting import Observation, Waiter

SPEC_ANNOTATION = "recc.io/spec"
COST_ANNOTATION = "recc.io/usd-per-hour"
VCPUS_ANNOTATION = "recc.io/vcpus"
DASK_GROUP = "kubernetes.dask.org/v1"
logger = logging.getLogger("recc")


_EXTERNAL_ERRORS = (ApiException, ClientError, BotoCoreError, HTTPError, OSError)


def _timeout(phase: str, default: float) -> tuple[float, str]:
    key = f"eks.timeouts.{phase}"
    return float(config.get(key, default=default)), f"recc.{key}"


def _transient(error: BaseException) -> bool:
    """Errors a wait retries: throttling, 5xx, dropped connections, timeouts."""
    if isinstance(error, ApiException):
        return error.status in (0, 429) or error.status >= 500
    if isinstance(error, ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        code = error.response.get("Error", {}).get("Code", "")
        return status >= 500 or "Throttl" in code or code == "TooManyRequestsException"
    return isinstance(error, (HTTPError, BotoCoreError, OSError, TimeoutError))


# -- the backend ------------------------------------------------------------------------------


class EKSBackend:
    """Clusters on an existing EKS cluster (configured under ``recc.eks``).

    Example
    -------
    >>> from recc import RECCCluster  # doctest: +SKIP
    >>> with RECCCluster(backend="eks", n_workers=4) as cluster:  # doctest: +SKIP
    ...     print(cluster.scheduler_address)
    tls://internal-a1b2.elb.eu-west-1.amazonaws.com:8786
    """

    name = "eks"

    def __init__(self) -> None:
        # Port-forwards live as long as this backend object (RECCCluster holds it).
        self._forwards: dict[str, PortForwarder] = {}
        self._lock = threading.Lock()

    @staticmethod
    def _waiter(cancelled: threading.Event | None = None) -> Waiter:
        return Waiter(
            maximum=float(config.get("eks.poll-interval", default=10)), cancelled=cancelled
        )

    # -- create -----------------------------------------------------------------------------

    def create(
        self, record: ClusterRecord, estimate: Estimate, progress: Progress = no_progress
    ) -> ClusterRecord:
        """Create cluster ``record.name`` as ``estimate`` plans it; undo everything on failure."""
        if estimate.plan is None:
            raise BackendError("the EKS backend needs a node plan: use recc.estimate.estimate()")
        name = record.name
        prefix = config.get("eks.namespace-prefix")
        if prefix and not name.startswith(prefix):
            raise ConfigError(
                f"name={name!r}: this platform only allows namespaces starting with {prefix!r} "
                f"(recc.eks.namespace-prefix; for example: name={prefix + name!r})"
            )
        settings = PlatformSettings.from_config()
        with closing(Connection.open(for_create=True)) as conn:
            try:
                exists = bool(discover(conn, name))
            except _EXTERNAL_ERRORS as e:
                message = failure_message(f"creating cluster {name!r}", "check name", e, [])
                raise BackendError(message) from e
            if exists:
                raise BackendError(
                    f"a cluster named {name!r} exists already (see `recc ls`; remove it with "
                    f"`recc down {name}`)"
                )
            saga = Saga()
            try:
                return self._create(saga, conn, record, estimate, settings, progress)
            except BaseException as e:
                attempted = bool(saga.completed)
                leftovers = saga.rollback()
                self._stop_forward(name)
                if attempted:
                    leftovers += self._residue(conn, name, leftovers)
                if not leftovers:
                    state.remove(name)
                if not isinstance(e, StepFailed) and (
                    not attempted or not isinstance(e, Exception)
                ):
                    raise  # nothing was made, or KeyboardInterrupt/SystemExit after the rollback
                step, cause = (e.step, e.cause) if isinstance(e, StepFailed) else ("preparing", e)
                message = failure_message(
                    f"creating cluster {name!r}", step, cause, leftovers, f"recc down {name}"
                )
                raise BackendError(message) from cause

    def _create(
        self,
        saga: Saga,
        conn: Connection,
        record: ClusterRecord,
        estimate: Estimate,
        settings: PlatformSettings,
        progress: Progress,
    ) -> ClusterRecord:
        name, spec, plan = record.name, estimate.spec, estimate.plan
        assert plan is not None
        sts = conn.session.client("sts", region_name=conn.platform.region)
        identity = saga.run("identity", sts.get_caller_identity)
        user = kubernetes_user(identity["Arn"], config.get("eks.user-map", default={}))
        owner = Ownership(
            cluster=name,
            user=user,
            namespace=name,
            created_at=parse_rfc3339(record.created_at),
            job=spec.job,
            idle_timeout=spec.idle_timeout,
            max_lifetime=spec.max_lifetime,
        )
        service = scheduler_service(name)
        tls = create_cluster_tls(
            name,
            state.cluster_dir(name) / "tls",
            hostnames=(
                f"{service}.{name}.svc.cluster.local",
                service,
                # The internal load balancer's name, made by AWS after this certificate.
                f"*.elb.{conn.platform.region}.amazonaws.com",
                "localhost",
                "127.0.0.1",
            ),
        )
        subject = eks_username(identity["Arn"], config.get("eks.user-map", default={}))
        manifests = render_manifests(
            spec, plan, owner, settings, TLSMaterial(*tls.pem()), owner_subject=subject
        )
        _annotate_namespace(manifests, spec, record)
        ngs = nodegroups.nodegroup_specs(
            name,
            plan,
            aws_tags(owner, __version__, spec.tags),
            conn.platform.cluster_name,
            conn.platform.subnets,
            conn.platform.node_role_arn,
            conn.platform.security_groups,
        )
        record.owner = user
        record.details = {
            "eks_cluster": conn.platform.cluster_name,
            "namespace": name,
            "nodegroups": [ng.name for ng in ngs],
            "caller_arn": identity["Arn"],
        }
        state.save(record)  # a cache only: tags and labels decide

        # The Kubernetes objects go in while the node groups boot.
        counter = _Counter(progress, "resources created", len(manifests) + 2 * len(ngs))
        saga.parallel(
            lambda: self._apply_objects(saga, conn, manifests, counter),
            lambda: self._create_nodegroups(saga, conn, ngs, counter),
        )
        waiter = self._waiter(saga.aborted)
        sizes = {ng.name: ng.instances for ng in ngs}
        saga.run("node groups active", lambda: self._wait_active(waiter, conn, sizes, progress))
        saga.run("nodes ready", lambda: self._wait_nodes(waiter, conn, sizes, progress))
        route = saga.run(
            "scheduler reachable", lambda: self._wait_scheduler(waiter, conn, name, progress)
        )
        record.scheduler_address = route.address
        record.dashboard_link = route.dashboard_link
        record.details["route"] = route.kind
        saga.run(
            "workers joined",
            lambda: self._wait_workers(
                waiter,
                route.address,
                tls.security(),
                spec.total_workers,
                progress,
                lambda: _check_pods_admitted(conn, name),
            ),
        )
        state.save(record)
        return record

    def _apply_objects(
        self, saga: Saga, conn: Connection, manifests: list[dict[str, Any]], counter: _Counter
    ) -> None:
        for doc in manifests:
            ref = Ref.of(doc)
            saga.run(
                str(ref),
                lambda doc=doc: apply.create(conn.api, doc),
                undo=lambda ref=ref: self._undo(conn, ref),
                remedy=ref.kubectl_delete(),
            )
            counter.step()

    def _create_nodegroups(
        self, saga: Saga, conn: Connection, ngs: list[NodeGroupSpec], counter: _Counter
    ) -> None:
        for ng in ngs:
            template_id = saga.run(
                f"launch template {ng.name}",
                lambda ng=ng: nodegroups.create_launch_template(conn.ec2, ng),
                undo=lambda ng=ng: nodegroups.delete_launch_template(conn.ec2, ng.name),
                remedy=conn.platform.remove_launch_template(ng.name),
            )
            counter.step()
            saga.run(
                f"node group {ng.name}",
                lambda ng=ng, lt=template_id: nodegroups.create_nodegroup(conn.eks, ng, lt),
                undo=lambda ng=ng: self._delete_nodegroups(conn, [ng.name]),
                remedy=conn.platform.remove_nodegroup(ng.name),
            )
            counter.step()

    # -- waits ------------------------------------------------------------------------------

    def _wait_active(
        self, waiter: Waiter, conn: Connection, sizes: dict[str, int], progress: Progress
    ) -> None:
        def probe() -> Observation:
            active, pending = 0, []
            for name in sizes:
                found = nodegroups.describe_nodegroup(conn.eks, conn.platform.cluster_name, name)
                if found is None:
                    raise BackendError(f"node group {name} disappeared while being created")
                if nodegroups.check_active(found):  # raises when it failed
                    active += 1
                else:
                    pending.append(f"{name} is {found.get('status')}")
            return Observation(active, len(sizes), ", ".join(pending))

        timeout, setting = _timeout("nodegroup-active", 900)
        waiter.until("node groups active", probe, timeout, progress, setting, _transient)

    def _wait_nodes(
        self, waiter: Waiter, conn: Connection, sizes: dict[str, int], progress: Progress
    ) -> None:
        wanted = sum(sizes.values())
        selector = f"{NODEGROUP_LABEL} in ({','.join(sizes)})"

        def probe() -> Observation:
            nodes = apply.list_objects(conn.api, "v1", "Node", label_selector=selector)
            ready = sum(_node_ready(n) for n in nodes)
            return Observation(ready, wanted, f"{len(nodes)} nodes registered, {ready} Ready")

        timeout, setting = _timeout("nodes-ready", 600)
        waiter.until("nodes ready", probe, timeout, progress, setting, _transient)

    def _wait_scheduler(
        self, waiter: Waiter, conn: Connection, name: str, progress: Progress
    ) -> Route:
        grace = float(config.get("eks.load-balancer-grace", default=120))
        started = time.monotonic()
        found: list[Route] = []

        def probe() -> Observation:
            _check_pods_admitted(conn, name)
            route = self._route(conn, name, grace, time.monotonic() - started)
            if isinstance(route, str):
                return Observation(0, 1, route)
            found.append(route)
            return Observation(1, 1)

        timeout, setting = _timeout("scheduler-reachable", 300)
        waiter.until("scheduler reachable", probe, timeout, progress, setting, _transient)
        return found[-1]

    def _route(self, conn: Connection, name: str, grace: float, waited: float) -> Route | str:
        """The way to ``name``'s scheduler (load balancer or port-forward), or why none yet."""
        service = apply.read(conn.api, Ref("v1", "Service", scheduler_service(name), name))
        mode = config.get("eks.connect", default="auto")
        route = choose_route(service, tcp_reachable, waited, grace, mode)
        if route is None:
            if service is None:
                return (
                    f"no Service {scheduler_service(name)} yet (is the dask-kubernetes operator "
                    f"running in namespace {config.get('eks.operator-namespace')}?)"
                )
            return "the scheduler's load balancer has no reachable address yet"
        if route.kind != PORT_FORWARD:
            return route
        if _ready_scheduler_pod(conn.api, name) is None:
            return "no reachable load balancer, and the scheduler pod is not Ready yet"

        def scheduler_pod(api: Any) -> str:  # asked per connection: it follows a restart
            pod = _ready_scheduler_pod(api, name)
            if pod is None:
                raise BackendError(f"cluster {name} has no Ready scheduler pod")
            return pod

        ports = {"comm": route.port, "dashboard": route.dashboard_port}
        local = {
            part: self._forward(
                f"{name}/{part}", kubernetes_opener(conn.api, name, scheduler_pod, port)
            )
            for part, port in ports.items()
            if port
        }
        return Route(PORT_FORWARD, "127.0.0.1", local["comm"], local.get("dashboard"))

    def _forward(self, key: str, opener: Callable[[], Any]) -> int:
        with self._lock:
            if key not in self._forwards:
                self._forwards[key] = PortForwarder(opener, name=f"recc-forward-{key}")
            return self._forwards[key].port

    def _stop_forward(self, name: str) -> None:
        with self._lock:
            keys = [k for k in self._forwards if k.startswith(f"{name}/")]
            stopping = [self._forwards.pop(k) for k in keys]
        for forward in stopping:
            forward.stop()

    def _wait_workers(
        self,
        waiter: Waiter,
        address: str,
        security: Security,
        wanted: int,
        progress: Progress,
        check: Callable[[], None],
    ) -> None:
        """Wait until ``wanted`` workers joined; ``check()`` raises when they never will."""
        from distributed import Client

        timeout, setting = _timeout("workers-joined", 600)
        with Client(address, security=security, timeout=min(timeout, 60)) as client:

            def probe() -> Observation:
                check()
                workers = client.scheduler_info(n_workers=-1).get("workers")
                if workers is None:  # the client is reconnecting: a scheduler restart
                    return Observation(0, wanted, "the scheduler does not answer")
                return Observation(len(workers), wanted)

            waiter.until("workers joined", probe, timeout, progress, setting, _transient)

    # -- scale ------------------------------------------------------------------------------

    def scale(self, record: ClusterRecord, n_workers: int) -> ClusterRecord:
        """Run ``n_workers`` workers in the default group.

        Growing resizes the default node group from a new plan first and waits for its nodes,
        then for the workers. Shrinking retires workers but keeps the nodes: EKS picks which
        instances a smaller node group terminates, and that could be the scheduler's (the
        nodes go when the cluster is deleted).
        """
        from recc.catalog import get_catalog

        spec = build_spec(record.spec).replace(n_workers=max(n_workers, 1))
        wanted = plan_cluster(spec, get_catalog()).groups[0].instances
        group = nodegroup_name(record.name, "default")
        waiter = self._waiter()
        with closing(Connection.open()) as conn:
            cluster_ref = Ref(DASK_GROUP, "DaskCluster", record.name, record.name)
            if apply.read(conn.api, cluster_ref) is None:
                raise ClusterNotFound(f"cluster {record.name!r} has no DaskCluster (`recc ls`)")
            current = nodegroups.describe_nodegroup(conn.eks, conn.platform.cluster_name, group)
            have = ((current or {}).get("scalingConfig") or {}).get("desiredSize", 0)
            if wanted > have:
                nodegroups.scale_nodegroup(conn.eks, conn.platform.cluster_name, group, wanted)
                self._wait_active(waiter, conn, {group: wanted}, no_progress)
                self._wait_nodes(waiter, conn, {group: wanted}, no_progress)
            apply.patch(conn.api, cluster_ref, {"spec": {"worker": {"replicas": n_workers}}})
            record.spec = spec.to_dict()
            annotations = {SPEC_ANNOTATION: json.dumps(record.spec, sort_keys=True)}
            if wanted > have:  # more nodes cost more (fewer are kept: see above)
                record.usd_per_hour = estimate_cost(spec).cost.usd_per_hour
                annotations[COST_ANNOTATION] = f"{record.usd_per_hour:.4f}"
            apply.patch(
                conn.api, namespace_ref(record.name), {"metadata": {"annotations": annotations}}
            )
            if n_workers > 0 and record.scheduler_address:
                total = n_workers + sum(g.n_workers for g in spec.worker_groups)
                self._wait_workers(
                    waiter,
                    record.scheduler_address,
                    self.security(record),
                    total,
                    no_progress,
                    lambda: _check_pods_admitted(conn, record.name),
                )
        state.save(record)
        return record

    # -- discovery --------------------------------------------------------------------------

    def _residue(self, conn: Connection, name: str, known: list[Leftover]) -> list[Leftover]:
        """What of cluster ``name`` still exists after a rollback, beyond ``known``."""
        try:
            found = discover(conn, name)
        except Exception as e:  # noqa: BLE001 - the check failed: say so, never claim success
            return [Leftover("checking for leftovers", describe(e), f"recc down {name}")]
        seen = {left.step for left in known}
        return [left for left in found.leftovers(conn.platform) if left.step not in seen]

    def _record(self, found: Found, platform: EKSPlatform) -> ClusterRecord:
        """A record from what was found (the namespace's annotations, else AWS tags)."""
        annotations = ((found.namespace or {}).get("metadata") or {}).get("annotations") or {}
        tags: dict[str, str] = {}
        if found.nodegroups:
            tags = found.nodegroups[0].get("tags") or {}
        elif found.launch_templates:
            tags = tag_map(found.launch_templates[0])
        spec = annotations.get(SPEC_ANNOTATION)
        if spec is None and state.exists(found.name):  # a partial cluster: the cache may know
            spec = json.dumps(state.load(found.name).spec)
        return ClusterRecord(
            name=found.name,
            backend=self.name,
            owner=annotations.get("recc.io/user") or tags.get("recc:user") or "unknown",
            created_at=annotations.get("recc.io/created-at") or tags.get("recc:created-at", ""),
            spec=json.loads(spec) if spec else {},
            usd_per_hour=float(annotations.get(COST_ANNOTATION) or 0.0),
            vcpus=float(annotations.get(VCPUS_ANNOTATION) or 0.0),
            details={
                "eks_cluster": platform.cluster_name,
                "namespace": found.name if found.namespace else None,
                "nodegroups": [ng["nodegroupName"] for ng in found.nodegroups],
                "launch_templates": [lt["LaunchTemplateName"] for lt in found.launch_templates],
                "complete": found.namespace is not None and bool(found.nodegroups),
            },
        )

    def find(self, name: str) -> ClusterRecord:
        """The cluster called ``name``, from tags and labels, with a way to its scheduler
        (raises :class:`ClusterNotFound`)."""
        with closing(Connection.open()) as conn:
            found = discover(conn, name)
            if not found:
                raise ClusterNotFound(f"no EKS cluster named {name!r} (see `recc ls`)")
            record = self._record(found, conn.platform)
            if found.namespace is not None:
                # The cluster is up: there is no load balancer to wait for.
                route = self._route(conn, name, grace=0.0, waited=0.0)
                if isinstance(route, Route):
                    record.scheduler_address = route.address
                    record.dashboard_link = route.dashboard_link
                    record.details["route"] = route.kind
        return record

    def list(self) -> list[ClusterRecord]:
        """Every RECC cluster on the platform (everyone's), oldest first; addresses are the
        load balancers' (no port-forward is opened for a listing)."""
        records = []
        with closing(Connection.open()) as conn:
            for found in discover_all(conn).values():
                record = self._record(found, conn.platform)
                if found.namespace is not None:
                    ref = Ref("v1", "Service", scheduler_service(found.name), found.name)
                    service = apply.read(conn.api, ref) or {}
                    host = load_balancer_host(service)
                    port = service_ports(service).get(COMM_PORT_NAME)
                    if host and port:
                        record.scheduler_address = f"tls://{host}:{port}"
                records.append(record)
        return sorted(records, key=lambda r: r.created_at)

    def status(self, record: ClusterRecord) -> ClusterStatus:
        """running / starting / failed, from the node groups and the DaskCluster; workers as
        the scheduler counts them when it answers, else the worker pods that run."""
        with closing(Connection.open()) as conn:
            for group in record.details.get("nodegroups") or []:
                ng = nodegroups.describe_nodegroup(conn.eks, conn.platform.cluster_name, group)
                if ng is None:
                    return ClusterStatus("failed", 0, f"node group {group} is missing")
                try:
                    nodegroups.check_active(ng)
                except BackendError as e:
                    return ClusterStatus("failed", 0, str(e))
            dask = apply.read(conn.api, Ref(DASK_GROUP, "DaskCluster", record.name, record.name))
            if dask is None:
                return ClusterStatus("failed", 0, "no DaskCluster: partly made, or being deleted")
            phase = (dask.get("status") or {}).get("phase")
            if phase != "Running":
                starting = phase in (None, "Created", "Pending")
                return ClusterStatus(
                    "starting" if starting else "failed", 0, f"DaskCluster {phase}"
                )
            joined = self._workers_joined(record)
            if joined is not None:
                return ClusterStatus("running", joined)
            pods = apply.list_objects(
                conn.api, "v1", "Pod", record.name, "dask.org/component=worker"
            )
            running = sum((p.get("status") or {}).get("phase") == "Running" for p in pods)
            return ClusterStatus("running", running, "scheduler not reachable from here: pods")

    def _workers_joined(self, record: ClusterRecord) -> int | None:
        """Workers connected to the scheduler, or None when it cannot be asked from here."""
        from urllib.parse import urlsplit

        from distributed import Client

        where = urlsplit(record.scheduler_address or "")
        if not where.hostname or not tcp_reachable(where.hostname, where.port or 0, timeout=2):
            return None
        try:
            with Client(record.scheduler_address, security=self.security(record), timeout=10) as c:
                return len(c.scheduler_info(n_workers=-1)["workers"])
        except (OSError, TimeoutError):
            return None

    def security(self, record: ClusterRecord) -> Security:
        """The cluster's TLS: the local files if this machine has them, else its Secret's."""
        directory = state.cluster_dir(record.name) / "tls"
        files = TLSFiles.in_dir(directory)
        if all(p.is_file() for p in (files.ca_file, files.cert_file, files.key_file)):
            return files.security()
        with closing(Connection.open()) as conn:
            secret = apply.read(conn.api, Ref("v1", "Secret", f"{record.name}-tls", record.name))
        if secret is None:
            raise ClusterNotFound(f"cluster {record.name!r} has no Secret {record.name}-tls")
        pems = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        return write_tls(directory, pems["ca.crt"], pems["tls.crt"], pems["tls.key"]).security()

    def logs(self, record: ClusterRecord, worker: str | None = None) -> dict[str, str]:
        """Log text of each pod of the cluster (``worker``: pods whose name contains it)."""
        import kubernetes.client

        out = {}
        with closing(Connection.open()) as conn:
            core = kubernetes.client.CoreV1Api(conn.api)
            for pod in apply.list_objects(conn.api, "v1", "Pod", record.name):
                pod_name = pod["metadata"]["name"]
                if worker is None or worker in pod_name:
                    out[pod_name] = core.read_namespaced_pod_log(
                        pod_name, record.name, _request_timeout=apply.request_timeout()
                    )
        return out

    # -- delete -----------------------------------------------------------------------------

    def delete(self, name: str) -> bool:
        """Remove every trace of cluster ``name``; False when there was nothing to remove.

        Order: Dask resources, node groups (scaled to 0, deleted, waited for), launch
        templates, namespace. A step that fails does not stop the others; what is still there
        afterwards is looked up again and reported in a :class:`BackendError` with the command
        that removes it. Safe to run again after a failure or a crash midway.
        """
        self._stop_forward(name)
        what = f"deleting cluster {name!r}"
        with closing(Connection.open()) as conn:
            try:
                found = discover(conn, name)
            except _EXTERNAL_ERRORS as e:
                raise BackendError(
                    f"{what} failed while finding its resources: {describe(e)}. Nothing was "
                    f"removed; run `recc down {name}` again."
                ) from e
            if not found:
                existed = state.exists(name)
                state.remove(name)
                return existed
            problems = self._remove(conn, found)
            remaining = self._residue(conn, name, []) if problems else []
        if remaining:
            first = problems[0]
            raise BackendError(
                failure_message(what, first.step, first.error, remaining, f"recc down {name}")
            )
        for problem in problems:  # a later step (the namespace) took care of it
            logger.info("%s: %s failed (%s), removed anyway", what, problem.step, problem.error)
        state.remove(name)
        return True

    def _remove(self, conn: Connection, found: Found) -> list[Leftover]:
        """Delete what ``found`` holds, in order; the steps that failed."""
        problems: list[Leftover] = []

        def attempt(step: str, action: Callable[[], Any], remedy: str) -> bool:
            try:
                action()
                return True
            except Exception as e:  # noqa: BLE001 - go on removing the rest; report this one
                problems.append(Leftover(step, describe(e), remedy))
                return False

        def delete_dask_resources() -> None:
            for kind in ("DaskWorkerGroup", "DaskCluster"):
                for obj in apply.list_objects(
                    conn.api, DASK_GROUP, kind, found.name, MANAGED_SELECTOR
                ):
                    ref = Ref.of(obj)
                    attempt(str(ref), lambda ref=ref: apply.delete(conn.api, ref), "")

        if found.namespace is not None:
            attempt("Dask resources", delete_dask_resources, "")
        groups = [ng["nodegroupName"] for ng in found.nodegroups]
        groups_gone = attempt(
            f"node groups {', '.join(groups)}", lambda: self._delete_nodegroups(conn, groups), ""
        )
        for lt in found.launch_templates:
            template = lt["LaunchTemplateName"]
            if groups_gone:  # not while a node group may still launch instances from it
                attempt(
                    f"launch template {template}",
                    lambda t=template: nodegroups.delete_launch_template(conn.ec2, t),
                    "",
                )
        if found.namespace is not None:
            attempt(f"namespace {found.name}", lambda: self._delete_namespace(conn, found.name), "")
        return problems

    def _undo(self, conn: Connection, ref: Ref) -> None:
        if ref.kind == "Namespace":
            self._delete_namespace(conn, ref.name)
        else:
            apply.delete(conn.api, ref)

    def _delete_namespace(self, conn: Connection, name: str) -> None:
        """Delete namespace ``name`` and wait (bounded) until it is gone: Kubernetes keeps a
        namespace Terminating while it finalizes what it holds, and a cluster of the same name
        cannot be created before it is gone."""
        ref = namespace_ref(name)
        apply.delete(conn.api, ref)

        def probe() -> Observation:
            left = apply.read(conn.api, ref)
            if left is None:
                return Observation(1, 1)
            conditions = (left.get("status") or {}).get("conditions") or []
            why = "; ".join(c.get("message", "") for c in conditions if c.get("status") == "True")
            return Observation(0, 1, f"namespace {name} is terminating" + (f": {why}" * bool(why)))

        timeout, setting = _timeout("namespace-deleted", 300)
        self._waiter().until("namespace deleted", probe, timeout, no_progress, setting, _transient)

    def _delete_nodegroups(self, conn: Connection, names: list[str]) -> None:
        """Scale each node group to 0 and delete it; wait (bounded) until all are gone."""
        if not names:
            return

        def probe() -> Observation:
            gone, pending = 0, []
            for group in names:
                try:
                    outcome = nodegroups.delete_nodegroup(
                        conn.eks, conn.platform.cluster_name, group
                    )
                except ClientError as e:
                    if e.response.get("Error", {}).get("Code") != "ResourceInUseException":
                        raise
                    outcome = "busy"  # creating or updating: deletable once that ends
                if outcome == nodegroups.ABSENT:
                    gone += 1
                else:
                    pending.append(f"{group} {outcome}")
            return Observation(gone, len(names), ", ".join(pending))

        timeout, setting = _timeout("nodegroup-deleted", 1200)
        self._waiter().until(
            "node groups deleted", probe, timeout, no_progress, setting, _transient
        )


class _Counter:
    """Progress of steps that finish in parallel branches."""

    def __init__(self, progress: Progress, phase: str, total: int):
        self._progress, self._phase, self._total = progress, phase, total
        self._done = 0
        self._lock = threading.Lock()
        progress(phase, 0, total)

    def step(self) -> None:
        with self._lock:
            self._done += 1
            self._progress(self._phase, self._done, self._total)


def _annotate_namespace(
    manifests: list[dict[str, Any]], spec: ClusterSpec, record: ClusterRecord
) -> None:
    """Keep the spec, the estimate and the quota figure on the namespace, so any machine can
    rebuild the record from the cluster alone."""
    for doc in manifests:
        if doc["kind"] == "Namespace":
            doc["metadata"].setdefault("annotations", {}).update(
                {
                    SPEC_ANNOTATION: json.dumps(spec.to_dict(), sort_keys=True),
                    COST_ANNOTATION: f"{record.usd_per_hour:.4f}",
                    VCPUS_ANNOTATION: f"{record.vcpus:g}",
                }
            )


def _ready_scheduler_pod(api: Any, name: str) -> str | None:
    """The name of a Ready scheduler pod of cluster ``name``, or None."""
    selector = f"dask.org/cluster-name={name},dask.org/component=scheduler"
    pods = apply.list_objects(api, "v1", "Pod", name, label_selector=selector)
    ready = [p for p in pods if pod_ready(p)]
    return ready[0]["metadata"]["name"] if ready else None


def pods_refused(replica_sets: list[dict[str, Any]]) -> str | None:
    """Why Kubernetes refuses to create a cluster's pods, from its ReplicaSets (the operator's
    Deployments make them), or None. The ReplicaSet controller reports a refused create (an
    exceeded ResourceQuota, a Pod Security violation) as a ``ReplicaFailure`` condition and
    retries forever; waiting longer would not help. Pure.

    >>> pods_refused([{"metadata": {"name": "c-scheduler-5d8"}, "status": {"conditions": [
    ...     {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
    ...      "message": "pods is forbidden: exceeded quota: recc-quota"}]}}])
    'ReplicaSet c-scheduler-5d8: pods is forbidden: exceeded quota: recc-quota'
    >>> pods_refused([{"metadata": {"name": "c-scheduler-5d8"}, "status": {}}]) is None
    True
    """
    for replica_set in replica_sets:
        for condition in (replica_set.get("status") or {}).get("conditions") or []:
            if condition.get("type") == "ReplicaFailure" and condition.get("status") == "True":
                name = replica_set["metadata"]["name"]
                return f"ReplicaSet {name}: {condition.get('message') or condition.get('reason')}"
    return None


def _check_pods_admitted(conn: Connection, name: str) -> None:
    """Raise :class:`BackendError` when Kubernetes refuses cluster ``name``'s pods."""
    why = pods_refused(apply.list_objects(conn.api, "apps/v1", "ReplicaSet", name))
    if why is not None:
        raise BackendError(
            f"Kubernetes refuses to create the pods of cluster {name}: {why}. If it is the "
            f"cluster's ResourceQuota (kubectl describe resourcequota -n {name}): it is sized "
            "from the plan, so a platform policy that adds to each pod's requests (a sidecar, "
            "a LimitRange) makes it too small; ask your platform team"
        )


def pod_ready(pod: dict[str, Any]) -> bool:
    """Whether the kubelet reports ``pod`` Ready (its readiness probes pass), not merely
    Running (its processes started), and it is not being deleted.

    >>> pod_ready({"status": {"phase": "Running", "conditions": [
    ...     {"type": "Ready", "status": "False"}]}})
    False
    """
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _node_ready(node: dict[str, Any]) -> bool:
    conditions = (node.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
