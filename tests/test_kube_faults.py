"""recc.testing.kubefaults: RequestInfo parsing, and the fault proxy in front of a local HTTPS
server that echoes what reaches it (so forwarding, streaming and faults are seen end to end)."""

from __future__ import annotations

import doctest
import http.client
import json
import socket
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import kubernetes.client
import kubernetes.watch
import pytest

from recc import tls
from recc.testing import kubefaults
from recc.testing.kubefaults import FaultProxy, request_info

CASES = [
    # core group, namespaced and cluster-scoped
    ("GET", "/api/v1/namespaces", "list", "namespaces"),
    ("POST", "/api/v1/namespaces", "create", "namespaces"),
    ("GET", "/api/v1/namespaces/team-a", "get", "namespaces"),
    ("DELETE", "/api/v1/namespaces/team-a", "delete", "namespaces"),
    ("PATCH", "/api/v1/namespaces/team-a", "patch", "namespaces"),
    ("PUT", "/api/v1/namespaces/team-a/status", "update", "namespaces/status"),
    ("PUT", "/api/v1/namespaces/team-a/finalize", "update", "namespaces/finalize"),
    ("GET", "/api/v1/namespaces/team-a/secrets", "list", "secrets"),
    ("POST", "/api/v1/namespaces/team-a/secrets", "create", "secrets"),
    ("GET", "/api/v1/namespaces/team-a/secrets/s", "get", "secrets"),
    ("PUT", "/api/v1/namespaces/team-a/secrets/s", "update", "secrets"),
    ("DELETE", "/api/v1/namespaces/team-a/secrets/s", "delete", "secrets"),
    ("DELETE", "/api/v1/namespaces/team-a/secrets", "deletecollection", "secrets"),
    ("HEAD", "/api/v1/namespaces/team-a/pods/p", "get", "pods"),
    ("GET", "/api/v1/nodes", "list", "nodes"),
    ("PATCH", "/api/v1/nodes/n1/status", "patch", "nodes/status"),
    ("GET", "/api/v1/pods", "list", "pods"),  # all namespaces
    # subresources
    ("GET", "/api/v1/namespaces/a/pods/p/log?container=c&follow=true", "get", "pods/log"),
    ("POST", "/api/v1/namespaces/a/pods/p/portforward?ports=8786", "create", "pods/portforward"),
    ("GET", "/api/v1/namespaces/a/pods/p/portforward?ports=8786", "get", "pods/portforward"),
    ("POST", "/api/v1/namespaces/a/pods/p/exec?command=ls", "create", "pods/exec"),
    ("PUT", "/api/v1/namespaces/a/services/s/status", "update", "services/status"),
    ("POST", "/api/v1/namespaces/a/pods/p/eviction", "create", "pods/eviction"),
    # watches: query parameter (any value but false/0) or the deprecated path prefix
    ("GET", "/api/v1/namespaces?watch=true", "watch", "namespaces"),
    ("GET", "/api/v1/namespaces/a/pods?watch=1&resourceVersion=7", "watch", "pods"),
    ("GET", "/api/v1/namespaces/a/pods?watch=false", "list", "pods"),
    ("GET", "/api/v1/namespaces/a/pods?watch=0", "list", "pods"),
    ("GET", "/api/v1/watch/namespaces", "watch", "namespaces"),
    ("GET", "/api/v1/watch/namespaces/a/pods", "watch", "pods"),
    ("GET", "/api/v1/watch/namespaces/a/pods/p", "watch", "pods"),
    ("GET", "/apis/apps/v1/watch/deployments", "watch", "deployments"),
    # named groups
    ("GET", "/apis/apps/v1/namespaces/a/deployments", "list", "deployments"),
    ("PATCH", "/apis/apps/v1/namespaces/a/deployments/d/scale", "patch", "deployments/scale"),
    (
        "POST",
        "/apis/rbac.authorization.k8s.io/v1/clusterrolebindings",
        "create",
        "clusterrolebindings",
    ),
    ("GET", "/apis/kubernetes.dask.org/v1/namespaces/a/daskclusters/c", "get", "daskclusters"),
    (
        "PATCH",
        "/apis/kubernetes.dask.org/v1/namespaces/a/daskclusters/c/status",
        "patch",
        "daskclusters/status",
    ),
    (
        "GET",
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        "list",
        "customresourcedefinitions",
    ),
    # the proxy verb takes no subresource
    ("GET", "/api/v1/proxy/namespaces/a/pods/p/metrics", "proxy", "pods"),
    # non-resource paths: the lower-case method and no resource
    ("GET", "/version", "get", ""),
    ("GET", "/readyz?verbose", "get", ""),
    ("GET", "/openapi/v2", "get", ""),
    ("GET", "/api", "get", ""),
    ("GET", "/api/v1", "get", ""),
    ("GET", "/apis", "get", ""),
    ("GET", "/apis/apps", "get", ""),
    ("GET", "/apis/apps/v1", "get", ""),
    ("POST", "/", "post", ""),
]


