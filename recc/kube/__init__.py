"""Kubernetes helpers shared by the renderer, the EKS backend and :mod:`recc.testing`.

:mod:`recc.kube.schema` validates objects against the official schemas and the
dask-kubernetes CRDs, so a bad manifest fails before anything is sent to a cluster.
"""
