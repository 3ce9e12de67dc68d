"""Make Kubernetes API calls fail or hang on purpose, and record every call, with a proxy.

:class:`FaultProxy` is a TLS-terminating HTTP/1.1 proxy on ``127.0.0.1`` in front of a real
kube-apiserver. Point a client at :attr:`FaultProxy.url` (the proxy's certificate is issued by
the API server's CA, so the same CA file verifies both). Each connection carries one request:
the proxy reads its head, records ``(verb, resource)`` as the API server's RequestInfo would
(:func:`request_info`), then either answers an injected fault itself or forwards the request
upstream with ``Connection: close`` (``Upgrade`` requests, i.e. exec and port-forward over
websockets or SPDY, pass unchanged) and relays bytes both ways until either side closes, so
watches, streamed logs and upgraded connections work. Headers, Authorization included, are
forwarded as sent; the proxy neither asks for nor presents client certificates.

Limits: HTTP/1.1 only (ALPN offers no h2); the Host header is forwarded as the client sent it;
a hang ends early when the client closes its end; a request head over 1 MiB is dropped.

Example
-------
>>> import kubernetes.client  # doctest: +SKIP
>>> proxy = FaultProxy(cp.url, cp.ca_file, "proxy.crt", "proxy.key").start()  # doctest: +SKIP
>>> config = kubernetes.client.Configuration()  # doctest: +SKIP
>>> config.host, config.ssl_ca_cert = proxy.url, str(cp.ca_file)  # doctest: +SKIP
>>> config.api_key = {"authorization": "Bearer " + token}  # doctest: +SKIP
>>> core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))  # doctest: +SKIP
>>> proxy.inject("list", "namespaces", times=2, status=503)  # doctest: +SKIP
>>> core.list_namespace()  # doctest: +SKIP
Traceback (most recent call last):
kubernetes.client.exceptions.ApiException: (503)
Reason: Service Unavailable
...
>>> proxy.inject("create", "secrets", hang=True, hang_seconds=2)  # doctest: +SKIP
>>> proxy.calls  # doctest: +SKIP
[('list', 'namespaces')]
>>> proxy.stop()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from urllib.parse import parse_qs, unquote, urlsplit

from recc.testing.faults import take_fault

StrPath = str | os.PathLike[str]

# Where Kubernetes' Status reasons differ from the HTTP phrase.
_REASONS = {409: "AlreadyExists", 422: "Invalid", 500: "InternalError", 504: "Timeout"}
_VERBS = {
    "POST": "create",
    "GET": "get",
    "HEAD": "get",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
_POLL = 0.2  # seconds between checks for stop() in every blocking wait


def request_info(method: str, path_with_query: str) -> tuple[str, str]:
    """``(verb, resource)`` of a request, by kube-apiserver's RequestInfo rules.

    ``resource`` is the plural, with any subresource after a slash. Non-resource paths (not
    under ``/api/<version>/`` or ``/apis/<group>/<version>/``) give the lower-case method and
    ``""``.

    >>> request_info("GET", "/api/v1/namespaces")
    ('list', 'namespaces')
    >>> request_info("DELETE", "/api/v1/namespaces/team-a")
    ('delete', 'namespaces')
    >>> request_info("PUT", "/api/v1/namespaces/team-a/status")
    ('update', 'namespaces/status')
    >>> request_info("POST", "/api/v1/namespaces/team-a/secrets")
    ('create', 'secrets')
    >>> request_info("GET", "/api/v1/namespaces/a/pods?watch=true&resourceVersion=5")
    ('watch', 'pods')
    >>> request_info("GET", "/api/v1/watch/namespaces/a/pods")
    ('watch', 'pods')
    >>> request_info("GET", "/api/v1/namespaces/a/pods/p/log?follow=true")
    ('get', 'pods/log')
    >>> request_info("PATCH", "/apis/kubernetes.dask.org/v1/namespaces/a/daskclusters/c")
    ('patch', 'daskclusters')
    >>> request_info("DELETE", "/apis/apps/v1/namespaces/a/deployments")
    ('deletecollection', 'deployments')
    >>> request_info("GET", "/version")
    ('get', '')
    """
    url = urlsplit(path_with_query)
    parts = [unquote(p) for p in url.path.strip("/").split("/")] if url.path.strip("/") else []
    non_resource = (method.lower(), "")
    if len(parts) < 3 or parts[0] not in ("api", "apis"):
        return non_resource
    parts = parts[2:] if parts[0] == "api" else parts[3:]  # after /api/v1, /apis/<g>/<v>
    if not parts or (parts[0] in ("watch", "proxy") and len(parts) < 2):
        return non_resource  # /apis/<g>/<v> is discovery; /api/v1/watch is an error upstream
    if parts[0] in ("watch", "proxy"):
        verb, parts = parts[0], parts[1:]
    else:
        verb = _VERBS.get(method.upper(), "")
    # namespaces/<ns>/<resource>/...: the resource after the namespace, unless it is one of
    # the namespace's own subresources (namespaces/<ns>/status, namespaces/<ns>/finalize).
    if parts[0] == "namespaces" and len(parts) > 2 and parts[2] not in ("status", "finalize"):
        parts = parts[2:]
    resource = parts[0]
    name = parts[1] if len(parts) >= 2 else ""
    if len(parts) >= 3 and verb != "proxy":
        resource = f"{resource}/{parts[2]}"
    if verb == "get" and not name:
        watch = parse_qs(url.query, keep_blank_values=True).get("watch")
        verb = "watch" if watch and watch[0].lower() not in ("false", "0") else "list"
    if verb == "delete" and not name:
        verb = "deletecollection"
    return verb, resource


@dataclass
class _Fault:
    verb: str
    resource: str
    times: int | None
    status: int
    hang: bool
    hang_seconds: float


def _status_response(status: int, message: str) -> bytes:
    """An HTTP response carrying a ``Status`` body like the API server's."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Error"
    body = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": _REASONS.get(status) or phrase.replace(" ", ""),
        "code": status,
    }
    extra = ""
    if status == 429:
        body["details"] = {"retryAfterSeconds": 1}
        extra = "Retry-After: 1\r\n"
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}Connection: close\r\n\r\n"
    )
    return head.encode() + data


