"""The platform RECC runs on: configured from Terraform, checked, and installed.

Platform engineers stand the platform up once with the module in ``terraform/``; this package
turns its outputs into RECC's dask config (:mod:`~recc.platform.configure`), tells anyone
whether that config is complete and the platform answers (:mod:`~recc.platform.check`), and
applies the platform's Kubernetes objects (:mod:`~recc.platform.install`)::

    terraform output -json > platform.json
    recc platform configure --from-terraform platform.json   # writes recc-platform.yaml
    recc platform check                                        # configured? reachable?
    recc platform install                                      # operator, RBAC, harvester

Each is a pure core (outputs -> settings, settings -> findings, settings -> manifests) with the
side effects at the edges. The settings they share are in :mod:`~recc.platform.settings`.
"""

from recc.platform.check import (
    FAILED,
    MISSING,
    OK,
    SKIPPED,
    UNSET,
    check_platform,
    display_value,
    eks_token,
)
from recc.platform.configure import configure_from_terraform
from recc.platform.install import (
    Applied,
    install,
    install_platform,
    platform_manifests,
    platform_settings,
    recc_version,
)
from recc.platform.settings import SETTINGS, TERRAFORM_OUTPUTS

__all__ = [
    "FAILED",
    "MISSING",
    "OK",
    "SKIPPED",
    "SETTINGS",
    "TERRAFORM_OUTPUTS",
    "UNSET",
    "Applied",
    "check_platform",
    "configure_from_terraform",
    "display_value",
    "eks_token",
    "install",
    "install_platform",
    "platform_manifests",
    "platform_settings",
    "recc_version",
]
