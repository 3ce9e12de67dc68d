"""The harvester on the EKS backend: discovery from tags and labels, the schedulers' answers,
locks and memory in Kubernetes, and ``recc protect`` for EKS clusters.

Discovery costs a handful of list calls for the whole platform, not calls per cluster:

- namespaces labelled ``app.kubernetes.io/managed-by=recc`` (one list; the namespace's
  annotations carry owner, creation time, spec and $/h);
- launch templates filtered on the tag ``recc:managed-by=recc`` (one paginated describe, tags
  included);
- node group *names* (``eks:ListNodegroups``, paginated). A node group is RECC's
  ``<cluster>-<group>``: a name that a known cluster's namespace or launch template accounts
  for needs no describe. Only names nothing accounts for (candidate orphans, and the
  platform's own node groups) and the node groups of clusters that lost their namespace are
  described, for their tags. Every delete still checks the tags itself.
- DaskClusters, scheduler Services and scheduler Pods: one list each across namespaces.

Per live cluster the harvester then reads its TLS Secret and asks its scheduler (load
balancer, else a port-forward through the API server). A cluster is *unreachable* when its
DaskCluster or scheduler pod is gone or not running, or the pod is not Ready; a Ready pod that
does not answer the harvester is kept (the problem may be the harvester's network).

Locks (``recc-harvest-lock-<cluster>``) and memory (``recc-harvest-memory``) are ConfigMaps in
the harvester's namespace (``recc.eks.system-namespace``, default ``recc``): creating a
ConfigMap is atomic, so two harvesters never reap the same cluster at once, and an expired lock
(a harvester that died) is taken over with optimistic concurrency.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import kubernetes.client
from botocore.exceptions import BotoCoreError, ClientError
from distributed.security import Security
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from recc import config, nodegroups
from recc.backends.base import Backend
from recc.backends.eks import COST_ANNOTATION, DASK_GROUP, SPEC_ANNOTATION
from recc.backends.eks_platform import Connection, tag_map
from recc.errors import BackendError, ClusterNotFound
from recc.harvest.evidence import Observation, SchedulerEvidence
from recc.harvest.locks import harvester_identity, holder_name, lock_wait
from recc.harvest.observe import (
    expiry,
    interrupted,
    probe_timeout,
    unreachable_update,
)
from recc.harvest.probe import Unanswered, ask_all
from recc.harvest.protect import Protection, protection_of
from recc.kube import apply
from recc.kube.apply import Ref
from recc.kube.connect import (
    COMM_PORT_NAME,
    PortForwarder,
    kubernetes_opener,
    load_balancer_host,
    scheduler_service,
    service_ports,
    tcp_reachable,
)
from recc.pricing import PriceBook
from recc.tags import (
    CLUSTER_LABEL,
    CLUSTER_TAG,
    MANAGED_BY_LABEL,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    PROTECT_LABEL,
    PROTECT_UNTIL_TAG,
    is_managed,
    parse_rfc3339,
    rfc3339,
)
from recc.units import parse_duration, seconds

logger = logging.getLogger(__name__)

PROTECT_UNTIL_ANNOTATION = "recc.io/protect-until"
LOCK_PREFIX = "recc-harvest-lock-"
MEMORY_NAME = "recc-harvest-memory"
_MANAGED = f"{MANAGED_BY_LABEL}={MANAGED_BY_VALUE}"
_SCHEDULER = f"dask.org/component=scheduler,{_MANAGED}"
# Harvester objects are part of the platform, never managed-by=recc (that marks reapables).
_HARVESTER_LABELS = {
    "app.kubernetes.io/part-of": "recc",
    "app.kubernetes.io/component": "harvester",
}
_IDLE_SHUTDOWN = ("idle-timeout-exceeded", "Scheduler closing after being idle")
# What a failed Kubernetes or AWS call can raise (callers translate it into BackendError).
_CALL_ERRORS = (ApiException, ClientError, BotoCoreError, HTTPError, OSError)


def system_namespace() -> str:
    """The harvester's own namespace (``recc.eks.system-namespace``, default ``recc``)."""
    return config.get("eks.system-namespace") or "recc"


# -- what exists ------------------------------------------------------------------------------


