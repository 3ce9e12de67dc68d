"""A fake Kubernetes API server on loopback that the real ``kubernetes`` client talks to.

It keeps objects in memory, per namespace and cluster-wide, for the built-in kinds RECC uses
and the dask-kubernetes custom resources, and answers like the real API server does where
RECC depends on it: 201/404/409/422 with ``Status`` bodies, label and field selectors,
optimistic concurrency on ``resourceVersion``, merge and JSON patches, status subresources,
and namespace deletion that takes the namespace's objects with it. Every object is checked
with :func:`recc.kube.schema.validate` (official schemas, CRD schemas, DNS names, labels).

Not modelled: watches, server-side apply, admission (webhooks and policies are stored, not
run), graceful deletion, finalizers, owner-reference garbage collection, pagination (``limit``
returns everything). The Dask custom resources are served whether or not their
CustomResourceDefinitions were created, as on a platform where the operator is installed. Pod
logs and port-forwarding (``pods/<name>/log``, ``pods/<name>/portforward``) are answered by
:mod:`recc.testing.pod_streams`.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import re
import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, unquote, urlsplit

import jsonpatch
import jsonpointer
import kubernetes.client

from recc.kube import schema

logger = logging.getLogger(__name__)

VERBS = ("create", "get", "list", "replace", "patch", "delete", "deletecollection")
EVENTS = ("created", "updated", "deleted")
Hook = Callable[[dict[str, Any]], None]

# apiVersion -> (namespaced kinds, cluster-scoped kinds); "*" marks a status subresource.
_BUILTIN_KINDS = {
    "v1": (
        "Pod* Service* Secret ServiceAccount ConfigMap ResourceQuota* Event LimitRange "
        "PersistentVolumeClaim*",
        "Namespace* Node*",
    ),
    "apps/v1": ("Deployment* StatefulSet* DaemonSet* ReplicaSet*", ""),
    "batch/v1": ("Job* CronJob*", ""),
    "rbac.authorization.k8s.io/v1": ("Role RoleBinding", "ClusterRole ClusterRoleBinding"),
    "networking.k8s.io/v1": ("NetworkPolicy Ingress*", ""),
    "policy/v1": ("PodDisruptionBudget*", ""),
    "apiextensions.k8s.io/v1": ("", "CustomResourceDefinition*"),
    "admissionregistration.k8s.io/v1": (
        "",
        "ValidatingAdmissionPolicy* ValidatingAdmissionPolicyBinding",
    ),
}
_INITIAL_NAMESPACES = ("default", "kube-system", "kube-public")
# Where Kubernetes' Status reasons differ from the HTTP phrase (404 -> "NotFound" etc.).
_REASONS = {409: "AlreadyExists", 422: "Invalid", 500: "InternalError", 504: "Timeout"}


@dataclass(frozen=True)
class ResourceType:
    """One kind the fake serves: where it lives in the API and how it behaves."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool
    has_status: bool

    @property
    def group(self) -> str:
        """The API group; empty for the core group (``v1``)."""
        return self.api_version.rpartition("/")[0]


def _plural(kind: str) -> str:
    lower = kind.lower()
    if lower.endswith("y"):
        return lower[:-1] + "ies"
    return lower + ("es" if lower.endswith("s") else "s")


def _resource_types() -> list[ResourceType]:
    types = [
        ResourceType(
            api_version, kind.rstrip("*"), _plural(kind.rstrip("*")), namespaced, "*" in kind
        )
        for api_version, scopes in _BUILTIN_KINDS.items()
        for namespaced, kinds in zip((True, False), scopes, strict=True)
        for kind in kinds.split()
    ]
    for kind, crd in schema.custom_resource_definitions().items():
        spec = crd["spec"]
        version = next(v for v in spec["versions"] if v.get("storage"))
        types.append(
            ResourceType(
                f"{spec['group']}/{version['name']}",
                kind,
                spec["names"]["plural"],
                spec["scope"] == "Namespaced",
                "status" in (version.get("subresources") or {}),
            )
        )
    return types


class Call(NamedTuple):
    """One API request the fake received (discovery requests are not recorded)."""

    verb: str
    resource: str  # plural, with "/status" for the status subresource
    namespace: str | None
    name: str | None


