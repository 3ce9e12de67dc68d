"""Kubernetes manifests for one RECC cluster, rendered from the jinja2 templates in
``recc.templates/k8s``. Pure: no clock, no cluster, no AWS; only the templates are read.

User values never become YAML syntax: the environment's ``finalize`` hook emits every
``{{ expression }}`` as one quoted, escaped flow value (JSON-style), so a name, label or
environment value holding quotes, colons, newlines or ``{{`` stays a single string.

Example
-------
>>> import datetime as dt
>>> from recc.catalog import bundled_catalog
>>> from recc.plan import plan_cluster
>>> from recc.spec import resolve_spec
>>> from recc.tags import Ownership
>>> spec = resolve_spec("default", name="recc-alice-1a2b3c")
>>> owner = Ownership("recc-alice-1a2b3c", "alice", "recc-alice-1a2b3c",
...                   dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc))
>>> docs = render_manifests(spec, plan_cluster(spec, bundled_catalog()), owner,
...                         PlatformSettings())
>>> [d["kind"] for d in docs][:3], docs[-1]["spec"]["worker"]["replicas"]
(['Namespace', 'ServiceAccount', 'Role'], 20)
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from typing import Any

import jinja2
import yaml

from recc import __version__, config
from recc.errors import ConfigError, SpecError
from recc.plan import Capacity, NodePlan
from recc.spec import ClusterSpec, WorkerGroup
from recc.tags import Ownership, aws_tags, k8s_annotations, k8s_labels
from recc.units import MiB

NODEGROUP_LABEL = "recc.io/nodegroup"
TAINT_KEY = "recc.io/cluster"
"""Key of the NoSchedule taint on a cluster's nodes; its value is the cluster name."""

# The scheduler's ports. Dask (tcp-comm) and the dashboard (https-dashboard) are TLS with client
# certificates. http-dashboard, the name under which the dask-kubernetes operator calls the
# scheduler's HTTP API in plain HTTP (retire workers, idle check, adaptive target), serves that
# API alone, for the operator inside the cluster (see OPERATOR_API and the README's trust
# boundary); NetworkPolicies let only the operator's namespace reach it.
PORTS = {"tcp-comm": 8786, "https-dashboard": 8787, "http-dashboard": 8789}
CLIENT_PORTS = ("tcp-comm", "https-dashboard")
OPERATOR_API = """\
# RECC: the scheduler's HTTP API for the dask-kubernetes operator, in plain HTTP on its own port
# (the dashboard, on another, requires TLS client certificates the operator does not hold).
from tornado.httpserver import HTTPServer
from tornado.web import Application
from distributed.http.scheduler.api import routes

def dask_setup(scheduler):
    app = Application([(path, handler, {**kw, "dask_server": scheduler})
                       for path, handler, kw in routes])
    scheduler._recc_operator_api = HTTPServer(app)
    scheduler._recc_operator_api.listen(PORT)

def dask_teardown(scheduler):
    scheduler._recc_operator_api.stop()
""".replace("PORT", str(PORTS["http-dashboard"]))
WORKER_DASHBOARD_PORT = 8788
TLS_MOUNT = "/etc/recc/tls"
OWNER_ROLE = "recc-owner"
# The templates, in apply order (a namespace before what lives in it, the Dask resources last).
_TEMPLATES = (
    "namespace serviceaccount rolebinding resourcequota networkpolicy secret daskcluster"
).split()


@dataclass(frozen=True)
class TLSMaterial:
    """PEM text of a cluster's CA, and the certificate and key every Dask process presents."""

    ca_cert: str
    cert: str
    key: str


@dataclass(frozen=True)
class PlatformSettings:
    """What rendering needs from the EKS platform (``recc.eks.*`` config)."""

    operator_namespace: str = "dask-operator"
    worker_role_arn: str | None = None
    allowed_client_cidrs: tuple[str, ...] = ()
    source_nfs_server: str | None = None
    source_nfs_path: str = "/recc/branches"
    source_mount_path: str = "/src"
    # The name the workers' IRSA role trusts (terraform's worker_service_account).
    worker_service_account: str = "recc-worker"

    @classmethod
    def from_config(cls) -> PlatformSettings:
        """The settings under ``recc.eks`` (``operator-namespace``, ``worker-role-arn`` ...)."""
        values = {}
        for field in fields(cls):  # every field is recc.eks.<field name spelled with dashes>
            value = config.get("eks." + field.name.replace("_", "-"))
            if value is not None:
                values[field.name] = tuple(value) if isinstance(value, list) else value
        return cls(**values)


def nodegroup_name(cluster: str, group: str) -> str:
    """The EKS node group (and ``recc.io/nodegroup`` node label) of one worker group."""
    return f"{cluster}-{group}"


