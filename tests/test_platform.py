"""``recc platform configure`` and ``recc platform check``: Terraform outputs become RECC's dask
config, and the check reports what is set and what answers (AWS through moto)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import boto3
import dask.config
import pytest
import yaml
from moto import mock_aws
from typer.testing import CliRunner

import recc.config
from recc import platform
from recc.cli import platform as platform_cli
from recc.errors import BackendError, ConfigError

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "tests" / "data" / "terraform-outputs.json"
REGION = "eu-west-1"


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty dask config directory, as if this process had started with DASK_CONFIG=it.

    dask reads DASK_CONFIG once, at import, into ``dask.config.paths`` (the default of
    ``refresh``), so the directory is added there too; the global config is restored after.
    """
    directory = tmp_path / "dask"
    directory.mkdir()
    monkeypatch.setenv("DASK_CONFIG", str(directory))
    for name in list(os.environ):
        if name.startswith("DASK_RECC__"):
            monkeypatch.delenv(name)
    dask.config.paths.append(str(directory))
    recc.config.refresh()
    try:
        yield directory
    finally:
        dask.config.paths.remove(str(directory))
        monkeypatch.undo()
        recc.config.refresh()


def sample_outputs(**changes: object) -> dict:
    """The sample ``terraform output -json``, with some values replaced (None removes one)."""
    outputs = json.loads(SAMPLE.read_text())
    for name, value in changes.items():
        if value is None:
            outputs.pop(name)
        else:
            outputs[name] = {"sensitive": False, "type": "string", "value": value}
    return outputs


def write_outputs(path: Path, outputs: object) -> Path:
    path.write_text(json.dumps(outputs))
    return path


# ---------------------------------------------------------------------------------------------
# configure
# ---------------------------------------------------------------------------------------------


def test_configure_writes_recc_eks_keys_that_dask_config_then_reads(config_dir: Path) -> None:
    done = platform.configure_from_terraform(SAMPLE)

    assert done.path == config_dir / "recc-platform.yaml"
    written = yaml.safe_load(done.path.read_text())
    assert written["recc"]["eks"]["cluster-name"] == "research-dask"
    assert written["recc"]["eks"]["node-role-arn"].endswith(":role/research-dask-recc-node")

    assert recc.config.get("eks.cluster-name") is None  # not seen until refreshed
    recc.config.refresh()
    assert recc.config.get("eks.cluster-name") == "research-dask"
    assert recc.config.get("eks.region") == REGION
    assert recc.config.get("eks.subnets") == [
        "subnet-0a1b2c3d4e5f60718",
        "subnet-0b2c3d4e5f6071829",
        "subnet-0c3d4e5f607182930",
    ]
    assert recc.config.get("eks.security-groups") == [
        "sg-0a1b2c3d4e5f60718",
        "sg-0f1e2d3c4b5a69788",
    ]
    assert recc.config.get("eks.worker-role-arn").endswith(":role/research-dask-recc-worker")
    assert recc.config.get("eks.allowed-client-cidrs") == ["10.0.0.0/8"]
    assert recc.config.get("eks.operator-namespace") == "dask-operator"
    assert recc.config.get("eks.endpoint").startswith("https://")
    assert recc.config.get("eks.ca-data").startswith("LS0t")
    assert recc.config.get("eks.source-nfs-server") is None
    # Keys RECC's defaults do not hold yet still land in the config.
    assert recc.config.get("eks.harvester-schedule") == "*/10 * * * *"
    # Settings Terraform does not output stay at their defaults.
    assert recc.config.get("eks.timeouts.nodegroup-active") == 900