@pytest.mark.parametrize(("method", "path", "verb", "resource"), CASES)
def test_request_info(method: str, path: str, verb: str, resource: str) -> None:
    assert request_info(method, path) == (verb, resource)


def test_doctests_hold() -> None:
    assert doctest.testmod(kubefaults).failed == 0


# -- a local HTTPS upstream --------------------------------------------------------------------


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with JSON naming what arrived; ``?watch=true`` streams two watch
    events (the second only once the test sets ``server.release``); an ``Upgrade`` request is
    switched and then echoes raw bytes."""

    protocol_version = "HTTP/1.1"
    server: _Upstream

    def log_message(self, *args: object) -> None:
        pass

    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", ""):
            body = b""
            while size := int(self.rfile.readline().split(b";")[0], 16):
                body += self.rfile.read(size)
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b""):
                pass
            return body
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _answer(self) -> None:
        seen = {
            "method": self.command,
            "path": self.path,
            "authorization": self.headers.get("Authorization"),
            "connection": self.headers.get("Connection"),
            "body": self._body().decode(),
        }
        self.server.seen.append(seen)
        if self.headers.get("Upgrade"):
            self.send_response(101)
            self.send_header("Connection", "Upgrade")
            self.send_header("Upgrade", self.headers["Upgrade"])
            self.end_headers()
            while data := self.rfile.read1(65536):
                self.wfile.write(b"echo:" + data)
            self.close_connection = True
        elif "watch=true" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Connection", "close")  # as the API server says, asked to close
            self.end_headers()
            for name in ("first", "second"):
                event = {"type": "ADDED", "object": {"kind": "Namespace", "apiVersion": "v1"}}
                event["object"]["metadata"] = {"name": name, "resourceVersion": "1"}
                line = json.dumps(event).encode() + b"\n"
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
                if name == "first" and not self.server.release.wait(10):
                    break  # unreleased: the test never saw "first" before the stream ended
            self.wfile.write(b"0\r\n\r\n")
        else:
            data = json.dumps({"kind": "NamespaceList", "items": [], "seen": seen}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _answer


class _Upstream(ThreadingHTTPServer):
    daemon_threads = False  # server_close() joins the handler threads

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__(("127.0.0.1", 0), _Echo)
        self.socket = context.wrap_socket(self.socket, server_side=True)
        self.seen: list[dict] = []
        self.release = threading.Event()
        self.url = f"https://127.0.0.1:{self.server_address[1]}"

    def handle_error(self, request: object, client_address: object) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # e.g. the proxy closed its connection
            super().handle_error(request, client_address)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("pki")
    ca = tls.new_ca("test CA")
    files = {"ca": d / "ca.pem"}
    files["ca"].write_bytes(tls.pem(ca[1]))
    for name in ("upstream", "proxy"):
        cert, key = tls.issue(ca, name, ("127.0.0.1",))
        files[name] = d / f"{name}.crt"
        files[name].write_bytes(cert)
        files[f"{name}.key"] = d / f"{name}.key"
        tls.write_private(files[f"{name}.key"], key)
    return files


@pytest.fixture
def upstream(pki: dict[str, Path]):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["upstream"], pki["upstream.key"])
    server = _Upstream(context)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def proxy(upstream: _Upstream, pki: dict[str, Path]):
    # Only this proxy's threads count: a session's test platform runs a proxy of its own.
    before = {t for t in threading.enumerate() if t.name.startswith("kubefaults")}
    with FaultProxy(upstream.url, pki["ca"], pki["proxy"], pki["proxy.key"]) as p:
        yield p
    assert not [
        t for t in threading.enumerate() if t.name.startswith("kubefaults") and t not in before
    ]


@pytest.fixture
def ctx(pki: dict[str, Path]) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(pki["ca"]))


def _request(proxy: FaultProxy, ctx: ssl.SSLContext, method: str, path: str, timeout=10, **kw):
    """(status, headers, body) of one request through the proxy."""
    host, port = proxy.url.removeprefix("https://").split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
    try:
        conn.request(method, path, **kw)
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def _raw(proxy: FaultProxy, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    port = int(proxy.url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(sock, server_hostname="127.0.0.1")


def _read_until_eof(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


# -- forwarding ----------------------------------------------------------------------------------


def test_forwards_method_path_authorization_and_forces_connection_close(proxy, upstream, ctx):
    headers = {"Authorization": "Bearer s3cret", "Connection": "keep-alive"}
    status, _, body = _request(proxy, ctx, "GET", "/api/v1/namespaces?limit=5", headers=headers)
    assert status == 200
    seen = json.loads(body)["seen"]
    assert seen["method"] == "GET"
    assert seen["path"] == "/api/v1/namespaces?limit=5"
    assert seen["authorization"] == "Bearer s3cret"
    assert seen["connection"] == "close"
    assert proxy.calls == [("list", "namespaces")]


def test_closes_the_client_connection_after_one_response(proxy, upstream, ctx):
    with _raw(proxy, ctx) as sock:
        sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
        data = _read_until_eof(sock)  # returns only because the proxy closed the connection
    assert data.startswith(b"HTTP/1.1 200")
    assert proxy.calls == [("get", "")]


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_forwards_request_bodies(proxy, upstream, ctx, chunked):
    path = "/api/v1/namespaces/a/secrets"
    if chunked:
        kw = {"body": iter([b'{"kind":', b'"Secret"}']), "encode_chunked": True}
    else:
        kw = {"body": b'{"kind":"Secret"}'}
    status, _, body = _request(proxy, ctx, "POST", path, **kw)
    assert status == 200
    assert json.loads(body)["seen"]["body"] == '{"kind":"Secret"}'
    assert proxy.count("create", "secrets") == 1


def test_streams_a_watch_through_the_kubernetes_client(proxy, upstream, pki):
    config = kubernetes.client.Configuration()
    config.host = proxy.url
    config.ssl_ca_cert = str(pki["ca"])
    config.api_key = {"authorization": "tok"}
    config.api_key_prefix = {"authorization": "Bearer"}
    with kubernetes.client.ApiClient(config) as api:
        watch = kubernetes.watch.Watch()
        names = []
        for event in watch.stream(
            kubernetes.client.CoreV1Api(api).list_namespace, _request_timeout=10
        ):
            names.append(event["object"].metadata.name)
            upstream.release.set()  # the second event is sent only after the first arrived
            if len(names) == 2:
                watch.stop()  # else the client watches again when the stream ends
    assert names == ["first", "second"]
    assert upstream.seen[0]["authorization"] == "Bearer tok"
    assert proxy.calls == [("watch", "namespaces")]


def test_passes_upgrade_requests_unchanged_and_relays_both_ways(proxy, upstream, ctx):
    with _raw(proxy, ctx) as sock:
        sock.sendall(
            b"POST /api/v1/namespaces/a/pods/p/portforward?ports=80 HTTP/1.1\r\nHost: x\r\n"
            b"Connection: Upgrade\r\nUpgrade: SPDY/3.1\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        assert head.startswith(b"HTTP/1.1 101")
        sock.sendall(b"ping")
        reply = b""
        while len(reply) < len(b"echo:ping"):
            reply += sock.recv(65536)
        assert reply == b"echo:ping"
    assert upstream.seen[0]["connection"] == "Upgrade"
    assert proxy.calls == [("create", "pods/portforward")]


def test_answers_502_when_the_upstream_is_unreachable(pki, ctx):
    with socket.create_server(("127.0.0.1", 0)) as closed:
        url = f"https://127.0.0.1:{closed.getsockname()[1]}"
    with FaultProxy(url, pki["ca"], pki["proxy"], pki["proxy.key"]) as proxy:
        status, _, body = _request(proxy, ctx, "GET", "/api/v1/namespaces")
    assert status == 502
    assert json.loads(body)["kind"] == "Status"


def test_stop_closes_open_connections(upstream, pki, ctx):
    proxy = FaultProxy(upstream.url, pki["ca"], pki["proxy"], pki["proxy.key"]).start()
    try:
        with _raw(proxy, ctx) as sock:
            sock.sendall(b"GET /api/v1/namespaces?watch=true HTTP/1.1\r\nHost: x\r\n\r\n")
            first = b""
            while b"first" not in first:
                first += sock.recv(65536)
            proxy.stop()  # the watch is still open: the upstream waits for release
            assert b"second" not in _read_until_eof(sock)
    finally:
        proxy.stop()


# -- faults --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(500, "InternalError"), (503, "ServiceUnavailable"), (429, "TooManyRequests")],
)
def test_fault_answers_a_status_like_the_api_server(proxy, upstream, ctx, status, reason):
    proxy.inject("create", "namespaces", status=status)
    code, headers, body = _request(
        proxy, ctx, "POST", "/api/v1/namespaces", body=b'{"kind":"Namespace"}'
    )
    assert code == status
    answer = json.loads(body)
    assert answer["kind"] == "Status"
    assert answer["apiVersion"] == "v1"
    assert answer["status"] == "Failure"
    assert answer["reason"] == reason
    assert answer["code"] == status
    assert answer["message"].startswith("injected failure: ")
    assert headers.get("Retry-After") == ("1" if status == 429 else None)
    assert upstream.seen == []


def test_fault_raises_api_exception_in_the_kubernetes_client(proxy, upstream, pki):
    proxy.inject("list", "namespaces", status=503)
    config = kubernetes.client.Configuration()
    config.host = proxy.url
    config.ssl_ca_cert = str(pki["ca"])
    with kubernetes.client.ApiClient(config) as api:
        core = kubernetes.client.CoreV1Api(api)
        with pytest.raises(kubernetes.client.ApiException) as failed:
            core.list_namespace()
        assert failed.value.status == 503
        assert json.loads(failed.value.body)["reason"] == "ServiceUnavailable"
        assert core.list_namespace().items == []


def test_fault_after_a_chunked_body(proxy, upstream, ctx):
    proxy.inject("create", "secrets")
    body = iter([b"x" * 70000, b"y"])
    status, _, _ = _request(
        proxy,
        ctx,
        "POST",
        "/api/v1/namespaces/a/secrets",
        body=body,
        encode_chunked=True,
    )
    assert status == 500


def test_times_counts_down_and_only_exact_matches_fire(proxy, upstream, ctx):
    proxy.inject("create", "namespaces", times=2, status=503)
    statuses = [
        _request(proxy, ctx, "GET", "/api/v1/namespaces")[0],  # list: no match
        _request(proxy, ctx, "PUT", "/api/v1/namespaces/a/status", body=b"{}")[0],
        *(_request(proxy, ctx, "POST", "/api/v1/namespaces", body=b"{}")[0] for _ in range(3)),
    ]
    assert statuses == [200, 200, 503, 503, 200]
    assert proxy.count("create", "namespaces") == 3
    assert proxy.count("list", "namespaces") == 1
    assert proxy.count("update", "namespaces/status") == 1


def test_times_none_fails_until_clear(proxy, upstream, ctx):
    proxy.inject("list", "namespaces", times=None)
    for _ in range(3):
        assert _request(proxy, ctx, "GET", "/api/v1/namespaces")[0] == 500
    proxy.clear()
    assert _request(proxy, ctx, "GET", "/api/v1/namespaces")[0] == 200
    assert proxy.count("list", "namespaces") == 4
    proxy.clear_calls()
    assert proxy.calls == []


def test_hang_makes_the_client_time_out(proxy, upstream, ctx):
    proxy.inject("create", "secrets", hang=True)
    with pytest.raises(TimeoutError):
        _request(proxy, ctx, "POST", "/api/v1/namespaces/a/secrets", body=b"{}", timeout=0.5)
    assert upstream.seen == []
    status, _, _ = _request(proxy, ctx, "POST", "/api/v1/namespaces/a/secrets", body=b"{}")
    assert status == 200  # the fault fired once
    assert proxy.count("create", "secrets") == 2


def test_stop_ends_a_hanging_connection(upstream, pki, ctx):
    proxy = FaultProxy(upstream.url, pki["ca"], pki["proxy"], pki["proxy.key"]).start()
    try:
        proxy.inject("get", "", hang=True, hang_seconds=300)
        with _raw(proxy, ctx) as sock:
            sock.sendall(b"GET /version HTTP/1.1\r\nHost: x\r\n\r\n")
            while proxy.count("get", "") == 0:
                threading.Event().wait(0.01)
            proxy.stop()  # returns although the fault would hold the connection for 300 s
            assert _read_until_eof(sock) == b""
    finally:
        proxy.stop()
    assert upstream.seen == []
