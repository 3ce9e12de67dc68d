"""The Kubernetes binaries of the test platform: found, or built once from the Go module proxy.

The platform runs the real control plane of the Kubernetes minor RECC validates manifests
against (:data:`recc.kube.schema.KUBERNETES_VERSION`): etcd, kube-apiserver,
kube-controller-manager, kube-scheduler, and kubectl for people. No release binary can be
downloaded here, so :func:`ensure_assets` builds them with ``go build`` from the modules
``k8s.io/kubernetes`` and ``go.etcd.io/etcd/server/v3`` (the etcd release Kubernetes pins), plus
``recc-kubelet``, the node agent's streaming server (``recc/testing/kubelet/main.go``: logs and
port-forward, on the kubelet's own streaming library).

Where binaries are looked for, in order:

1. ``KUBEBUILDER_ASSETS`` (the envtest convention, e.g. from ``setup-envtest use 1.32``), for
   every binary it holds whose version is of the pinned minor;
2. the cache, ``$RECC_KUBE_ASSETS_DIR`` or ``~/.cache/recc/kube-assets/v<version>``, outside the
   work tree and kept between runs;
3. otherwise built into the cache (about 5 minutes on 2 cores with a warm Go module cache).

``python -m recc.testing assets`` does this ahead of time and prints the directory.

Example
-------
>>> paths = ensure_assets()  # doctest: +SKIP
>>> sorted(paths)  # doctest: +SKIP
['etcd', 'kube-apiserver', 'kube-controller-manager', 'kube-scheduler', 'kubectl', 'recc-kubelet']
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from recc.errors import RECCError

KUBERNETES_PATCH = "v1.32.13"
# The staging modules are published as v0.<minor>.<patch>. The module proxy reachable here does
# not serve every one at every patch; these are the nearest it serves (identical code paths for
# what the binaries use: patch releases of a staging module change no API).
STAGING_PINS = {"endpointslice": "v0.32.12", "sample-apiserver": "v0.32.3"}
# Replaced in Kubernetes' go.mod but required by nothing that is built: dropped.
_UNUSED_STAGING = ("sample-cli-plugin", "sample-controller")
KUBERNETES_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
ETCD, KUBELET = "etcd", "recc-kubelet"
BINARIES = (ETCD, *KUBERNETES_BINARIES, KUBELET)
_ENVTEST_BINARIES = (ETCD, "kube-apiserver", "kubectl")

_ETCD_MAIN = """package main

import (
\t"os"

\t"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
"""


class AssetsError(RECCError):
    """The Kubernetes binaries cannot be found or built (the message says what to do)."""


def _minor(version: str) -> str:
    return ".".join(version.lstrip("v").split(".")[:2])


def cache_dir() -> Path:
    """Where built binaries are kept: ``$RECC_KUBE_ASSETS_DIR``, else the user's cache."""
    configured = os.environ.get("RECC_KUBE_ASSETS_DIR")
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "recc" / "kube-assets" / KUBERNETES_PATCH


def _kubelet_source() -> bytes:
    return resources.files("recc.testing").joinpath("kubelet/main.go").read_bytes()


def _stamp() -> str:
    """What the cache was built from: a rebuild happens when this changes."""
    digest = hashlib.sha256(_kubelet_source() + json.dumps(STAGING_PINS).encode()).hexdigest()
    return f"{KUBERNETES_PATCH} {digest[:16]}\n"


def binary_version(path: Path) -> str | None:
    """The version a Kubernetes or etcd binary reports (``v1.32.13``, ``3.5.16``), or None."""
    args = ["version", "--client"] if path.name == "kubectl" else ["--version"]
    try:
        out = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"(?:Kubernetes v|etcd Version: |Client Version: v)([0-9.]+)", out)
    return found.group(1) if found else None


def _envtest_binaries(wanted_minor: str) -> dict[str, Path]:
    """The binaries of ``KUBEBUILDER_ASSETS`` that fit: etcd of any 3.x, the others of the minor."""
    directory = os.environ.get("KUBEBUILDER_ASSETS")
    if not directory:
        return {}
    found = {}
    for name in _ENVTEST_BINARIES:
        path = Path(directory) / name
        version = binary_version(path) if path.is_file() else None
        if version and (name == ETCD or _minor(version) == wanted_minor):
            found[name] = path
    return found


def _cached(directory: Path) -> dict[str, Path] | None:
    stamp = directory / "STAMP"
    if not stamp.is_file() or stamp.read_text() != _stamp():
        return None
    paths = {name: directory / name for name in BINARIES}
    return paths if all(p.is_file() for p in paths.values()) else None


