"""Backends: where a cluster's processes run (``local``: this machine; ``eks``: AWS)."""
