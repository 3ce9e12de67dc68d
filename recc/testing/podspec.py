"""Pure pieces of running a Pod as processes: environment, ``$(VAR)`` expansion, probes, status.

Everything here takes plain dicts (the API server's JSON) and returns plain values, so the node
agent's side effects (:mod:`recc.testing.pods`) stay at its edges.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

from kubernetes.utils.quantity import parse_quantity

_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


class PodNotReady(Exception):
    """Something the Pod needs (a Secret, a ConfigMap key) does not exist yet; the kubelet
    keeps it in ContainerCreating and tries again."""


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: known variables are replaced, unknown references are
    left as written, and ``$$`` is an escaped ``$``.

    >>> expand("--name $(POD) $(MISSING) $$(POD)", {"POD": "w-1"})
    '--name w-1 $(MISSING) $(POD)'
    """

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env[name] if name in env else match.group(0)

    return _VAR.sub(replace, text)


def field_value(pod: Mapping[str, Any], path: str) -> str:
    """The value of a downward-API ``fieldRef.fieldPath``.

    >>> pod = {"metadata": {"name": "p", "labels": {"app": "dask"}},
    ...        "status": {"podIP": "127.1.0.2"}}
    >>> field_value(pod, "status.podIP"), field_value(pod, "metadata.labels['app']")
    ('127.1.0.2', 'dask')
    """
    labelled = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
    if labelled:
        return str(
            (pod.get("metadata", {}).get(labelled.group(1)) or {}).get(labelled.group(2), "")
        )
    node: Any = pod
    for part in path.split("."):
        node = (node or {}).get(part) if isinstance(node, Mapping) else None
    return "" if node is None else str(node)


def resource_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """The value of a ``resourceFieldRef`` (limits or requests of cpu or memory), in the
    divisor's units (cores rounded up, bytes), as the kubelet gives it.

    >>> c = {"resources": {"limits": {"cpu": "1500m", "memory": "1Gi"}}}
    >>> resource_value(c, {"resource": "limits.cpu"})
    '2'
    >>> resource_value(c, {"resource": "limits.memory"})
    '1073741824'
    """
    kind, _, name = ref["resource"].partition(".")
    value = ((container.get("resources") or {}).get(kind) or {}).get(name)
    if value is None:
        return "0"
    divisor = parse_quantity(ref.get("divisor", "1"))
    return str(math.ceil(parse_quantity(value) / divisor))


def container_env(
    pod: Mapping[str, Any],
    container: Mapping[str, Any],
    lookup: Callable[[str, str], Mapping[str, str] | None],
    base: Mapping[str, str],
) -> dict[str, str]:
    """The environment of ``container``: ``base`` (what the runtime sets), then ``envFrom``,
    then ``env`` in order with ``$(VAR)`` expansion against the variables before it.

    ``lookup(kind, name)`` reads the data of a Secret (``kind`` ``secret``, values decoded) or
    ConfigMap (``configMap``), None when it does not exist. Raises :class:`PodNotReady` when a
    non-optional reference is missing.

    >>> pod = {"metadata": {"name": "w-1"}, "status": {"podIP": "127.1.0.9"}}
    >>> c = {"env": [{"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ...              {"name": "ADDR", "value": "tls://$(IP):8786"}]}
    >>> container_env(pod, c, lambda kind, name: None, {})["ADDR"]
    'tls://127.1.0.9:8786'
    """
    env = dict(base)
    for source in container.get("envFrom") or []:
        kind = "secret" if "secretRef" in source else "configMap"
        ref = source.get("secretRef") or source.get("configMapRef") or {}
        data = lookup(kind, ref.get("name", ""))
        if data is None:
            if ref.get("optional"):
                continue
            raise PodNotReady(f"{kind} {ref.get('name')!r} not found")
        for key, value in data.items():
            env[source.get("prefix", "") + key] = value
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var or "valueFrom" not in var:
            env[name] = expand(str(var.get("value", "")), env)
            continue
        source = var["valueFrom"]
        if "fieldRef" in source:
            env[name] = field_value(pod, source["fieldRef"]["fieldPath"])
        elif "resourceFieldRef" in source:
            env[name] = resource_value(container, source["resourceFieldRef"])
        else:
            kind = "secret" if "secretKeyRef" in source else "configMap"
            ref = source.get("secretKeyRef") or source.get("configMapKeyRef") or {}
            value = (lookup(kind, ref.get("name", "")) or {}).get(ref.get("key", ""))
            if value is None:
                if ref.get("optional"):
                    continue
                raise PodNotReady(f"{kind} {ref.get('name')!r} has no key {ref.get('key')!r}")
            env[name] = value
    return env


