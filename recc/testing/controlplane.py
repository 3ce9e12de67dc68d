"""A real Kubernetes control plane on loopback: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler of the pinned version (:mod:`recc.testing.assets`).

The API server authenticates with client certificates signed by the control plane's own CA
(and, when given, a token webhook: RECC's EKS tokens, :mod:`recc.testing.eks_auth`), authorizes
with RBAC (and the webhook), and runs the standard admission plugins, Pod Security among them.
The controller manager runs every default controller (namespace deletion with finalizers,
garbage collection, ReplicaSets and Deployments, EndpointSlices, ResourceQuota, service
account tokens, node lifecycle); the scheduler binds Pods to Nodes by their resources,
selectors and taints. Nothing is stubbed: what a client sees is Kubernetes.

Every process runs detached with its log in the control plane's directory, and
:meth:`ControlPlane.stop` stops them all (also when start-up failed half way).

Example
-------
>>> with ControlPlane(Path("/tmp/cp")) as cp:  # doctest: +SKIP
...     core = kubernetes.client.CoreV1Api(cp.api_client())
...     core.create_namespace({"metadata": {"name": "demo"}})
...     alice = cp.api_client(user="alice", groups=("researchers",))  # RBAC applies to alice
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from recc import procs
from recc.errors import BackendError
from recc.testing.assets import ensure_assets
from recc.tls import issue, new_ca, pem, write_private

SERVICE_CIDR = "10.96.0.0/16"
# The in-cluster name of the API server: what Pods see as KUBERNETES_SERVICE_HOST's certificate.
_API_SERVER_NAMES = (
    "127.0.0.1",
    "localhost",
    "10.96.0.1",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
ADMISSION_PLUGINS = (
    "NamespaceLifecycle",
    "LimitRanger",
    "ServiceAccount",
    "DefaultStorageClass",
    "ResourceQuota",
    "PodSecurity",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
)
START_TIMEOUT = 120.0
# What the audit log keeps: every request of a user or a workload (researchers, the harvester,
# the operator), at metadata level; none of the control plane's, the nodes' or the
# administrator's own (they would be most of it).
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived", "ResponseStarted"],
    "rules": [
        {
            "level": "None",
            "userGroups": [
                "system:masters",
                "system:nodes",
                "system:serviceaccounts:kube-system",
            ],
        },
        {
            "level": "None",
            "users": [
                "system:apiserver",
                "system:kube-controller-manager",
                "system:kube-scheduler",
            ],
        },
        {"level": "Metadata"},
    ],
}


def audited_calls(events: list[dict[str, Any]]) -> list[tuple[str, str, int]]:
    """(verb, resource, HTTP status) of each audit event, in order: a subresource as
    ``pods/log``, a request for no resource as its path. Pure.

    >>> audited_calls([{"verb": "get", "requestURI": "/api/v1/namespaces/a/pods/p/log",
    ...                 "objectRef": {"resource": "pods", "subresource": "log"},
    ...                 "responseStatus": {"code": 403}},
    ...                {"verb": "get", "requestURI": "/readyz", "responseStatus": {"code": 200}}])
    [('get', 'pods/log', 403), ('get', '/readyz', 200)]
    """
    calls = []
    for event in events:
        ref = event.get("objectRef") or {}
        resource = "/".join(filter(None, (ref.get("resource"), ref.get("subresource"))))
        path = event.get("requestURI", "").split("?")[0]
        calls.append((event["verb"], resource or path, event["responseStatus"]["code"]))
    return calls


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class ControlPlane:
    """etcd, kube-apiserver, kube-controller-manager and kube-scheduler, started by
    :meth:`start` in ``directory`` and stopped by :meth:`stop`.

    ``webhooks``: the kubeconfig files of the API server's token authentication and
    authorization webhooks, or None for certificates and RBAC only.
    """

    def __init__(self, directory: Path, webhooks: tuple[Path, Path] | None = None) -> None:
        self.directory = directory
        self._webhooks = webhooks
        self._processes: list[dict[str, Any]] = []
        self.port = 0
        self.binaries: dict[str, Path] = {}

    # -- identity ---------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The API server's URL (HTTPS on 127.0.0.1)."""
        return f"https://127.0.0.1:{self.port}"

    @property
    def certificate_authority(self) -> Any:
        """The control plane CA's (key, certificate), to issue certificates it trusts."""
        return self._ca

    @property
    def ca_file(self) -> Path:
        """The CA that signed the API server's certificate and every client certificate."""
        return self.directory / "pki" / "ca.crt"

    def credentials(self, user: str, groups: tuple[str, ...] = ()) -> tuple[Path, Path]:
        """A client certificate and key for ``user`` in ``groups`` (made once, kept 0600)."""
        pki = self.directory / "pki"
        stem = "-".join([user, *groups]).replace(":", "_").replace("/", "_")
        cert, key = pki / f"user-{stem}.crt", pki / f"user-{stem}.key"
        if not cert.is_file():
            cert_pem, key_pem = issue(self._ca, user, organizations=groups)
            write_private(key, key_pem)
            cert.write_bytes(cert_pem)
        return cert, key

    def kubeconfig(
        self, path: Path, user: str = "recc-admin", groups: tuple[str, ...] = ()
    ) -> Path:
        """Write a kubeconfig for ``user`` (default: an administrator, group system:masters)."""
        if user == "recc-admin" and not groups:
            groups = ("system:masters",)
        cert, key = self.credentials(user, groups)
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "recc-testing",
                    "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                }
            ],
            "users": [
                {"name": user, "user": {"client-certificate": str(cert), "client-key": str(key)}}
            ],
            "contexts": [
                {"name": "recc-testing", "context": {"cluster": "recc-testing", "user": user}}
            ],
            "current-context": "recc-testing",
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, yaml.safe_dump(config).encode())
        return path

    def api_client(
        self, user: str = "recc-admin", groups: tuple[str, ...] = ()
    ) -> kubernetes.client.ApiClient:
        """A ``kubernetes`` client authenticated as ``user`` (default: an administrator)."""
        if user == "recc-admin" and not groups:
            groups = ("system:masters",)
        cert, key = self.credentials(user, groups)
        conf = kubernetes.client.Configuration(host=self.url)
        conf.ssl_ca_cert = str(self.ca_file)
        conf.cert_file, conf.key_file = str(cert), str(key)
        return kubernetes.client.ApiClient(conf)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, log: Callable[[str], None] | None = None) -> ControlPlane:
        """Start every component and wait until the API server is ready; stop them all and
        raise :class:`BackendError` (naming the log to read) if one does not come up."""
        self.binaries = ensure_assets(log)
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._make_pki()
            self._start_etcd()
            self._start_apiserver()
            self._wait_ready()
            self._start_controllers()
            self._wait_controllers()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop every process this control plane started (idempotent)."""
        procs.stop(list(reversed(self._processes)), grace=5)
        self._processes.clear()

    def __enter__(self) -> ControlPlane:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def audit_log(self) -> Path:
        """The API server's audit log: one JSON ``Event`` per request (see ``AUDIT_POLICY``)."""
        return self.directory / "audit.log"

    def audit_events(
        self, user: str | None = None, group: str | None = None
    ) -> list[dict[str, Any]]:
        """The audit log's events so far, oldest first; only those of ``user`` (its
        ``user.username``, e.g. an EKS access entry's user name) or of a member of ``group``
        when given."""
        events = []
        with contextlib.suppress(FileNotFoundError), self.audit_log.open() as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # the server is writing it
                event = json.loads(line)
                who = event.get("user") or {}
                if user is not None and who.get("username") != user:
                    continue
                if group is not None and group not in (who.get("groups") or ()):
                    continue
                events.append(event)
        return events

    def running(self) -> list[dict[str, Any]]:
        """References to the control plane's processes that still run."""
        return [p for p in self._processes if procs.alive(p)]

    # -- pieces -----------------------------------------------------------------------------

    def _make_pki(self) -> None:
        pki = self.directory / "pki"
        pki.mkdir(mode=0o700, exist_ok=True)
        self._ca = new_ca("recc-testing kubernetes CA")
        self.ca_file.write_bytes(pem(self._ca[1]))
        serving, serving_key = issue(self._ca, "kube-apiserver", _API_SERVER_NAMES)
        (pki / "apiserver.crt").write_bytes(serving)
        write_private(pki / "apiserver.key", serving_key)
        accounts = ec.generate_private_key(ec.SECP256R1())
        write_private(
            pki / "sa.key",
            accounts.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )
        (pki / "sa.pub").write_bytes(
            accounts.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        # The API server's identity towards kubelets (the node agent checks it against the CA).
        self.credentials("kube-apiserver-kubelet-client", ("system:masters",))

    def _spawn(self, name: str, args: list[str]) -> None:
        log = self.directory / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBECONFIG")}
        self._processes.append(
            procs.spawn_command(
                [str(self.binaries[name]), *args], log, env, self.directory, tied=True
            )
        )

    def _start_etcd(self) -> None:
        client, peer = _free_port(), _free_port()
        self._etcd = f"http://127.0.0.1:{client}"
        self._spawn(
            "etcd",
            [
                "--name=recc-testing",
                f"--data-dir={self.directory / 'etcd'}",
                f"--listen-client-urls={self._etcd}",
                f"--advertise-client-urls={self._etcd}",
                f"--listen-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{peer}",
                f"--initial-cluster=recc-testing=http://127.0.0.1:{peer}",
                "--listen-metrics-urls=",
                # A test platform: losing etcd's data on a power cut is fine, waiting is not.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        pki = self.directory / "pki"
        self.port = _free_port()
        kubelet_cert, kubelet_key = self.credentials(
            "kube-apiserver-kubelet-client", ("system:masters",)
        )
        authorization = "RBAC"
        args = [
            f"--etcd-servers={self._etcd}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={self.ca_file}",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            f"--enable-admission-plugins={','.join(ADMISSION_PLUGINS)}",
            f"--kubelet-client-certificate={kubelet_cert}",
            f"--kubelet-client-key={kubelet_key}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=false",
            "--profiling=false",
            f"--audit-policy-file={self._write_audit_policy()}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--v=1",
        ]
        if self._webhooks is not None:
            authentication, authorization_webhook = self._webhooks
            authorization = "RBAC,Webhook"
            args += [
                f"--authentication-token-webhook-config-file={authentication}",
                "--authentication-token-webhook-version=v1",
                "--authentication-token-webhook-cache-ttl=10s",
                f"--authorization-webhook-config-file={authorization_webhook}",
                "--authorization-webhook-version=v1",
                "--authorization-webhook-cache-authorized-ttl=10s",
                "--authorization-webhook-cache-unauthorized-ttl=1s",
            ]
        self._spawn("kube-apiserver", [*args, f"--authorization-mode={authorization}"])

    def _write_audit_policy(self) -> Path:
        path = self.directory / "audit-policy.yaml"
        path.write_text(yaml.safe_dump(AUDIT_POLICY, sort_keys=False))
        return path

    def _wait_ready(self) -> None:
        cert, key = self.credentials("recc-admin", ("system:masters",))
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.load_cert_chain(str(cert), str(key))
        deadline = time.monotonic() + START_TIMEOUT
        last = ""
        while time.monotonic() < deadline:
            dead = [p for p in self._processes if not procs.alive(p)]
            if dead:
                break
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", context=context, timeout=5):
                    return
            except OSError as e:
                last = str(e)
            time.sleep(0.25)
        raise BackendError(
            f"the test control plane did not become ready in {START_TIMEOUT:.0f} s ({last}); "
            f"see the logs in {self.directory} (kube-apiserver.log, etcd.log)"
        )

    def _wait_controllers(self) -> None:
        """Wait until the controller manager works: it has made the default ServiceAccount
        (Pods cannot be admitted in a namespace before that)."""
        core = kubernetes.client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if core.list_namespaced_service_account("default").items:
                return
            if any(not procs.alive(p) for p in self._processes):
                break
            time.sleep(0.25)
        raise BackendError(
            f"the test control plane's controllers did not start in {START_TIMEOUT:.0f} s; "
            f"see {self.directory / 'kube-controller-manager.log'}"
        )

    def _start_controllers(self) -> None:
        pki = self.directory / "pki"
        manager = self.kubeconfig(
            self.directory / "controller-manager.kubeconfig", "system:kube-controller-manager"
        )
        scheduler = self.kubeconfig(
            self.directory / "scheduler.kubeconfig", "system:kube-scheduler"
        )
        self._spawn(
            "kube-controller-manager",
            [
                f"--kubeconfig={manager}",
                "--leader-elect=false",
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                # Quota and garbage collection react within a second or two, not after minutes.
                "--concurrent-gc-syncs=5",
                "--resource-quota-sync-period=10s",
                "--v=1",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                f"--kubeconfig={scheduler}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--v=1",
            ],
        )
