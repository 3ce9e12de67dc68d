"""recc.testing's fake Kubernetes API server, exercised only through the real kubernetes client."""

from __future__ import annotations

import json
import threading

import pytest
import urllib3
from dask_kubernetes.operator import make_cluster_spec
from kubernetes import client, dynamic
from kubernetes.client.rest import ApiException

from recc.testing import FakeKubeError, fake_kubernetes

DASK = ("kubernetes.dask.org", "v1")
POD_SPEC = {"containers": [{"name": "main", "image": "ghcr.io/dask/dask:2026.8.0-py3.11"}]}


@pytest.fixture
def kube():
    with fake_kubernetes() as server:
        yield server


@pytest.fixture
def api(kube):
    """The typed APIs of the real client, all pointed at the fake."""
    api_client = kube.api_client()

    class Apis:
        core = client.CoreV1Api(api_client)
        apps = client.AppsV1Api(api_client)
        rbac = client.RbacAuthorizationV1Api(api_client)
        net = client.NetworkingV1Api(api_client)
        custom = client.CustomObjectsApi(api_client)

    yield Apis
    api_client.close()


def _status(error: ApiException) -> dict:
    return json.loads(error.body)


def _ns(api, name: str, **labels: str) -> None:
    api.core.create_namespace({"metadata": {"name": name, "labels": labels}})


def _cluster(name: str, replicas: int = 2) -> dict:
    return make_cluster_spec(name=name, n_workers=replicas)


def test_create_fills_server_fields_and_get_list_return_it(api):
    _ns(api, "team-a")
    made = api.core.create_namespaced_config_map("team-a", {"metadata": {"name": "settings"}})
    meta = made.metadata
    assert meta.namespace == "team-a" and meta.uid and meta.resource_version
    assert meta.creation_timestamp is not None and made.kind == "ConfigMap"
    assert api.core.read_namespaced_config_map("settings", "team-a").metadata.uid == meta.uid
    names = [c.metadata.name for c in api.core.list_namespaced_config_map("team-a").items]
    assert names == ["settings"]
    assert api.core.read_namespace("team-a").status.phase == "Active"


def test_replace_patch_and_delete(api):
    _ns(api, "team-a")
    made = api.core.create_namespaced_config_map(
        "team-a", {"metadata": {"name": "settings"}, "data": {"threads": "1"}}
    )
    made.data = {"threads": "2"}
    replaced = api.core.replace_namespaced_config_map("settings", "team-a", made)
    assert replaced.data == {"threads": "2"}
    assert int(replaced.metadata.resource_version) > int(made.metadata.resource_version)
    assert replaced.metadata.uid == made.metadata.uid

    merged = api.core.patch_namespaced_config_map(
        "settings", "team-a", {"metadata": {"labels": {"tier": "gold"}}, "data": {"memory": "4"}}
    )
    assert merged.data == {"threads": "2", "memory": "4"}
    assert merged.metadata.labels == {"tier": "gold"}

    json_patched = api.core.patch_namespaced_config_map(
        "settings",
        "team-a",
        [
            {"op": "test", "path": "/data/threads", "value": "2"},
            {"op": "replace", "path": "/data/threads", "value": "8"},
            {"op": "remove", "path": "/data/memory"},
            {"op": "add", "path": "/metadata/labels/recc.io~1user", "value": "alice"},
        ],
    )
    assert json_patched.data == {"threads": "8"}
    assert json_patched.metadata.labels == {"tier": "gold", "recc.io/user": "alice"}

    with pytest.raises(ApiException) as failed_test:
        api.core.patch_namespaced_config_map(
            "settings", "team-a", [{"op": "test", "path": "/data/threads", "value": "1"}]
        )
    assert failed_test.value.status == 422

    deleted = api.core.delete_namespaced_config_map("settings", "team-a")
    assert deleted["metadata"]["name"] == "settings"
    with pytest.raises(ApiException) as gone:
        api.core.read_namespaced_config_map("settings", "team-a")
    assert gone.value.status == 404
    with pytest.raises(ApiException) as again:
        api.core.delete_namespaced_config_map("settings", "team-a")
    assert again.value.status == 404


def test_errors_carry_status_objects(api):
    _ns(api, "team-a")
    with pytest.raises(ApiException) as duplicate:
        _ns(api, "team-a")
    assert duplicate.value.status == 409 and _status(duplicate.value)["reason"] == "AlreadyExists"

    with pytest.raises(ApiException) as missing_ns:
        api.core.create_namespaced_secret("nowhere", {"metadata": {"name": "tls"}})
    assert missing_ns.value.status == 404
    assert _status(missing_ns.value)["message"] == 'namespaces "nowhere" not found'

    with pytest.raises(ApiException) as absent:
        api.apps.read_namespaced_deployment("nothing", "team-a")
    assert absent.value.status == 404 and _status(absent.value)["details"]["kind"] == "deployments"