def render_manifests(
    spec: ClusterSpec,
    plan: NodePlan,
    owner: Ownership,
    platform: PlatformSettings,
    tls: TLSMaterial | None = None,
    owner_subject: str | None = None,
) -> list[dict[str, Any]]:
    """Every Kubernetes object of one cluster, in apply order.

    ``tls`` fills the ``<cluster>-tls`` Secret; without it the Secret has its shape with empty
    values (for ``recc plan --manifests``). ``owner_subject`` is the Kubernetes user bound to
    the owner's Role (default: ``owner.user``). Raises :class:`SpecError` for a cluster name
    that cannot name the scheduler's Service, and :class:`ConfigError` for a source branch
    without ``recc.eks.source-nfs-server``.
    """
    cluster = owner.cluster
    if spec.name is not None and spec.name != cluster:
        raise SpecError("name", spec.name, f"differs from the owner's {cluster!r}", cluster)
    if not cluster[:1].isalpha():  # the operator names a Service after it (DNS-1035)
        raise SpecError("name", cluster, "must start with a letter", "name='recc-alice-1a2b3c'")
    address = f"tls://{cluster}-scheduler.{owner.namespace}.svc.cluster.local:{PORTS['tcp-comm']}"
    source, source_env = _source(spec, platform)
    env = {**spec.env, **source_env, **_TLS_ENV}
    idle = math.ceil(spec.idle_timeout or 0)  # seconds; 0 means never
    groups = [
        {
            "name": f"{cluster}-{group.name}",
            "nodegroup": nodegroup_name(cluster, group.name),
            "replicas": group.n_workers,
            "resources": _resources(group_plan.worker),
            "nthreads": str(max(1, int(group.worker_cpu))),
            "memory_limit": str(group.worker_memory),
            "dask_resources": _dask_resources(group),
            "env": {**env, "DASK_SCHEDULER_ADDRESS": address},  # else the operator sets tcp://
        }
        for group, group_plan in zip(spec.groups(), plan.groups, strict=True)
    ]
    context = {
        "cluster": cluster,
        "namespace": owner.namespace,
        "labels": k8s_labels(owner),
        "annotations": _annotations(spec, owner),
        "platform": platform,
        "owner_subject": owner_subject or owner.user,
        "quota": _quota(plan),
        "tls_secret": f"{cluster}-tls",
        "tls_data": _tls_data(tls),
        "idle_timeout": idle,
        "scheduler_address": address,
        "aws_tags": ",".join(f"{k}={v}" for k, v in aws_tags(owner, __version__).items()),
        "image": spec.image,
        "source": source,
        "scheduler": {
            "nodegroup": groups[0]["nodegroup"],  # the plan puts it on the first group's nodes
            "resources": _resources(plan.scheduler),
            # No scheduler idle timeout: in the operator's Deployment a scheduler that stopped
            # itself would only be restarted; the operator's autoshutdown ends the cluster.
            "env": env,
        },
        "default_group": groups[0],
    }
    docs = [doc for name in _TEMPLATES for doc in _render(name, context)]
    for group in groups[1:]:  # extra worker groups, each on its own node group
        docs += _render("daskworkergroup", {**context, "group": group})
    return docs


def _annotations(spec: ClusterSpec, owner: Ownership) -> dict[str, str]:
    annotations = k8s_annotations(owner)
    if spec.tags:  # free-form user tags do not fit label rules; kept whole, as JSON
        annotations["recc.io/tags"] = json.dumps(spec.tags, sort_keys=True)
    return annotations


