"""Names and label values: DNS-1123 checks, default cluster names, sanitising for each system."""

from __future__ import annotations

import getpass
import os
import re
import secrets

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Cluster names become namespaces, node group names ("<name>-<group>") and tag values, so they
# are kept well under the 63-character label limit.
MAX_CLUSTER_NAME = 40
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def is_dns1123_label(name: str, max_length: int = 63) -> bool:
    """True when ``name`` is a valid DNS-1123 label of at most ``max_length`` characters."""
    return len(name) <= max_length and bool(DNS1123_LABEL.match(name))


def current_user() -> str:
    """The local user name (``RECC_USER`` wins, for shared accounts and CI)."""
    return os.environ.get("RECC_USER") or getpass.getuser()


def dns_safe(text: str, max_length: int) -> str:
    """Lower-case ``text`` folded into DNS-1123 label characters, trimmed to ``max_length``."""
    folded = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return folded[:max_length].strip("-") or "user"


def default_cluster_name(user: str | None = None) -> str:
    """``recc-{user}-{short id}``, always a valid cluster name."""
    short_id = secrets.token_hex(3)
    budget = MAX_CLUSTER_NAME - len("recc--") - len(short_id)
    return f"recc-{dns_safe(user or current_user(), budget)}-{short_id}"


def label_value(value: str) -> str:
    """A Kubernetes label value: at most 63 chars of [A-Za-z0-9._-], alphanumeric at both ends."""
    cleaned = _LABEL_VALUE_BAD.sub("_", value)[:63]
    return cleaned.strip("._-")


def aws_tag_value(value: str) -> str:
    """An AWS tag value: at most 256 characters of what tags allow."""
    return re.sub(r"[^\w .:/=+\-@]", "_", value)[:256]