def ensure_assets(log: Callable[[str], None] | None = None) -> dict[str, Path]:
    """Paths of every binary the platform needs, building the missing ones (see the module).

    ``log`` receives one line per step of a build (default: stderr).
    """
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    directory = cache_dir()
    paths = _cached(directory)
    if paths is None:
        build(directory, log)
        paths = _cached(directory)
        assert paths is not None, "a finished build leaves every binary and its stamp"
    return {**paths, **_envtest_binaries(_minor(KUBERNETES_PATCH))}


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise AssetsError(
            "building the Kubernetes test binaries needs Go (https://go.dev/dl/, 1.23 or later) "
            "and the Go module proxy; or set KUBEBUILDER_ASSETS to a directory holding etcd, "
            f"kube-apiserver and kubectl {_minor(KUBERNETES_PATCH)} and RECC_KUBE_ASSETS_DIR to "
            "one holding the rest"
        )
    return go


def _run_go(args: list[str], cwd: Path, what: str) -> str:
    env = {**os.environ, "GOFLAGS": "-mod=mod", "GOTOOLCHAIN": "local", "CGO_ENABLED": "0"}
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-15:])
        raise AssetsError(f"{what} failed (exit {done.returncode}):\n{tail}")
    return done.stdout


def build_module(kubernetes_go_mod: str) -> str:
    """The go.mod of the build module: Kubernetes' own (so every dependency is at the version
    Kubernetes pins), its ``./staging`` replaces pointed at the published staging modules.

    >>> mod = "module k8s.io/kubernetes\\n\\ngo 1.23.0\\n\\nrequire (\\n\\tk8s.io/api v0.0.0\\n)\\n"
    >>> mod += "replace (\\n\\tk8s.io/api => ./staging/src/k8s.io/api\\n)\\n"
    >>> print(build_module(mod))  # doctest: +NORMALIZE_WHITESPACE
    module recc.local/kube-assets
    go 1.23.0
    require (
        k8s.io/kubernetes v1.32.13
        k8s.io/api v0.0.0
    )
    replace (
        k8s.io/api => k8s.io/api v0.32.13
    )
    """
    staging_patch = "v0." + KUBERNETES_PATCH.split(".", 1)[1]
    text = re.sub(r"^module .*$", "module recc.local/kube-assets", kubernetes_go_mod, flags=re.M)

    def published(match: re.Match[str]) -> str:
        name = match.group(1)
        return f"k8s.io/{name} => k8s.io/{name} {STAGING_PINS.get(name, staging_patch)}"

    for name in _UNUSED_STAGING:
        text = re.sub(rf"^\s*k8s\.io/{name} => .*\n", "", text, flags=re.M)
    text = re.sub(r"k8s\.io/([\w-]+) => \./staging/src/k8s\.io/[\w-]+", published, text)
    return text.replace("require (", f"require (\n\tk8s.io/kubernetes {KUBERNETES_PATCH}", 1)


def build(directory: Path, log: Callable[[str], None]) -> None:
    """Build every binary into ``directory`` (replaced as a whole only once all are built)."""
    go = _go()
    directory.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=directory.parent) as work:
        module = Path(work)
        log(f"recc.testing: building Kubernetes {KUBERNETES_PATCH} test binaries with {go}")
        info = json.loads(
            _run_go(
                [go, "mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_PATCH}"],
                module,
                "downloading k8s.io/kubernetes",
            )
        )
        (module / "go.mod").write_text(build_module(Path(info["GoMod"]).read_text()))
        for name, source in ((ETCD, _ETCD_MAIN.encode()), (KUBELET, _kubelet_source())):
            (module / "cmd" / name).mkdir(parents=True)
            (module / "cmd" / name / "main.go").write_bytes(source)
        out = module / "bin"
        version = f"-X k8s.io/component-base/version.gitVersion={KUBERNETES_PATCH}"
        major, minor = KUBERNETES_PATCH.lstrip("v").split(".")[:2]
        flags = (
            f"-s -w {version} -X k8s.io/component-base/version.gitMajor={major} "
            f"-X k8s.io/component-base/version.gitMinor={minor} "
            f"-X k8s.io/client-go/pkg/version.gitVersion={KUBERNETES_PATCH}"
        )
        packages = [f"k8s.io/kubernetes/cmd/{name}" for name in KUBERNETES_BINARIES]
        packages += [f"./cmd/{ETCD}", f"./cmd/{KUBELET}"]
        log(f"recc.testing: go build {' '.join(BINARIES)} (several minutes on 2 cores)")
        _run_go(
            [go, "build", "-trimpath", "-ldflags", flags, "-o", f"{out}/", *packages],
            module,
            "go build",
        )
        (out / "STAMP").write_text(_stamp())
        if directory.exists():
            shutil.rmtree(directory)
        out.rename(directory)
    log(f"recc.testing: Kubernetes test binaries in {directory}")
