"""The fake API server's streaming pod subresources: ``pods/<name>/log`` and
``pods/<name>/portforward``.

- ``GET .../pods/<name>/log`` answers ``text/plain`` from :attr:`FakeKubeServer.pod_logs`
  (a function ``(namespace, pod) -> str``; the emulated operator serves its process logs),
  honouring ``tailLines``.
- ``GET .../pods/<name>/portforward?ports=P`` upgrades to a websocket speaking the
  ``v4.channel.k8s.io`` protocol that ``kubernetes.stream.portforward`` uses: per port a data
  channel (2i) and an error channel (2i+1), each opened with a frame holding the port number,
  then binary frames prefixed by their channel byte. The fake relays each data channel to a
  TCP connection to the Pod's ``status.podIP``:P, so a Pod whose process really listens there
  (the emulated platform's pods run on 127.0.0.1) is reachable as through ``kubectl
  port-forward``. The websocket closes when either side closes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import select
import socket
import struct
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote, urlsplit

from recc.testing.fake_kube import FakeKubeError

if TYPE_CHECKING:
    from http.server import BaseHTTPRequestHandler

_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/(log|portforward)$")
_WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
PROTOCOL = "v4.channel.k8s.io"
_BINARY, _CLOSE, _PING, _PONG = 0x2, 0x8, 0x9, 0xA


def handle(handler: BaseHTTPRequestHandler) -> bool:
    """Answer ``handler``'s request if it is a pod log or port-forward; False otherwise."""
    url = urlsplit(handler.path)
    match = _PATH.match(url.path)
    if match is None or handler.command != "GET":
        return False
    namespace, name, subresource = (unquote(g) for g in match.groups())
    query = parse_qs(url.query)
    fake = handler.server.fake  # type: ignore[attr-defined]
    try:
        pod = fake.stream_target(subresource, namespace, name)
        if subresource == "log":
            text = fake.pod_logs(namespace, name) if fake.pod_logs else ""
            tail = query.get("tailLines")
            if tail:
                text = "".join(text.splitlines(keepends=True)[-int(tail[-1]) :])
            _send(handler, 200, "text/plain", text.encode())
        else:
            ports = [int(p) for v in query.get("ports", []) for p in v.split(",") if p]
            _port_forward(handler, pod, ports, fake)
    except FakeKubeError as e:
        _send(handler, e.code, "application/json", json.dumps(e.body).encode())
    return True


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` answer to a client's ``Sec-WebSocket-Key`` (RFC 6455).

    >>> accept_key("dGhlIHNhbXBsZSBub25jZQ==")
    's3pPLMBiTxaQ9kYGzzhZRbK+xOo='
    """
    digest = hashlib.sha1((key + _WEBSOCKET_GUID).encode()).digest()
    return base64.b64encode(digest).decode()


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final websocket frame (servers never mask)."""
    size = len(payload)
    if size < 126:
        header = struct.pack("!BB", 0x80 | opcode, size)
    elif size < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 126, size)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 127, size)
    return header + payload


def parse_frames(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Take every complete frame off the front of ``buffer``: (opcode, unmasked payload).

    >>> buf = bytearray(b"\\x82\\x83" + bytes(4) + b"\\x00ab" + b"\\x82")
    >>> parse_frames(buf), bytes(buf)
    ([(2, b'\\x00ab')], b'\\x82')
    """
    frames = []
    while len(buffer) >= 2:
        opcode, size, offset = buffer[0] & 0x0F, buffer[1] & 0x7F, 2
        if size == 126:
            if len(buffer) < 4:
                break
            size, offset = struct.unpack("!H", buffer[2:4])[0], 4
        elif size == 127:
            if len(buffer) < 10:
                break
            size, offset = struct.unpack("!Q", buffer[2:10])[0], 10
        masked = buffer[1] & 0x80
        mask = bytes(buffer[offset : offset + 4]) if masked else b""
        start = offset + len(mask)
        if len(buffer) < start + size:
            break
        payload = bytes(buffer[start : start + size])
        if masked:
            payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        frames.append((opcode, payload))
        del buffer[: start + size]
    return frames


def _send(handler: BaseHTTPRequestHandler, code: int, content_type: str, data: bytes) -> None:
    try:
        handler.send_response(code)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)
    except OSError:  # the client went away
        handler.close_connection = True


def _port_forward(
    handler: BaseHTTPRequestHandler, pod: dict[str, Any], ports: list[int], fake: Any
) -> None:
    headers = handler.headers
    key = headers.get("Sec-WebSocket-Key")
    if not key or "websocket" not in (headers.get("Upgrade") or "").lower():
        raise FakeKubeError(400, "port-forward needs a websocket upgrade (Upgrade: websocket)")
    offered = [p.strip() for p in (headers.get("Sec-WebSocket-Protocol") or "").split(",")]
    if PROTOCOL not in offered:
        raise FakeKubeError(400, f"port-forward speaks {PROTOCOL} only; offered: {offered}")
    if not ports:
        raise FakeKubeError(400, "the ports query parameter is required, e.g. ?ports=8786")
    status = pod.get("status") or {}
    name = pod["metadata"]["name"]
    if status.get("phase") != "Running" or not status.get("podIP"):
        raise FakeKubeError(400, f'unable to upgrade connection: pod "{name}" is not running')
    handler.send_response(101)
    handler.send_header("Upgrade", "websocket")
    handler.send_header("Connection", "Upgrade")
    handler.send_header("Sec-WebSocket-Accept", accept_key(key))
    handler.send_header("Sec-WebSocket-Protocol", PROTOCOL)
    handler.end_headers()
    handler.wfile.flush()
    handler.close_connection = True  # the connection is the websocket's from now on
    client = handler.connection
    targets: dict[int, socket.socket] = {}
    try:
        for index, port in enumerate(ports):
            number = struct.pack("<H", port)
            client.sendall(frame(_BINARY, bytes([2 * index]) + number))
            client.sendall(frame(_BINARY, bytes([2 * index + 1]) + number))
            try:
                targets[index] = socket.create_connection((status["podIP"], port), timeout=5)
            except OSError as e:
                message = f"error forwarding port {port} to pod {name}: {e}"
                client.sendall(frame(_BINARY, bytes([2 * index + 1]) + message.encode()))
                return
        _relay(client, targets, fake)
    except OSError:
        pass  # either side went away: the websocket ends
    finally:
        for target in targets.values():
            target.close()
        try:
            client.sendall(frame(_CLOSE, struct.pack("!H", 1000)))
        except OSError:
            pass


def _relay(client: socket.socket, targets: dict[int, socket.socket], fake: Any) -> None:
    index_of = {sock: index for index, sock in targets.items()}
    buffer = bytearray()
    while not fake.stopping:
        ready, _, _ = select.select([client, *targets.values()], [], [], 0.5)
        for sock in ready:
            data = sock.recv(65536)
            if not data:
                return  # a side closed: so does the forward
            if sock is not client:
                channel = 2 * index_of[sock]
                client.sendall(frame(_BINARY, bytes([channel]) + data))
                continue
            buffer += data
            for opcode, payload in parse_frames(buffer):
                if opcode == _CLOSE:
                    return
                if opcode == _PING:
                    client.sendall(frame(_PONG, payload))
                elif opcode == _BINARY and payload and payload[0] % 2 == 0:
                    target = targets.get(payload[0] // 2)
                    if target is not None:
                        target.sendall(payload[1:])
