"""RECC: ephemeral, cost-attributed Dask clusters - on EKS, or on this machine.

>>> from recc import RECCCluster, RECCClient
>>> with RECCCluster(n_workers=2) as cluster, RECCClient(cluster) as client:  # doctest: +SKIP
...     client.submit(lambda x: x + 1, 1).result()
2
"""

from recc import config as config  # noqa: F401  (loads RECC's defaults into dask config)
from recc.cluster import RECCClient, RECCCluster
from recc.errors import (
    BackendError,
    ClusterNotFound,
    ConfigError,
    PlanError,
    QuotaExceeded,
    RECCError,
    SpecError,
)
from recc.spec import ClusterSpec, WorkerGroup, resolve_spec
from recc.templates_index import get_template_path, list_templates

__version__ = "0.1.0"

__all__ = [
    "BackendError",
    "ClusterNotFound",
    "ClusterSpec",
    "ConfigError",
    "PlanError",
    "RECCClient",
    "RECCCluster",
    "QuotaExceeded",
    "RECCError",
    "SpecError",
    "WorkerGroup",
    "get_template_path",
    "list_templates",
    "resolve_spec",
]