def test_stale_resource_version_is_a_conflict(api):
    _ns(api, "team-a")
    first = api.core.create_namespaced_config_map("team-a", {"metadata": {"name": "c"}})
    api.core.patch_namespaced_config_map("c", "team-a", {"data": {"a": "1"}})
    first.data = {"b": "2"}
    with pytest.raises(ApiException) as conflict:
        api.core.replace_namespaced_config_map("c", "team-a", first)
    assert conflict.value.status == 409 and _status(conflict.value)["reason"] == "Conflict"


def test_invalid_objects_are_rejected_with_causes(api, kube):
    with pytest.raises(ApiException) as bad_name:
        _ns(api, "Team_A")
    status = _status(bad_name.value)
    assert bad_name.value.status == 422 and status["reason"] == "Invalid"
    assert [c["field"] for c in status["details"]["causes"]] == ["metadata.name"]
    assert "DNS-1123 label" in status["message"]

    _ns(api, "team-a")
    cluster = _cluster("c1")
    cluster["spec"]["worker"]["replica"] = 3  # a typo the CRD schema does not allow
    del cluster["spec"]["scheduler"]["service"]
    with pytest.raises(ApiException) as bad_cluster:
        api.custom.create_namespaced_custom_object(*DASK, "team-a", "daskclusters", cluster)
    causes = _status(bad_cluster.value)["details"]["causes"]
    assert bad_cluster.value.status == 422
    assert {(c["field"], c["message"]) for c in causes} == {
        ("spec.scheduler.service", "required field is missing"),
        ("spec.worker.replica", "unknown field"),
    }
    assert kube.objects("daskclusters") == []

    api.custom.create_namespaced_custom_object(*DASK, "team-a", "daskclusters", _cluster("c1"))
    with pytest.raises(ApiException) as bad_patch:
        api.custom.patch_namespaced_custom_object(
            *DASK, "team-a", "daskclusters", "c1", {"spec": {"worker": {"replicas": "many"}}}
        )
    assert bad_patch.value.status == 422
    stored = kube.get_object("daskclusters", "c1", "team-a")
    assert stored["spec"]["worker"]["replicas"] == 2


def test_label_and_field_selectors(api):
    _ns(api, "team-a")
    labels = {
        "a": {"app": "dask", "tier": "gold"},
        "b": {"app": "dask", "tier": "silver"},
        "c": {"app": "web"},
        "d": {},
    }
    for name, these in labels.items():
        api.core.create_namespaced_config_map(
            "team-a", {"metadata": {"name": name, "labels": these}}
        )

    def select(selector: str) -> list[str]:
        items = api.core.list_namespaced_config_map("team-a", label_selector=selector).items
        return [c.metadata.name for c in items]

    assert select("app=dask") == ["a", "b"]
    assert select("app==dask,tier=gold") == ["a"]
    assert select("tier!=gold") == ["b", "c", "d"]  # != also matches a missing label
    assert select("tier in (gold, silver)") == ["a", "b"]
    assert select("tier notin (gold),app") == ["b", "c"]
    assert select("tier") == ["a", "b"]
    assert select("!tier") == ["c", "d"]
    assert select("") == ["a", "b", "c", "d"]
    fields = api.core.list_namespaced_config_map("team-a", field_selector="metadata.name=c")
    assert [c.metadata.name for c in fields.items] == ["c"]
    others = api.core.list_namespaced_config_map("team-a", field_selector="metadata.name!=c")
    assert len(others.items) == 3
    with pytest.raises(ApiException) as unparsable:
        select("tier in gold")
    assert unparsable.value.status == 400


