"""Test your code against Kubernetes and RECC's EKS platform without a cluster or an account.

Two tools, both on loopback: :func:`fake_kubernetes` (a fake Kubernetes API server) and
:func:`emulated_platform` (that fake plus moto for AWS plus the dask-kubernetes operator
emulated with local processes, so ``RECCCluster(backend="eks")`` runs end to end on one
machine). ``python -m recc.testing serve`` serves the emulated platform to other processes.

The fake Kubernetes API
-----------------------

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
client's ``_request_timeout`` fires). ``GET pods/<name>/log`` answers from
``kube.pod_logs`` and ``pods/<name>/portforward`` relays to the Pod's ``status.podIP``
(:mod:`recc.testing.pod_streams`).

The emulated platform
---------------------
:func:`emulated_platform` creates in moto what RECC's Terraform module creates (VPC, two
subnets, a security group, the node IAM role, an EKS cluster with a one-node ``system`` node
group), starts the fake API, and for the ``with`` block sets fake AWS credentials and region
(no instance metadata, no profile), boto3's endpoint (moto) and RECC's ``recc.eks.*`` config
(cluster name, region, subnets, security groups, node role, ``endpoint`` = the fake), with
``recc.state-dir`` in a temporary directory. In it:

- every EKS managed node group of the cluster gets one Ready Node per desired instance,
  labelled (its labels, ``eks.amazonaws.com/nodegroup``, ``recc.io/nodegroup``) and tainted like
  EKS does, and loses them when it shrinks or goes away (:mod:`recc.testing.nodes`);
- a ``DaskCluster`` becomes a ``tls://`` scheduler and ``dask worker`` processes on 127.0.0.1,
  with the certificates of its TLS Secret and the threads, memory limit, resources and
  environment of its pod spec; its Service ``<name>-scheduler`` carries the ports really bound
  (a LoadBalancer Service gets the address 127.0.0.1; a ClusterIP one is reached through the
  API server's port-forward); Pods wait for a Node that fits their node selector and taints;
  scaling and ``DaskWorkerGroup`` objects work; deleting the DaskCluster or its namespace stops
  its processes (:mod:`recc.testing.operator`).

.. code-block:: python

    import kubernetes.client
    from recc import RECCClient, RECCCluster
    from recc.testing import emulated_platform

    with emulated_platform() as platform:
        with RECCCluster(backend="eks", n_workers=4) as cluster, RECCClient(cluster) as client:
            assert client.submit(sum, [1, 2]).result() == 3
        # Everything is gone now: node group, launch template, namespace; the emulated
        # processes stop within a moment (platform.processes() lists those still running).

        # The next EKS CreateNodegroup fails (ClientError InternalFailure), once:
        platform.inject_failure(aws=("eks", "CreateNodegroup"))
        # The next two namespace creations get HTTP 500; hang=True blocks instead:
        platform.inject_failure(kube=("create", "namespaces"), times=2)
        platform.inject_failure(aws=("eks", "DescribeNodegroup"), hang=True, hang_seconds=5)
        platform.clear_failures()

        platform.calls  # [("aws", "eks", "CreateNodegroup"), ("kube", "create", "namespaces"), ...]
        core = kubernetes.client.CoreV1Api(platform.api_client())

Options: ``region``, ``eks_cluster_name``, ``state_dir``, ``require_nodes=False`` (Dask pods
need no Node), ``start_timeout`` (seconds for a scheduler to start). Only one platform runs in
a process at a time; AWS fault injection and AWS call recording see this process's boto3
clients (those created inside the ``with`` block).

Serving it to other processes
-----------------------------
``python -m recc.testing serve [--port-file F]`` runs the same platform with moto as a server on
127.0.0.1, prints ``export NAME=value`` lines (``AWS_ENDPOINT_URL``, fake credentials,
``AWS_DEFAULT_REGION``, ``DASK_RECC__BACKEND=eks``, ``DASK_RECC__EKS__*``,
``DASK_RECC__STATE_DIR``), closes its stdout, and runs until SIGTERM or SIGINT, then stops every
process it started. With those variables ``recc up``, ``recc ls``, ``recc down`` and
``RECCCluster.from_name`` work across processes.
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
