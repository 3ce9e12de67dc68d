"""The dask-kubernetes operator, emulated: DaskClusters in the fake API become local processes.

:class:`DaskOperator` watches the fake API server (through its hooks) and reconciles, level
triggered, what the real operator and the kubelet would do, with real processes instead of
containers:

- a new ``DaskCluster`` gets ``status.phase`` Created, then a ``<name>-default``
  ``DaskWorkerGroup`` from ``spec.worker`` and the ``<name>-scheduler`` Service from
  ``spec.scheduler.service`` (phase Pending); changes of ``spec.worker.replicas`` are copied to
  that worker group, as the operator does;
- the scheduler is a Pod and a ``dask scheduler`` process on 127.0.0.1 with a free port,
  ``tls://`` only, using the certificates of the TLS Secret mounted in the pod spec (or
  ``<name>-tls``); once it listens, the Service's ``tcp-comm`` and ``http-dashboard`` ports
  become the ports really bound, a LoadBalancer Service gets ``status.loadBalancer.ingress``
  ``[{ip: 127.0.0.1}]`` (other types get none, as in a cluster), and the DaskCluster goes
  Running;
- each ``DaskWorkerGroup`` runs ``spec.worker.replicas`` Pods, each a ``dask worker`` (with a
  nanny) whose ``--nthreads``, ``--memory-limit`` and ``--resources`` come from the worker
  container's arguments (Kubernetes ``$(VAR)`` expansion applied; container ``resources.limits``
  when the arguments do not say) and whose environment is the container's ``env``. Fewer
  replicas retire the newest workers through the scheduler, then stop them;
- deleting the DaskCluster (or its namespace) stops its processes and deletes what the
  operator made (ownerReference garbage collection); with ``spec.idleTimeout`` set, a scheduler
  that exits on its own (idle) deletes its DaskCluster, as the operator's autoshutdown does.

A Pod starts only when the kubelet could start it: every Secret it mounts and its
ServiceAccount exist, and (unless ``require_nodes=False``) a Ready Node matches its
``nodeSelector`` and has no ``NoSchedule``/``NoExecute`` taint it does not tolerate; until then
it is Pending with the reason in its status. A process that exits unexpectedly leaves its Pod
Failed (not restarted; its log is named in the Pod's status message). Paths under a Secret
volume's ``mountPath`` in the container's arguments and environment are rewritten to the local
copy of that Secret (files 0600), so e.g. ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE`` works.
Processes log to files under the operator's directory, never to the terminal.

Not modelled: Deployments/ReplicaSets (Pods are made directly), restarts, resource requests
against node capacity, probes, NFS and other non-Secret volumes.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recc.procs import alive, scheduler_args, spawn, stop, tls_args
from recc.testing.fake_kube import FakeKubeError, FakeKubeServer
from recc.tls import TLSFiles
from recc.units import parse_cpu, parse_memory

logger = logging.getLogger(__name__)

CLUSTER_LABEL = "dask.org/cluster-name"
COMPONENT_LABEL = "dask.org/component"
WORKERGROUP_LABEL = "dask.org/workergroup-name"
_WATCHED = ("DaskCluster", "DaskWorkerGroup", "Secret", "ServiceAccount", "Node", "Namespace")
_TLS_KEYS = ("ca.crt", "tls.crt", "tls.key")


@dataclass(frozen=True)
class EmulatedProcess:
    """One running process that stands for a Pod of an emulated Dask cluster."""

    namespace: str
    cluster: str
    component: str  # "scheduler" or "worker"
    pod: str
    pid: int
    log: Path


@dataclass
class _Member:
    """One Pod and the process standing for it."""

    pod: str
    component: str
    group: str | None
    log: Path
    phase: str = "Pending"  # Pending -> Starting (scheduler only) -> Running | Failed
    node: str | None = None
    ref: dict[str, Any] | None = None
    started: float = 0.0
    reason: str = ""


@dataclass
class _Cluster:
    namespace: str
    name: str
    uid: str
    directory: Path
    scheduler: _Member | None = None
    address: str | None = None
    dashboard_port: int | None = None
    workers: dict[str, list[_Member]] = field(default_factory=dict)
    # DaskCluster spec.worker.replicas last copied to the default worker group: only a change
    # is copied, so scaling that group directly (as KubeCluster.scale does) is not undone.
    default_replicas: int | None = None

    def members(self) -> list[_Member]:
        return [m for m in [self.scheduler, *sum(self.workers.values(), [])] if m is not None]


class DaskOperator:
    """Realises the fake's DaskClusters as local processes (see the module docstring).

    Example
    -------
    .. code-block:: python

        with fake_kubernetes() as kube:
            operator = DaskOperator(kube, Path(tmp), require_nodes=False).start()
            try:
                ...  # create a Secret and a DaskCluster; its Service gets an address
            finally:
                operator.stop()  # stops every process it started
    """

    def __init__(
        self,
        kube: FakeKubeServer,
        directory: Path,
        *,
        require_nodes: bool = True,
        start_timeout: float = 60.0,
        interval: float = 0.2,
    ) -> None:
        self.kube = kube
        self.directory = Path(directory)
        self.require_nodes = require_nodes
        self.start_timeout = start_timeout
        self.interval = interval
        self.errors: list[str] = []
        """Problems met while realising clusters (also logged), newest last."""
        self._clusters: dict[tuple[str, str], _Cluster] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._unhook: list[Callable[[], None]] = []

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> DaskOperator:
        """Watch the fake and reconcile in a daemon thread until :meth:`stop`."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.kube.pod_logs = self.pod_log
        for kind in _WATCHED:
            for event in ("created", "updated", "deleted"):
                self._unhook.append(self.kube.on(event, kind, lambda _obj: self._wake.set()))
        self._thread = threading.Thread(target=self._run, name="recc-dask-operator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop reconciling and stop every process this operator started (all at once)."""
        self._stopped.set()
        self._wake.set()
        for unhook in self._unhook:
            unhook()
        self._unhook.clear()
        self.kube.pod_logs = None
        if self._thread is not None:
            self._thread.join(timeout=60)
            self._thread = None
        with self._lock:
            refs = [m.ref for c in self._clusters.values() for m in c.members() if m.ref]
            self._clusters.clear()
        stop(refs)

    def processes(self) -> list[EmulatedProcess]:
        """The processes running now, scheduler first within each cluster."""
        with self._lock:
            return [
                EmulatedProcess(c.namespace, c.name, m.component, m.pod, m.ref["pid"], m.log)
                for c in self._clusters.values()
                for m in c.members()
                if m.ref and alive(m.ref)
            ]

    def pod_log(self, namespace: str, pod: str) -> str:
        """The output of the process standing for ``pod`` so far ("" when it has none)."""
        with self._lock:
            logs = [
                m.log
                for c in self._clusters.values()
                if c.namespace == namespace
                for m in c.members()
                if m.pod == pod
            ]
        return logs[0].read_text(errors="replace") if logs and logs[0].is_file() else ""

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                with self._lock:
                    self.reconcile()
            except Exception as e:  # keep the operator alive, as a controller would
                logger.exception("emulated dask operator: reconcile failed")
                self._error(f"reconcile failed: {e!r}")

    def _error(self, message: str) -> None:
        logger.warning("emulated dask operator: %s", message)
        self.errors.append(message)

    # -- reconcile ------------------------------------------------------------------------

    def reconcile(self) -> None:
        """One pass over every DaskCluster and DaskWorkerGroup in the fake."""
        wanted = {
            (o["metadata"]["namespace"], o["metadata"]["name"]): o
            for o in self.kube.objects("daskclusters")
        }
        for key, cluster in list(self._clusters.items()):
            obj = wanted.get(key)
            if obj is None or obj["metadata"]["uid"] != cluster.uid:
                self._tear_down(cluster)
                del self._clusters[key]
        for key, obj in wanted.items():
            if self._stopped.is_set():
                return
            cluster = self._clusters.get(key)
            if cluster is None:
                cluster = self._clusters[key] = self._adopt(obj)
            self._reconcile_cluster(cluster, obj)

    def _adopt(self, obj: dict[str, Any]) -> _Cluster:
        """The operator's create handlers: phase, default worker group, scheduler Service."""
        meta = obj["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        cluster = _Cluster(
            namespace,
            name,
            meta["uid"],
            self.directory / f"{namespace}.{name}.{meta['uid'][:8]}",
        )
        (cluster.directory / "logs").mkdir(parents=True, exist_ok=True)
        labels = _owned_labels(obj)
        self._ignore_missing(
            self.kube.create_object,
            {
                "apiVersion": "kubernetes.dask.org/v1",
                "kind": "DaskWorkerGroup",
                "metadata": {
                    "name": f"{name}-default",
                    "namespace": namespace,
                    "labels": labels | {COMPONENT_LABEL: "workergroup"},
                },
                "spec": {"cluster": name, "worker": obj["spec"]["worker"]},
            },
        )
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": f"{name}-scheduler",
                "namespace": namespace,
                "labels": labels | {COMPONENT_LABEL: "scheduler"},
            },
            "spec": obj["spec"]["scheduler"].get("service") or {},
        }
        self._ignore_missing(self.kube.create_object, service)
        self._set_phase(cluster, "Pending")
        return cluster

    def _reconcile_cluster(self, cluster: _Cluster, obj: dict[str, Any]) -> None:
        self._sync_default_replicas(cluster, obj)
        self._reconcile_scheduler(cluster, obj)
        groups = {
            g["metadata"]["name"]: g
            for g in self.kube.objects("daskworkergroups", cluster.namespace)
            if g["spec"].get("cluster") == cluster.name
        }
        for name in list(cluster.workers):
            if name not in groups:
                self._remove(cluster, cluster.workers.pop(name))
        if cluster.scheduler is None or cluster.scheduler.phase != "Running":
            return
        for name, group in groups.items():
            self._reconcile_group(cluster, obj, name, group)

    def _sync_default_replicas(self, cluster: _Cluster, obj: dict[str, Any]) -> None:
        """The operator's replica handler: a changed ``spec.worker.replicas`` of the
        DaskCluster scales its default worker group."""
        replicas = obj["spec"]["worker"].get("replicas")
        if cluster.default_replicas is None or replicas == cluster.default_replicas:
            cluster.default_replicas = replicas
            return
        cluster.default_replicas = replicas
        self._ignore_missing(
            self.kube.patch_object,
            "daskworkergroups",
            f"{cluster.name}-default",
            {"spec": {"worker": {"replicas": replicas}}},
            cluster.namespace,
        )

    # -- the scheduler ---------------------------------------------------------------------

    def _reconcile_scheduler(self, cluster: _Cluster, obj: dict[str, Any]) -> None:
        pod_spec = obj["spec"]["scheduler"]["spec"]
        member = cluster.scheduler
        if member is None:
            pod = f"{cluster.name}-scheduler-{uuid.uuid4().hex[:5]}"
            member = cluster.scheduler = _Member(
                pod, "scheduler", None, cluster.directory / "logs" / f"{pod}.log"
            )
            self._create_pod(cluster, obj, member, pod_spec, {})
        if member.phase == "Pending":
            self._try_start_scheduler(cluster, obj, member, pod_spec)
        elif member.phase == "Starting":
            self._check_scheduler_started(cluster, obj, member)
        elif member.phase == "Running" and not alive(member.ref):
            if obj["spec"].get("idleTimeout"):
                # The operator's autoshutdown: an idle cluster's DaskCluster is deleted.
                self._ignore_missing(
                    self.kube.delete_object, "daskclusters", cluster.name, cluster.namespace
                )
                return
            self._fail(cluster, member, "the scheduler process exited")
            self._set_phase(cluster, "Error")
        elif member.phase == "Running" and not self._node_exists(member.node):
            self._fail(cluster, member, f"node {member.node} went away")
            self._set_phase(cluster, "Error")

    def _try_start_scheduler(
        self, cluster: _Cluster, obj: dict[str, Any], member: _Member, pod_spec: dict
    ) -> None:
        ready = self._ready(cluster, member, pod_spec)
        if ready is None:
            return
        tls, node = ready
        container = _container(pod_spec, "scheduler")
        env, args = self._container_env_args(cluster, pod_spec, container, {})
        scheduler_file = cluster.directory / "scheduler.json"
        scheduler_file.unlink(missing_ok=True)
        command = scheduler_args(scheduler_file, tls)
        idle = _option(args, "--idle-timeout")
        if idle is None and obj["spec"].get("idleTimeout"):
            idle = f"{obj['spec']['idleTimeout']}s"
        if idle is not None:
            command += ["--idle-timeout", idle]
        member.ref = spawn(command, member.log, env, cluster.directory)
        member.node, member.phase, member.started = node, "Starting", time.monotonic()
        self._pod_status(cluster, member, "Pending", "ContainerCreating", node)

    def _check_scheduler_started(
        self, cluster: _Cluster, obj: dict[str, Any], member: _Member
    ) -> None:
        info = _read_json(cluster.directory / "scheduler.json")
        if info is None:
            if not alive(member.ref):
                self._fail(cluster, member, "the scheduler exited at start")
                self._set_phase(cluster, "Error")
            elif time.monotonic() - member.started > self.start_timeout:
                stop([member.ref])
                self._fail(cluster, member, f"the scheduler did not start in {self.start_timeout}s")
                self._set_phase(cluster, "Error")
            return
        cluster.address = info["address"]
        cluster.dashboard_port = info.get("services", {}).get("dashboard")
        member.phase = "Running"
        self._pod_status(cluster, member, "Running", "", member.node)
        self._publish_service(cluster, obj)
        self._set_phase(cluster, "Running")

    def _publish_service(self, cluster: _Cluster, obj: dict[str, Any]) -> None:
        """Point the scheduler Service at the ports the scheduler really bound."""
        spec = dict(obj["spec"]["scheduler"].get("service") or {})
        comm_port = int(cluster.address.rsplit(":", 1)[1])
        bound = {"tcp-comm": comm_port, "http-dashboard": cluster.dashboard_port}
        ports = spec.get("ports") or [
            {"name": "tcp-comm", "protocol": "TCP", "port": 8786},
            {"name": "http-dashboard", "protocol": "TCP", "port": 8787},
        ]
        spec["ports"] = [
            p | {"port": bound[p.get("name")], "targetPort": bound[p.get("name")]}
            if bound.get(p.get("name"))
            else p
            for p in ports
        ]
        load_balancer = spec.get("type") == "LoadBalancer"
        status = {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]} if load_balancer else {}}
        name = f"{cluster.name}-scheduler"
        current = self.kube.get_object("services", name, cluster.namespace)
        if current is None:
            return  # deleted by someone: the operator would recreate it; the client will see
        current["spec"] = spec
        current["status"] = status
        self._ignore_missing(self.kube.update_object, current)

    # -- workers ------------------------------------------------------------------------

    def _reconcile_group(
        self, cluster: _Cluster, obj: dict[str, Any], name: str, group: dict[str, Any]
    ) -> None:
        members = cluster.workers.setdefault(name, [])
        stale = []
        for member in members:
            if member.phase == "Running" and not alive(member.ref):
                self._fail(cluster, member, "the worker process exited")
            elif member.phase == "Running" and not self._node_exists(member.node):
                stale.append(member)  # evicted with its node; a replacement is made below
        if stale:
            self._remove(cluster, stale)
            members[:] = [m for m in members if m not in stale]
        replicas = int(group["spec"]["worker"].get("replicas", 1))
        pod_spec = group["spec"]["worker"]["spec"]
        while len(members) < replicas:
            pod = f"{name}-worker-{uuid.uuid4().hex[:10]}"
            member = _Member(pod, "worker", name, cluster.directory / "logs" / f"{pod}.log")
            members.append(member)
            self._create_pod(cluster, obj, member, pod_spec, {WORKERGROUP_LABEL: name})
        if len(members) > replicas:
            # Pending and failed ones first, then the newest (the operator retires LIFO).
            order = sorted(members, key=lambda m: (m.phase == "Running", m.started))
            surplus = order[: len(members) - replicas]
            self._remove(cluster, surplus, retire=True)
            members[:] = [m for m in members if m not in surplus]
        for member in members:
            if member.phase == "Pending":
                self._try_start_worker(cluster, member, pod_spec)

    def _ready(
        self, cluster: _Cluster, member: _Member, pod_spec: dict
    ) -> tuple[TLSFiles, Any] | None:
        """(TLS files, node) when the pod can start; otherwise mark it Pending and say None."""
        blocker, node = self._placement(cluster, pod_spec)
        try:
            tls = self._tls(cluster, pod_spec)
        except _NotReady as e:
            blocker = blocker or str(e)
        if blocker:
            self._pod_pending(cluster, member, blocker)
            return None
        return tls, node

    def _try_start_worker(self, cluster: _Cluster, member: _Member, pod_spec: dict) -> None:
        ready = self._ready(cluster, member, pod_spec)
        if ready is None:
            return
        tls, node = ready
        container = _container(pod_spec, "worker")
        extra_env = {"DASK_WORKER_NAME": member.pod, "DASK_SCHEDULER_ADDRESS": cluster.address}
        env, args = self._container_env_args(cluster, pod_spec, container, extra_env)
        limits = (container.get("resources") or {}).get("limits") or {}
        nthreads = _option(args, "--nthreads") or (
            str(max(1, int(parse_cpu(limits["cpu"])))) if "cpu" in limits else "1"
        )
        memory = _option(args, "--memory-limit") or (
            str(_quantity_bytes(limits["memory"])) if "memory" in limits else "auto"
        )
        command = [
            "distributed.cli.dask_worker",
            cluster.address,
            "--name",
            member.pod,
            "--nthreads",
            nthreads,
            "--memory-limit",
            memory,
            "--nanny",
            "--host",
            "127.0.0.1",
            "--dashboard-address",
            "127.0.0.1:0",
            "--death-timeout",
            "60",
            "--local-directory",
            str(cluster.directory / "work"),
            *tls_args(tls),
        ]
        resources = _option(args, "--resources")
        if resources:
            command += ["--resources", resources]
        member.ref = spawn(command, member.log, env, cluster.directory)
        member.node, member.phase, member.started = node, "Running", time.monotonic()
        self._pod_status(cluster, member, "Running", "", node)

    def _remove(self, cluster: _Cluster, members: list[_Member], retire: bool = False) -> None:
        """Retire (optionally) and stop the processes of ``members``, then delete their Pods."""
        running = [m for m in members if m.ref and alive(m.ref)]
        if retire and running and cluster.address:
            self._retire(cluster, [m.pod for m in running])
        stop([m.ref for m in running])
        for member in members:
            self._ignore_missing(self.kube.delete_object, "pods", member.pod, cluster.namespace)

    def _retire(self, cluster: _Cluster, names: list[str]) -> None:
        """Move the workers' data elsewhere first, as the operator does before deleting them."""
        from distributed import Client

        security = TLSFiles.in_dir(cluster.directory / "tls").security()
        try:
            with Client(cluster.address, security=security, timeout=10) as client:
                client.retire_workers(names=names, close_workers=True)
        except (OSError, TimeoutError) as e:  # unreachable scheduler: stopping is all we can do
            self._error(f"could not retire {names} in {cluster.name}: {e!r}")

    def _tear_down(self, cluster: _Cluster) -> None:
        """The DaskCluster is gone: stop its processes and delete what it owned."""
        stop([m.ref for m in cluster.members() if m.ref])
        namespace = cluster.namespace
        for member in cluster.members():
            self._ignore_missing(self.kube.delete_object, "pods", member.pod, namespace)
        self._ignore_missing(
            self.kube.delete_object, "services", f"{cluster.name}-scheduler", namespace
        )
        for group in self.kube.objects("daskworkergroups", namespace):
            if group["spec"].get("cluster") == cluster.name:
                self._ignore_missing(
                    self.kube.delete_object,
                    "daskworkergroups",
                    group["metadata"]["name"],
                    namespace,
                )

    # -- what a pod needs -----------------------------------------------------------------

    def _placement(self, cluster: _Cluster, pod_spec: dict) -> tuple[str | None, str | None]:
        """(why the Pod cannot start yet, or None; the Node it runs on)."""
        for volume in pod_spec.get("volumes") or []:
            secret = (volume.get("secret") or {}).get("secretName")
            if secret and self.kube.get_object("secrets", secret, cluster.namespace) is None:
                return (
                    f'MountVolume.SetUp failed for volume "{volume["name"]}": '
                    f'secret "{secret}" not found',
                    None,
                )
        account = pod_spec.get("serviceAccountName") or pod_spec.get("serviceAccount")
        if (
            account
            and account != "default"
            and self.kube.get_object("serviceaccounts", account, cluster.namespace) is None
        ):
            return (
                f"error looking up service account {cluster.namespace}/{account}: "
                f'serviceaccount "{account}" not found',
                None,
            )
        if not self.require_nodes:
            return None, None
        nodes = self.kube.objects("nodes")
        fitting = [n for n in nodes if _ready(n) and _schedulable(n, pod_spec)]
        if not fitting:
            return (
                f"0/{len(nodes)} nodes are available: none is Ready, matches the Pod's node "
                f"selector {pod_spec.get('nodeSelector') or {}} and has only tolerated taints",
                None,
            )
        # Spread pods over the fitting nodes, as the scheduler's default scoring tends to.
        load = Counter(m.node for c in self._clusters.values() for m in c.members() if m.node)
        chosen = min(fitting, key=lambda n: (load[n["metadata"]["name"]], n["metadata"]["name"]))
        return None, chosen["metadata"]["name"]

    def _node_exists(self, node: str | None) -> bool:
        return node is None or self.kube.get_object("nodes", node) is not None

    def _tls(self, cluster: _Cluster, pod_spec: dict) -> TLSFiles:
        """The cluster's certificates, from the TLS Secret the pod mounts (else <name>-tls),
        copied to local files that the processes and the operator's own client use."""
        names = [(v.get("secret") or {}).get("secretName") for v in pod_spec.get("volumes") or []]
        for secret_name in [n for n in names if n] + [f"{cluster.name}-tls"]:
            data = _secret_data(self.kube.get_object("secrets", secret_name, cluster.namespace))
            if all(data.get(key) for key in _TLS_KEYS):
                tls = TLSFiles.in_dir(cluster.directory / "tls")
                _write_files(
                    tls.ca_file.parent,
                    {
                        tls.ca_file.name: data["ca.crt"],
                        tls.cert_file.name: data["tls.crt"],
                        tls.key_file.name: data["tls.key"],
                    },
                )
                return tls
        raise _NotReady(
            f"no Secret holding {', '.join(_TLS_KEYS)} is mounted, nor is there a Secret "
            f"{cluster.name}-tls"
        )

    def _container_env_args(
        self, cluster: _Cluster, pod_spec: dict, container: dict, extra: dict[str, str]
    ) -> tuple[dict[str, str], list[str]]:
        """The process environment and the container's expanded arguments, with Secret mount
        paths rewritten to local copies."""
        mounts: dict[str, str] = {}
        volumes = {v["name"]: v for v in pod_spec.get("volumes") or []}
        for mount in container.get("volumeMounts") or []:
            secret = (volumes.get(mount["name"], {}).get("secret") or {}).get("secretName")
            if secret:
                data = _secret_data(self.kube.get_object("secrets", secret, cluster.namespace))
                local = cluster.directory / "volumes" / mount["name"]
                _write_files(local, data)
                mounts[mount["mountPath"].rstrip("/")] = str(local)
        container_env = {
            e["name"]: e.get("value", "") for e in container.get("env") or [] if "name" in e
        } | extra

        def local(text: str) -> str:
            for path, replacement in mounts.items():
                text = re.sub(rf"{re.escape(path)}(?=/|$)", replacement, text)
            return text

        container_env = {k: local(v) for k, v in container_env.items()}
        args = [
            local(_expand(a, container_env))
            for a in [*(container.get("command") or []), *(container.get("args") or [])]
        ]
        return {**os.environ, **container_env}, args

    # -- objects ------------------------------------------------------------------------

    def _create_pod(
        self,
        cluster: _Cluster,
        obj: dict[str, Any],
        member: _Member,
        pod_spec: dict,
        labels: dict[str, str],
    ) -> None:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": member.pod,
                "namespace": cluster.namespace,
                "labels": _owned_labels(obj) | {COMPONENT_LABEL: member.component} | labels,
            },
            "spec": pod_spec,
            "status": {"phase": "Pending"},
        }
        try:
            self.kube.create_object(pod)
        except FakeKubeError as e:  # e.g. invalid under the Pod schema: run without the object
            if e.code != 404:
                self._error(f"pod {member.pod} could not be stored: {e}")

    def _pod_pending(self, cluster: _Cluster, member: _Member, reason: str) -> None:
        if member.reason != reason:
            member.reason = reason
            self._pod_status(cluster, member, "Pending", reason, None)

    def _fail(self, cluster: _Cluster, member: _Member, why: str) -> None:
        member.phase = "Failed"
        self._pod_status(cluster, member, "Failed", f"{why}; see {member.log}", member.node)
        self._error(f"{cluster.namespace}/{member.pod}: {why}; see {member.log}")

    def _pod_status(
        self, cluster: _Cluster, member: _Member, phase: str, message: str, node: str | None
    ) -> None:
        status: dict[str, Any] = {"phase": phase}
        if message:
            status["message"] = message
        if phase == "Running":
            status |= {"podIP": "127.0.0.1", "hostIP": "127.0.0.1"}
        patch: dict[str, Any] = {"status": status}
        if node:
            patch["spec"] = {"nodeName": node}
        self._ignore_missing(self.kube.patch_object, "pods", member.pod, patch, cluster.namespace)

    def _set_phase(self, cluster: _Cluster, phase: str) -> None:
        self._ignore_missing(
            self.kube.patch_object,
            "daskclusters",
            cluster.name,
            {"status": {"phase": phase}},
            cluster.namespace,
        )

    def _ignore_missing(self, call: Callable[..., Any], *args: Any) -> None:
        """Make a change, accepting that the object (or its namespace) went away or exists."""
        try:
            call(*args)
        except FakeKubeError as e:
            if e.code not in (404, 409):
                self._error(f"{getattr(call, '__name__', call)}{args[:3]}: {e}")