class _Stopped(Exception):
    """The proxy is stopping: the connection's thread closes its sockets."""


class FaultProxy:
    """A TLS proxy in front of ``upstream_url`` that records calls and injects failures.

    ``cert_file``/``key_file`` are the proxy's serving certificate (for 127.0.0.1);
    ``upstream_ca_file`` verifies the upstream server. :attr:`url` is set by :meth:`start`.
    """

    def __init__(
        self, upstream_url: str, upstream_ca_file: StrPath, cert_file: StrPath, key_file: StrPath
    ) -> None:
        up = urlsplit(upstream_url)
        self._upstream = (up.hostname or "127.0.0.1", up.port or 443)
        self._client_ctx = ssl.create_default_context(cafile=str(upstream_ca_file))
        self._client_ctx.set_alpn_protocols(["http/1.1"])
        self._server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._server_ctx.load_cert_chain(str(cert_file), str(key_file))
        self._server_ctx.set_alpn_protocols(["http/1.1"])  # no HTTP/2 from Go clients
        self._lock = threading.Lock()
        self._faults: list[_Fault] = []
        self._calls: list[tuple[str, str]] = []
        self._threads: set[threading.Thread] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self.url: str | None = None

    # -- faults and calls ------------------------------------------------------------------

    def inject(
        self,
        verb: str,
        resource: str,
        times: int | None = 1,
        status: int = 500,
        hang: bool = False,
        hang_seconds: float = 30.0,
    ) -> None:
        """Make the next ``times`` calls of exactly ``verb`` on ``resource`` (``times=None``:
        every one until :meth:`clear`) answer ``status`` with a ``Status`` body, or, with
        ``hang``, get no answer: the connection is held ``hang_seconds`` and then closed."""
        with self._lock:
            self._faults.append(_Fault(verb, resource, times, status, hang, hang_seconds))

    def clear(self) -> None:
        """Forget every injected fault that has not fired yet."""
        with self._lock:
            self._faults.clear()

    @property
    def calls(self) -> list[tuple[str, str]]:
        """``(verb, resource)`` of every request received so far, oldest first."""
        with self._lock:
            return list(self._calls)

    def count(self, verb: str, resource: str) -> int:
        """How many calls of ``verb`` on ``resource`` were received."""
        return self.calls.count((verb, resource))

    def clear_calls(self) -> None:
        """Forget the calls recorded so far."""
        with self._lock:
            self._calls.clear()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen on a free port of 127.0.0.1 and serve in background threads."""
        self._stopping.clear()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL)
        self.url = f"https://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, name="kubefaults", daemon=True)
        self._acceptor.start()
        return self

    def stop(self) -> None:
        """Close the listener and every open connection; wait for every thread to end."""
        self._stopping.set()
        if self._acceptor is not None:
            self._acceptor.join()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join()
        self._acceptor = self._listener = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------

    def _accept(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(
                target=self._serve, args=(sock,), name="kubefaults-conn", daemon=True
            )
            with self._lock:
                self._threads.add(thread)
            thread.start()

    def _take_fault(self, verb: str, resource: str) -> _Fault | None:
        """The first pending fault for (verb, resource), counting one use (lock held)."""
        return take_fault(self._faults, lambda f: (f.verb, f.resource) == (verb, resource))

    def _retry(self, call, *args):
        """``call(*args)`` on a socket with a short timeout, retried until done or stopping."""
        while True:
            try:
                return call(*args)
            except TimeoutError:
                if self._stopping.is_set():
                    raise _Stopped from None

    def _sendall(self, sock: ssl.SSLSocket, data: bytes) -> None:
        view = memoryview(data)
        while view:  # a timed-out TLS write is retried with the same bytes, as TLS requires
            view = view[self._retry(sock.send, view) :]

    def _serve(self, raw: socket.socket) -> None:
        socks: list[socket.socket] = [raw]
        try:
            raw.settimeout(_POLL)
            client = self._server_ctx.wrap_socket(
                raw, server_side=True, do_handshake_on_connect=False
            )
            socks[0] = client
            self._retry(client.do_handshake)
            buf = b""
            while b"\r\n\r\n" not in buf:
                chunk = self._retry(client.recv, 65536)
                if not chunk or len(buf) > 1 << 20:
                    return
                buf += chunk
            head, rest = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:]]
            names = {k.lower(): v for k, v in headers}
            verb, resource = request_info(method, target)
            with self._lock:
                self._calls.append((verb, resource))
                fault = self._take_fault(verb, resource)
            if fault is not None:
                self._fault(client, fault, f"{verb} {resource}", rest, names)
                return
            try:
                socks.append(socket.create_connection(self._upstream, timeout=10))
                socks[1] = self._client_ctx.wrap_socket(socks[1], server_hostname=self._upstream[0])
            except OSError as e:
                self._sendall(client, _status_response(502, f"upstream unreachable: {e}"))
                return
            upstream = socks[1]
            upstream.settimeout(_POLL)
            if "upgrade" not in names:  # one request per connection, so the upstream closes
                kept = [f"{k}: {v}" for k, v in headers if k.lower() != "connection"]
                head = "\r\n".join([lines[0], *kept, "Connection: close"]).encode("latin-1")
            self._sendall(upstream, head + b"\r\n\r\n" + rest)
            self._relay(client, upstream)
        except (_Stopped, OSError, ValueError):
            pass  # the client, the upstream or stop() ended the connection
        finally:
            for sock in socks:
                sock.close()
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _relay(self, client: ssl.SSLSocket, upstream: ssl.SSLSocket) -> None:
        """Copy bytes both ways until either side closes (or the proxy stops)."""
        peer = {client: upstream, upstream: client}
        with selectors.DefaultSelector() as sel:
            for sock in peer:
                sel.register(sock, selectors.EVENT_READ)
            while not self._stopping.is_set():
                # Bytes TLS already decrypted are invisible to select: take those first.
                ready = [s for s in peer if s.pending()]
                ready = ready or [key.fileobj for key, _ in sel.select(_POLL)]
                for src in ready:
                    try:
                        data = src.recv(65536)
                    except (TimeoutError, ssl.SSLWantReadError):
                        continue  # a TLS record with no data yet (e.g. a session ticket)
                    if not data:
                        return
                    self._sendall(peer[src], data)

    def _fault(self, client, fault: _Fault, what: str, rest: bytes, headers) -> None:
        if fault.hang:  # hold the connection, reading and dropping, until the client gives up
            deadline = time.monotonic() + fault.hang_seconds
            while time.monotonic() < deadline and not self._stopping.is_set():
                try:
                    if not client.recv(65536):
                        return
                except TimeoutError:
                    pass
            return
        # Read the body first: closing with unread bytes resets the connection, and the client
        # could lose the answer.
        if "100-continue" not in headers.get("expect", "").lower():
            self._drain_body(client, rest, headers)
        self._sendall(client, _status_response(fault.status, f"injected failure: {what}"))

    def _drain_body(self, client, buf: bytes, headers) -> None:
        def need(n: int) -> None:  # until buf holds n bytes
            nonlocal buf
            while len(buf) < n:
                chunk = self._retry(client.recv, 65536)
                if not chunk:
                    raise ConnectionError("client closed")
                buf += chunk

        if "chunked" in headers.get("transfer-encoding", "").lower():
            while True:  # size line, data, CRLF ... last chunk "0", trailers, empty line
                while b"\r\n" not in buf:
                    need(len(buf) + 1)
                line, buf = buf.split(b"\r\n", 1)
                size = int(line.split(b";")[0], 16)
                if size == 0:
                    while not buf.startswith(b"\r\n") and b"\r\n\r\n" not in buf:
                        need(len(buf) + 1)
                    return
                need(size + 2)
                buf = buf[size + 2 :]
        need(int(headers.get("content-length") or 0))