def test_lists_across_namespaces_and_cluster_scope(api):
    for ns in ("team-a", "team-b"):
        _ns(api, ns)
        api.core.create_namespaced_service_account(ns, {"metadata": {"name": "dask"}})
    everywhere = api.core.list_service_account_for_all_namespaces(label_selector="!x")
    assert sorted((s.metadata.namespace, s.metadata.name) for s in everywhere.items) == [
        ("team-a", "dask"),
        ("team-b", "dask"),
    ]
    rule = {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}
    api.rbac.create_cluster_role({"metadata": {"name": "recc:reader"}, "rules": [rule]})
    api.rbac.create_namespaced_role("team-a", {"metadata": {"name": "user"}, "rules": [rule]})
    api.rbac.create_namespaced_role_binding(
        "team-a",
        {
            "metadata": {"name": "user"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "user"},
            "subjects": [
                {"kind": "User", "name": "alice", "apiGroup": "rbac.authorization.k8s.io"}
            ],
        },
    )
    assert [r.metadata.name for r in api.rbac.list_cluster_role().items] == ["recc:reader"]
    assert api.rbac.read_cluster_role("recc:reader").metadata.namespace is None
    assert len(api.rbac.list_role_binding_for_all_namespaces().items) == 1


def test_deleting_a_namespace_deletes_its_objects(api, kube):
    deleted = []
    kube.on("deleted", "DaskCluster", lambda obj: deleted.append(obj["metadata"]["name"]))
    for ns in ("doomed", "kept"):
        _ns(api, ns)
        api.core.create_namespaced_config_map(ns, {"metadata": {"name": "settings"}})
        api.custom.create_namespaced_custom_object(*DASK, ns, "daskclusters", _cluster(ns))
    api.core.create_namespaced_resource_quota(
        "doomed", {"metadata": {"name": "quota"}, "spec": {"hard": {"pods": "10"}}}
    )
    api.net.create_namespaced_network_policy(
        "doomed",
        {"metadata": {"name": "deny"}, "spec": {"podSelector": {}, "policyTypes": ["Ingress"]}},
    )
    api.apps.create_namespaced_deployment(
        "doomed",
        {
            "metadata": {"name": "web"},
            "spec": {
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}}, "spec": POD_SPEC},
            },
        },
    )

    api.core.delete_namespace("doomed")

    assert [c.metadata.namespace for c in api.core.list_config_map_for_all_namespaces().items] == [
        "kept"
    ]
    assert api.core.list_resource_quota_for_all_namespaces().items == []
    assert api.net.list_network_policy_for_all_namespaces().items == []
    assert api.apps.list_deployment_for_all_namespaces().items == []
    clusters = api.custom.list_cluster_custom_object(*DASK, "daskclusters")["items"]
    assert [c["metadata"]["namespace"] for c in clusters] == ["kept"]
    assert deleted == ["doomed"]
    with pytest.raises(ApiException) as gone:
        api.core.read_namespace("doomed")
    assert gone.value.status == 404


def test_dask_cluster_round_trip(api, kube):
    _ns(api, "team-a")
    cluster = _cluster("c1")
    cluster["metadata"]["labels"] = {"recc.io/cluster": "c1"}
    made = api.custom.create_namespaced_custom_object(*DASK, "team-a", "daskclusters", cluster)
    assert made["metadata"]["namespace"] == "team-a" and made["metadata"]["uid"]
    assert "env" not in made["spec"]["worker"]["spec"]["containers"][0]  # null pruned
    got = api.custom.get_namespaced_custom_object(*DASK, "team-a", "daskclusters", "c1")
    assert got == made

    listed = api.custom.list_namespaced_custom_object(
        *DASK, "team-a", "daskclusters", label_selector="recc.io/cluster=c1"
    )
    assert [c["metadata"]["name"] for c in listed["items"]] == ["c1"]

    scaled = api.custom.patch_namespaced_custom_object(
        *DASK, "team-a", "daskclusters", "c1", {"spec": {"worker": {"replicas": 5}}}
    )
    assert scaled["spec"]["worker"]["replicas"] == 5
    assert scaled["metadata"]["generation"] == 2

    scaled["status"] = {"phase": "Running"}  # no status subresource on DaskCluster: stored
    replaced = api.custom.replace_namespaced_custom_object(
        *DASK, "team-a", "daskclusters", "c1", scaled
    )
    assert replaced["status"] == {"phase": "Running"}
    assert replaced["metadata"]["generation"] == 2  # status is not part of the generation
    with pytest.raises(ApiException) as no_subresource:
        api.custom.patch_namespaced_custom_object_status(
            *DASK, "team-a", "daskclusters", "c1", {"status": {"phase": "Pending"}}
        )
    assert no_subresource.value.status == 404

    api.custom.delete_namespaced_custom_object(*DASK, "team-a", "daskclusters", "c1")
    assert kube.get_object("daskclusters", "c1", "team-a") is None