class FakeKubeError(Exception):
    """An API error: ``code`` is the HTTP status, ``body`` the Kubernetes ``Status`` object."""

    def __init__(self, code: int, message: str, reason: str | None = None, **details: Any):
        super().__init__(message)
        self.code = code
        self.body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": reason or _REASONS.get(code) or HTTPStatus(code).phrase.replace(" ", ""),
            "details": details,
            "code": code,
        }


@dataclass
class _Fault:
    verb: str
    resource: str
    times: int | None
    status: int
    hang: bool
    hang_seconds: float


@dataclass
class _Request:
    rtype: ResourceType
    namespace: str | None
    name: str | None
    subresource: str | None
    query: dict[str, str] = field(default_factory=dict)


class FakeKubeServer:
    """In-memory Kubernetes API served over HTTP on 127.0.0.1 (see :mod:`recc.testing`).

    Use it through :func:`recc.testing.fake_kubernetes`, which starts and stops it.
    """

    def __init__(self) -> None:
        self.types = _resource_types()
        self._by_name = {t.plural: t for t in self.types} | {t.kind: t for t in self.types}
        self._lock = threading.RLock()
        self._store: dict[tuple[ResourceType, str, str], dict[str, Any]] = {}
        self._revision = itertools.count(1)
        self._faults: list[_Fault] = []
        self._hooks: dict[tuple[str, ResourceType], list[Hook]] = {}
        self._calls: list[Call] = []
        self._stopping = threading.Event()
        self.hook_errors: list[BaseException] = []
        self.pod_logs: Callable[[str, str], str] | None = None
        """What ``GET pods/<name>/log`` answers: ``pod_logs(namespace, pod)`` (None: empty)."""
        """Exceptions raised by hooks; they are logged, and the request still succeeds."""
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._discovery_docs: dict[str, dict[str, Any]] = {}
        for name in _INITIAL_NAMESPACES:
            self.create_object(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
            )

    # -- lifecycle ------------------------------------------------------------------------

    def start(self, port: int = 0) -> FakeKubeServer:
        """Serve on 127.0.0.1:``port`` (0: a free port) in a daemon thread."""
        self._http = _HTTPServer(("127.0.0.1", port), _Handler)
        self._http.fake = self
        # A short poll interval makes stop() quick; the loop is idle otherwise.
        self._thread = threading.Thread(
            target=self._http.serve_forever, args=(0.05,), name="fake-kube-api", daemon=True
        )
        self._thread.start()
        self._discovery_docs = _discovery(self.types, self.url.split("//")[1])
        return self

    def stop(self) -> None:
        """Stop serving, release hanging requests and close every client connection."""
        self._stopping.set()
        if self._http is not None:
            self._http.shutdown()
            self._http.close_connections()
            self._http.server_close()
            self._thread.join(timeout=5)
            self._http = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` while serving."""
        if self._http is None:
            raise RuntimeError("the fake Kubernetes API server is not running; call start()")
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def api_client(self) -> kubernetes.client.ApiClient:
        """A ``kubernetes.client.ApiClient`` for this server (plain HTTP, no auth, no proxy)."""
        config = kubernetes.client.Configuration(host=self.url)
        config.proxy = None
        return kubernetes.client.ApiClient(config)

    # -- test harness API -------------------------------------------------------------------

    def on(self, event: str, kind: str, callback: Hook) -> Callable[[], None]:
        """Call ``callback(obj)`` after an object of ``kind`` is created, updated or deleted.

        ``kind`` is a kind (``"DaskCluster"``) or a plural (``"daskclusters"``). Callbacks run
        in the request's thread once the change is stored, before the response is sent; start
        a thread for slow work. Returns a function that removes the hook.
        """
        if event not in EVENTS:
            raise ValueError(f"event must be one of {EVENTS}, not {event!r}")
        hooks = self._hooks.setdefault((event, self.resource_type(kind)), [])
        hooks.append(callback)
        return lambda: hooks.remove(callback)

    def inject_failure(
        self,
        verb: str,
        resource: str,
        times: int | None = 1,
        status: int = 500,
        hang: bool = False,
        hang_seconds: float = 30.0,
    ) -> None:
        """Make the next ``times`` matching requests fail (``times=None``: until cleared).

        ``verb`` is one of :data:`VERBS`, ``resource`` a plural such as ``"namespaces"`` or
        ``"daskclusters/status"``. A failing request gets ``status`` with a ``Status`` body;
        with ``hang=True`` it gets no answer for ``hang_seconds`` (or until the server stops),
        so the client's timeout fires. Note that urllib3 retries timed-out GET, PUT and DELETE
        requests up to three times by default.
        """
        if verb not in VERBS:
            raise ValueError(f"verb must be one of {VERBS}, not {verb!r}")
        self.resource_type(resource.partition("/")[0])
        with self._lock:
            self._faults.append(_Fault(verb, resource, times, status, hang, hang_seconds))

    def clear_failures(self) -> None:
        """Forget every injected failure that has not fired yet."""
        with self._lock:
            self._faults.clear()

    @property
    def calls(self) -> list[Call]:
        """Every API request received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def count(self, verb: str | None = None, resource: str | None = None) -> int:
        """How many requests matched ``verb`` and ``resource`` (None matches any)."""
        return sum(
            (verb is None or c.verb == verb) and (resource is None or c.resource == resource)
            for c in self.calls
        )

    def clear_calls(self) -> None:
        """Forget the calls recorded so far (e.g. after a test's setup)."""
        with self._lock:
            self._calls.clear()

    def resource_type(self, name: str) -> ResourceType:
        """The :class:`ResourceType` for a kind or plural; KeyError names the known ones."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(t.plural for t in self.types))
            raise KeyError(f"unknown resource {name!r}; known: {known}") from None

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        """Copies of the stored objects of ``resource`` (kind or plural), optionally in one
        namespace, sorted by namespace and name."""
        return self._select(self.resource_type(resource), namespace, {})

    def get_object(
        self, resource: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """A copy of one stored object, or None when it does not exist."""
        found = self._store.get((self.resource_type(resource), namespace or "", name))
        return copy.deepcopy(found)

    def create_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` as a POST would (validated, hooks fired); raises FakeKubeError."""
        rtype = self._type_of(obj)
        return self._create(rtype, obj.get("metadata", {}).get("namespace"), obj)

    def update_object(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace a stored object, status included (what a controller would do)."""
        rtype, meta = self._type_of(obj), obj.get("metadata", {})
        return self._replace(rtype, meta.get("namespace"), meta.get("name"), obj, part="all")

    def patch_object(
        self, resource: str, name: str, patch: dict[str, Any], namespace: str | None = None
    ) -> dict[str, Any]:
        """JSON-merge-patch a stored object, status included; e.g. give a Service an address:
        ``patch_object("services", "s", {"status": {"loadBalancer": {...}}}, "ns")``."""
        rtype = self.resource_type(resource)
        new = _merge_patch(self._existing(rtype, namespace, name), patch)
        return self._replace(rtype, namespace, name, new, part="all")

    def delete_object(self, resource: str, name: str, namespace: str | None = None) -> dict:
        """Delete a stored object (namespaces cascade); raises FakeKubeError when absent."""
        return self._delete(self.resource_type(resource), namespace, name)

    # -- the API semantics --------------------------------------------------------------

    def _type_of(self, obj: dict[str, Any]) -> ResourceType:
        rtype = self._by_name.get(obj.get("kind", ""))
        if rtype is None or rtype.api_version != obj.get("apiVersion"):
            raise FakeKubeError(
                400, f"no kind {obj.get('kind')!r} is registered for {obj.get('apiVersion')!r}"
            )
        return rtype

    def _existing(self, rtype: ResourceType, namespace: str | None, name: str) -> dict:
        found = self._store.get((rtype, namespace or "", name))
        if found is None:
            raise FakeKubeError(
                404, f'{rtype.plural} "{name}" not found', name=name, kind=rtype.plural
            )
        return copy.deepcopy(found)

    def _admit(self, rtype: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        """Defaulting and consistency checks shared by create and replace."""
        if not isinstance(body, dict):
            raise FakeKubeError(400, "the request body must be a JSON object")
        obj = copy.deepcopy(body)
        obj.setdefault("apiVersion", rtype.api_version)
        obj.setdefault("kind", rtype.kind)
        if (obj["apiVersion"], obj["kind"]) != (rtype.api_version, rtype.kind):
            raise FakeKubeError(
                400, f"the body is a {obj['kind']} ({obj['apiVersion']}), not a {rtype.kind}"
            )
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise FakeKubeError(400, "metadata must be an object")
        if rtype.namespaced:
            if namespace is None:
                raise FakeKubeError(400, f"{rtype.plural} are namespaced: name a namespace")
            if meta.setdefault("namespace", namespace) != namespace:
                raise FakeKubeError(
                    400,
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request",
                )
            if (self._by_name["Namespace"], "", namespace) not in self._store:
                raise FakeKubeError(
                    404, f'namespaces "{namespace}" not found', name=namespace, kind="namespaces"
                )
        else:
            meta.pop("namespace", None)
        return obj

    def _check(self, rtype: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        obj = schema.normalize(obj)
        found = schema.problems(obj)
        if found:
            name = obj["metadata"].get("name")
            causes = [{"reason": "FieldValueInvalid", "field": p, "message": r} for p, r in found]
            summary = ", ".join(f"{p}: {r}" for p, r in found)
            raise FakeKubeError(
                422,
                f'{rtype.kind} "{name}" is invalid: [{summary}]',
                name=name,
                group=rtype.group,
                kind=rtype.kind,
                causes=causes,
            )
        return obj

    def _create(self, rtype: ResourceType, namespace: str | None, body: Any) -> dict[str, Any]:
        obj = self._admit(rtype, namespace, body)
        meta = obj["metadata"]
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        for server_set in ("uid", "resourceVersion", "creationTimestamp", "deletionTimestamp"):
            meta.pop(server_set, None)
        if rtype.kind == "Namespace":
            obj["status"] = {"phase": "Active"}
        obj = self._check(rtype, obj)
        key = (rtype, meta.get("namespace", ""), meta["name"])
        with self._lock:
            if key in self._store:
                raise FakeKubeError(
                    409,
                    f'{rtype.plural} "{meta["name"]}" already exists',
                    name=meta["name"],
                    kind=rtype.plural,
                )
            obj["metadata"].update(
                uid=str(uuid.uuid4()),
                resourceVersion=str(next(self._revision)),
                creationTimestamp=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                generation=1,
            )
            self._store[key] = obj
        self._fire("created", rtype, obj)
        return copy.deepcopy(obj)

    def _replace(
        self, rtype: ResourceType, namespace: str | None, name: str, body: Any, part: str
    ) -> dict[str, Any]:
        """Store ``body`` over an existing object; ``part`` is "main" (status kept when the
        kind has a status subresource), "status" (only status taken) or "all"."""
        obj = self._admit(rtype, namespace, body)
        with self._lock:
            old = self._existing(rtype, namespace, name)
            given = obj["metadata"].get("resourceVersion")
            if given and given != old["metadata"]["resourceVersion"]:
                raise FakeKubeError(
                    409,
                    f'Operation cannot be fulfilled on {rtype.plural} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                    reason="Conflict",
                    name=name,
                    kind=rtype.plural,
                )
            if obj["metadata"].get("name", name) != name:
                raise FakeKubeError(
                    400, "the name of the object does not match the name in the URL"
                )
            if part == "status":
                obj = {**old, "status": obj.get("status")}
            elif part == "main" and rtype.has_status:
                obj["status"] = old.get("status")
            for kept in ("uid", "creationTimestamp", "namespace", "name", "generation"):
                if kept in old["metadata"]:
                    obj["metadata"][kept] = old["metadata"][kept]
            obj = self._check(rtype, obj)
            if _content(obj) != _content(old):
                obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            obj["metadata"]["resourceVersion"] = str(next(self._revision))
            self._store[(rtype, namespace or "", name)] = obj
        self._fire("updated", rtype, obj)
        return copy.deepcopy(obj)

    def _patch(self, request: _Request, content_type: str, patch: Any) -> dict[str, Any]:
        rtype, namespace, name = request.rtype, request.namespace, request.name
        old = self._existing(rtype, namespace, name)
        try:
            if content_type == "application/json-patch+json":
                new = jsonpatch.apply_patch(old, patch)
            elif content_type in (
                "application/merge-patch+json",
                "application/strategic-merge-patch+json",
            ):
                # Strategic merge is treated as a JSON merge patch: lists are replaced.
                new = _merge_patch(old, patch)
            else:
                raise FakeKubeError(415, f"the fake does not support patch type {content_type}")
        except (jsonpatch.JsonPatchException, jsonpointer.JsonPointerException, TypeError) as e:
            raise FakeKubeError(422, f"the patch cannot be applied: {e!r}") from e
        # new carries old's resourceVersion, so a concurrent change makes this a 409.
        return self._replace(rtype, namespace, name, new, part=request.subresource or "main")

    def _delete(self, rtype: ResourceType, namespace: str | None, name: str) -> dict[str, Any]:
        with self._lock:
            obj = self._existing(rtype, namespace, name)
            gone = []
            if rtype.kind == "Namespace":
                # Real namespaces pass through Terminating; the fake removes everything at once.
                gone = [
                    (k[0], v) for k, v in sorted(self._store.items(), key=_by_name) if k[1] == name
                ]
                for t, child in gone:
                    del self._store[(t, name, child["metadata"]["name"])]
                obj["status"] = {"phase": "Terminating"}
            del self._store[(rtype, namespace or "", name)]
        for t, child in gone:
            self._fire("deleted", t, child)
        self._fire("deleted", rtype, obj)
        return obj

    def _select(
        self, rtype: ResourceType, namespace: str | None, query: dict[str, str]
    ) -> list[dict[str, Any]]:
        labels = _parse_selector(query.get("labelSelector", ""), _LABEL_TERM)
        fields = _parse_selector(query.get("fieldSelector", ""), _FIELD_TERM)
        with self._lock:
            found = [
                copy.deepcopy(obj)
                for (t, ns, _), obj in sorted(self._store.items(), key=_by_name)
                if t == rtype and namespace in (None, ns)
            ]
        return [
            obj
            for obj in found
            if all(test(obj["metadata"].get("labels") or {}) for test in labels)
            and all(test(obj) for test in fields)
        ]

    def _fire(self, event: str, rtype: ResourceType, obj: dict[str, Any]) -> None:
        for hook in list(self._hooks.get((event, rtype), ())):
            try:
                hook(copy.deepcopy(obj))
            except Exception as e:  # a broken hook must not break the API call under test
                logger.exception("fake Kubernetes %s hook for %s failed", event, rtype.kind)
                self.hook_errors.append(e)

    # -- HTTP ---------------------------------------------------------------------------

    def handle(self, method: str, target: str, headers: Any, body: Any) -> tuple[int, Any]:
        """Answer one HTTP request: (status code, JSON body)."""
        url = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [unquote(p) for p in url.path.split("/") if p]
        try:
            if url.path.rstrip("/") in self._discovery_docs:
                if method != "GET":
                    raise FakeKubeError(405, f"{method} is not allowed on {url.path}")
                return 200, self._discovery_docs[url.path.rstrip("/")]
            request = self._route(parts, query)
            verb = _verb(method, request)
            resource = request.rtype.plural + (
                f"/{request.subresource}" if request.subresource else ""
            )
            self._receive(Call(verb, resource, request.namespace, request.name))
            return self._dispatch(verb, request, headers, body)
        except FakeKubeError as e:
            return e.code, e.body

    def _receive(self, call: Call) -> None:
        """Record a request, then fail or hang it if an injected failure matches."""
        with self._lock:
            self._calls.append(call)
            fault = self._take_fault(call.verb, call.resource)
        if fault is not None:
            if fault.hang:
                self._stopping.wait(fault.hang_seconds)
                raise FakeKubeError(504, f"injected hang of {call.verb} {call.resource} ended")
            raise FakeKubeError(fault.status, f"injected failure of {call.verb} {call.resource}")

    @property
    def stopping(self) -> bool:
        """True once :meth:`stop` was called (long-running streams end then)."""
        return self._stopping.is_set()

    def stream_target(self, subresource: str, namespace: str, name: str) -> dict[str, Any]:
        """The Pod a ``pods/<name>/<subresource>`` stream (log, portforward) is for, after
        recording the request as ``("get", "pods/<subresource>")`` and applying injected
        failures; raises FakeKubeError (404 when there is no such Pod)."""
        self._receive(Call("get", f"pods/{subresource}", namespace, name))
        return self._existing(self.resource_type("pods"), namespace, name)

    def _take_fault(self, verb: str, resource: str) -> _Fault | None:
        return take_fault(self._faults, lambda f: (f.verb, f.resource) == (verb, resource))

    def _dispatch(self, verb: str, request: _Request, headers: Any, body: Any) -> tuple[int, Any]:
        rtype, namespace, name = request.rtype, request.namespace, request.name
        if request.query.get("watch") in ("true", "1"):
            raise FakeKubeError(400, "the fake Kubernetes API does not support watch; poll instead")
        if verb == "create":
            return 201, self._create(rtype, namespace, body)
        if verb == "get":
            return 200, self._existing(rtype, namespace, name)
        if verb in ("list", "deletecollection"):
            items = self._select(rtype, namespace, request.query)
            if verb == "deletecollection":
                items = [
                    self._delete(rtype, o["metadata"].get("namespace"), o["metadata"]["name"])
                    for o in items
                ]
            with self._lock:
                revision = str(next(self._revision))
            return 200, {
                "kind": f"{rtype.kind}List",
                "apiVersion": rtype.api_version,
                "metadata": {"resourceVersion": revision},
                "items": items,
            }
        if verb == "replace":
            return 200, self._replace(rtype, namespace, name, body, request.subresource or "main")
        if verb == "patch":
            content_type = (headers.get("Content-Type") or "").split(";")[0].strip()
            return 200, self._patch(request, content_type, body)
        return 200, self._delete(rtype, namespace, name)

    def _route(self, parts: list[str], query: dict[str, str]) -> _Request:
        """Split an API path into resource type, namespace, name and subresource."""
        if parts[:1] == ["api"] and len(parts) > 2:
            api_version, rest = parts[1], parts[2:]
        elif parts[:1] == ["apis"] and len(parts) > 3:
            api_version, rest = f"{parts[1]}/{parts[2]}", parts[3:]
        else:
            raise FakeKubeError(404, f"the server could not find /{'/'.join(parts)}")
        served = {t.plural: t for t in self.types if t.api_version == api_version}
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] in served:
            namespace, rest = rest[1], rest[2:]
        rtype = served.get(rest[0])
        if rtype is None or len(rest) > 3 or (namespace and not rtype.namespaced):
            raise FakeKubeError(404, f"the server could not find /{'/'.join(parts)}")
        if len(rest) == 3 and not (rest[2] == "status" and rtype.has_status):
            raise FakeKubeError(404, f"{rtype.plural} have no subresource {rest[2]!r}")
        if len(rest) > 1 and rtype.namespaced and namespace is None:
            raise FakeKubeError(404, f"{rtype.plural} are namespaced; use /namespaces/NS/...")
        name = rest[1] if len(rest) > 1 else None
        return _Request(rtype, namespace, name, rest[2] if len(rest) == 3 else None, query)


def _discovery(types: list[ResourceType], address: str) -> dict[str, dict[str, Any]]:
    """The discovery documents clients read before they call the API, by path."""
    major, minor, _ = schema.KUBERNETES_VERSION.split(".")
    unknown = ("gitCommit", "gitTreeState", "buildDate", "goVersion", "compiler")
    cidrs = [{"clientCIDR": "0.0.0.0/0", "serverAddress": address}]
    docs: dict[str, dict[str, Any]] = {
        "/version": {
            **dict.fromkeys(unknown, "fake"),
            **{"major": major, "minor": minor, "platform": "linux/amd64"},
            "gitVersion": f"v{schema.KUBERNETES_VERSION}",
        },
        "/api": {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": cidrs},
        "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": []},
    }
    verbs = ["create", "delete", "deletecollection", "get", "list", "patch", "update"]
    for t in types:
        path = f"/apis/{t.api_version}" if t.group else f"/api/{t.api_version}"
        if t.group and f"/apis/{t.group}" not in docs:
            version = {"groupVersion": t.api_version, "version": t.api_version.split("/")[1]}
            group = {"name": t.group, "versions": [version], "preferredVersion": version}
            docs[f"/apis/{t.group}"] = {"kind": "APIGroup", "apiVersion": "v1", **group}
            docs["/apis"]["groups"].append(group)
        listing = docs.setdefault(
            path,
            {"kind": "APIResourceList", "groupVersion": t.api_version, "resources": []},
        )
        main = {"name": t.plural, "singularName": t.kind.lower(), "namespaced": t.namespaced}
        listing["resources"].append({**main, "kind": t.kind, "verbs": verbs})
        if t.has_status:
            status = {**main, "name": f"{t.plural}/status", "verbs": ["get", "patch", "update"]}
            listing["resources"].append({**status, "kind": t.kind})
    return docs


def _verb(method: str, request: _Request) -> str:
    verb = _VERB_OF.get((method, request.name is not None))
    if verb is None or (request.subresource and verb not in ("get", "replace", "patch")):
        raise FakeKubeError(405, f"{method} is not allowed here")
    return verb


_VERB_OF = {
    ("GET", True): "get",
    ("GET", False): "list",
    ("POST", False): "create",
    ("PUT", True): "replace",
    ("PATCH", True): "patch",
    ("DELETE", True): "delete",
    ("DELETE", False): "deletecollection",
}


def _by_name(item: tuple[tuple[ResourceType, str, str], Any]) -> tuple[str, str]:
    return item[0][1:]


def _content(obj: dict[str, Any]) -> dict[str, Any]:
    """What counts for ``generation``: everything but metadata and status."""
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


# -- selectors ------------------------------------------------------------------------------

_LABEL_TERM = re.compile(
    r"\s*(?:(?P<key>[^\s!=,()]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,()]*)"
    r"|(?P<skey>[^\s!=,()]+)\s+(?P<setop>in|notin)\s+\((?P<values>[^()]*)\)"
    r"|(?P<neg>!?)\s*(?P<ekey>[^\s!=,()]+))\s*"
)
_FIELD_TERM = re.compile(r"\s*(?P<key>[^\s!=,]+)\s*(?P<op>==|=|!=)\s*(?P<value>[^\s,]*)\s*")


def _parse_selector(text: str, term: re.Pattern[str]) -> list[Callable[[dict], bool]]:
    """Parse a label or field selector into predicates over labels / the whole object."""
    tests = []
    for part in re.split(r",(?![^()]*\))", text) if text.strip() else []:
        m = term.fullmatch(part)
        if m is None:
            raise FakeKubeError(400, f"unable to parse requirement {part!r} in selector {text!r}")
        tests.append(_requirement(m.groupdict(), term is _FIELD_TERM))
    return tests


def _requirement(g: dict[str, str | None], is_field: bool) -> Callable[[dict], bool]:
    def value_of(obj: dict) -> Any:
        if not is_field:
            return obj.get(key)
        for step in key.split("."):
            obj = obj.get(step) if isinstance(obj, dict) else None
        return None if obj is None else json.dumps(obj).strip('"')

    key = g.get("key") or g.get("skey") or g.get("ekey")
    if g.get("op"):
        wanted, negate = g["value"], g["op"] == "!="
        return lambda obj: (value_of(obj) == wanted) != negate
    if g.get("setop"):
        values = {v.strip() for v in g["values"].split(",")}
        negate = g["setop"] == "notin"
        return lambda obj: (value_of(obj) in values) != negate
    negate = bool(g.get("neg"))
    return lambda obj: (key in obj) != negate


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge_patch(out.get(key), value)
    return out


# -- HTTP plumbing ------------------------------------------------------------------------


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    fake: FakeKubeServer

    def __init__(self, *args: Any) -> None:
        self._connections: set[Any] = set()
        super().__init__(*args)

    def process_request(self, request: Any, client_address: Any) -> None:
        self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        # Kept-alive client connections would otherwise hold handler threads after stop().
        for connection in list(self._connections):
            try:
                connection.shutdown(2)
            except OSError:
                pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the client's connection pool expects
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _HTTPServer

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            code, answer = 400, FakeKubeError(400, "the request body is not JSON").body
        else:
            code, answer = self.server.fake.handle(self.command, self.path, self.headers, body)
        data = json.dumps(answer).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:  # the client gave up (timeout) or the server is stopping
            self.close_connection = True

    def do_GET(self) -> None:
        from recc.testing import pod_streams  # pod logs and port-forward stream, not JSON

        if not pod_streams.handle(self):
            self._answer()

    do_POST = do_PUT = do_PATCH = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("fake Kubernetes API: " + format, *args)


@contextmanager
def fake_kubernetes(port: int = 0) -> Iterator[FakeKubeServer]:
    """Run a :class:`FakeKubeServer` on 127.0.0.1 (a free port unless ``port`` is given) for
    the duration of a ``with`` block.

    Example
    -------
    >>> import kubernetes.client
    >>> from recc.testing import fake_kubernetes
    >>> with fake_kubernetes() as kube:
    ...     core = kubernetes.client.CoreV1Api(kube.api_client())
    ...     _ = core.create_namespace({"metadata": {"name": "demo"}})
    ...     [ns.metadata.name for ns in core.list_namespace(label_selector="!x").items]
    ['default', 'demo', 'kube-public', 'kube-system']
    """
    server = FakeKubeServer().start(port)
    try:
        yield server
    finally:
        server.stop()


def take_fault(faults: list[Any], matches: Callable[[Any], bool]) -> Any | None:
    """The first pending fault that ``matches``, counting one use; a fault whose ``times``
    run out leaves ``faults`` (``times`` None: it stays until cleared)."""
    for fault in faults:
        if matches(fault):
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    faults.remove(fault)
            return fault
    return None