@dataclass
class Parts:
    """The resources of one cluster found by tags and labels.

    ``nodegroups`` maps name -> description, or None for a node group known by name only.
    ``groups`` are the worker groups the cluster has or had (node group = ``<cluster>-<g>``).
    """

    cluster: str
    namespace: dict[str, Any] | None = None
    launch_templates: dict[str, dict[str, Any]] = field(default_factory=dict)
    nodegroups: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    groups: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return bool(self.namespace or self.launch_templates or self.nodegroups)

    def expected_nodegroups(self) -> set[str]:
        """The node group names a complete cluster with these groups has."""
        return {f"{self.cluster}-{g}" for g in self.groups} | set(self.launch_templates)

    def present(self) -> tuple[str, ...]:
        """The parts that exist, for people."""
        found = [f"namespace {self.cluster}"] if self.namespace is not None else []
        found += [f"node group {n}" for n in sorted(self.nodegroups)]
        return (*found, *(f"launch template {n}" for n in sorted(self.launch_templates)))

    def missing(self) -> tuple[str, ...]:
        """The parts a complete cluster has and this one lacks."""
        names = sorted({f"{self.cluster}-{g}" for g in self.groups})
        gone = [] if self.namespace is not None else [f"namespace {self.cluster}"]
        gone += [f"node group {n}" for n in names if n not in self.nodegroups]
        return (*gone, *(f"launch template {n}" for n in names if n not in self.launch_templates))


