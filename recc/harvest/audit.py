"""The audit trail of the harvester: one record per reap - who, what, why, and the $/h it
reclaimed - beside the ledger.

The ledger itself records that the cluster ended (``how="reaped"``, through
:func:`recc.clusters.delete_cluster`), so ``recc cost`` counts it; this trail adds the reason
and the harvester's identity. It lives in ``<ledger-url>/harvest/`` (a sibling of the ledger's
``events/``), one small JSON document per reap, written once and never rewritten, so any number
of harvesters - on this machine or, with an ``s3://`` ledger, anywhere - append without locks.

Example
-------
>>> import tempfile
>>> trail = AuditTrail(tempfile.mkdtemp())
>>> _ = trail.record({"cluster": "c1", "outcome": "deleted", "category": "idle",
...                   "reason": "idle for 2h", "usd_per_hour_reclaimed": 1.29})
>>> [(r["cluster"], r["category"]) for r in trail.read()]
[('c1', 'idle')]
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Any

import fsspec
from fsspec.implementations.local import LocalFileSystem

from recc import config, ledger
from recc.errors import BackendError
from recc.tags import parse_rfc3339, rfc3339

logger = logging.getLogger(__name__)
_FORMAT_VERSION = 1


class AuditTrail:
    """The harvester's audit records at ``url`` (default: ``<ledger-url>/harvest``)."""

    def __init__(self, url: str | None = None, storage_options: dict[str, Any] | None = None):
        self.url = (url or f"{ledger.default_url().rstrip('/')}/harvest").rstrip("/")
        options = storage_options
        if options is None:
            options = dict(config.get("cost.ledger-storage-options") or {})
        self._fs, self._root = fsspec.core.url_to_fs(self.url, **options)

    def record(self, entry: Mapping[str, Any], at: dt.datetime | None = None) -> str:
        """Append one reap record (``entry`` plus the time); returns the path written."""
        at = at or dt.datetime.now(dt.timezone.utc)
        document = {"v": _FORMAT_VERSION, "at": rfc3339(at), **entry}
        name = f"{at.strftime('%Y%m%dT%H%M%SZ')}-{entry['cluster']}-{secrets.token_hex(4)}.json"
        path = f"{self._root.rstrip('/')}/{name}"
        data = json.dumps(document, sort_keys=True, default=str).encode()
        try:
            if isinstance(self._fs, LocalFileSystem):
                # Readers only list *.json and rename is atomic: never half a record.
                self._fs.makedirs(self._root, exist_ok=True)
                with open(f"{path}.tmp", "wb") as f:
                    f.write(data)
                os.replace(f"{path}.tmp", path)
            else:
                self._fs.pipe_file(path, data)  # one PUT: atomic on object stores
        except OSError as e:
            raise BackendError(f"cannot write the harvest audit at {self.url}: {e}") from e
        return path

    def read(
        self, since: dt.datetime | None = None, until: dt.datetime | None = None
    ) -> list[dict[str, Any]]:
        """Reap records in ``[since, until)`` (None: unbounded), oldest first."""
        try:
            self._fs.invalidate_cache(self._root)
            paths = [p for p in self._fs.find(self._root) if p.endswith(".json")]
            blobs = self._fs.cat(paths) if paths else {}
        except FileNotFoundError:
            return []
        except OSError as e:
            raise BackendError(f"cannot read the harvest audit at {self.url}: {e}") from e
        records = []
        for path, blob in blobs.items():
            try:
                record = json.loads(blob)
                at = parse_rfc3339(record["at"])
            except (ValueError, KeyError, TypeError):
                logger.warning("skipping unreadable harvest audit record %s", path)
                continue
            if (since is None or at >= since) and (until is None or at < until):
                records.append(record)
        return sorted(records, key=lambda r: (r["at"], r.get("cluster", "")))


def record_reap(entry: Mapping[str, Any], trail: AuditTrail | None = None) -> str:
    """Record one reap in the configured audit trail (see :class:`AuditTrail`)."""
    return (trail or AuditTrail()).record(entry)


def read_reaps(
    since: dt.datetime | None = None, until: dt.datetime | None = None
) -> list[dict[str, Any]]:
    """The reaps recorded in ``[since, until)``, oldest first (for ``recc cost`` and audits)."""
    return AuditTrail().read(since, until)
