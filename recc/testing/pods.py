"""The kubelet's part of the node agent: Pods bound to the agent's Nodes run as local processes.

Each container is a process in a private mount namespace (:mod:`recc.testing.podinit`) with:

- the container's ``command``/``args`` and environment as the kubelet makes them (``env`` with
  ``$(VAR)`` expansion, ``valueFrom`` field, resource, Secret and ConfigMap references,
  ``envFrom``, the ``KUBERNETES_SERVICE_*`` variables), on this machine's Python environment
  whatever the image (the image's entrypoint is taken to run its arguments);
- its volumes at their mount paths: Secrets, ConfigMaps, projected volumes (the ServiceAccount
  token from the TokenRequest API, as the kubelet mounts it), downward API, ``emptyDir`` and
  ``hostPath``;
- the Pod's own loopback address (:mod:`recc.testing.netshim`) and ``/etc/hosts``
  (:mod:`recc.testing.services`);
- output to ``<pods-dir>/<namespace>/<pod>/<container>.log``, which the kubelet server
  (``recc-kubelet``) serves to ``kubectl logs``.

The agent reports what a kubelet reports: phase, ``podIP``, conditions (Ready from the
readiness probe, ``httpGet`` and ``tcpSocket``; ready on start without one), container states
with exit codes and restart counts. ``restartPolicy`` is honoured with a capped back-off; a
failing liveness probe restarts its container. A Pod being deleted gets SIGTERM, then SIGKILL
after its grace period, and is then removed from the API server with a uid precondition, as the
kubelet does.

Not modelled: images (nothing is pulled), init and sidecar containers, ``exec`` probes and
startup probes, resource limits (no cgroups: a container may use more than it asked),
security contexts and users, ``subPathExpr``, NFS and persistent volumes (a Pod using one stays
in ContainerCreating with that reason), token rotation of projected tokens.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes.client
from kubernetes.client.exceptions import ApiException

from recc.procs import start_detached
from recc.testing.podspec import (
    PodNotReady,
    command_line,
    container_env,
    field_value,
    named_port,
    now,
    pod_conditions,
)

logger = logging.getLogger(__name__)

NETSHIM = Path(__file__).parent / "netshim"
_BACKOFF_CAP = 20.0
_DEFAULT_MODE = 0o644


@dataclass
class _Container:
    spec: dict[str, Any]
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started_at: str | None = None
    last_state: dict[str, Any] = field(default_factory=dict)
    terminated: dict[str, Any] | None = None
    next_start: float = 0.0
    ready: bool = False
    # Each probe runs on its own schedule, as the kubelet's: its initialDelaySeconds after
    # the start, then every periodSeconds (monotonic times).
    next_readiness: float = 0.0
    next_liveness: float = 0.0
    probe_failures: int = 0
    live_failures: int = 0

    @property
    def name(self) -> str:
        return str(self.spec["name"])


@dataclass
class _Pod:
    uid: str
    namespace: str
    name: str
    ip: str
    directory: Path
    containers: dict[str, _Container]
    prepared: dict[str, Any] | None = None  # env and mounts per container, once volumes exist
    waiting_reason: str = "ContainerCreating"
    waiting_message: str = ""
    kill_at: float | None = None
    reported: dict[str, Any] | None = None


class PodRunner:
    """Runs the Pods bound to the agent's Nodes; :meth:`sync` is one reconcile round."""

    def __init__(
        self,
        api: kubernetes.client.ApiClient,
        pods_dir: Path,
        addresses: Any,
        api_server: tuple[str, int],
        hosts_text: Any,
    ) -> None:
        self.core = kubernetes.client.CoreV1Api(api)
        self.pods_dir = pods_dir
        self._addresses = addresses
        self._api_server = api_server
        self._hosts_text = hosts_text
        self._pods: dict[str, _Pod] = {}

    # -- the round --------------------------------------------------------------------------

    def sync(self, pods: list[dict[str, Any]]) -> None:
        """Bring every process in line with ``pods`` (the Pods bound to this agent's Nodes)."""
        seen = {pod["metadata"]["uid"] for pod in pods}
        # Gone first: a Pod force-deleted and made again under its name reuses its directory.
        for uid in list(self._pods.keys() - seen):
            self._forget(self._pods[uid], grace=0)  # force-deleted or moved away
        for pod in pods:
            try:
                self._sync_pod(pod)
            except ApiException as e:
                if e.status not in (404, 409):
                    logger.warning(
                        "pod %s/%s: %s",
                        pod["metadata"].get("namespace"),
                        pod["metadata"]["name"],
                        e.reason,
                    )

    def hosts_changed(self) -> None:
        """Rewrite every running Pod's ``/etc/hosts`` (a Service came or went)."""
        for pod in self._pods.values():
            self._write_hosts(pod)

    def stop(self) -> None:
        """Stop every container now (the agent is shutting down)."""
        for pod in list(self._pods.values()):
            self._forget(pod, grace=2)

    def running(self) -> list[tuple[str, str, int]]:
        """(namespace, pod, pid) of every container process that runs."""
        return [
            (pod.namespace, pod.name, c.process.pid)
            for pod in self._pods.values()
            for c in pod.containers.values()
            if c.process is not None and c.process.poll() is None
        ]

    def _sync_pod(self, obj: dict[str, Any]) -> None:
        meta, spec = obj["metadata"], obj["spec"]
        uid = meta["uid"]
        pod = self._pods.get(uid)
        if pod is None:
            if meta.get("deletionTimestamp"):
                self._finish_delete(obj)
                return
            if (obj.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                return
            pod = self._adopt(obj)
        if meta.get("deletionTimestamp"):
            self._terminate(pod, obj)
            return
        if pod.prepared is None:
            try:
                pod.prepared = self._prepare(pod, obj)
            except PodNotReady as e:
                pod.waiting_message = str(e)
        if pod.prepared is not None:
            restart = spec.get("restartPolicy", "Always")
            for container in pod.containers.values():
                self._run_container(pod, container, restart)
                self._probe(pod, container)
        self._report(pod, obj)

    # -- start ------------------------------------------------------------------------------

    def _adopt(self, obj: dict[str, Any]) -> _Pod:
        meta = obj["metadata"]
        directory = self.pods_dir / meta["namespace"] / meta["name"]
        if directory.exists():
            shutil.rmtree(directory)  # a Pod of the same name before this one
        directory.mkdir(parents=True)
        ip = self._addresses.get(meta["uid"])
        (directory / "ip").write_text(ip)
        containers = {c["name"]: _Container(c) for c in obj["spec"]["containers"]}
        pod = _Pod(meta["uid"], meta["namespace"], meta["name"], ip, directory, containers)
        self._pods[pod.uid] = pod
        self._write_hosts(pod)
        return pod

    def _write_hosts(self, pod: _Pod) -> None:
        text = f"127.0.0.1 localhost\n{pod.ip} {pod.name}\n{self._hosts_text()}"
        hosts = pod.directory / "hosts"
        # In place, never replaced: the container sees this inode through a bind mount.
        with open(hosts, "a+") as f:
            f.seek(0)
            if f.read() != text:
                f.seek(0)
                f.truncate()
                f.write(text)

    def _lookup(self, namespace: str) -> Any:
        def lookup(kind: str, name: str) -> dict[str, str] | None:
            try:
                if kind == "secret":
                    data = self.core.read_namespaced_secret(name, namespace).data or {}
                    return {k: base64.b64decode(v).decode() for k, v in data.items()}
                return dict(self.core.read_namespaced_config_map(name, namespace).data or {})
            except ApiException as e:
                if e.status == 404:
                    return None
                raise

        return lookup

    def _prepare(self, pod: _Pod, obj: dict[str, Any]) -> dict[str, Any]:
        """Volumes written and every container's environment and mounts worked out; raises
        :class:`PodNotReady` while something they need is missing."""
        volumes = {v["name"]: self._volume(pod, obj, v) for v in obj["spec"].get("volumes") or []}
        lookup = self._lookup(pod.namespace)
        obj = {**obj, "status": {**(obj.get("status") or {}), "podIP": pod.ip}}
        host, port = self._api_server
        base = {
            "PATH": f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin",
            "HOSTNAME": pod.name,
            "HOME": str(pod.directory / "home"),
            "KUBERNETES_SERVICE_HOST": host,
            "KUBERNETES_SERVICE_PORT": str(port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(port),
            "PYTHONPATH": str(NETSHIM),
            "RECC_TESTING_POD_IP": pod.ip,
        }
        (pod.directory / "home").mkdir(exist_ok=True)
        prepared = {}
        for name, container in pod.containers.items():
            env = container_env(obj, container.spec, lookup, base)
            mounts = []
            for mount in container.spec.get("volumeMounts") or []:
                source, api_backed = volumes[mount["name"]]
                if mount.get("subPath"):
                    source = source / mount["subPath"]
                read_only = bool(mount.get("readOnly")) or api_backed
                mounts.append([str(source), mount["mountPath"], read_only])
            prepared[name] = {
                "argv": command_line(container.spec, env),
                "env": env,
                "mounts": mounts,
                "cwd": container.spec.get("workingDir") or "/",
            }
        return prepared

    def _volume(self, pod: _Pod, obj: dict[str, Any], volume: dict[str, Any]) -> tuple[Path, bool]:
        """The volume's directory here, and whether it comes from the API (then read-only)."""
        name = volume["name"]
        target = pod.directory / "volumes" / name
        if "emptyDir" in volume:
            target.mkdir(parents=True, exist_ok=True)
            return target, False
        if "hostPath" in volume:
            return Path(volume["hostPath"]["path"]), False
        files: dict[str, tuple[bytes, int]] = {}
        if "secret" in volume or "configMap" in volume:
            files = self._source_files(pod, obj, volume)
        elif "projected" in volume:
            default = volume["projected"].get("defaultMode", _DEFAULT_MODE)
            for source in volume["projected"].get("sources") or []:
                files.update(self._source_files(pod, obj, source, default))
        elif "downwardAPI" in volume:
            files = self._source_files(pod, obj, volume)
        else:
            kind = next((k for k in volume if k != "name"), "?")
            raise PodNotReady(
                f"volume {name!r}: {kind} volumes are not modelled by this node agent"
            )
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path, (data, mode) in files.items():
            file = target / path
            file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return target, True

    def _source_files(
        self, pod: _Pod, obj: dict[str, Any], source: dict[str, Any], default: int | None = None
    ) -> dict[str, tuple[bytes, int]]:
        """Files of one volume source (secret, configMap, downwardAPI, serviceAccountToken)."""
        if "serviceAccountToken" in source:
            request = source["serviceAccountToken"]
            token = self.core.create_namespaced_service_account_token(
                obj["spec"].get("serviceAccountName", "default"),
                pod.namespace,
                {
                    "spec": {
                        "audiences": [request["audience"]] if request.get("audience") else None,
                        "expirationSeconds": request.get("expirationSeconds", 3607),
                        "boundObjectRef": {
                            "kind": "Pod",
                            "apiVersion": "v1",
                            "name": pod.name,
                            "uid": pod.uid,
                        },
                    }
                },
            )
            return {request["path"]: (token.status.token.encode(), default or _DEFAULT_MODE)}
        if "downwardAPI" in source:
            entry = source["downwardAPI"]
            mode = entry.get("defaultMode", default or _DEFAULT_MODE)
            return {
                item["path"]: (
                    field_value(obj, item["fieldRef"]["fieldPath"]).encode(),
                    item.get("mode", mode),
                )
                for item in entry.get("items") or []
                if "fieldRef" in item
            }
        kind = "secret" if "secret" in source else "configMap"
        entry = source[kind]
        name = entry.get("secretName") or entry.get("name", "")
        try:
            if kind == "secret":
                found = self.core.read_namespaced_secret(name, pod.namespace)
                data = {k: base64.b64decode(v) for k, v in (found.data or {}).items()}
            else:
                found = self.core.read_namespaced_config_map(name, pod.namespace)
                data = {k: v.encode() for k, v in (found.data or {}).items()}
                data.update({k: base64.b64decode(v) for k, v in (found.binary_data or {}).items()})
        except ApiException as e:
            if e.status != 404:
                raise
            if entry.get("optional"):
                return {}
            raise PodNotReady(f"{kind} {name!r} not found") from e
        mode = entry.get("defaultMode", default or _DEFAULT_MODE)
        items = entry.get("items")
        if not items:
            return {key: (value, mode) for key, value in data.items()}
        out = {}
        for item in items:
            if item["key"] not in data:
                if entry.get("optional"):
                    continue
                raise PodNotReady(f"{kind} {name!r} has no key {item['key']!r}")
            out[item["path"]] = (data[item["key"]], item.get("mode", mode))
        return out

    def _run_container(self, pod: _Pod, container: _Container, restart: str) -> None:
        process = container.process
        if process is not None and process.poll() is None:
            return
        if process is not None:  # it ended since the last round
            code = process.returncode
            code = 128 + -code if code < 0 else code
            container.terminated = {
                "exitCode": code,
                "reason": "Completed" if code == 0 else "Error",
                "startedAt": container.started_at,
                "finishedAt": now(),
            }
            container.process, container.ready = None, False
            (pod.directory / f"{container.name}.exited").touch()
            if restart == "Always" or (restart == "OnFailure" and code != 0):
                delay = min(_BACKOFF_CAP, 1.0 * 2**container.restarts)
                container.next_start = time.monotonic() + delay
                container.last_state = {"terminated": container.terminated}
            else:
                return
        elif container.terminated is not None and container.next_start == 0.0:
            return  # finished for good
        if time.monotonic() < container.next_start:
            return
        self._start(pod, container)

    def _start(self, pod: _Pod, container: _Container) -> None:
        assert pod.prepared is not None
        log = pod.directory / f"{container.name}.log"
        if container.started_at is not None:
            container.restarts += 1
            if log.exists():
                log.replace(pod.directory / f"{container.name}.previous.log")
        (pod.directory / f"{container.name}.exited").unlink(missing_ok=True)
        scratch = pod.directory / "scratch" / f"{container.name}-{container.restarts}"
        scratch.mkdir(parents=True)
        spec_file = pod.directory / f"{container.name}.spec.json"
        resolv = pod.directory / "resolv.conf"
        resolv.write_text("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        spec = {
            **pod.prepared[container.name],
            "hosts": str(pod.directory / "hosts"),
            "resolv": str(resolv),
            "scratch": str(scratch),
        }
        fd = os.open(spec_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(spec, f)
        # unshare forks the container and, should unshare die, sends it SIGTERM (--kill-child).
        # unshare itself ignores SIGTERM while it waits for the container, so the kernel
        # SIGKILLs it when the agent's thread ends: no container outlives its agent.
        argv = [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "--kill-child=SIGTERM",
            "--",
            sys.executable,
            "-m",
            "recc.testing.podinit",
            str(spec_file),
        ]
        container.process = start_detached(
            argv,
            log,
            {"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
            tied=True,
            tied_signal=signal.SIGKILL,
        )
        container.started_at = now()
        container.terminated = None
        container.next_start = 0.0
        started = time.monotonic()
        readiness = container.spec.get("readinessProbe") or {}
        liveness = container.spec.get("livenessProbe") or {}
        container.ready = not readiness
        container.next_readiness = started + float(readiness.get("initialDelaySeconds", 0))
        container.next_liveness = started + float(liveness.get("initialDelaySeconds", 0))
        container.probe_failures = container.live_failures = 0

    # -- probes -----------------------------------------------------------------------------

    def _probe(self, pod: _Pod, container: _Container) -> None:
        if container.process is None or container.process.poll() is not None:
            return
        now_m = time.monotonic()
        readiness = container.spec.get("readinessProbe")
        liveness = container.spec.get("livenessProbe")
        if readiness is not None and now_m >= container.next_readiness:
            container.next_readiness = now_m + float(readiness.get("periodSeconds", 10))
            if self._check(pod, container, readiness):
                container.probe_failures = 0
                container.ready = True
            else:
                container.probe_failures += 1
                if container.probe_failures >= int(readiness.get("failureThreshold", 3)):
                    container.ready = False
        if liveness is not None and now_m >= container.next_liveness:
            container.next_liveness = now_m + float(liveness.get("periodSeconds", 10))
            if self._check(pod, container, liveness):
                container.live_failures = 0
            else:
                container.live_failures += 1
                if container.live_failures >= int(liveness.get("failureThreshold", 3)):
                    logger.info(
                        "pod %s/%s: liveness probe failed, restarting %s",
                        pod.namespace,
                        pod.name,
                        container.name,
                    )
                    _signal(container.process, signal.SIGKILL)

    def _check(self, pod: _Pod, container: _Container, probe: dict[str, Any]) -> bool:
        timeout = float(probe.get("timeoutSeconds", 1))
        try:
            if "httpGet" in probe:
                check = probe["httpGet"]
                port = named_port(container.spec, check["port"])
                scheme = str(check.get("scheme", "HTTP")).lower()
                url = f"{scheme}://{pod.ip}:{port}{check.get('path', '/')}"
                context = ssl._create_unverified_context()  # the kubelet does not verify either
                handler = urllib.request.HTTPSHandler(context=context)
                opener = urllib.request.build_opener(handler, urllib.request.ProxyHandler({}))
                with opener.open(url, timeout=timeout) as answer:
                    return 200 <= answer.status < 400
            if "tcpSocket" in probe:
                import socket

                port = named_port(container.spec, probe["tcpSocket"]["port"])
                with socket.create_connection((pod.ip, port), timeout=timeout):
                    return True
        except (OSError, ValueError):
            return False
        return True  # exec and gRPC probes are not modelled: taken as passing

    # -- status -----------------------------------------------------------------------------

    def _report(self, pod: _Pod, obj: dict[str, Any]) -> None:
        statuses = []
        for container in pod.containers.values():
            state: dict[str, Any]
            running = container.process is not None and container.process.poll() is None
            if running:
                state = {"running": {"startedAt": container.started_at}}
            elif container.terminated is not None and container.next_start == 0.0:
                state = {"terminated": container.terminated}
            elif container.terminated is not None:
                state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off restarting {container.name}",
                    }
                }
            else:
                state = {"waiting": {"reason": pod.waiting_reason}}
                if pod.waiting_message:
                    state["waiting"]["message"] = pod.waiting_message
            statuses.append(
                {
                    "name": container.name,
                    "image": container.spec.get("image", ""),
                    "imageID": "",
                    "containerID": f"recc://{container.process.pid}" if running else "",
                    "ready": running and container.ready,
                    "started": running,
                    "restartCount": container.restarts,
                    "state": state,
                    "lastState": container.last_state,
                }
            )
        phase = _phase(statuses, obj["spec"].get("restartPolicy", "Always"))
        ready = all(s["ready"] for s in statuses)
        started = pod.prepared is not None
        previous = (obj.get("status") or {}).get("conditions") or []
        status = {
            "phase": phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": pod.ip,
            "podIPs": [{"ip": pod.ip}],
            "startTime": (obj.get("status") or {}).get("startTime") or now(),
            "containerStatuses": statuses,
        }
        summary = {
            **status,
            "conditions": [
                (c["type"], c["status"]) for c in pod_conditions(previous, ready, started, "")
            ],
        }
        summary.pop("startTime")
        if summary == pod.reported:
            return
        status["conditions"] = pod_conditions(previous, ready, started, now())
        self.core.patch_namespaced_pod_status(pod.name, pod.namespace, {"status": status})
        pod.reported = summary

    # -- stop -------------------------------------------------------------------------------

    def _terminate(self, pod: _Pod, obj: dict[str, Any]) -> None:
        if pod.kill_at is None:
            grace = obj["metadata"].get("deletionGracePeriodSeconds")
            grace = 30 if grace is None else grace
            pod.kill_at = time.monotonic() + float(grace)
            for container in pod.containers.values():
                _signal(container.process, signal.SIGTERM)
        live = [
            c for c in pod.containers.values() if c.process is not None and c.process.poll() is None
        ]
        if live and time.monotonic() < pod.kill_at:
            return
        self._forget(pod, grace=0)
        self._finish_delete(obj)

    def _finish_delete(self, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        try:
            self.core.delete_namespaced_pod(
                meta["name"],
                meta["namespace"],
                body=kubernetes.client.V1DeleteOptions(
                    grace_period_seconds=0,
                    preconditions=kubernetes.client.V1Preconditions(uid=meta["uid"]),
                ),
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _forget(self, pod: _Pod, grace: float) -> None:
        for container in pod.containers.values():
            _signal(container.process, signal.SIGTERM if grace else signal.SIGKILL)
        deadline = time.monotonic() + grace
        for container in pod.containers.values():
            if container.process is None:
                continue
            try:
                container.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal(container.process, signal.SIGKILL)
                container.process.wait(timeout=10)
        self._pods.pop(pod.uid, None)
        self._addresses.release(pod.uid)
        shutil.rmtree(pod.directory, ignore_errors=True)


def _signal(process: subprocess.Popen[bytes] | None, sig: int) -> None:
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, sig)  # the container and everything it started
    except (ProcessLookupError, PermissionError):
        pass


def _phase(statuses: list[dict[str, Any]], restart: str) -> str:
    """The Pod phase the kubelet derives from its containers' states.

    >>> _phase([{"state": {"running": {}}}], "Always")
    'Running'
    >>> _phase([{"state": {"terminated": {"exitCode": 3}}}], "Never")
    'Failed'
    """
    states = [next(iter(s["state"])) for s in statuses]
    if all(state == "terminated" for state in states):
        codes = [s["state"]["terminated"]["exitCode"] for s in statuses]
        return "Succeeded" if all(code == 0 for code in codes) else "Failed"
    if any(state == "running" for state in states) or any(
        s["state"].get("waiting", {}).get("reason") == "CrashLoopBackOff" for s in statuses
    ):
        return "Running"
    return "Pending"
