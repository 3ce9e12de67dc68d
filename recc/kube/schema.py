"""Validate Kubernetes objects the way the API server would, without an API server.

Built-in kinds are checked against the official OpenAPI schemas shipped by
``kubernetes-validate`` in strict mode (an unknown field is an error, as with
``kubectl apply --validate=strict``) at :data:`KUBERNETES_VERSION`. Custom resources of the
dask-kubernetes operator (group ``kubernetes.dask.org``) are checked against the
``openAPIV3Schema`` of the CRDs that the installed ``dask_kubernetes`` package ships, after
the same decoding the API server applies to custom resources (non-nullable nulls dropped,
schema defaults filled in). Names, label keys and label values are checked with the API
server's rules (DNS-1123/DNS-1035 names, qualified names, 63-character label values).

Example
-------
>>> from recc.kube.schema import validate, ManifestInvalid
>>> validate({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "recc-alice-1"}})
>>> try:
...     validate({"apiVersion": "v1", "kind": "Namespace",
...               "metadata": {"name": "Bad_Name"}, "spek": {}})
... except ManifestInvalid as e:
...     print(e.problems[0][0])
metadata.name
"""

from __future__ import annotations

import copy
import re
from functools import cache, lru_cache
from importlib import resources
from typing import Any

import jsonschema
import kubernetes_validate.utils
import yaml
from referencing import Registry, Resource

from recc.errors import RECCError

KUBERNETES_VERSION = "1.32.0"
"""The Kubernetes version whose schemas built-in kinds are validated against.

Matches the default EKS control-plane version of RECC's Terraform platform module.
"""

CUSTOM_GROUP = "kubernetes.dask.org"
"""API group of the dask-kubernetes operator's custom resources."""

# Where dask-kubernetes keeps its fully expanded CRDs (the files under customresources/ are
# templates with $refs that only its build tooling resolves).
_CRD_DIR = ("operator", "deployment", "helm", "dask-kubernetes-operator", "crds")
# The CRDs are ~900 kB of YAML: the C loader reads them in a fraction of the time.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DEFINITIONS_URI = "https://kubernetes.io/api/_definitions.json"
_OBJECT_META = {
    "$ref": f"{_DEFINITIONS_URI}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
}

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_NAME_RULES: dict[str, tuple[str, int, str]] = {
    # rule name -> (regex, max length, example)
    "DNS-1123 label": (_DNS_LABEL, 63, "recc-alice-1"),
    "DNS-1035 label": (r"[a-z]([-a-z0-9]*[a-z0-9])?", 63, "recc-alice-1-scheduler"),
    "DNS-1123 subdomain": (rf"{_DNS_LABEL}(\.{_DNS_LABEL})*", 253, "recc-alice-1.config"),
    "path segment": (r"(?!\.\.?$)[^/%]+", 10**6, "recc:alice"),
}
# Which rule the API server applies to metadata.name; every other kind uses a subdomain.
_NAME_RULE_OF_KIND = {
    "Namespace": "DNS-1123 label",
    "Service": "DNS-1035 label",
    "Role": "path segment",
    "RoleBinding": "path segment",
    "ClusterRole": "path segment",
    "ClusterRoleBinding": "path segment",
}
_QUALIFIED_NAME = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")

Problem = tuple[str, str]
"""One validation failure: (field path such as ``spec.containers[0].image``, reason)."""


class ManifestInvalid(RECCError, ValueError):
    """A Kubernetes object fails its schema; ``problems`` lists (path, reason) pairs."""

    def __init__(self, kind: str, name: str, problems: list[Problem]):
        self.kind = kind
        self.name = name
        self.problems = problems
        details = "; ".join(f"{path}: {reason}" for path, reason in problems)
        super().__init__(f"{kind} {name!r} is invalid: {details}")


def validate(obj: dict[str, Any]) -> None:
    """Raise :class:`ManifestInvalid` unless ``obj`` is a valid object of its kind.

    Every failing field is reported, each with its path and the reason.

    Example
    -------
    >>> validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
    ...           "data": {"threads": "2"}})
    """
    found = problems(obj)
    if found:
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        raise ManifestInvalid(str(obj.get("kind")), str(meta.get("name")), found)


def problems(obj: dict[str, Any]) -> list[Problem]:
    """Every reason ``obj`` is invalid, as (path, reason) pairs; empty when it is valid."""
    kind, api_version = obj.get("kind"), obj.get("apiVersion")
    if not isinstance(kind, str) or not isinstance(api_version, str):
        return [("kind", "apiVersion and kind are required strings (for example: v1, Namespace)")]
    try:
        validator = _validator(api_version, kind)
    except LookupError as e:
        return [("kind", str(e))]
    found = [p for error in validator.iter_errors(normalize(obj)) for p in _explain(error)]
    return sorted(set(found + _metadata_problems(kind, obj.get("metadata"))))


