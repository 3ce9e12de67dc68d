"""The built wheel works on its own: installed into a fresh virtual environment, ``recc``
(library, CLI and templates) comes from the wheel, not from this checkout.

The new environment gets RECC's dependencies by a ``.pth`` line naming this interpreter's
site-packages: a path added that way comes *after* the environment's own packages and its
``.pth`` files are not run, so the editable install of this checkout stays out of sight while
no dependency has to be downloaded again.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# The source trees that ship, and where they land in the wheel (see [tool.setuptools] in
# pyproject.toml: cli/ and templates/ ship as recc.cli and recc.templates).
SHIPPED = {"recc": "recc", "cli": "recc/cli", "templates": "recc/templates"}
STANDARD_TEMPLATES = {"default", "large-cluster-large-workers", "highmem", "gpu"}

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@dataclass(frozen=True)
class Installed:
    wheel: Path
    source: Path
    python: Path
    bin: Path
    site_packages: Path
    workdir: Path


def run(args: list[str | Path], cwd: Path, **kwargs: object) -> subprocess.CompletedProcess:
    """Run a command; on failure, fail the test with its output (not just an exit code)."""
    result = subprocess.run(
        [str(a) for a in args], cwd=cwd, capture_output=True, text=True, **kwargs
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(map(str, args))} exited {result.returncode}\n"
            f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
        )
    return result


def source_copy(target: Path) -> Path:
    """The files a wheel is built from, copied so the build writes build/ and *.egg-info
    there instead of into the shared working tree."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist")
    for name in SHIPPED:
        shutil.copytree(REPO / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "setup.cfg"):
        if (REPO / name).exists():
            shutil.copy2(REPO / name, target / name)
    return target


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    root = tmp_path_factory.mktemp("wheel")
    src = source_copy(root / "src")
    dist = root / "dist"
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", dist, "."], src)
    (wheel,) = dist.glob("recc-*.whl")

    env_dir = root / "venv"
    venv.EnvBuilder(with_pip=False, clear=True).create(env_dir)
    bin_dir = env_dir / ("Scripts" if os.name == "nt" else "bin")
    python = bin_dir / "python"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            python,
            "install",
            "--no-deps",
            "--quiet",
            "--no-index",
            wheel,
        ],
        root,
    )
    site_packages = Path(
        run(
            [python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], root
        ).stdout.strip()
    )
    (site_packages / "_outer_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    workdir = root / "elsewhere"  # not the checkout: '' on sys.path must not find recc
    workdir.mkdir()
    yield Installed(wheel, src, python, bin_dir, site_packages, workdir)


def clean_env(installed: Installed) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DASK_RECC__"))}
    env["HOME"] = str(installed.workdir)  # no user dask config, no user caches
    env["XDG_CACHE_HOME"] = str(installed.workdir / "cache")
    env["PATH"] = f"{installed.bin}{os.pathsep}{env.get('PATH', '')}"
    return env


def in_venv(installed: Installed, code: str) -> str:
    return run([installed.python, "-c", code], installed.workdir, env=clean_env(installed)).stdout


def test_every_source_file_is_in_the_wheel(installed: Installed) -> None:
    """A new subpackage missing from pyproject's package list would silently not ship.

    Compared with the copy the wheel was built from, not the live tree (others add files)."""
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    missing = []
    for source, target in SHIPPED.items():
        for path in (installed.source / source).rglob("*"):
            if path.is_dir() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            relative = path.relative_to(installed.source / source).as_posix()
            if f"{target}/{relative}" not in names:
                missing.append(f"{source}/{relative}")
    assert not missing, f"not in {installed.wheel.name}: {missing}"


def test_recc_imports_from_the_new_environment(installed: Installed) -> None:
    out = in_venv(
        installed,
        "import json, recc, recc.cli, recc.templates, recc.spec\n"
        "print(json.dumps({m.__name__: m.__file__ for m in "
        "(recc, recc.cli, recc.templates, recc.spec)}))",
    )
    files = json.loads(out)
    for module, file in files.items():
        assert Path(file).is_relative_to(installed.site_packages), (module, file)
        assert not Path(file).is_relative_to(REPO), (module, file)


def test_templates_and_data_are_inside_the_installed_package(installed: Installed) -> None:
    out = in_venv(
        installed,
        "import importlib.resources as r, json\n"
        "t = r.files('recc.templates'); d = r.files('recc')\n"
        "print(json.dumps({\n"
        " 'clusters': sorted(p.name for p in (t / 'clusters').iterdir()),\n"
        " 'k8s': sorted(p.name for p in (t / 'k8s').iterdir()) if (t / 'k8s').is_dir() else [],\n"
        " 'data': sorted(p.name for p in (d / 'data').iterdir()),\n"
        " 'defaults': (d / 'recc.yaml').is_file(), 'typed': (d / 'py.typed').is_file(),\n"
        " 'root': str(t)}))",
    )
    found = json.loads(out)
    assert Path(found["root"]).is_relative_to(installed.site_packages)
    assert {f"{n}.yaml" for n in STANDARD_TEMPLATES} <= set(found["clusters"])
    in_repo = {p.name for p in (installed.source / "templates" / "k8s").glob("*.j2")}
    assert in_repo <= set(found["k8s"])
    assert "instance_types.csv" in found["data"]
    assert found["defaults"] and found["typed"]


def test_the_installed_package_resolves_and_plans(installed: Installed) -> None:
    out = in_venv(
        installed,
        "import json\n"
        "from recc import resolve_spec, get_template_path\n"
        "from recc.catalog import bundled_catalog\n"
        "from recc.plan import plan_cluster\n"
        "spec = resolve_spec('gpu')\n"
        "plan = plan_cluster(resolve_spec(), bundled_catalog())\n"
        "print(json.dumps({'gpu': spec.instance_type, 'path': str(get_template_path('gpu')),\n"
        " 'per_node': plan.groups[0].workers_per_node}))",
    )
    found = json.loads(out)
    assert found["gpu"] == "p3.8xlarge"
    assert Path(found["path"]).is_relative_to(installed.site_packages)
    assert found["per_node"] == 3


def test_recc_command_lists_the_templates(installed: Installed) -> None:
    recc = installed.bin / "recc"
    assert recc.is_file()
    out = run([recc, "templates"], installed.workdir, env=clean_env(installed)).stdout
    for name in STANDARD_TEMPLATES:
        assert name in out
