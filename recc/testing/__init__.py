"""Test your code against Kubernetes without a cluster.

:func:`fake_kubernetes` starts a fake Kubernetes API server on 127.0.0.1 that the real
``kubernetes`` Python client talks to over HTTP. It keeps objects in memory (core, apps,
batch, RBAC, networking, policy and the dask-kubernetes custom resources), answers
404/409/422 like the real API server, honours label and field selectors, deletes a
namespace's objects with it, and rejects objects that fail the official Kubernetes schema or
the dask-kubernetes CRD schema (see :mod:`recc.kube.schema`).

Example
-------
.. code-block:: python

    import kubernetes.client
    from kubernetes.client.rest import ApiException
    from recc.testing import fake_kubernetes

    with fake_kubernetes() as kube:
        core = kubernetes.client.CoreV1Api(kube.api_client())
        core.create_namespace({"metadata": {"name": "demo", "labels": {"team": "risk"}}})
        core.create_namespaced_config_map("demo", {"metadata": {"name": "settings"}})
        assert core.list_namespace(label_selector="team in (risk)").items[0].metadata.name == "demo"

        # Make the next namespace creation fail, as a flaky API server would.
        kube.inject_failure("create", "namespaces", status=503)
        try:
            core.create_namespace({"metadata": {"name": "other"}})
        except ApiException as e:
            assert e.status == 503

        # React to objects, e.g. give every Service a load-balancer address.
        kube.on("created", "Service", lambda svc: kube.patch_object(
            "services", svc["metadata"]["name"],
            {"status": {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}},
            svc["metadata"]["namespace"]))

        # Assert on state and on the calls made, without going through HTTP.
        assert kube.get_object("configmaps", "settings", "demo") is not None
        assert kube.count("create", "namespaces") == 2

        core.delete_namespace("demo")          # takes the ConfigMap with it
        assert kube.objects("configmaps", "demo") == []

Failure injection takes a verb (``create``, ``get``, ``list``, ``replace``, ``patch``,
``delete``, ``deletecollection``) and a resource plural (``"namespaces"``,
``"daskclusters"``, ``"services/status"``), with ``times=`` (``None``: until
:meth:`~FakeKubeServer.clear_failures`), ``status=`` and ``hang=True`` (no answer until the
client's ``_request_timeout`` fires).
"""

from recc.testing.fake_kube import Call, FakeKubeError, FakeKubeServer, fake_kubernetes
from recc.testing.faults import AWSFaults
from recc.testing.operator import EmulatedProcess
from recc.testing.platform import EmulatedPlatform, emulated_platform

__all__ = [
    "AWSFaults",
    "Call",
    "EmulatedPlatform",
    "EmulatedProcess",
    "FakeKubeError",
    "FakeKubeServer",
    "emulated_platform",
    "fake_kubernetes",
]
