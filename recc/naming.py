"""Names and label values: DNS-1123 checks, the cluster-name check every entry point applies,
default cluster names, sanitising for each system."""

from __future__ import annotations

import getpass
import os
import re
import secrets

from recc.errors import SpecError

# Used with fullmatch: "$" would also accept a trailing newline.
DNS1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
# Cluster names become namespaces, node group names ("<name>-<group>") and tag values, so they
# are kept well under the 63-character label limit.
MAX_CLUSTER_NAME = 40
CLUSTER_NAME_EXAMPLE = (
    f"name='recc-alice-1a2b3c' (lower-case letters, digits and '-', at most {MAX_CLUSTER_NAME})"
)
_LABEL_VALUE_BAD = re.compile(r"[^A-Za-z0-9._-]+")


def is_dns1123_label(name: str, max_length: int = 63) -> bool:
    """True when ``name`` is a valid DNS-1123 label of at most ``max_length`` characters."""
    return len(name) <= max_length and DNS1123_LABEL.fullmatch(name) is not None


def cluster_name_problem(name: object) -> str | None:
    """Why ``name`` cannot be a cluster name, or None when it can. Pure.

    Cluster names become namespaces, Service names ("<name>-scheduler", a DNS-1035 label, so
    the first character is a letter) and state directories; a valid one is a single path
    component, so it can never point outside the state directory.
    """
    if isinstance(name, str) and is_dns1123_label(name, MAX_CLUSTER_NAME) and name[:1].isalpha():
        return None
    return f"is not a DNS-1123 label starting with a letter, at most {MAX_CLUSTER_NAME} characters"


def check_cluster_name(name: object) -> str:
    """``name`` when it is a valid cluster name; :class:`SpecError` otherwise.

    Applied wherever a user names a cluster (``recc down``, ``logs``, ``protect``,
    ``RECCCluster.from_name`` ...) before the name reaches a path, a process or an API.

    >>> check_cluster_name("recc-alice-1a2b3c")
    'recc-alice-1a2b3c'
    >>> try:
    ...     check_cluster_name("../../victim")
    ... except SpecError as e:
    ...     print(e.field, e.problem)
    name is not a DNS-1123 label starting with a letter, at most 40 characters
    """
    problem = cluster_name_problem(name)
    if problem is not None:
        raise SpecError("name", name, problem, CLUSTER_NAME_EXAMPLE)
    return name  # type: ignore[return-value]


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