def _dask_resources(group: WorkerGroup) -> str:
    # Every worker advertises its memory as a Dask resource, so tasks can ask for MEMORY=...
    resources = {"MEMORY": group.worker_memory // MiB, **group.resources}
    return ",".join(
        f"{k}={int(v) if float(v).is_integer() else float(v)!r}" for k, v in resources.items()
    )


def _resources(pod: Capacity) -> dict[str, str]:
    # Requests equal limits (Guaranteed QoS): what the plan packed is what each pod gets.
    out = {"cpu": f"{pod.cpu_m}m", "memory": f"{pod.memory_mib}Mi"}
    return {**out, "nvidia.com/gpu": str(pod.gpus)} if pod.gpus else out


def _quota(plan: NodePlan) -> Capacity:
    """Every pod of the plan, plus room to replace the scheduler and one node's workers while
    the old pods terminate (a failed node, a spot interruption, a restarted scheduler): a
    pod being deleted counts against the quota until its grace period ends."""
    pods = [plan.scheduler] + [_times(g.worker, g.n_workers) for g in plan.groups]
    room = [_times(g.worker, min(g.workers_per_node, g.n_workers)) for g in plan.groups]
    return Capacity(
        *(sum(getattr(p, f.name) for p in pods) + getattr(plan.scheduler, f.name)
          + max(getattr(r, f.name) for r in room)
          for f in fields(Capacity))
    )  # fmt: skip


def _times(pod: Capacity, n: int) -> Capacity:
    return Capacity(*(getattr(pod, f.name) * n for f in fields(Capacity)))


_CERT, _KEY, _CA = (f"{TLS_MOUNT}/{name}" for name in ("tls.crt", "tls.key", "ca.crt"))
_TLS_ENV = {
    "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
    "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": _CA,
    **{
        f"DASK_DISTRIBUTED__COMM__TLS__{role}__{part}": path
        for role in ("SCHEDULER", "WORKER", "CLIENT")
        for part, path in (("CERT", _CERT), ("KEY", _KEY))
    },
    # Dashboards (scheduler and workers) serve HTTPS with the same certificate.
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__CERT": _CERT,
    "DASK_DISTRIBUTED__SCHEDULER__DASHBOARD__TLS__KEY": _KEY,
}


def _source(spec: ClusterSpec, platform: PlatformSettings) -> tuple[dict | None, dict]:
    """The NFS volume holding ``spec.source_git_branch``, and the PYTHONPATH that finds it."""
    branch, mount = spec.source_git_branch, platform.source_mount_path
    if branch is None:
        return None, {}
    if not platform.source_nfs_server:
        raise ConfigError(
            f"source_git_branch={branch!r} needs shared storage: set recc.eks.source-nfs-server "
            "(for example: fs-0123456789abcdef0.efs.eu-west-1.amazonaws.com), or run "
            "`recc platform configure`"
        )
    path = f"{platform.source_nfs_path.rstrip('/')}/{branch}"
    volume = {"server": platform.source_nfs_server, "path": path, "mount": mount}
    return volume, {"PYTHONPATH": ":".join(p for p in (mount, spec.env.get("PYTHONPATH")) if p)}


def _tls_data(tls: TLSMaterial | None) -> dict[str, str]:
    pems = {"cert": "", "key": "", "ca_cert": ""} if tls is None else vars(tls)
    return {k: base64.b64encode(v.encode()).decode() for k, v in pems.items()}


# ---- the jinja2 environment: every expression becomes a quoted flow value ------------------


_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: same safe subset, 10x faster


class _Block(str):
    """Rendered macro output: YAML the templates wrote, so it is emitted as it is."""


def _flow(value: Any) -> str:
    """``value`` as one YAML flow value that reads back as exactly ``value``."""
    if isinstance(value, _Block):
        return value
    if value is None or isinstance(value, (bool, int)):
        return json.dumps(value)
    if isinstance(value, str):
        return _quote(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_quote(str(k))}: {_flow(v)}" for k, v in value.items()) + "}"
    # Floats are refused: YAML 1.1 reads JSON's 1e+300 as a string. Format them first.
    raise TypeError(f"cannot render {type(value).__name__} {value!r}; format it as a string")


def _quote(text: str) -> str:
    # Python's escapes for non-printable and non-ASCII characters (\xNN, \uNNNN, \UNNNNNNNN)
    # are YAML's too, so line separators, NEL or a BOM cannot be reinterpreted by the reader.
    return '"' + text.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(
            lambda name: (resources.files("recc.templates") / "k8s" / name).read_text("utf-8")
        ),
        finalize=_flow,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals.update(
        block=_block, NODEGROUP_LABEL=NODEGROUP_LABEL, TAINT_KEY=TAINT_KEY, PORTS=PORTS,
        WORKER_DASHBOARD_PORT=WORKER_DASHBOARD_PORT, TLS_MOUNT=TLS_MOUNT, OWNER_ROLE=OWNER_ROLE,
        CLIENT_PORTS=CLIENT_PORTS, OPERATOR_API=OPERATOR_API,
    )  # fmt: skip
    return env


@jinja2.pass_context
def _block(ctx: jinja2.runtime.Context, macro: str, indent: int, *args: Any, **kw: Any) -> _Block:
    """Macro ``macro`` of ``_macros.j2``, seeing the caller's variables, indented to ``indent``.

    Only macros become blocks: their text is template YAML with every value already quoted.
    """
    module = _environment().get_template("_macros.j2").make_module(ctx.get_all())
    lines = str(getattr(module, macro)(*args, **kw)).strip("\n").split("\n")
    return _Block(("\n" + " " * indent).join(lines))


def _render(name: str, context: dict[str, Any]) -> list[dict[str, Any]]:
    text = _environment().get_template(f"{name}.yaml.j2").render(context)
    return [doc for doc in yaml.load_all(text, Loader=_LOADER) if doc is not None]
