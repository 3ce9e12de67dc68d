"""The Terraform module of the base platform: formatted, valid, tested with a mocked AWS provider,
and clean under checkov.

Needs the terraform binary (fmt) and, for everything else, a filesystem mirror of the
hashicorp/aws provider (default /opt/tf-plugins, or RECC_TF_PLUGIN_MIRROR); each test skips
with the reason when its tool is absent. Terraform runs on a temporary copy of terraform/ so no
.terraform directory or lock file lands in the repository.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "terraform"
EXAMPLE = Path("examples") / "complete"

TERRAFORM = shutil.which("terraform")
MIRROR = Path(os.environ.get("RECC_TF_PLUGIN_MIRROR", "/opt/tf-plugins"))
HAS_AWS_PROVIDER = (MIRROR / "registry.terraform.io" / "hashicorp" / "aws").is_dir()

needs_terraform = pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH")
needs_mirror = pytest.mark.skipif(
    TERRAFORM is None or not HAS_AWS_PROVIDER,
    reason=f"needs terraform and a hashicorp/aws provider mirror at {MIRROR} "
    "(set RECC_TF_PLUGIN_MIRROR to another mirror directory)",
)


def _find_checkov() -> str | None:
    # checkov pins dependencies that clash with RECC's, so it usually lives in its own venv:
    # CHECKOV names it explicitly; otherwise PATH, this venv, then the CI image's location.
    candidates = [
        os.environ.get("CHECKOV"),
        shutil.which("checkov"),
        str(Path(sys.executable).parent / "checkov"),
        "/work/checkov-venv/bin/checkov",
    ]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


CHECKOV = _find_checkov()


@pytest.fixture(scope="module")
def tf_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Environment for terraform: installs providers from the mirror only, never asks."""
    home = tmp_path_factory.mktemp("tf-cli")
    cli_config = home / "terraform.rc"
    cli_config.write_text(
        "provider_installation {\n"
        f'  filesystem_mirror {{\n    path    = "{MIRROR}"\n'
        '    include = ["registry.terraform.io/*/*"]\n  }\n'
        "}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_")}
    env.update(
        TF_CLI_CONFIG_FILE=str(cli_config),  # the inherited one may name a missing file
        TF_IN_AUTOMATION="1",
        TF_INPUT="0",
        CHECKPOINT_DISABLE="1",
        BC_SKIP_MAPPING="TRUE",  # checkov: no call home for guideline links
    )
    return env


