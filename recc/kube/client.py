"""The Kubernetes API client for the EKS platform, authenticated as the caller's AWS identity.

The endpoint and CA come from ``recc.eks.endpoint`` / ``recc.eks.ca-data`` when set, else from
EKS ``DescribeCluster(recc.eks.cluster-name)``. The bearer token is made from the AWS
credentials (:func:`recc.kube.auth.eks_token`) and re-made before it can expire, so a client
lives as long as a cluster does. No kubectl, no kubeconfig, no AWS CLI.

Example
-------
>>> import kubernetes.client  # doctest: +SKIP
>>> with api_client() as api:  # doctest: +SKIP
...     kubernetes.client.VersionApi(api).get_code().git_version
'v1.32.0'
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes.client
import urllib3
from botocore.exceptions import BotoCoreError, ClientError

from recc import aws, config
from recc.errors import ConfigError
from recc.kube.auth import eks_token

# A token is accepted for 15 minutes; re-make it well before.
_TOKEN_LIFETIME = 10 * 60
_CONFIGURE_HINT = "run `recc platform configure --from-terraform outputs.json`"


def eks_setting(key: str, example: str) -> Any:
    """The value of ``recc.<key>``; :class:`ConfigError` saying where to set it when unset.

    >>> import dask
    >>> with dask.config.set({"recc.eks.cluster-name": None}):
    ...     eks_setting("eks.cluster-name", "research-dask")
    Traceback (most recent call last):
    recc.errors.ConfigError: recc.eks.cluster-name is not set (for example: research-dask): \
set it in ~/.config/dask/recc.yaml or DASK_RECC__EKS__CLUSTER_NAME, or run `recc platform \
configure --from-terraform outputs.json`
    """
    value = config.get(key)
    if value in (None, "", [], {}):
        env = "DASK_RECC__" + key.upper().replace(".", "__").replace("-", "_")
        raise ConfigError(
            f"recc.{key} is not set (for example: {example}): set it in "
            f"~/.config/dask/recc.yaml or {env}, or {_CONFIGURE_HINT}"
        )
    return value


@dataclass(frozen=True)
class Endpoint:
    """Where the platform's Kubernetes API is: URL and base64 PEM CA (None for ``http://``)."""

    url: str
    ca_data: str | None


def platform_endpoint(session: Any = None) -> Endpoint:
    """The Kubernetes API of the configured EKS cluster (config first, else DescribeCluster)."""
    url, ca_data = config.get("eks.endpoint"), config.get("eks.ca-data")
    if url and (ca_data or url.startswith("http://")):
        return Endpoint(url, ca_data)
    name = eks_setting("eks.cluster-name", "research-dask")
    session = session or aws.session()
    try:
        cluster = session.client("eks").describe_cluster(name=name)["cluster"]
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            raise ConfigError(
                f"recc.eks.cluster-name={name!r}: no such EKS cluster in region "
                f"{session.region_name} (check recc.eks.cluster-name and recc.eks.region, or "
                f"{_CONFIGURE_HINT})"
            ) from e
        raise
    except BotoCoreError as e:
        raise ConfigError(
            f"cannot reach EKS to describe cluster {name!r}: {e} (check your AWS credentials, "
            "recc.eks.profile and recc.eks.region)"
        ) from e
    url = url or cluster.get("endpoint")
    ca_data = ca_data or (cluster.get("certificateAuthority") or {}).get("data")
    if not url:
        raise ConfigError(f"EKS cluster {name!r} has no API endpoint yet; set recc.eks.endpoint")
    if url.startswith("https://") and not ca_data:
        raise ConfigError(
            f"EKS cluster {name!r} returned no certificate authority: set recc.eks.ca-data "
            f"or {_CONFIGURE_HINT}"
        )
    return Endpoint(url, ca_data)


def _token_refresher(cluster_name: str, session: Any) -> Any:
    made_at = [-float("inf")]

    def refresh(conf: kubernetes.client.Configuration) -> None:
        if time.monotonic() - made_at[0] > _TOKEN_LIFETIME:
            conf.api_key["authorization"] = eks_token(cluster_name, session)
            made_at[0] = time.monotonic()

    return refresh


def api_client(session: Any = None) -> kubernetes.client.ApiClient:
    """A ``kubernetes.client.ApiClient`` for the platform, authenticated as the AWS caller.

    ``session``: a boto3 session (default: :func:`recc.aws.session`, from ``recc.eks.profile``
    and ``recc.eks.region``). Close it when done (it is a context manager).
    """
    session = session or aws.session()
    endpoint = platform_endpoint(session)
    name = eks_setting("eks.cluster-name", "research-dask")
    conf = kubernetes.client.Configuration(host=endpoint.url)
    conf.api_key_prefix["authorization"] = "Bearer"
    conf.refresh_api_key_hook = _token_refresher(name, session)
    # The client sends a bearer token only if one is there already (and only then calls the
    # hook to refresh it): without this first token every request would go out anonymous.
    conf.refresh_api_key_hook(conf)
    # Only connection failures are retried: a timed-out read may have had its effect, and the
    # callers (idempotent deletes, bounded waits) decide what to do about it.
    conf.retries = urllib3.Retry(total=3, connect=3, read=0, status=0, other=0, redirect=0)
    if endpoint.url.startswith("http://"):
        conf.proxy = None  # a loopback test server; never through a proxy
    else:
        # A file, not ca_cert_data: the client's websocket streams (port-forward, logs with
        # follow) read only ssl_ca_cert and would otherwise trust the public CAs instead.
        conf.ssl_ca_cert = str(_ca_file(_pem(endpoint.ca_data or "")))
    return kubernetes.client.ApiClient(conf)


def _ca_file(pem: str) -> Path:
    """The platform's CA certificate in the user's cache (public data), written once."""
    path = config.cache_dir() / "kube" / f"ca-{hashlib.sha256(pem.encode()).hexdigest()[:16]}.pem"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        partial.write_text(pem)
        partial.replace(path)
    return path


def _pem(ca_data: str) -> str:
    try:
        return base64.b64decode(ca_data, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError) as e:
        raise ConfigError(
            "recc.eks.ca-data is not base64 PEM (EKS's certificateAuthority.data, for example "
            f"LS0tLS1CRUdJTi...): {e}"
        ) from e