def test_configure_then_refresh_in_a_process_started_with_dask_config(tmp_path: Path) -> None:
    """The user's path: DASK_CONFIG set in the environment, configure, refresh, read."""
    code = (
        "import recc.config, recc.platform, sys\n"
        "assert recc.config.get('eks.cluster-name') is None\n"
        "recc.platform.configure_from_terraform(sys.argv[1])\n"
        "recc.config.refresh()\n"
        "print(recc.config.get('eks.cluster-name'), recc.config.get('eks.region'))\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_RECC__")}
    env["DASK_CONFIG"] = str(tmp_path)
    done = subprocess.run(
        [sys.executable, "-c", code, str(SAMPLE)], env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["research-dask", REGION]
    assert (tmp_path / "recc-platform.yaml").is_file()


def test_configure_replaces_the_file_as_a_whole(config_dir: Path, tmp_path: Path) -> None:
    platform.configure_from_terraform(SAMPLE)
    second = write_outputs(tmp_path / "second.json", sample_outputs(cluster_name="other-dask"))
    platform.configure_from_terraform(second)

    recc.config.refresh()
    assert recc.config.get("eks.cluster-name") == "other-dask"
    assert sorted(p.name for p in config_dir.iterdir()) == ["recc-platform.yaml"]  # no temp files


def test_a_users_own_recc_yaml_overrides_the_platform_file(config_dir: Path) -> None:
    (config_dir / "recc.yaml").write_text("recc:\n  eks:\n    region: us-east-2\n")
    platform.configure_from_terraform(SAMPLE)

    recc.config.refresh()
    assert recc.config.get("eks.region") == "us-east-2"
    assert recc.config.get("eks.cluster-name") == "research-dask"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cluster_name": None}, r"lack cluster_name"),
        ({"subnet_ids": "subnet-0abc"}, r"subnet_ids='subnet-0abc'.*list of strings.*for example"),
        ({"subnet_ids": []}, r"subnet_ids=\[\].*must not be empty"),
        ({"node_role_arn": "research-dask-recc-node"}, r"node_role_arn=.*recc.eks.node-role-arn"),
        ({"region": "Ireland"}, r"region='Ireland'.*for example: eu-west-1"),
        ({"region": "eu-west-1\n"}, r"region='eu-west-1\\n'.*for example: eu-west-1"),
        ({"subnet_ids": ["subnet-0abc\n"]}, r"subnet_ids=.*does not look right"),
        ({"harvester_schedule": "every 10 minutes"}, r"harvester_schedule=.*\*/10 \* \* \* \*"),
    ],
)
def test_bad_outputs_are_refused_naming_output_value_and_example(
    config_dir: Path, tmp_path: Path, change: dict, message: str
) -> None:
    bad = write_outputs(tmp_path / "bad.json", sample_outputs(**change))
    with pytest.raises(ConfigError, match=message):
        platform.configure_from_terraform(bad)
    assert not (config_dir / "recc-platform.yaml").exists()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", r"is not JSON .*terraform output -json"),
        ('["cluster_name"]', r"expected the JSON object printed by `terraform output -json`"),
        ('{"cluster_name": "research-dask"}', r"output 'cluster_name' has no \"value\""),
    ],
)
def test_files_that_are_not_terraform_output_json_are_refused(
    config_dir: Path, tmp_path: Path, content: str, message: str
) -> None:
    path = tmp_path / "outputs.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        platform.configure_from_terraform(path)
    with pytest.raises(ConfigError, match=r"cannot read Terraform outputs from .*missing\.json"):
        platform.configure_from_terraform(tmp_path / "missing.json")
    assert not (config_dir / "recc-platform.yaml").exists()


def test_importing_writes_nothing(tmp_path: Path) -> None:
    env = {**os.environ, "DASK_CONFIG": str(tmp_path)}
    subprocess.run(
        [sys.executable, "-c", "import recc.platform, recc.cli.platform"], env=env, check=True
    )
    assert list(tmp_path.iterdir()) == []


