"""The network identity of a Pod, for Python processes the node agent runs (loaded through
``PYTHONPATH`` as ``sitecustomize``; does nothing unless ``RECC_TESTING_POD_IP`` is set).

In a cluster every Pod has its own network namespace, so a scheduler may listen on
``0.0.0.0:8786`` in each of many Pods. Here Pods share the machine's network and each has a
loopback address instead (``127.1.x.y``). This makes a process behave as if that address were
its only interface:

- a wildcard bind (``""``/``0.0.0.0``) binds the Pod's address, and connections leave from it;
- IPv6 is absent (a Pod network here is IPv4), so servers do not also bind ``[::]``;
- "which address reaches the outside?" (a UDP socket connected to a public address, the way
  distributed's ``get_ip`` asks) answers the Pod's address.

Name resolution needs nothing here: the node agent mounts the Pod's own ``/etc/hosts``.
"""

import os
import socket

_POD_IP = os.environ.get("RECC_TESTING_POD_IP")

if _POD_IP:
    _bind = socket.socket.bind
    _connect = socket.socket.connect
    _getaddrinfo = socket.getaddrinfo
    socket.has_ipv6 = False

    def _bind_pod(self, address):
        if self.family == socket.AF_INET and address[0] in ("", "0.0.0.0"):
            address = (_POD_IP, *address[1:])
        return _bind(self, address)

    def _connect_pod(self, address):
        if self.family == socket.AF_INET:
            if self.getsockname()[0] == "0.0.0.0":
                _bind(self, (_POD_IP, 0))  # a Pod's connections come from its own address
            if self.type == socket.SOCK_DGRAM and not str(address[0]).startswith("127."):
                address = (_POD_IP, *address[1:])  # no route leaves the Pod network
        return _connect(self, address)

    def _getaddrinfo_v4(host, port, family=0, type=0, proto=0, flags=0):
        found = _getaddrinfo(host, port, family, type, proto, flags)
        return [entry for entry in found if entry[0] != socket.AF_INET6] or found

    socket.socket.bind = _bind_pod
    socket.socket.connect = _connect_pod
    socket.getaddrinfo = _getaddrinfo_v4