# What pulling an image would tell the runtime about its entrypoint, for the images the
# platform runs. Any other image is taken to run its arguments as a command, as the Dask
# images' entrypoint (tini and a prepare script) does.
IMAGE_ENTRYPOINTS = {
    "ghcr.io/dask/dask-kubernetes-operator": [
        "kopf",
        "run",
        "-m",
        "dask_kubernetes.operator.controller",
    ],
}


def command_line(container: Mapping[str, Any], env: Mapping[str, str]) -> list[str]:
    """The argv of ``container``: ``command`` (else the image's entrypoint) then ``args``, each
    ``$(VAR)``-expanded. Raises :class:`PodNotReady` when there is neither (the entrypoint of
    an image not in :data:`IMAGE_ENTRYPOINTS` is unknown here): the Pod waits with that message,
    and the agent goes on with the other Pods.

    >>> command_line({"image": "ghcr.io/dask/dask-kubernetes-operator:2026.3.0",
    ...               "args": ["--all-namespaces"]}, {})
    ['kopf', 'run', '-m', 'dask_kubernetes.operator.controller', '--all-namespaces']
    >>> command_line({"name": "c", "image": "busybox"}, {})
    Traceback (most recent call last):
    recc.testing.podspec.PodNotReady: container 'c' has neither command nor args, and the \
entrypoint of image 'busybox' is not known to the node agent: give a command
    """
    image = str(container.get("image", "")).split("@")[0].rsplit(":", 1)[0]
    command = container.get("command") or IMAGE_ENTRYPOINTS.get(image, [])
    argv = [*command, *(container.get("args") or [])]
    if not argv:
        raise PodNotReady(
            f"container {container.get('name')!r} has neither command nor args, and the "
            f"entrypoint of image {container.get('image')!r} is not known to the node agent: "
            "give a command"
        )
    return [expand(str(part), env) for part in argv]


def named_port(container: Mapping[str, Any], port: int | str) -> int:
    """A probe's or Service's target port: a number, or a container port's name.

    >>> named_port({"ports": [{"name": "http-dashboard", "containerPort": 8787}]}, "http-dashboard")
    8787
    """
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for declared in container.get("ports") or []:
        if declared.get("name") == port:
            return int(declared["containerPort"])
    raise ValueError(f"container {container.get('name')!r} has no port named {port!r}")


def now() -> str:
    """The current time as the API server writes it (RFC 3339, seconds, UTC)."""
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_conditions(
    previous: list[dict[str, Any]], ready: bool, started: bool, at: str
) -> list[dict[str, Any]]:
    """The kubelet's Pod conditions, keeping ``lastTransitionTime`` of those that did not change
    (PodScheduled, set by the scheduler, is kept as it is).

    >>> conds = pod_conditions([], ready=True, started=True, at="2026-12-03T10:00:00Z")
    >>> [c["type"] for c in conds if c["status"] == "True"]
    ['PodReadyToStartContainers', 'Initialized', 'ContainersReady', 'Ready']
    """
    old = {c["type"]: c for c in previous}
    wanted = {
        "PodReadyToStartContainers": started,
        "Initialized": True,
        "ContainersReady": ready,
        "Ready": ready,
    }
    out = [c for c in previous if c["type"] not in wanted]
    for kind, value in wanted.items():
        status = "True" if value else "False"
        before = old.get(kind)
        if before is not None and before.get("status") == status:
            out.append(before)
            continue
        condition: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": at}
        if not value and kind in ("ContainersReady", "Ready"):
            condition["reason"] = "ContainersNotReady"
        out.append(condition)
    return out