def test_cli_configure_prints_what_it_wrote(config_dir: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(platform_cli.app, ["configure", "--from-terraform", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    assert "recc-platform.yaml" in result.output
    assert re.search(r"recc\.eks\.cluster-name\s+.*research-dask", result.output)
    assert "(default)" in result.output  # source-nfs-server: null

    result = runner.invoke(
        platform_cli.app, ["configure", "--from-terraform", str(SAMPLE), "--json"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output)
    assert printed["path"] == str(config_dir / "recc-platform.yaml")
    assert printed["settings"]["recc.eks.cluster-name"] == "research-dask"
    assert printed["settings"]["recc.eks.subnets"][0] == "subnet-0a1b2c3d4e5f60718"


def test_cli_configure_rejects_a_bad_file_with_usage_error(
    config_dir: Path, tmp_path: Path
) -> None:
    bad = write_outputs(tmp_path / "bad.json", sample_outputs(region=None))
    result = CliRunner().invoke(platform_cli.app, ["configure", "--from-terraform", str(bad)])
    assert result.exit_code == 2
    assert "lack region" in result.output
    assert not (config_dir / "recc-platform.yaml").exists()


# ---------------------------------------------------------------------------------------------
# The contract between the Terraform module and RECC
# ---------------------------------------------------------------------------------------------


def _terraform_outputs(path: Path) -> set[str]:
    return set(re.findall(r'^output "([^"]+)"', path.read_text(), re.MULTILINE))


def test_terraform_exports_every_output_recc_reads() -> None:
    read = set(platform.TERRAFORM_OUTPUTS)
    assert read <= _terraform_outputs(REPO / "terraform" / "outputs.tf")
    assert read <= _terraform_outputs(REPO / "terraform" / "examples" / "complete" / "outputs.tf")
    assert read <= set(json.loads(SAMPLE.read_text()))


def test_settings_use_the_key_names_of_the_packaged_defaults() -> None:
    defaults = yaml.safe_load((REPO / "recc" / "recc.yaml").read_text())["recc"]["eks"]
    issue_keys = {
        "cluster-name", "region", "subnets", "security-groups", "node-role-arn",
        "worker-role-arn", "allowed-client-cidrs", "operator-namespace", "endpoint", "ca-data",
        "source-nfs-server", "source-nfs-path",
    }  # fmt: skip
    written = {s.key.removeprefix("eks.") for s in platform.SETTINGS}
    assert issue_keys <= written
    assert issue_keys <= set(defaults), "recc/recc.yaml renamed a platform key"


# ---------------------------------------------------------------------------------------------
# check
# ---------------------------------------------------------------------------------------------


def test_check_offline_with_nothing_configured_names_the_missing_keys(config_dir: Path) -> None:
    report = platform.check_platform(offline=True)
    assert not report.ok
    missing = {f.name for f in report.findings if f.status == platform.MISSING}
    assert missing == {
        "recc.eks.cluster-name",
        "recc.eks.region",
        "recc.eks.subnets",
        "recc.eks.node-role-arn",
    }

    result = CliRunner().invoke(platform_cli.app, ["check", "--offline", "--json"])
    assert result.exit_code == 1
    printed = json.loads(result.output)
    assert printed["ok"] is False
    by_name = {f["name"]: f for f in printed["findings"]}
    assert by_name["recc.eks.cluster-name"]["status"] == "missing"
    assert "research-dask" in by_name["recc.eks.cluster-name"]["detail"]  # the example
    assert by_name["recc.eks.worker-role-arn"]["status"] == "not set"


def test_check_offline_after_configure_is_ok(config_dir: Path) -> None:
    platform.configure_from_terraform(SAMPLE)
    recc.config.refresh()
    result = CliRunner().invoke(platform_cli.app, ["check", "--offline"])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "not ready" not in result.output
    assert re.search(r"recc\.eks\.cluster-name\s+.*ok\s+.*research-dask", result.output)


@pytest.fixture
def aws(fake_aws_credentials: None) -> Iterator[None]:
    """moto for every AWS call, with credentials that can only reach moto."""
    with mock_aws():
        yield


def make_eks_cluster(name: str) -> dict:
    eks = boto3.client("eks", region_name=REGION)
    return eks.create_cluster(
        name=name,
        roleArn="arn:aws:iam::123456789012:role/research-dask-eks-cluster",
        resourcesVpcConfig={"subnetIds": ["subnet-0a1b2c3d4e5f60718", "subnet-0b2c3d4e5f6071829"]},
    )["cluster"]


def configure(tmp_path: Path, **changes: object) -> None:
    platform.configure_from_terraform(write_outputs(tmp_path / "o.json", sample_outputs(**changes)))
    recc.config.refresh()


def test_check_reaches_sts_and_eks_and_reports_kubernetes_unreachable(
    config_dir: Path, tmp_path: Path, aws: None
) -> None:
    make_eks_cluster("research-dask")
    # Port 1 on loopback refuses at once: the API server is configured but not answering.
    configure(tmp_path, cluster_endpoint="https://127.0.0.1:1")

    report = platform.check_platform()
    by_name = {f.name: f for f in report.findings}
    assert by_name["aws: sts get-caller-identity"].status == platform.OK
    assert by_name["aws: sts get-caller-identity"].detail.startswith("arn:aws:")
    assert by_name["aws: eks describe-cluster"].status == platform.OK
    assert "research-dask: ACTIVE" in by_name["aws: eks describe-cluster"].detail
    assert by_name["kubernetes: /version"].status == platform.FAILED
    assert "https://127.0.0.1:1" in by_name["kubernetes: /version"].detail
    assert not report.ok

    result = CliRunner().invoke(platform_cli.app, ["check", "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["ok"] is False


def test_check_reports_a_cluster_missing_from_eks(
    config_dir: Path, tmp_path: Path, aws: None
) -> None:
    make_eks_cluster("someone-elses")
    configure(tmp_path)

    by_name = {f.name: f for f in platform.check_platform().findings}
    assert by_name["aws: eks describe-cluster"].status == platform.FAILED
    assert (
        by_name["aws: eks describe-cluster"].detail == f"no EKS cluster 'research-dask' in {REGION}"
    )
    assert by_name["kubernetes: /version"].status == platform.SKIPPED


def test_eks_token_is_a_presigned_sts_call_bound_to_the_cluster(aws: None) -> None:
    import base64
    from urllib.parse import parse_qs, urlparse

    token = platform.eks_token(boto3.session.Session(), "research-dask", REGION)
    assert token.startswith("k8s-aws-v1.")
    encoded = token.removeprefix("k8s-aws-v1.")
    url = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
    query = parse_qs(urlparse(url).query)
    assert query["Action"] == ["GetCallerIdentity"]
    assert "x-k8s-aws-id" in query["X-Amz-SignedHeaders"][0].split(";")
    assert query["X-Amz-Expires"] == ["60"]
    assert urlparse(url).hostname.startswith("sts.")


# ---------------------------------------------------------------------------------------------
# install: the platform's Kubernetes objects
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def configured(config_dir: Path) -> dict:
    """The sample platform configured; its settings as install reads them."""
    platform.configure_from_terraform(SAMPLE)
    recc.config.refresh()
    return platform.platform_settings()


def by_kind(manifests: list[dict], kind: str) -> dict[str, dict]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == kind}


def test_manifests_pass_the_api_servers_schemas(configured: dict) -> None:
    from recc.kube.schema import validate

    manifests = platform.platform_manifests(configured, "0.1.0")
    for manifest in manifests:
        validate(manifest)  # strict: an unknown field or a bad name fails
    kinds = [m["kind"] for m in manifests]
    # CRDs before anything, namespaces before what lives in them.
    assert kinds[:4] == ["CustomResourceDefinition"] * 4
    assert kinds[4:6] == ["Namespace", "Namespace"]
    assert "Namespace" not in kinds[6:]


def test_operator_is_the_chart_of_the_installed_dask_kubernetes(configured: dict) -> None:
    import dask_kubernetes

    manifests = platform.platform_manifests(configured, "0.1.0")
    crds = by_kind(manifests, "CustomResourceDefinition")
    assert set(crds) == {
        f"{plural}.kubernetes.dask.org"
        for plural in ("daskclusters", "daskworkergroups", "daskjobs", "daskautoscalers")
    }
    deployment = by_kind(manifests, "Deployment")["dask-kubernetes-operator"]
    assert deployment["metadata"]["namespace"] == "dask-operator"
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == (
        f"ghcr.io/dask/dask-kubernetes-operator:{dask_kubernetes.__version__}"
    )
    assert "--all-namespaces" in container["args"]
    assert container["securityContext"]["runAsNonRoot"] is True
    assert deployment["spec"]["template"]["spec"]["nodeSelector"] == {"recc.io/pool": "system"}

    role = by_kind(manifests, "ClusterRole")["dask-kubernetes-operator-role-cluster"]
    dask_rule = next(r for r in role["rules"] if r["apiGroups"] == ["kubernetes.dask.org"])
    assert "daskclusters" in dask_rule["resources"] and "create" in dask_rule["verbs"]
    binding = by_kind(manifests, "ClusterRoleBinding")[
        "dask-kubernetes-operator-rolebinding-cluster"
    ]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "dask-kubernetes-operator", "namespace": "dask-operator"}
    ]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_harvester_runs_on_schedule_as_its_irsa_role_with_the_platform_config(
    configured: dict,
) -> None:
    manifests = platform.platform_manifests(
        {**configured, "eks.harvester-schedule": "*/5 * * * *"}, "0.1.0"
    )
    account = by_kind(manifests, "ServiceAccount")["recc-harvester"]
    assert account["metadata"]["namespace"] == "recc"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/research-dask-recc-harvester"
    )
    cron = by_kind(manifests, "CronJob")["recc-harvester"]
    assert cron["spec"]["schedule"] == "*/5 * * * *"
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "recc-harvester"
    container = pod["containers"][0]
    assert container["args"][:2] == ["recc", "harvest"] and "--yes" in container["args"]
    # No harvester image configured: RECC's Dask image, with RECC installed at start.
    assert container["image"] == recc.config.get("image")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DASK_CONFIG"] == "/etc/recc" and env["EXTRA_PIP_PACKAGES"] == "recc==0.1.0"

    # The pod reads the same platform settings as the CLI that installed it.
    config_map = by_kind(manifests, "ConfigMap")["recc-platform"]
    mounted = yaml.safe_load(config_map["data"]["recc-platform.yaml"])["recc"]["eks"]
    assert mounted["cluster-name"] == "research-dask"
    assert mounted["subnets"] == configured["eks.subnets"]

    binding = by_kind(manifests, "ClusterRoleBinding")["recc-harvester"]
    assert {(s["kind"], s["name"]) for s in binding["subjects"]} == {
        ("ServiceAccount", "recc-harvester"),
        ("Group", "recc-harvester"),
    }


def test_a_configured_harvester_image_is_used_as_is(configured: dict) -> None:
    settings = {**configured, "eks.harvester-image": "registry.example.org/recc:0.1.0"}
    cron = by_kind(platform.platform_manifests(settings, "0.1.0"), "CronJob")["recc-harvester"]
    container = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example.org/recc:0.1.0"
    # A ready image needs no pip install at start.
    assert "EXTRA_PIP_PACKAGES" not in [e["name"] for e in container["env"]]
    assert "DASK_CONFIG" in [e["name"] for e in container["env"]]


def test_researchers_are_fenced_into_recc_namespaces(configured: dict) -> None:
    manifests = platform.platform_manifests(configured, "0.1.0")
    binding = by_kind(manifests, "ClusterRoleBinding")["recc-researcher"]
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "recc-researchers"}
    ]
    policy = by_kind(manifests, "ValidatingAdmissionPolicy")["recc-researcher-scope"]
    assert policy["spec"]["matchConditions"][0]["expression"] == (
        "'recc-researchers' in request.userInfo.groups"
    )
    assert "startsWith('recc-')" in policy["spec"]["validations"][0]["expression"]
    assert by_kind(manifests, "ValidatingAdmissionPolicyBinding")["recc-researcher-scope"][
        "spec"
    ] == {"policyName": "recc-researcher-scope", "validationActions": ["Deny"]}