def test_status_subresource_separates_spec_and_status(api):
    _ns(api, "team-a")
    job = {
        "apiVersion": "kubernetes.dask.org/v1",
        "kind": "DaskJob",
        "metadata": {"name": "j1"},
        "spec": {"job": {"spec": POD_SPEC}, "cluster": {"spec": _cluster("x")["spec"]}},
    }
    api.custom.create_namespaced_custom_object(*DASK, "team-a", "daskjobs", job)
    status = {"status": {"jobStatus": "Running", "clusterName": "j1"}}
    after_main = api.custom.patch_namespaced_custom_object(
        *DASK, "team-a", "daskjobs", "j1", status
    )
    assert "status" not in after_main or after_main["status"] is None  # ignored on the main path
    after_status = api.custom.patch_namespaced_custom_object_status(
        *DASK, "team-a", "daskjobs", "j1", {**status, "spec": {"job": None}}
    )
    assert after_status["status"]["jobStatus"] == "Running"
    job_pod = after_status["spec"]["job"]["spec"]  # spec ignored on /status
    assert job_pod == {**POD_SPEC, "restartPolicy": "OnFailure"}  # with the CRD's default


def test_generation_follows_spec_changes_only(api):
    _ns(api, "team-a")
    body = {
        "metadata": {"name": "web"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": POD_SPEC},
        },
    }
    assert api.apps.create_namespaced_deployment("team-a", body).metadata.generation == 1
    relabelled = api.apps.patch_namespaced_deployment(
        "web", "team-a", {"metadata": {"labels": {"x": "y"}}}
    )
    assert relabelled.metadata.generation == 1
    scaled = api.apps.patch_namespaced_deployment("web", "team-a", {"spec": {"replicas": 3}})
    assert scaled.metadata.generation == 2 and scaled.spec.replicas == 3


def test_injected_failure_then_success(api, kube):
    kube.inject_failure("create", "namespaces", times=2, status=503)
    for _ in range(2):
        with pytest.raises(ApiException) as failed:
            _ns(api, "team-a")
        assert failed.value.status == 503
        assert _status(failed.value)["reason"] == "ServiceUnavailable"
    _ns(api, "team-a")
    assert kube.get_object("namespaces", "team-a") is not None

    kube.inject_failure("list", "pods", times=None)
    for _ in range(3):
        with pytest.raises(ApiException):
            api.core.list_namespaced_pod("team-a")
    kube.clear_failures()
    assert api.core.list_namespaced_pod("team-a").items == []
    with pytest.raises(ValueError, match="verb"):
        kube.inject_failure("update", "pods")
    with pytest.raises(KeyError, match="podz"):
        kube.inject_failure("get", "podz")


def test_injected_hang_times_out_the_client_and_creates_nothing(api, kube):
    kube.inject_failure("create", "daskclusters", hang=True)
    _ns(api, "team-a")
    with pytest.raises(urllib3.exceptions.ReadTimeoutError):
        api.custom.create_namespaced_custom_object(
            *DASK, "team-a", "daskclusters", _cluster("c1"), _request_timeout=0.5
        )
    assert kube.objects("daskclusters") == []
    api.custom.create_namespaced_custom_object(*DASK, "team-a", "daskclusters", _cluster("c1"))
    assert [c["metadata"]["name"] for c in kube.objects("daskclusters")] == ["c1"]


def test_stop_releases_hanging_requests():
    before = set(threading.enumerate())
    with fake_kubernetes() as kube:
        kube.inject_failure("get", "namespaces", times=None, hang=True, hang_seconds=300)
        core = client.CoreV1Api(kube.api_client())
        outcome = []

        def hang():
            try:
                core.read_namespace("default")
            except Exception as e:  # whatever the client makes of a closed connection
                outcome.append(e)

        caller = threading.Thread(target=hang)
        caller.start()
        while not kube.count("get", "namespaces"):
            threading.Event().wait(0.01)
    caller.join(timeout=60)
    assert not caller.is_alive() and len(outcome) == 1
    for _ in range(500):  # handler threads end once their connection is closed
        if set(threading.enumerate()) <= before:
            break
        threading.Event().wait(0.01)
    assert set(threading.enumerate()) <= before


def test_calls_are_recorded(api, kube):
    _ns(api, "team-a")
    api.core.create_namespaced_config_map("team-a", {"metadata": {"name": "c"}})
    api.core.read_namespaced_config_map("c", "team-a")
    api.core.list_namespaced_config_map("team-a")
    api.core.patch_namespaced_config_map("c", "team-a", {"data": {"a": "b"}})
    api.core.delete_namespace("team-a")
    assert [tuple(c) for c in kube.calls] == [
        ("create", "namespaces", None, None),
        ("create", "configmaps", "team-a", None),
        ("get", "configmaps", "team-a", "c"),
        ("list", "configmaps", "team-a", None),
        ("patch", "configmaps", "team-a", "c"),
        ("delete", "namespaces", None, "team-a"),
    ]
    assert kube.count("create") == 2 and kube.count(resource="configmaps") == 4
    kube.clear_calls()
    assert kube.count() == 0