class _NotReady(Exception):
    """The pod cannot start yet (a Secret it needs is missing or incomplete)."""


# -- helpers (pure, or local files) ------------------------------------------------------


def _owned_labels(obj: dict[str, Any]) -> dict[str, str]:
    return dict(obj["metadata"].get("labels") or {}) | {CLUSTER_LABEL: obj["metadata"]["name"]}


def _container(pod_spec: dict, name: str) -> dict[str, Any]:
    containers = pod_spec["containers"]
    return next((c for c in containers if c.get("name") == name), containers[0])


def _secret_data(secret: dict[str, Any] | None) -> dict[str, str]:
    """A Secret's values as text (``data`` is base64, ``stringData`` plain and wins)."""
    if secret is None:
        return {}
    data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
    return data | dict(secret.get("stringData") or {})


def _write_files(directory: Path, files: dict[str, str]) -> dict[str, Path]:
    """Write each file 0600 in ``directory`` (0700), as a kubelet mounts a Secret."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    paths = {}
    for name, text in files.items():
        path = directory / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        paths[name] = path
    return paths


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, ValueError):  # not written yet, or being written
        return None


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion of container arguments (``$$`` is a literal ``$``).

    >>> _expand("--name $(NAME) $(UNSET) $$(NAME)", {"NAME": "w-1"})
    '--name w-1 $(UNSET) $(NAME)'
    """

    def replace(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR.sub(replace, text)


def _option(args: list[str], name: str) -> str | None:
    """The value of ``name`` in ``args`` (``--x v`` or ``--x=v``), else None.

    >>> _option(["dask", "worker", "--nthreads", "2", "--memory-limit=1GiB"], "--memory-limit")
    '1GiB'
    """
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _quantity_bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes (a bare number is bytes there)."""
    text = str(quantity)
    return int(text) if text.isdigit() else parse_memory(text)


def _ready(node: dict[str, Any]) -> bool:
    return any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in node.get("status", {}).get("conditions") or []
    )


def _schedulable(node: dict[str, Any], pod_spec: dict) -> bool:
    """Whether the Pod's nodeSelector matches and it tolerates every hard taint of the node."""
    labels = node["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (pod_spec.get("nodeSelector") or {}).items()):
        return False
    tolerations = pod_spec.get("tolerations") or []
    return all(
        any(_tolerates(t, taint) for t in tolerations)
        for taint in node.get("spec", {}).get("taints") or []
        if taint.get("effect") in ("NoSchedule", "NoExecute")
    )


def _tolerates(toleration: dict[str, Any], taint: dict[str, Any]) -> bool:
    if toleration.get("effect") and toleration["effect"] != taint.get("effect"):
        return False
    if toleration.get("operator") == "Exists":
        return not toleration.get("key") or toleration["key"] == taint.get("key")
    return toleration.get("key") == taint.get("key") and toleration.get("value", "") == taint.get(
        "value", ""
    )