def _meta(obj: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict((obj or {}).get("metadata") or {})


def _spec_groups(namespace: Mapping[str, Any] | None) -> set[str]:
    """Worker group names from the spec the namespace carries (default + extra groups)."""
    text = (_meta(namespace).get("annotations") or {}).get(SPEC_ANNOTATION)
    if not text:
        return set()
    spec = json.loads(text)
    return {"default", *(g["name"] for g in spec.get("worker_groups") or [])}


def _group_of(cluster: str, resource_name: str) -> str | None:
    prefix = f"{cluster}-"
    return resource_name[len(prefix) :] if resource_name.startswith(prefix) else None


def discover(conn: Connection, names: Collection[str] | None = None) -> dict[str, Parts]:
    """Every RECC cluster on the platform (or those in ``names``), from tags and labels.

    Raises :class:`BackendError` when any listing fails: a cluster seen only in part would look
    orphaned, so nothing is decided on a partial view.
    """
    try:
        if names is not None and len(names) == 1:
            [name] = names
            return {name: parts} if (parts := _discover_one(conn, name)) else {}
        found = _discover_all(conn)
    except _CALL_ERRORS as e:
        raise BackendError(f"cannot list RECC's resources (nothing was decided): {e}") from e
    return found if names is None else {n: p for n, p in found.items() if n in names}


def _discover_all(conn: Connection) -> dict[str, Parts]:
    found: dict[str, Parts] = {}
    for ns in apply.list_objects(conn.api, "v1", "Namespace", label_selector=_MANAGED):
        name = _meta(ns)["name"]
        if (_meta(ns).get("labels") or {}).get(CLUSTER_LABEL) == name:
            parts = found.setdefault(name, Parts(name))
            parts.namespace = ns
            parts.groups |= _spec_groups(ns)
    for lt in _launch_templates(conn.ec2):
        cluster = tag_map(lt).get(CLUSTER_TAG)
        if cluster:
            parts = found.setdefault(cluster, Parts(cluster))
            parts.launch_templates[lt["LaunchTemplateName"]] = lt
            group = _group_of(cluster, lt["LaunchTemplateName"])
            if group:
                parts.groups.add(group)
    owners = {ng: p.cluster for p in found.values() for ng in p.expected_nodegroups()}
    unaccounted = []
    for page in conn.eks.get_paginator("list_nodegroups").paginate(
        clusterName=conn.platform.cluster_name
    ):
        for name in page["nodegroups"]:
            if name in owners:
                found[owners[name]].nodegroups[name] = None
            else:
                unaccounted.append(name)
    for name in unaccounted:  # candidate orphans, and node groups that are not RECC's
        _attribute(found, nodegroups.describe_nodegroup(conn.eks, conn.platform.cluster_name, name))
    for parts in found.values():
        if parts.missing():
            _confirm_missing(conn, parts)
        if parts.namespace is None:  # its tags are the only record left of owner, age, guard
            _describe_known(conn, parts)
    return found


def _launch_templates(ec2: Any) -> list[dict[str, Any]]:
    """RECC's launch templates, 200 a page (EC2's maximum: few calls for many clusters)."""
    filters = [{"Name": f"tag:{MANAGED_BY_TAG}", "Values": [MANAGED_BY_VALUE]}]
    pages = ec2.get_paginator("describe_launch_templates").paginate(
        Filters=filters, PaginationConfig={"PageSize": 200}
    )
    return [t for page in pages for t in page["LaunchTemplates"] if is_managed(tag_map(t))]


def _confirm_missing(conn: Connection, parts: Parts) -> None:
    """Look up each part a listing did not show, by name, before calling it gone: a listing
    that lags or is cut short must not make a working cluster look orphaned."""
    name = parts.cluster
    if parts.namespace is None:
        namespace = apply.read(conn.api, Ref("v1", "Namespace", name))
        labels = _meta(namespace).get("labels") or {}
        if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE and labels.get(CLUSTER_LABEL) == name:
            parts.namespace = namespace
    for group in sorted(parts.groups):
        resource = f"{name}-{group}"
        if resource not in parts.launch_templates:
            template = nodegroups.describe_launch_template(conn.ec2, resource)
            tags = tag_map(template or {})
            if template and is_managed(tags) and tags.get(CLUSTER_TAG) == name:
                parts.launch_templates[resource] = template
        if resource not in parts.nodegroups:
            described = nodegroups.describe_nodegroup(
                conn.eks, conn.platform.cluster_name, resource
            )
            tags = (described or {}).get("tags") or {}
            if described and is_managed(tags) and tags.get(CLUSTER_TAG) == name:
                parts.nodegroups[resource] = described


def _attribute(found: dict[str, Parts], described: dict[str, Any] | None) -> None:
    tags = (described or {}).get("tags") or {}
    cluster = tags.get(CLUSTER_TAG)
    if described is None or not cluster or not is_managed(tags):
        return  # gone meanwhile, or not RECC's: left alone
    parts = found.setdefault(cluster, Parts(cluster))
    parts.nodegroups[described["nodegroupName"]] = described
    group = _group_of(cluster, described["nodegroupName"])
    if group:
        parts.groups.add(group)


def _describe_known(conn: Connection, parts: Parts) -> None:
    for name, described in list(parts.nodegroups.items()):
        if described is None:
            described = nodegroups.describe_nodegroup(conn.eks, conn.platform.cluster_name, name)
            if described is None:
                del parts.nodegroups[name]
            else:
                parts.nodegroups[name] = described


def _discover_one(conn: Connection, name: str) -> Parts:
    """One cluster's parts: its namespace, its launch templates by tag, and its node groups by
    name prefix (described, to check their tags)."""
    parts = Parts(name)
    namespace = apply.read(conn.api, Ref("v1", "Namespace", name))
    labels = _meta(namespace).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE and labels.get(CLUSTER_LABEL) == name:
        parts.namespace = namespace
        parts.groups |= _spec_groups(namespace)
    for lt in nodegroups.find_launch_templates(conn.ec2, name):
        parts.launch_templates[lt["LaunchTemplateName"]] = lt
        parts.groups.add(_group_of(name, lt["LaunchTemplateName"]) or "default")
    for page in conn.eks.get_paginator("list_nodegroups").paginate(
        clusterName=conn.platform.cluster_name
    ):
        for ng in page["nodegroups"]:
            if ng.startswith(f"{name}-"):
                described = nodegroups.describe_nodegroup(conn.eks, conn.platform.cluster_name, ng)
                tags = (described or {}).get("tags") or {}
                if described and is_managed(tags) and tags.get(CLUSTER_TAG) == name:
                    _attribute({name: parts}, described)
    return parts


# -- from parts to an observation (pure) -----------------------------------------------------


Price = Callable[[str, bool], float]
"""$/h of one instance of a type, on spot (True) or on demand."""


def facts_from_parts(parts: Parts, price: Price | None = None) -> dict[str, Any]:
    """Observation fields from a cluster's parts: owner, age, timeouts, cost, protection and
    completeness. Pure (``price`` aside). Unreadable values give ``unreadable`` (the cluster
    is then kept). The $/h is the namespace's estimate; without a namespace, what the
    described node groups run now, priced with ``price``."""
    meta = _meta(parts.namespace)
    annotations = meta.get("annotations") or {}
    labels = meta.get("labels") or {}
    tag_sets = [tag_map(lt) for lt in parts.launch_templates.values()]
    tag_sets += [(ng or {}).get("tags") or {} for ng in parts.nodegroups.values() if ng]
    tags = tag_sets[0] if tag_sets else {}
    fact: dict[str, Any] = {
        "cluster": parts.cluster,
        "backend": "eks",
        "owner": annotations.get("recc.io/user") or tags.get("recc:user") or "unknown",
        "present": parts.present() if parts.missing() else (),
        "missing": parts.missing(),
        "details": {
            "namespace": parts.namespace is not None,
            "nodegroups": sorted(parts.nodegroups),
            "launch_templates": sorted(parts.launch_templates),
        },
    }
    try:
        created = annotations.get("recc.io/created-at") or tags.get("recc:created-at")
        fact["created_at"] = parse_rfc3339(created) if created else None
        spec = json.loads(annotations[SPEC_ANNOTATION]) if SPEC_ANNOTATION in annotations else {}
        idle = spec.get("idle_timeout") or annotations.get("recc.io/idle-timeout")
        idle = idle or tags.get("recc:idle-timeout")
        fact["idle_timeout"] = parse_duration(idle)
        expires = annotations.get("recc.io/expires-at") or tags.get("recc:expires-at")
        stated = None if expires in (None, "never") else parse_rfc3339(expires)
        fact["expires_at"] = expiry(
            fact["created_at"], parse_duration(spec.get("max_lifetime")), stated
        )
        if COST_ANNOTATION in annotations:
            fact["usd_per_hour"] = float(annotations[COST_ANNOTATION])
        elif price is not None:
            fact["usd_per_hour"] = _running_cost(parts, price)
        marks = [(labels.get(PROTECT_LABEL), annotations.get(PROTECT_UNTIL_ANNOTATION))]
        marks += [(t.get(PROTECT_LABEL), t.get(PROTECT_UNTIL_TAG)) for t in tag_sets]
        fact["protected"], fact["protected_until"] = _combined_protection(marks)
    except (ValueError, TypeError, KeyError) as e:
        fact["unreadable"] = f"its tags or labels could not be read: {e}"
    return fact


def _running_cost(parts: Parts, price: Price) -> float:
    """$/h of the instances the described node groups run now (desired size x price)."""
    total = 0.0
    for described in parts.nodegroups.values():
        if not described:
            continue
        size = int((described.get("scalingConfig") or {}).get("desiredSize") or 0)
        spot = described.get("capacityType") == "SPOT"
        total += sum(size * price(t, spot) for t in (described.get("instanceTypes") or [])[:1])
    return round(total, 4)


def _combined_protection(
    marks: list[tuple[str | None, str | None]],
) -> tuple[bool, dt.datetime | None]:
    """Protected when any part says so; until the latest time any says (None: for good)."""
    found = [protection_of(mark, until) for mark, until in marks]
    protecting = [until for protected, until in found if protected]
    if not protecting:
        return False, None
    return True, None if None in protecting else max(u for u in protecting if u)


@dataclass(frozen=True)
class _Scheduler:
    """The Kubernetes side of a cluster's scheduler."""

    dask_cluster: bool
    pod: dict[str, Any] | None
    service: dict[str, Any] | None


def scheduler_state(s: _Scheduler) -> tuple[str | None, dt.datetime | None, bool]:
    """(why the scheduler cannot answer, since when if Kubernetes says, whether it is gone for
    good) - or (None, None, False) when it should answer (its pod runs and is Ready). Pure.

    A cluster whose DaskCluster is gone cannot run again: nothing recreates it (the operator
    deletes it itself when the scheduler shuts down idle), so only its infrastructure is left.
    A missing or stopped scheduler pod may come back (the operator restarts it): grace applies.
    """
    if not s.dask_cluster:
        why = (
            "its DaskCluster is gone (the operator deletes it when the scheduler shuts itself "
            "down idle; or it was deleted by hand)"
        )
        return why, None, True
    if s.pod is None:
        return "the cluster has no scheduler pod", None, False
    status = s.pod.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if phase != "Running":
        return f"the scheduler pod is {phase}", None, False
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready" and condition.get("status") != "True":
            changed = condition.get("lastTransitionTime")
            since = parse_rfc3339(changed) if changed else None
            return "the scheduler pod is not Ready", since, False
    return None, None, False


# -- the site ---------------------------------------------------------------------------------


class EKSSite:
    """The EKS backend's clusters as the harvester sees and handles them."""

    def __init__(self, backend: Backend):
        self.backend = backend
        self._conn: Connection | None = None
        self._identity: dict[str, Any] | None = None
        self._prices: PriceBook | None = None
        self.memory = ConfigMapMemory(lambda: self.conn.api)

    @property
    def conn(self) -> Connection:
        """The clients of this pass (opened on first use)."""
        if self._conn is None:
            self._conn = Connection.open()
        return self._conn

    def _price(self, instance_type: str, spot: bool) -> float:
        if self._prices is None:
            self._prices = PriceBook(region=self.conn.platform.region)
        found = self._prices.spot if spot else self._prices.on_demand
        return found(instance_type).usd_per_hour

    def close(self) -> None:
        """Close the Kubernetes client."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def identity(self) -> dict[str, Any]:
        """User, host, pid and the AWS identity the harvester acts as."""
        if self._identity is None:
            identity = harvester_identity()
            try:
                sts = self.conn.session.client("sts", region_name=self.conn.platform.region)
                identity["aws"] = sts.get_caller_identity()["Arn"]
            except (ClientError, BotoCoreError) as e:
                identity["aws"] = f"unknown ({e})"
            self._identity = identity
        return self._identity

    def observe(self, now: dt.datetime, names: Collection[str] | None = None) -> list[Observation]:
        """Observe every RECC cluster on the platform (or those named)."""
        found = discover(self.conn, names)
        memory = self.memory.load()
        facts = {name: facts_from_parts(parts, self._price) for name, parts in found.items()}
        for name, fact in facts.items():
            fact["interrupted"] = interrupted(memory.get(name, {}))
        complete = [n for n, p in found.items() if not facts[n]["missing"] and p.namespace]
        answers, forwards = self._ask(complete, facts)
        try:
            changes: dict[str, Any] = {}
            for name in complete:
                entry = memory.get(name, {})
                since, new_entry = unreachable_update(entry, answers.get(name), now)
                if since is not None:
                    facts[name].setdefault("unreachable_since", since)
                if new_entry != (entry or None):
                    changes[name] = new_entry
            if names is None:  # forget clusters that no longer exist
                changes.update({c: None for c in memory if c not in found})
            self.memory.update(changes)
        finally:
            for forward in forwards:
                forward.stop()
        return [Observation(**facts[name]) for name in sorted(facts)]

    def _ask(
        self, names: list[str], facts: dict[str, dict[str, Any]]
    ) -> tuple[dict[str, SchedulerEvidence | Unanswered], list[PortForwarder]]:
        """Ask each live scheduler; fill ``facts`` with what was learned."""
        if not names:
            return {}, []
        one = names[0] if len(names) == 1 else None
        try:
            schedulers = self._schedulers(names, one)
        except _CALL_ERRORS as e:
            for name in names:
                facts[name]["unreadable"] = f"its scheduler's resources could not be listed: {e}"
            return {}, []
        answers: dict[str, SchedulerEvidence | Unanswered] = {}
        targets: dict[str, tuple[str, Security]] = {}
        forwards: list[PortForwarder] = []
        routes = self._routes(schedulers, facts, answers)
        for name, (address, forward) in routes.items():
            if forward is not None:
                forwards.append(forward)
            try:
                targets[name] = (address, self._security(name))
            except (BackendError, *_CALL_ERRORS) as e:
                facts[name]["unreadable"] = f"its TLS Secret could not be read: {e}"
        for name, answer in ask_all(targets, probe_timeout()).items():
            if isinstance(answer, SchedulerEvidence):
                facts[name]["scheduler"] = answer
                facts[name]["details"]["scheduler_address"] = targets[name][0]
            else:
                # The pod runs and is Ready, so the silence may be ours: keep (fail closed).
                facts[name]["unreadable"] = (
                    f"its scheduler pod is running but did not answer the harvester: {answer.why}"
                )
        return answers, forwards

    def _schedulers(self, names: list[str], one: str | None) -> dict[str, _Scheduler]:
        api = self.conn.api
        custom = kubernetes.client.CustomObjectsApi(api)
        group, version = DASK_GROUP.split("/")
        timeout = apply.request_timeout()
        if one is not None:
            listing = custom.list_namespaced_custom_object(
                group, version, one, "daskclusters", label_selector=_MANAGED,
                _request_timeout=timeout,
            )  # fmt: skip
        else:
            listing = custom.list_cluster_custom_object(
                group, version, "daskclusters", label_selector=_MANAGED, _request_timeout=timeout
            )
        dask = {_meta(d).get("namespace") for d in listing.get("items") or []}
        pods = apply.list_objects(api, "v1", "Pod", one, label_selector=_SCHEDULER)
        services = apply.list_objects(api, "v1", "Service", one, label_selector=_SCHEDULER)
        # A restarted scheduler leaves its old pod behind for a while: the running one counts.
        running_last = sorted(pods, key=lambda p: (p.get("status") or {}).get("phase") == "Running")
        by_ns_pod = {_meta(p).get("namespace"): p for p in running_last}
        by_ns_svc = {
            _meta(s).get("namespace"): s
            for s in services
            if _meta(s).get("name") == scheduler_service(_meta(s).get("namespace", ""))
        }
        return {n: _Scheduler(n in dask, by_ns_pod.get(n), by_ns_svc.get(n)) for n in names}

    def _routes(
        self,
        schedulers: dict[str, _Scheduler],
        facts: dict[str, dict[str, Any]],
        answers: dict[str, SchedulerEvidence | Unanswered],
    ) -> dict[str, tuple[str, PortForwarder | None]]:
        """An address per scheduler that should answer; the others get their reason."""
        routes: dict[str, tuple[str, PortForwarder | None]] = {}
        lb_checks: dict[str, tuple[str, int]] = {}
        for name, s in schedulers.items():
            why, since, gone = scheduler_state(s)
            if why is not None:
                answers[name] = Unanswered(why, unreachable=True)
                facts[name]["unreachable"] = why
                facts[name]["scheduler_gone"] = gone
                if since is not None:
                    facts[name]["unreachable_since"] = since
                if s.pod is not None and (s.pod.get("status") or {}).get("phase") in (
                    "Succeeded",
                    "Failed",
                ):
                    facts[name]["shut_down_idle"] = self._shut_down_idle(name, s.pod)
                continue
            ports = service_ports(s.service or {})
            host = load_balancer_host(s.service or {})
            mode = config.get("eks.connect", default="auto")
            if host and COMM_PORT_NAME in ports and mode != "port-forward":
                lb_checks[name] = (host, ports[COMM_PORT_NAME])
            else:
                routes[name] = ("", None)
        with ThreadPoolExecutor(16) as pool:  # a load balancer that drops packets costs 3 s
            reachable = dict(
                zip(lb_checks, pool.map(lambda hp: tcp_reachable(*hp), lb_checks.values()),
                    strict=True)
            )  # fmt: skip
        for name, (host, port) in lb_checks.items():
            if reachable[name]:
                routes[name] = (f"tls://{host}:{port}", None)
            else:
                routes[name] = ("", None)
        for name, (address, _) in list(routes.items()):
            if address:
                continue
            s = schedulers[name]
            # The Service's port, as the backend's own port-forward uses (it equals the
            # container's port in the rendered manifests); the container's when no Service.
            pod_port = service_ports(s.service or {}).get(COMM_PORT_NAME) or _container_port(
                s.pod or {}
            )
            if not pod_port:
                facts[name]["unreadable"] = "its scheduler has no tcp-comm port to reach"
                del routes[name]
                continue
            forward = PortForwarder(
                kubernetes_opener(self.conn.api, name, _meta(s.pod)["name"], pod_port),
                name=f"recc-harvest-{name}",
            )
            routes[name] = (f"tls://127.0.0.1:{forward.port}", forward)
        return routes

    def _shut_down_idle(self, name: str, pod: dict[str, Any]) -> bool:
        """Whether the scheduler's log says it closed itself after its idle timeout."""
        core = kubernetes.client.CoreV1Api(self.conn.api)
        try:
            log = core.read_namespaced_pod_log(
                _meta(pod)["name"], name, tail_lines=50, _request_timeout=apply.request_timeout()
            )
        except _CALL_ERRORS:
            return False
        return any(mark in (log or "") for mark in _IDLE_SHUTDOWN)

    def _security(self, name: str) -> Security:
        secret = apply.read(self.conn.api, Ref("v1", "Secret", f"{name}-tls", name))
        if secret is None:
            raise BackendError(f"no Secret {name}-tls in namespace {name}")
        data = {k: base64.b64decode(v).decode() for k, v in (secret.get("data") or {}).items()}
        # In memory: the harvester (a CronJob) keeps no files of other people's clusters.
        return Security(
            tls_ca_file=data["ca.crt"],
            tls_client_cert=data["tls.crt"],
            tls_client_key=data["tls.key"],
            require_encryption=True,
        )

    @contextmanager
    def lock(self, cluster: str) -> Iterator[str | None]:
        """The harvest lock on ``cluster``: a ConfigMap only one harvester can create."""
        lock = ConfigMapLock(self.conn.api, cluster, holder_name(self.identity()))
        with lock.held(lock_wait()) as other:
            yield other


def _container_port(pod: Mapping[str, Any]) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == COMM_PORT_NAME:
                return int(port["containerPort"])
    return None


# -- locks and memory in Kubernetes -----------------------------------------------------------


def lock_lease() -> float:
    """Seconds a harvest lock lasts before another harvester may take it over
    (``recc.harvest.lock-lease``, default 3600: longer than deleting node groups takes)."""
    return seconds(config.get("harvest.lock-lease", default=3600))


class ConfigMapLock:
    """A per-cluster lock: the ConfigMap ``recc-harvest-lock-<cluster>`` in the harvester's
    namespace. Creating it is atomic; an expired one is replaced only if nobody changed it."""

    def __init__(self, api: Any, cluster: str, holder: str):
        self.core = kubernetes.client.CoreV1Api(api)
        self.namespace = system_namespace()
        self.name = f"{LOCK_PREFIX}{cluster}"
        self.holder = holder

    def _body(self, now: dt.datetime, version: str | None = None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "name": self.name,
            "namespace": self.namespace,
            "labels": _HARVESTER_LABELS,
        }
        if version:
            meta["resourceVersion"] = version
        expires = now + dt.timedelta(seconds=lock_lease())
        data = {"holder": self.holder, "acquired-at": rfc3339(now), "expires-at": rfc3339(expires)}
        return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}

    def acquire(self) -> tuple[str | None, str | None]:
        """One attempt: (our lock's resourceVersion, None) when taken, else (None, the holder).

        The resourceVersion identifies *our* write: releasing deletes only that version.
        """
        now = dt.datetime.now(dt.timezone.utc)
        timeout = apply.request_timeout()
        try:
            made = self.core.create_namespaced_config_map(
                self.namespace, self._body(now), _request_timeout=timeout
            )
            return made.metadata.resource_version, None
        except ApiException as e:
            if e.status in (403, 404):
                # 404: the namespace is missing. 403: so is the harvester's Role there (RBAC
                # answers before the namespace is looked up), or it was never installed.
                missing = "does not exist" if e.status == 404 else "gives this identity no Role"
                raise BackendError(
                    f"cannot take the harvest lock: namespace {self.namespace} "
                    f"(recc.eks.system-namespace) {missing}; run `recc platform install` "
                    "(it makes the namespace and the harvester's Role in it)"
                ) from e
            if e.status != 409:
                raise BackendError(f"cannot take the harvest lock {self.name}: {e}") from e
        try:
            current = self.core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=timeout
            )
        except ApiException as e:
            if e.status == 404:
                return None, None  # released meanwhile: try again
            raise BackendError(f"cannot read the harvest lock {self.name}: {e}") from e
        data = current.data or {}
        try:
            expired = parse_rfc3339(data.get("expires-at", "")) <= now
        except ValueError:
            expired = True  # unreadable: a lock nobody can have meant to keep
        if not expired:
            return None, data.get("holder") or "another harvester"
        try:
            taken = self.core.replace_namespaced_config_map(
                self.name,
                self.namespace,
                self._body(now, current.metadata.resource_version),
                _request_timeout=timeout,
            )
        except ApiException as e:
            if e.status in (404, 409):
                return None, None  # another harvester was quicker: look again
            raise BackendError(f"cannot take over the harvest lock {self.name}: {e}") from e
        return taken.metadata.resource_version, None

    def release(self, version: str) -> None:
        """Delete the lock if it is still the one we wrote (``version``)."""
        timeout = apply.request_timeout()
        try:
            current = self.core.read_namespaced_config_map(
                self.name, self.namespace, _request_timeout=timeout
            )
            if current.metadata.resource_version != version:
                return  # taken over after our lease ran out: not ours to delete
            # The precondition closes the gap between the read and the delete.
            options = kubernetes.client.V1DeleteOptions(
                preconditions=kubernetes.client.V1Preconditions(resource_version=version)
            )
            self.core.delete_namespaced_config_map(
                self.name, self.namespace, body=options, _request_timeout=timeout
            )
        except ApiException as e:
            if e.status not in (404, 409):
                logger.warning("could not release the harvest lock %s: %s", self.name, e)

    @contextmanager
    def held(self, wait: float) -> Iterator[str | None]:
        """Hold the lock (yields None), or after ``wait`` seconds yield who holds it."""
        deadline = time.monotonic() + wait
        while True:
            version, holder = self.acquire()
            if version is not None:
                break
            if holder is not None and time.monotonic() >= deadline:
                yield holder
                return
            time.sleep(0.5 if holder is not None else 0)
        try:
            yield None
        finally:
            self.release(version)