def test_hooks_see_changes_and_can_act(api, kube):
    seen = []
    for event in ("created", "updated", "deleted"):
        kube.on(event, "services", lambda obj, e=event: seen.append((e, obj["metadata"]["name"])))

    def give_address(svc):
        meta = svc["metadata"]
        ingress = {"loadBalancer": {"ingress": [{"ip": "127.0.0.1"}]}}
        kube.patch_object("services", meta["name"], {"status": ingress}, meta["namespace"])

    remove = kube.on("created", "Service", give_address)
    _ns(api, "team-a")
    service = {"metadata": {"name": "sched"}, "spec": {"ports": [{"port": 8786}]}}
    api.core.create_namespaced_service("team-a", service)
    read = api.core.read_namespaced_service("sched", "team-a")
    assert read.status.load_balancer.ingress[0].ip == "127.0.0.1"
    remove()
    api.core.create_namespaced_service("team-a", {**service, "metadata": {"name": "other"}})
    assert "status" not in kube.get_object("services", "other", "team-a")
    api.core.delete_namespace("team-a")
    assert seen == [
        ("created", "sched"),
        ("updated", "sched"),
        ("created", "other"),
        ("deleted", "other"),
        ("deleted", "sched"),
    ]


def test_a_failing_hook_is_recorded_and_the_call_succeeds(api, kube):
    kube.on("created", "Namespace", lambda obj: 1 / 0)
    _ns(api, "team-a")
    assert api.core.read_namespace("team-a").metadata.name == "team-a"
    assert [type(e) for e in kube.hook_errors] == [ZeroDivisionError]


def test_python_side_access(kube):
    assert [n["metadata"]["name"] for n in kube.objects("namespaces")] == [
        "default",
        "kube-public",
        "kube-system",
    ]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ip-10-0-0-1"}}
    kube.create_object(node)
    assert kube.get_object("Node", "ip-10-0-0-1")["metadata"]["uid"]
    assert kube.get_object("nodes", "absent") is None
    ready = kube.get_object("nodes", "ip-10-0-0-1")
    ready["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    kube.update_object(ready)  # status included, as a kubelet would report it
    core = client.CoreV1Api(kube.api_client())
    assert core.read_node("ip-10-0-0-1").status.conditions[0].status == "True"
    with pytest.raises(FakeKubeError) as stale:
        kube.update_object(ready)  # still carries the previous resourceVersion
    assert stale.value.code == 409
    with pytest.raises(FakeKubeError) as invalid:
        kube.create_object({**node, "spec": {"unschedulabel": True}})
    assert invalid.value.code == 422
    with pytest.raises(FakeKubeError) as absent:
        kube.delete_object("nodes", "absent")
    assert absent.value.code == 404


def test_discovery_serves_the_client_and_dynamic_client(kube):
    api_client = kube.api_client()
    assert client.VersionApi(api_client).get_code().minor == "32"
    groups = {g.name for g in client.ApisApi(api_client).get_api_versions().groups}
    assert {"apps", "batch", "rbac.authorization.k8s.io", "kubernetes.dask.org"} <= groups
    dask = client.CustomObjectsApi(api_client).get_api_resources(*DASK).resources
    assert {r.kind for r in dask} == {"DaskCluster", "DaskWorkerGroup", "DaskJob", "DaskAutoscaler"}

    dyn = dynamic.DynamicClient(api_client)
    clusters = dyn.resources.get(api_version="kubernetes.dask.org/v1", kind="DaskCluster")
    clusters.create(body=_cluster("c1"), namespace="default")
    assert [c.metadata.name for c in clusters.get(namespace="default").items] == ["c1"]
    api_client.close()


def test_delete_collection_by_label(api, kube):
    _ns(api, "team-a")
    for name, owner in (("a", "recc"), ("b", "recc"), ("c", "someone")):
        meta = {"name": name, "labels": {"app.kubernetes.io/managed-by": owner}}
        api.core.create_namespaced_secret("team-a", {"metadata": meta})
    api.core.delete_collection_namespaced_secret(
        "team-a", label_selector="app.kubernetes.io/managed-by=recc"
    )
    assert [s["metadata"]["name"] for s in kube.objects("secrets", "team-a")] == ["c"]
