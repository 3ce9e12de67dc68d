"""Create, read, patch, list and delete Kubernetes objects given as plain dicts.

The renderer returns dicts (``apiVersion``, ``kind``, ``metadata`` ...); this module finds the
``kubernetes`` client call for each kind: the typed API for built-in kinds (``CoreV1Api``,
``RbacAuthorizationV1Api``, ``NetworkingV1Api`` ...), ``CustomObjectsApi`` for the
dask-kubernetes resources. Deletes are guarded and idempotent: an object that is gone already
counts as deleted, and an object without ``app.kubernetes.io/managed-by=recc`` is never
deleted (:class:`NotManaged`).

Example
-------
>>> from recc.testing import kubernetes_platform
>>> with kubernetes_platform() as k8s, k8s.control_plane.api_client() as api:  # doctest: +SKIP
...     ns = {"apiVersion": "v1", "kind": "Namespace",
...           "metadata": {"name": "demo", "labels": {"app.kubernetes.io/managed-by": "recc"}}}
...     _ = create(api, ns)
...     delete(api, Ref.of(ns)), delete(api, Ref.of(ns))
('deleted', 'absent')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from recc import config
from recc.errors import BackendError
from recc.kube import schema
from recc.tags import is_managed

ABSENT, DELETED, DELETING = "absent", "deleted", "deleting"


def request_timeout() -> float:
    """Seconds one API request may take (``recc.eks.request-timeout``, default 30)."""
    return float(config.get("eks.request-timeout", default=30))


class NotManaged(BackendError):
    """Refused to delete an object that RECC did not create."""


@dataclass(frozen=True)
class Ref:
    """Which object: API version, kind, name and namespace (None when cluster-scoped)."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, obj: dict[str, Any]) -> Ref:
        """The reference of a manifest or of an object the API returned."""
        meta = obj["metadata"]
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"

    def kubectl_delete(self) -> str:
        """The command that deletes this object by hand."""
        namespace = f" -n {self.namespace}" if self.namespace else ""
        return f"kubectl delete {self.kind.lower()} {self.name}{namespace}"


UNAUTHENTICATED = (
    "the Kubernetes API does not know your AWS identity (HTTP 401 Unauthorized): it needs an "
    "EKS access entry on the cluster (your platform team adds it: researcher_principal_arns "
    "in RECC's Terraform module), or your credentials expired; `recc platform check` shows "
    "who you are"
)


@dataclass(frozen=True)
class _Kind:
    """How the client reaches one kind."""

    namespaced: bool
    api_class: type
    snake: str | None = None  # typed API: the method suffix, e.g. "role_binding"
    custom: tuple[str, str, str] | None = None  # CustomObjectsApi: (group, version, plural)

    def call(self, api: Any, verb: str, namespace: str | None, **kwargs: Any) -> Any:
        try:
            return self._call(api, verb, namespace, **kwargs)
        except ApiException as e:
            if e.status == 401:  # no caller can do anything about it but the user
                raise BackendError(UNAUTHENTICATED) from e
            raise

    def _call(self, api: Any, verb: str, namespace: str | None, **kwargs: Any) -> Any:
        client = self.api_class(api)
        kwargs.setdefault("_request_timeout", request_timeout())
        if self.custom is not None:
            group, version, plural = self.custom
            scope = "namespaced_custom_object" if self.namespaced else "cluster_custom_object"
            method = f"{'get' if verb == 'read' else verb}_{scope}"
            where = {"namespace": namespace} if self.namespaced else {}
            return getattr(client, method)(group, version, plural=plural, **where, **kwargs)
        scope = f"namespaced_{self.snake}" if self.namespaced else self.snake
        if verb == "list" and self.namespaced and namespace is None:
            return getattr(client, f"list_{self.snake}_for_all_namespaces")(**kwargs)
        where = {"namespace": namespace} if self.namespaced else {}
        return getattr(client, f"{verb}_{scope}")(**where, **kwargs)