class ConfigMapMemory:
    """The harvester's memory between passes: ConfigMap ``recc-harvest-memory`` in its
    namespace, one key per cluster holding a JSON entry. Writes use optimistic concurrency."""

    def __init__(self, api_client: Callable[[], Any]):
        self._api = api_client  # the site opens its client on first use

    def _core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self._api())

    def _read(self) -> Any:
        try:
            return self._core().read_namespaced_config_map(
                MEMORY_NAME, system_namespace(), _request_timeout=apply.request_timeout()
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise

    def load(self) -> dict[str, dict[str, Any]]:
        """Everything remembered (empty when nothing is, or it cannot be read)."""
        try:
            current = self._read()
        except _CALL_ERRORS as e:
            logger.warning("cannot read the harvester's memory: %s", e)
            return {}
        entries = {}
        for cluster, text in ((current.data if current else None) or {}).items():
            try:
                entries[cluster] = json.loads(text)
            except ValueError:
                continue
        return entries

    def update(self, changes: Mapping[str, Mapping[str, Any] | None]) -> None:
        """Merge ``changes`` in (None forgets a cluster); retried on a concurrent write."""
        if not changes:
            return
        core, namespace = self._core(), system_namespace()
        for _ in range(5):
            try:
                current = self._read()
                data = dict((current.data if current else None) or {})
                for cluster, entry in changes.items():
                    if entry:
                        data[cluster] = json.dumps(dict(entry), sort_keys=True)
                    else:
                        data.pop(cluster, None)
                meta: dict[str, Any] = {"name": MEMORY_NAME, "labels": _HARVESTER_LABELS}
                body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}
                timeout = apply.request_timeout()
                if current is None:
                    core.create_namespaced_config_map(namespace, body, _request_timeout=timeout)
                else:
                    meta["resourceVersion"] = current.metadata.resource_version
                    core.replace_namespaced_config_map(
                        MEMORY_NAME, namespace, body, _request_timeout=timeout
                    )
                return
            except ApiException as e:
                if e.status != 409:
                    logger.warning("cannot write the harvester's memory: %s", e)
                    return
            except _CALL_ERRORS as e:
                logger.warning("cannot write the harvester's memory: %s", e)
                return
        logger.warning("the harvester's memory kept changing under it; not written this time")