def test_no_platform_object_claims_to_be_managed_by_recc(configured: dict) -> None:
    """The harvester deletes what is labelled managed-by=recc; the platform never is."""
    for manifest in platform.platform_manifests(configured, "0.1.0"):
        labels = manifest["metadata"].get("labels") or {}
        assert labels.get("app.kubernetes.io/managed-by") != "recc", manifest["metadata"]["name"]


def test_install_needs_the_harvester_role(config_dir: Path, tmp_path: Path) -> None:
    platform.configure_from_terraform(
        write_outputs(tmp_path / "o.json", sample_outputs(harvester_role_arn=None))
    )
    recc.config.refresh()
    with pytest.raises(ConfigError, match=r"recc\.eks\.harvester-role-arn is not set.*example"):
        platform.platform_manifests(platform.platform_settings(), "0.1.0")
    result = CliRunner().invoke(platform_cli.app, ["install", "--dry-run"])
    assert result.exit_code == 1
    assert "harvester-role-arn" in result.output


def test_cli_install_dry_run_prints_every_manifest(configured: dict) -> None:
    result = CliRunner().invoke(platform_cli.app, ["install", "--dry-run"])
    assert result.exit_code == 0, result.output
    documents = list(
        yaml.load_all(result.output, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    )
    assert documents == platform.platform_manifests(configured, platform.recc_version())


def test_platform_namespaces_must_be_outside_the_researchers_prefix(configured: dict) -> None:
    with pytest.raises(ConfigError, match=r"recc\.eks\.system-namespace='recc-system'.*recc-"):
        platform.platform_manifests({**configured, "eks.system-namespace": "recc-system"}, "0.1")


class AdmissionPolicy:
    """Evaluates a ValidatingAdmissionPolicy's CEL the way the API server does, for one request:
    match conditions, then variables in order, then every validation."""

    def __init__(self, policy: dict) -> None:
        celpy = pytest.importorskip("celpy", reason="cel-python evaluates the policy's CEL")
        self.env = celpy.Environment()
        self.json_to_cel = celpy.json_to_cel
        self.as_map = lambda d: celpy.celtypes.MapType(
            {celpy.celtypes.StringType(k): v for k, v in d.items()}
        )
        self.spec = policy["spec"]

    def _eval(self, expression: str, context: dict) -> object:
        return self.env.program(self.env.compile(expression)).evaluate(context)

    def admits(self, groups: list[str], operation: str, resource: str, name: str,
               namespace: str = "", labels: dict | None = None) -> bool:  # fmt: skip
        obj = {"metadata": {"name": name, "labels": labels or {}}}
        request = {
            "operation": operation,
            "resource": {"resource": resource},
            "name": name,
            "namespace": namespace,
            "userInfo": {"groups": groups},
        }
        context = {
            "request": request,
            "object": None if operation == "DELETE" else obj,
            "oldObject": obj if operation != "CREATE" else None,
        }
        cel = {k: self.json_to_cel(v) for k, v in context.items()}
        if not all(self._eval(c["expression"], cel) for c in self.spec["matchConditions"]):
            return True  # the policy does not apply to this request
        variables: dict = {}
        for v in self.spec["variables"]:
            variables[v["name"]] = self._eval(
                v["expression"], {**cel, "variables": self.as_map(variables)}
            )
        cel["variables"] = self.as_map(variables)
        return all(self._eval(v["expression"], cel) for v in self.spec["validations"])


def test_admission_policy_confines_researchers_to_recc_namespaces(configured: dict) -> None:
    manifests = platform.platform_manifests(configured, "0.1.0")
    policy = AdmissionPolicy(
        by_kind(manifests, "ValidatingAdmissionPolicy")["recc-researcher-scope"]
    )
    researcher = ["recc-researchers", "system:authenticated"]
    recc_label = {"app.kubernetes.io/managed-by": "recc"}

    assert policy.admits(researcher, "CREATE", "namespaces", "recc-alice-1", labels=recc_label)
    assert policy.admits(researcher, "DELETE", "namespaces", "recc-alice-1", labels=recc_label)
    assert not policy.admits(researcher, "CREATE", "namespaces", "team-alice", labels=recc_label)
    assert not policy.admits(researcher, "CREATE", "namespaces", "recc-alice-2")
    # The platform's own namespaces carry managed-by=recc-platform: not a researcher's to delete.
    assert not policy.admits(
        researcher, "DELETE", "namespaces", "recc-x", labels={"app.kubernetes.io/managed-by": "x"}
    )
    assert policy.admits(researcher, "CREATE", "daskclusters", "c1", namespace="recc-alice-1")
    assert not policy.admits(researcher, "CREATE", "daskclusters", "c1", namespace="default")
    assert not policy.admits(researcher, "UPDATE", "resourcequotas", "q", namespace="kube-system")
    # Everyone else (platform admins, the operator) is not this policy's business.
    assert policy.admits(["system:masters"], "CREATE", "namespaces", "anything")


# ---------------------------------------------------------------------------------------------
# Against the real API server of the session's test platform (kubernetes_platform, conftest.py)
# ---------------------------------------------------------------------------------------------
#
# The session's platform has the platform installed already (operator, RBAC, harvester) and is
# shared: installs here go to namespaces of their own, or put back what they changed.

WAIT = 120.0


@pytest.fixture
def admin(kubernetes_platform) -> Iterator:
    with kubernetes_platform.control_plane.api_client() as client:
        yield client


@pytest.fixture
def eks(kubernetes_platform, config_dir: Path) -> Iterator:
    """The emulated EKS cluster ``research-dask`` in eu-west-1 (what the sample outputs name):
    moto for AWS, the caller a researcher by its access entry, the session's API server."""
    from recc.testing import emulated_platform

    with emulated_platform(
        kubernetes=kubernetes_platform, eks_cluster_name="research-dask", region=REGION
    ) as emulated:
        yield emulated


def configure_for(tmp_path: Path, kubernetes_platform) -> None:
    """configure from the sample outputs, with the emulated cluster's endpoint (the fault proxy
    RECC's calls go through) and CA."""
    ca = kubernetes_platform.control_plane.ca_file.read_bytes()
    configure(
        tmp_path,
        cluster_endpoint=kubernetes_platform.faults.url,
        cluster_ca_data=base64.b64encode(ca).decode(),
    )


@pytest.fixture
def fresh(configured: dict, admin) -> Iterator[tuple[dict, tuple[str, str]]]:
    """Settings that put the operator and the harvester in two new namespaces (deleted after);
    (settings, (operator namespace, system namespace))."""
    import kubernetes.client

    suffix = uuid.uuid4().hex[:8]
    names = (f"install-op-{suffix}", f"install-sys-{suffix}")
    settings = {
        **configured,
        "eks.operator-namespace": names[0],
        "eks.system-namespace": names[1],
        # Leap days only: no harvester Job starts while the test runs.
        "eks.harvester-schedule": "0 3 29 2 *",
    }
    try:
        yield settings, names
    finally:
        core = kubernetes.client.CoreV1Api(admin)
        for name in names:
            try:
                core.delete_namespace(name)
            except kubernetes.client.ApiException as e:
                if e.status != 404:
                    raise


def in_namespaces(manifests: list[dict], names: tuple[str, ...]) -> list[dict]:
    """The Namespaces ``names`` and the objects in them; not the cluster-scoped objects, which
    the session's platform holds (and the operator's RBAC would follow a new namespace)."""
    return [
        m
        for m in manifests
        if m["metadata"].get("namespace") in names
        or (m["kind"] == "Namespace" and m["metadata"]["name"] in names)
    ]


def _raw(api, manifest: dict) -> dict | None:
    """The stored object of ``manifest`` as the API server's JSON, or None."""
    import kubernetes.client

    from recc.platform.install import _KUBE_APIS

    api_name, suffix, namespaced = _KUBE_APIS[(manifest["apiVersion"], manifest["kind"])]
    where = {"namespace": manifest["metadata"]["namespace"]} if namespaced else {}
    try:
        answer = getattr(getattr(kubernetes.client, api_name)(api), f"read_{suffix}")(
            name=manifest["metadata"]["name"], _preload_content=False, **where
        )
    except kubernetes.client.ApiException as e:
        if e.status == 404:
            return None
        raise
    return json.loads(answer.data)


def _content(stored: dict) -> dict:
    """What an apply sets: the object without its status and server-kept metadata."""
    drop = ("resourceVersion", "managedFields", "generation", "uid", "creationTimestamp")
    meta = {k: v for k, v in stored["metadata"].items() if k not in drop}
    return {**{k: v for k, v in stored.items() if k != "status"}, "metadata": meta}


@contextmanager
def put_back(api, manifests: list[dict]) -> Iterator[None]:
    """Afterwards, every object of ``manifests`` that changed is as it was (deleted if it was
    not there): the session's platform outlives the test."""
    from recc.platform.install import apply_manifest

    before = [(m, _raw(api, m)) for m in manifests]
    try:
        yield
    finally:
        for manifest, was in before:
            now = _raw(api, manifest)
            if was is None and now is not None:
                _delete(api, manifest)
            elif was is not None and (now is None or _content(now) != _content(was)):
                apply_manifest(api, _content(was))


def _delete(api, manifest: dict) -> None:
    import kubernetes.client

    from recc.platform.install import _KUBE_APIS

    api_name, suffix, namespaced = _KUBE_APIS[(manifest["apiVersion"], manifest["kind"])]
    where = {"namespace": manifest["metadata"]["namespace"]} if namespaced else {}
    getattr(getattr(kubernetes.client, api_name)(api), f"delete_{suffix}")(
        name=manifest["metadata"]["name"], **where
    )


def test_check_is_ready_when_sts_eks_and_kubernetes_answer(
    tmp_path: Path, eks, kubernetes_platform, admin
) -> None:
    import kubernetes.client

    configure_for(tmp_path, kubernetes_platform)
    served = kubernetes.client.VersionApi(admin).get_code().git_version

    report = platform.check_platform()
    by_name = {f.name: f for f in report.findings}
    assert by_name["aws: sts get-caller-identity"].detail == eks.caller_arn
    assert by_name["kubernetes: /version"].status == platform.OK
    assert by_name["kubernetes: /version"].detail == f"{kubernetes_platform.faults.url}: {served}"
    assert report.ok, report.findings

    result = CliRunner().invoke(platform_cli.app, ["check"])
    assert result.exit_code == 0, result.output
    assert "ready" in result.output and "not ready" not in result.output


def test_install_applies_then_reapplies_the_platform(fresh, admin) -> None:
    import kubernetes.client

    settings, names = fresh
    manifests = in_namespaces(platform.platform_manifests(settings, "0.1.0"), names)
    assert {m["kind"] for m in manifests} == {
        "Namespace", "ServiceAccount", "Deployment", "Role", "RoleBinding", "ConfigMap", "CronJob"
    }  # fmt: skip
    operator_ns, system_ns = names

    first = platform.install_platform(admin, manifests)
    assert [a.action for a in first] == ["created"] * len(manifests)
    batch = kubernetes.client.BatchV1Api(admin)
    cron = batch.read_namespaced_cron_job("recc-harvester", system_ns)
    assert cron.spec.schedule == "0 3 29 2 *"
    account = kubernetes.client.CoreV1Api(admin).read_namespaced_service_account(
        "recc-harvester", system_ns
    )
    assert account.metadata.annotations["eks.amazonaws.com/role-arn"].endswith("recc-harvester")
    deployment = kubernetes.client.AppsV1Api(admin).read_namespaced_deployment(
        "dask-kubernetes-operator", operator_ns
    )
    assert deployment.spec.template.spec.service_account_name == "dask-kubernetes-operator"

    # Re-running after a Terraform change updates in place.
    changed = in_namespaces(platform.platform_manifests(
        {**settings, "eks.harvester-schedule": "0 4 29 2 *"}, "0.1.0"), names)  # fmt: skip
    second = platform.install_platform(admin, changed)
    assert [a.action for a in second] == ["updated"] * len(manifests)
    assert batch.read_namespaced_cron_job("recc-harvester", system_ns).spec.schedule == (
        "0 4 29 2 *"
    )
    assert len(batch.list_namespaced_cron_job(system_ns).items) == 1


def test_a_failed_install_says_what_was_applied_and_a_rerun_finishes(fresh, admin) -> None:
    """The harvester's namespace has a quota of no CronJobs (made before install): the API
    server refuses the CronJob, which install applies last."""
    import kubernetes.client
    from helpers import wait_for

    settings, names = fresh
    system_ns = names[1]
    manifests = in_namespaces(platform.platform_manifests(settings, "0.1.0"), names)
    assert manifests[-1]["kind"] == "CronJob"
    core = kubernetes.client.CoreV1Api(admin)
    core.create_namespace({"metadata": {"name": system_ns}})
    quota = {"metadata": {"name": "no-cronjobs"}, "spec": {"hard": {"count/cronjobs.batch": "0"}}}
    core.create_namespaced_resource_quota(system_ns, quota)
    wait_for(
        lambda: core.read_namespaced_resource_quota("no-cronjobs", system_ns).status.hard,
        WAIT,
        "the quota controller to count CronJobs",
    )

    with pytest.raises(
        BackendError, match=r"applying CronJob/recc-harvester failed: HTTP 403 Forbidden"
    ) as e:
        platform.install_platform(admin, manifests)
    assert "exceeded quota: no-cronjobs" in str(e.value)
    assert "Applied before it: " in str(e.value)
    assert "ConfigMap/recc-platform" in str(e.value)
    assert "re-run recc platform install" in str(e.value)
    batch = kubernetes.client.BatchV1Api(admin)
    assert batch.list_namespaced_cron_job(system_ns).items == []

    core.delete_namespaced_resource_quota("no-cronjobs", system_ns)
    again = platform.install_platform(admin, manifests)
    assert again[-1] == platform.Applied("CronJob", "recc-harvester", system_ns, "created")
    assert {a.action for a in again[:-1]} == {"updated"}


def test_cli_install_against_the_platform(tmp_path: Path, eks, kubernetes_platform, admin) -> None:
    """`recc platform install` as a platform admin (EKS's cluster admin access policy) over the
    installed platform: every object is applied again, with the configured settings."""
    import kubernetes.client

    from recc.testing.eks_auth import AccessEntry, AccessPolicy

    kubernetes_platform.auth.set_entries(
        [AccessEntry(eks.caller_arn, policies=(AccessPolicy("AmazonEKSClusterAdminPolicy"),))]
    )
    configure_for(tmp_path, kubernetes_platform)
    manifests = platform.platform_manifests(platform.platform_settings(), platform.recc_version())
    assert {m["metadata"].get("namespace") for m in manifests} == {None, "dask-operator", "recc"}

    core = kubernetes.client.CoreV1Api(admin)
    role_arn = "eks.amazonaws.com/role-arn"
    installed = core.read_namespaced_service_account("recc-harvester", "recc")
    with put_back(admin, manifests):
        result = CliRunner().invoke(platform_cli.app, ["install", "--json"])
        assert result.exit_code == 0, result.output
        applied = json.loads(result.output)
        assert [(a["kind"], a["name"]) for a in applied] == [
            (m["kind"], m["metadata"]["name"]) for m in manifests
        ]
        assert {a["action"] for a in applied} == {"updated"}  # the session installed them all
        account = core.read_namespaced_service_account("recc-harvester", "recc")
        assert account.metadata.annotations[role_arn] == (
            "arn:aws:iam::123456789012:role/research-dask-recc-harvester"
        )
    restored = core.read_namespaced_service_account("recc-harvester", "recc")
    assert restored.metadata.annotations[role_arn] == installed.metadata.annotations[role_arn]


def test_recc_plan_uses_the_platform_configure_wrote(config_dir: Path, aws: None) -> None:
    """configure on the sample outputs, then `recc plan` on (moto) AWS: the instance facts come
    from EC2 in the configured region and the manifests carry the platform's roles and CIDRs."""
    from recc.cli.main import app

    def plan(*flags: str) -> dict:
        result = CliRunner().invoke(app, ["plan", "-o", "json", "--n-workers", "4", *flags])
        assert result.exit_code == 0, result.output
        return json.loads(result.output)

    assert plan()["plan"]["catalog_source"] != "EC2 DescribeInstanceTypes"  # not configured yet

    result = CliRunner().invoke(app, ["platform", "configure", "--from-terraform", str(SAMPLE)])
    assert result.exit_code == 0, result.output
    recc.config.refresh()
    planned = plan("--manifests")

    assert planned["plan"]["catalog_source"] == "EC2 DescribeInstanceTypes"
    manifests = planned["manifests"]
    account = next(m for m in manifests if m["kind"] == "ServiceAccount")
    assert account["metadata"]["name"] == "recc-worker"
    assert account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"] == (
        "arn:aws:iam::123456789012:role/research-dask-recc-worker"
    )
    assert "10.0.0.0/8" in json.dumps(by_kind(manifests, "NetworkPolicy")["allow-clients"])