def normalize(obj: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``obj`` as the API server stores it after decoding.

    Built-in kinds decode into typed structs, so null fields vanish. Custom resources keep
    nulls only where the schema says ``nullable`` and get the schema's defaults filled in.
    """
    if _is_custom(obj.get("apiVersion", "")):
        try:
            schema = crd_schema(str(obj.get("kind")))
        except LookupError:
            return copy.deepcopy(obj)
        return _decode_structural(copy.deepcopy(obj), schema)
    return _drop_nulls(copy.deepcopy(obj))


def check_name(kind: str, name: Any) -> str | None:
    """Why ``name`` cannot be the ``metadata.name`` of a ``kind``; None when it can.

    >>> check_name("Namespace", "recc-alice-1") is None
    True
    >>> print(check_name("Service", "1-scheduler")[:32])
    must be a DNS-1035 label: at mos
    """
    rule = _NAME_RULE_OF_KIND.get(kind, "DNS-1123 subdomain")
    pattern, limit, example = _NAME_RULES[rule]
    if isinstance(name, str) and len(name) <= limit and re.fullmatch(pattern, name):
        return None
    what = {
        "DNS-1123 label": "at most 63 lower-case letters, digits or '-', starting and ending "
        "with a letter or digit",
        "DNS-1035 label": "at most 63 lower-case letters, digits or '-', starting with a "
        "letter and ending with a letter or digit",
        "DNS-1123 subdomain": "at most 253 characters of DNS-1123 labels joined by '.'",
        "path segment": "any string except '.' and '..' without '/' or '%'",
    }[rule]
    return f"must be a {rule}: {what} (for example: {example})"


def custom_resource_definitions() -> dict[str, dict[str, Any]]:
    """The dask-kubernetes CRDs shipped in the installed package, keyed by kind."""
    return dict(_crds())


def crd_schema(kind: str) -> dict[str, Any]:
    """The ``openAPIV3Schema`` of the dask-kubernetes CRD for ``kind`` (e.g. ``DaskCluster``).

    >>> sorted(crd_schema("DaskCluster")["properties"]["spec"]["required"])
    ['scheduler', 'worker']
    """
    try:
        crd = _crds()[kind]
    except KeyError:
        known = ", ".join(sorted(_crds()))
        raise LookupError(f"no CRD for kind {kind!r} in dask_kubernetes (known: {known})") from None
    (version,) = [v for v in crd["spec"]["versions"] if v.get("storage")]
    return version["schema"]["openAPIV3Schema"]


@lru_cache(maxsize=1)
def _crds() -> dict[str, dict[str, Any]]:
    directory = resources.files("dask_kubernetes").joinpath(*_CRD_DIR)
    crds = {}
    for entry in directory.iterdir():
        if entry.name.endswith(".yaml"):
            crd = yaml.load(entry.read_text(), Loader=_YAML_LOADER)
            crds[crd["spec"]["names"]["kind"]] = crd
    return crds


def _is_custom(api_version: str) -> bool:
    return api_version.partition("/")[0] == CUSTOM_GROUP


@cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    if _is_custom(api_version):
        crd = _crds().get(kind)
        if crd is None or api_version != f"{CUSTOM_GROUP}/{_storage_version(crd)}":
            raise LookupError(f"{CUSTOM_GROUP} has no kind {kind!r} in {api_version}")
        schema = _strict(crd_schema(kind))
        schema["properties"].update(
            apiVersion={"const": api_version}, kind={"const": kind}, metadata=_OBJECT_META
        )
    else:
        schema = _builtin_schema(api_version, kind)
    return jsonschema.Draft202012Validator(schema, registry=_registry())


def _storage_version(crd: dict[str, Any]) -> str:
    return next(v["name"] for v in crd["spec"]["versions"] if v.get("storage"))


def _schema_dir() -> str:
    return f"kubernetes-json-schema/v{KUBERNETES_VERSION}-local-strict"


def _builtin_schema(api_version: str, kind: str) -> dict[str, Any]:
    # kubernetes-validate names files <kind>-<group prefix>-<version>.json,
    # e.g. rbac.authorization.k8s.io/v1 Role -> role-rbac-v1.json, v1 Pod -> pod-v1.json.
    group, _, version = api_version.rpartition("/")
    suffix = f"{group.split('.')[0]}-{version}" if group else version
    try:
        return kubernetes_validate.utils.schema_contents(
            f"{_schema_dir()}/{kind.lower()}-{suffix}.json", KUBERNETES_VERSION
        )
    except FileNotFoundError:
        raise LookupError(
            f"no schema for kind {kind!r} in apiVersion {api_version!r} at Kubernetes "
            f"{KUBERNETES_VERSION} (for example: apiVersion apps/v1, kind Deployment)"
        ) from None


@lru_cache(maxsize=1)
def _registry() -> Registry:
    definitions = kubernetes_validate.utils.schema_contents(
        f"{_schema_dir()}/_definitions.json", KUBERNETES_VERSION
    )
    return Registry().with_resource(_DEFINITIONS_URI, Resource.from_contents(definitions))


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Translate a CRD's structural OpenAPI v3 schema into strict JSON Schema.

    Objects reject fields their schema does not declare (the API server would prune them,
    and ``fieldValidation=Strict`` rejects them), unless ``x-kubernetes-preserve-unknown-fields``.
    ``nullable`` becomes an explicit ``null`` type; int-or-string fields accept both.
    """
    out = {
        k: v for k, v in schema.items() if k not in ("properties", "items", "additionalProperties")
    }
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema:
        out["properties"] = {k: _strict(v) for k, v in schema["properties"].items()}
    if "items" in schema:
        out["items"] = _strict(schema["items"])
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out["additionalProperties"] = _strict(extra)
    elif extra is not None:
        out["additionalProperties"] = extra
    elif schema.get("type") == "object" and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def _decode_structural(value: Any, schema: dict[str, Any]) -> Any:
    """Drop non-nullable nulls and fill defaults, as the API server decodes custom resources."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key in list(value):
            sub = props.get(key, extra if isinstance(extra, dict) else None)
            if value[key] is None and sub is not None and not sub.get("nullable"):
                del value[key]
            elif sub is not None:
                value[key] = _decode_structural(value[key], sub)
        for key, sub in props.items():
            if key not in value and "default" in sub:
                value[key] = _decode_structural(copy.deepcopy(sub["default"]), sub)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        value[:] = [_decode_structural(v, schema["items"]) for v in value]
    return value


def _drop_nulls(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _explain(error: jsonschema.ValidationError) -> list[Problem]:
    """Turn one jsonschema error into Kubernetes-style (field path, reason) pairs."""
    path = list(error.absolute_path)
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        allowed = error.schema.get("properties", {})
        return [(_path(path + [k]), "unknown field") for k in error.instance if k not in allowed]
    if error.validator == "required":
        missing = [k for k in error.validator_value if k not in error.instance]
        return [(_path(path + [k]), "required field is missing") for k in missing]
    if error.validator in ("oneOf", "anyOf") and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return [(_path(path + list(best.relative_path)), best.message)]
    return [(_path(path), error.message)]


def _path(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "<root>"


def _metadata_problems(kind: str, meta: Any) -> list[Problem]:
    """The checks the API server makes on names and labels beyond the OpenAPI schema."""
    if not isinstance(meta, dict):
        return [("metadata", "required field is missing")]
    found = []
    if meta.get("name") is None and not meta.get("generateName"):
        found.append(("metadata.name", "name or generateName is required"))
    elif meta.get("name") is not None and (why := check_name(kind, meta["name"])):
        found.append(("metadata.name", f"{meta['name']!r} {why}"))
    if meta.get("namespace") is not None and (why := check_name("Namespace", meta["namespace"])):
        found.append(("metadata.namespace", f"{meta['namespace']!r} {why}"))
    for field in ("labels", "annotations"):
        for key, value in (meta.get(field) or {}).items():
            if why := _qualified_name_problem(key):
                found.append((f"metadata.{field}.{key}", f"key {key!r} {why}"))
            if (
                field == "labels"
                and isinstance(value, str)
                and (why := _label_value_problem(value))
            ):
                found.append((f"metadata.labels.{key}", f"value {value!r} {why}"))
    return found


def _qualified_name_problem(key: str) -> str | None:
    prefix, _, name = key.rpartition("/")
    if prefix and check_name("ConfigMap", prefix):
        return "has a prefix that is not a DNS-1123 subdomain (for example: recc.io/cluster)"
    if len(name) > 63 or not _QUALIFIED_NAME.fullmatch(name):
        return (
            "must be at most 63 letters, digits, '-', '_' or '.', starting and ending with a "
            "letter or digit, with an optional DNS-subdomain prefix and '/' (for example: "
            "recc.io/cluster)"
        )
    return None


def _label_value_problem(value: str) -> str | None:
    if value == "" or (len(value) <= 63 and _QUALIFIED_NAME.fullmatch(value)):
        return None
    return (
        "must be empty or at most 63 letters, digits, '-', '_' or '.', starting and ending "
        "with a letter or digit (for example: alice.smith)"
    )