@cache
def _kind(api_version: str, kind: str) -> _Kind:
    group, _, version = api_version.rpartition("/")
    if group == schema.CUSTOM_GROUP:
        crd = schema.custom_resource_definitions()[kind]["spec"]
        return _Kind(
            crd["scope"] == "Namespaced",
            kubernetes.client.CustomObjectsApi,
            custom=(group, version, crd["names"]["plural"]),
        )
    # The kubernetes client names its typed APIs after the group: rbac.authorization.k8s.io/v1
    # -> RbacAuthorizationV1Api, v1 -> CoreV1Api (as kubernetes.utils does).
    prefix = "".join(w.capitalize() for w in group.removesuffix(".k8s.io").split(".")) or "Core"
    api_class = getattr(kubernetes.client, f"{prefix}{version.capitalize()}Api", None)
    if api_class is None:
        raise LookupError(f"the kubernetes client has no API for {api_version}")
    snake = re.sub(r"(?<!^)(?=[A-Z])", "_", kind).lower()
    namespaced = hasattr(api_class, f"create_namespaced_{snake}")
    if not namespaced and not hasattr(api_class, f"create_{snake}"):
        raise LookupError(f"the kubernetes client cannot create {kind} ({api_version})")
    return _Kind(namespaced, api_class, snake=snake)


def _plain(api: Any, result: Any) -> dict[str, Any]:
    return result if isinstance(result, dict) else api.sanitize_for_serialization(result)


def create(api: Any, obj: dict[str, Any]) -> dict[str, Any]:
    """Create ``obj``; returns the object as stored. Raises ``ApiException`` (409 if it
    exists)."""
    ref = Ref.of(obj)
    kind = _kind(ref.api_version, ref.kind)
    return _plain(api, kind.call(api, "create", ref.namespace, body=obj))


def read(api: Any, ref: Ref) -> dict[str, Any] | None:
    """The object, or None when it does not exist."""
    try:
        result = _kind(ref.api_version, ref.kind).call(api, "read", ref.namespace, name=ref.name)
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return _plain(api, result)


def patch(api: Any, ref: Ref, body: dict[str, Any]) -> dict[str, Any]:
    """Merge ``body`` into the object (e.g. ``{"spec": {"worker": {"replicas": 3}}}``)."""
    kind = _kind(ref.api_version, ref.kind)
    return _plain(api, kind.call(api, "patch", ref.namespace, name=ref.name, body=body))


def list_objects(
    api: Any, api_version: str, kind: str, namespace: str | None = None, label_selector: str = ""
) -> list[dict[str, Any]]:
    """Objects of ``kind`` (in ``namespace``, or everywhere) matching ``label_selector``."""
    found = _kind(api_version, kind).call(api, "list", namespace, label_selector=label_selector)
    items = _plain(api, found).get("items") or []
    for item in items:  # list items come without these; callers pass items to Ref.of
        item.setdefault("apiVersion", api_version)
        item.setdefault("kind", kind)
    return items


def delete(api: Any, ref: Ref, attempts: int = 3) -> str:
    """Delete the object if RECC manages it: :data:`DELETED`, :data:`DELETING` (it was being
    deleted already) or :data:`ABSENT` (nothing there). Raises :class:`NotManaged` for an
    object without ``app.kubernetes.io/managed-by=recc``, and ``ApiException`` otherwise."""
    current = read(api, ref)
    if current is None:
        return ABSENT
    meta = current.get("metadata") or {}
    if not is_managed(meta.get("labels") or {}):
        raise NotManaged(
            f"refusing to delete {ref}: it lacks the label app.kubernetes.io/managed-by=recc, "
            "so RECC did not create it"
        )
    if meta.get("deletionTimestamp"):
        return DELETING
    # The precondition makes the delete apply only to the object checked above, not to one
    # somebody else created under the same name meanwhile.
    options = {"preconditions": {"uid": meta["uid"]}} if meta.get("uid") else {}
    try:
        _kind(ref.api_version, ref.kind).call(
            api, "delete", ref.namespace, name=ref.name, body=options
        )
    except ApiException as e:
        if e.status == 404:
            return ABSENT
        if e.status == 409 and attempts > 1:
            # The object changed since it was checked: another object under the same name
            # (the precondition failed), or a deletion began. Check again what is there now.
            return delete(api, ref, attempts - 1)
        raise
    return DELETED