def terraform(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    """Run terraform; fail the test with its output when it exits non-zero."""
    assert TERRAFORM is not None
    done = subprocess.run(
        [TERRAFORM, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, (
        f"terraform {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    )
    return done


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory, tf_env: dict[str, str]) -> Path:
    """A copy of terraform/, initialised from the mirror (module root and example root)."""
    if TERRAFORM is None or not HAS_AWS_PROVIDER:
        pytest.skip(f"needs terraform and a hashicorp/aws provider mirror at {MIRROR}")
    copy = tmp_path_factory.mktemp("terraform") / "terraform"
    shutil.copytree(
        MODULE,
        copy,
        ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", ".terraform.lock.hcl"),
    )
    for root in (copy, copy / EXAMPLE):
        terraform(["init", "-backend=false", "-no-color"], root, tf_env)
    return copy


# ---------------------------------------------------------------------------------------------


@pytest.mark.terraform
@needs_terraform
def test_fmt_check(tf_env: dict[str, str]) -> None:
    done = subprocess.run(
        [TERRAFORM, "fmt", "-check", "-recursive", "-diff", "-no-color"],
        cwd=MODULE,
        env=tf_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"terraform fmt would change:\n{done.stdout}{done.stderr}"


@pytest.mark.terraform
@needs_mirror
@pytest.mark.parametrize("root", [Path("."), EXAMPLE], ids=["module", "example"])
def test_validate(workdir: Path, tf_env: dict[str, str], root: Path) -> None:
    done = terraform(["validate", "-json", "-no-color"], workdir / root, tf_env)
    result = json.loads(done.stdout)
    assert result["valid"], result["diagnostics"]
    assert result["warning_count"] == 0, result["diagnostics"]


@pytest.mark.terraform
@needs_mirror
def test_terraform_test_with_mocked_aws(workdir: Path, tf_env: dict[str, str]) -> None:
    """Every run block of terraform/tests passes: node role, IRSA trust, budgets, access."""
    done = terraform(["test", "-no-color"], workdir, tf_env)
    expected = {
        (path.name, name)
        for path in (MODULE / "tests").glob("*.tftest.hcl")
        for name in re.findall(r'^run "([^"]+)"', path.read_text(), re.MULTILINE)
    }
    # The suites must cover what issue 8 asks to be asserted on.
    names = " ".join(name for _, name in expected)
    for topic in ("node_role", "irsa_trust", "budget"):
        assert topic in names, f"no terraform test run about {topic}"
    passed = set(re.findall(r'run "([^"]+)"\.\.\. pass', done.stdout))
    assert {name for _, name in expected} <= passed, done.stdout
    assert re.search(rf"Success! {len(expected)} passed, 0 failed", done.stdout), done.stdout


@pytest.mark.terraform
@needs_mirror
@pytest.mark.skipif(CHECKOV is None, reason="checkov not found (set CHECKOV or put it on PATH)")
def test_checkov_has_no_unexplained_findings(workdir: Path, tf_env: dict[str, str]) -> None:
    """No failed check; every skipped one has its reason in the module README."""
    assert CHECKOV is not None
    done = subprocess.run(
        [
            CHECKOV,
            "-d",
            str(workdir),
            "--framework",
            "terraform",
            "--skip-path",
            "tests",
            "--skip-download",
            "--compact",
            "-o",
            "json",
        ],
        env=tf_env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [c for r in reports for c in r["results"].get("failed_checks", [])]
    skipped = [c for r in reports for c in r["results"].get("skipped_checks", [])]
    passed = sum(r["summary"]["passed"] for r in reports)
    assert not any(r["summary"]["parsing_errors"] for r in reports), done.stdout[:2000]
    assert passed > 50, f"checkov scanned too little to mean anything: {done.stdout[:2000]}"
    assert not failed, "\n".join(
        f"{c['check_id']} {c['check_name']}: {c['resource']} ({c['file_path']})" for c in failed
    )
    readme = (MODULE / "README.md").read_text()
    unexplained = sorted(
        {c["check_id"] for c in skipped} - set(re.findall(r"CKV2?_AWS_\d+", readme))
    )
    assert not unexplained, (
        f"skipped checkov checks not explained in terraform/README.md: {unexplained}"
    )


# ---------------------------------------------------------------------------------------------
# Conventions that need no terraform binary
# ---------------------------------------------------------------------------------------------


def _blocks(kind: str) -> dict[str, str]:
    """Top-level ``kind "name" { ... }`` blocks of the module, by name (canonical fmt layout)."""
    blocks = {}
    for path in MODULE.glob("*.tf"):
        for m in re.finditer(rf'^{kind} "([^"]+)" {{\n(.*?)^}}', path.read_text(), re.M | re.S):
            blocks[m.group(1)] = m.group(2)
    return blocks


def test_every_variable_is_typed_and_described() -> None:
    variables = _blocks("variable")
    assert len(variables) > 20
    for name, body in variables.items():
        assert re.search(r"^  type\s+=", body, re.M), f"variable {name} has no type"
        assert re.search(r'^  description\s+=\s+"\S', body, re.M), (
            f"variable {name} has no description"
        )


def test_every_output_is_described() -> None:
    outputs = _blocks("output")
    assert outputs
    for name, body in outputs.items():
        assert re.search(r'^  description\s+=\s+"\S', body, re.M), (
            f"output {name} has no description"
        )


def test_provider_is_pinned_in_versions_tf() -> None:
    versions = (MODULE / "versions.tf").read_text()
    assert re.search(r'source\s+=\s+"hashicorp/aws"', versions)
    assert re.search(r'version\s+=\s+"~> 5\.\d+"', versions), "pin hashicorp/aws to a minor series"
    assert re.search(r'required_version\s+=\s+">= 1\.\d+', versions)
    # Nothing but the AWS provider: the module must validate where only its mirror exists.
    sources = set(
        re.findall(
            r'source\s+=\s+"([a-z][\w-]*/[\w-]+)"',
            "".join(p.read_text() for p in MODULE.rglob("*.tf")),
        )
    )
    assert sources == {"hashicorp/aws"}, sources


def test_protection_tags_in_the_policy_are_the_ones_recc_protect_sets() -> None:
    """The researcher policy lets `recc protect` set exactly the tags it writes."""
    from recc.tags import PROTECT_LABEL, PROTECT_UNTIL_TAG

    match = re.search(r"^\s*protect_tags\s*=\s*(\[.*\])", (MODULE / "main.tf").read_text(), re.M)
    assert match, "terraform/main.tf: local.protect_tags is missing"
    assert json.loads(match.group(1)) == [PROTECT_LABEL, PROTECT_UNTIL_TAG]