# -- protect ----------------------------------------------------------------------------------


def protect(name: str, protection: Protection) -> None:
    """Mark every part of EKS cluster ``name`` protected (:class:`ClusterNotFound` if none)."""
    until = rfc3339(protection.until) if protection.until else "never"
    _mark(
        name,
        labels={PROTECT_LABEL: "true"},
        annotations={PROTECT_UNTIL_ANNOTATION: until, "recc.io/protected-by": protection.by},
        tags={PROTECT_LABEL: "true", PROTECT_UNTIL_TAG: until},
    )


def unprotect(name: str) -> bool:
    """Remove the protection marks of cluster ``name``; False when it had none."""
    return _mark(
        name,
        labels={PROTECT_LABEL: None},
        annotations={PROTECT_UNTIL_ANNOTATION: None, "recc.io/protected-by": None},
        tags={PROTECT_LABEL: None, PROTECT_UNTIL_TAG: None},
    )


def _mark(
    name: str,
    labels: dict[str, str | None],
    annotations: dict[str, str | None],
    tags: dict[str, str | None],
) -> bool:
    """Set (or, for None values, remove) protection marks on each part; whether any part had
    a mark before."""
    conn = Connection.open()
    try:
        parts = discover(conn, [name]).get(name)
        if not parts:
            raise ClusterNotFound(f"no EKS cluster named {name!r} (see `recc ls`)")
        had = bool(facts_from_parts(parts).get("protected"))
        try:
            if parts.namespace is not None:
                apply.patch(
                    conn.api,
                    Ref("v1", "Namespace", name),
                    {"metadata": {"labels": labels, "annotations": annotations}},
                )
            setting = {k: v for k, v in tags.items() if v is not None}
            for lt in parts.launch_templates.values():
                resource = [lt["LaunchTemplateId"]]
                if setting:
                    conn.ec2.create_tags(
                        Resources=resource, Tags=[{"Key": k, "Value": v} for k, v in tags.items()]
                    )
                else:
                    conn.ec2.delete_tags(Resources=resource, Tags=[{"Key": k} for k in tags])
            for ng_name, described in parts.nodegroups.items():
                _tag_nodegroup(conn, ng_name, described, setting, list(tags))
        except _CALL_ERRORS as e:
            raise BackendError(f"could not change the protection of {name!r}: {e}") from e
        return had
    finally:
        conn.close()


def _tag_nodegroup(
    conn: Connection,
    name: str,
    described: dict[str, Any] | None,
    setting: dict[str, str],
    keys: list[str],
) -> None:
    described = described or nodegroups.describe_nodegroup(
        conn.eks, conn.platform.cluster_name, name
    )
    if described is None or not is_managed(described.get("tags") or {}):
        return
    try:
        if setting:
            conn.eks.tag_resource(resourceArn=described["nodegroupArn"], tags=setting)
        else:
            conn.eks.untag_resource(resourceArn=described["nodegroupArn"], tagKeys=keys)
    except ClientError as e:
        # Gone meanwhile (moto, too, cannot tag node groups): the namespace and the launch
        # templates carry the same marks.
        if e.response.get("Error", {}).get("Code") not in ("ResourceNotFoundException",):
            raise
