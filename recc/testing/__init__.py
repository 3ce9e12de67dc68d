"""RECC's EKS platform on one machine, for RECC's tests and yours (see the README's "Testing
your own code against RECC").

- :func:`emulated_platform`: moto for AWS; for Kubernetes a real control plane (etcd,
  kube-apiserver, kube-controller-manager, kube-scheduler of the Kubernetes version RECC
  targets), the real dask-kubernetes operator, and a node agent that runs Pods as local
  processes. ``RECCCluster(backend="eks")`` runs end to end in it.
- :func:`kubernetes_platform`: the Kubernetes side alone, to share between platforms.
- ``python -m recc.testing assets``: build (or find) the Kubernetes binaries;
  ``python -m recc.testing serve``: serve the platform to other processes.
"""

from __future__ import annotations

from typing import Any

__all__ = ["EmulatedPlatform", "KubernetesPlatform", "emulated_platform", "kubernetes_platform"]


def __getattr__(name: str) -> Any:
    # The platform imports moto and the kubernetes client: only when asked for.
    if name in __all__:
        from recc.testing import platform

        return getattr(platform, name)
    raise AttributeError(f"module 'recc.testing' has no attribute {name!r}")
