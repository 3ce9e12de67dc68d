"""One schema for AWS tags and Kubernetes labels, everywhere RECC creates something.

User tags merge underneath; RECC's required tags always win. Values are sanitised for each
system's rules. Nothing without ``recc:managed-by=recc`` is ever deleted by RECC.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from recc.naming import aws_tag_value, label_value
from recc.units import format_duration

MANAGED_BY_TAG = "recc:managed-by"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY_VALUE = "recc"
CLUSTER_TAG = "recc:cluster"
CLUSTER_LABEL = "recc.io/cluster"
PROTECT_LABEL = "recc.io/protect"
PROTECT_UNTIL_TAG = "recc:protect-until"


@dataclass(frozen=True)
class Ownership:
    """Who and what a cluster's resources belong to, for tags, labels and cost attribution."""

    cluster: str
    user: str
    namespace: str
    created_at: dt.datetime
    job: str | None = None
    idle_timeout: float | None = None
    max_lifetime: float | None = None

    @property
    def expires_at(self) -> dt.datetime | None:
        """When the cluster's max lifetime runs out (None: never)."""
        if self.max_lifetime is None:
            return None
        return self.created_at + dt.timedelta(seconds=self.max_lifetime)


def utcnow() -> dt.datetime:
    """The current moment, timezone-aware in UTC (what every timestamp RECC writes starts as)."""
    return dt.datetime.now(dt.timezone.utc)


def rfc3339(moment: dt.datetime) -> str:
    """UTC, second precision, with a Z: ``2026-11-22T10:21:38Z``."""
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text: str) -> dt.datetime:
    """The inverse of :func:`rfc3339` (also accepts offsets)."""
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def aws_tags(owner: Ownership, version: str, user_tags: Mapping[str, str] = ()) -> dict[str, str]:
    """The AWS tags for every resource of a cluster; required keys override user tags."""
    required = {
        CLUSTER_TAG: owner.cluster,
        "recc:user": owner.user,
        "recc:namespace": owner.namespace,
        "recc:job": owner.job or "none",
        "recc:created-at": rfc3339(owner.created_at),
        "recc:idle-timeout": format_duration(owner.idle_timeout),
        "recc:expires-at": rfc3339(owner.expires_at) if owner.expires_at else "never",
        MANAGED_BY_TAG: MANAGED_BY_VALUE,
        "recc:version": version,
    }
    merged = {str(k): aws_tag_value(str(v)) for k, v in dict(user_tags).items()}
    merged.update({k: aws_tag_value(v) for k, v in required.items()})
    return merged


def k8s_labels(owner: Ownership) -> dict[str, str]:
    """The Kubernetes labels for every object of a cluster."""
    return {
        CLUSTER_LABEL: label_value(owner.cluster),
        "recc.io/user": label_value(owner.user) or "unknown",
        "recc.io/job": label_value(owner.job or "none") or "none",
        MANAGED_BY_LABEL: MANAGED_BY_VALUE,
    }


def k8s_annotations(owner: Ownership) -> dict[str, str]:
    """Facts that do not fit label rules (timestamps, raw user names) go into annotations."""
    return {
        "recc.io/user": owner.user,
        "recc.io/created-at": rfc3339(owner.created_at),
        "recc.io/idle-timeout": format_duration(owner.idle_timeout),
        "recc.io/expires-at": rfc3339(owner.expires_at) if owner.expires_at else "never",
    }


def is_managed(tags_or_labels: Mapping[str, str]) -> bool:
    """True only for resources RECC created (the deletion guard)."""
    return (
        tags_or_labels.get(MANAGED_BY_TAG) == MANAGED_BY_VALUE
        or tags_or_labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE
    )
