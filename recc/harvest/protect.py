"""``recc protect`` / ``recc unprotect``: keep a cluster from the harvester, for good or until a
time.

Where the mark lives: on the local backend, ``protect.json`` beside the cluster's record (a
file of its own, so that nothing rewriting the record - a scale from a notebook - can drop it;
it goes with the cluster's directory); on EKS, the label ``recc.io/protect=true`` and the
annotation ``recc.io/protect-until`` on the namespace, and the tags ``recc.io/protect`` and
``recc:protect-until`` on the node groups (see :mod:`recc.harvest.eks`), so the mark is found
from whichever part still exists.

Example
-------
>>> import datetime as dt
>>> protection_of("true", "2026-12-01T18:00:00Z")
(True, datetime.datetime(2026, 12, 1, 18, 0, tzinfo=datetime.timezone.utc))
>>> protection_of(None, None)
(False, None)
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from typing import Any

from recc import state
from recc.backends.base import get_backend
from recc.errors import SpecError
from recc.naming import check_cluster_name, current_user
from recc.tags import parse_rfc3339, rfc3339, utcnow

PROTECT_FILE = "protect.json"
_NEVER = ("", "never", "none")
_UNTIL_EXAMPLE = "--until 2026-12-01T18:00:00Z"


@dataclass(frozen=True)
class Protection:
    """A cluster's protection: until when (None: until ``recc unprotect``), by whom."""

    cluster: str
    until: dt.datetime | None
    by: str

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-ready)."""
        return {
            "cluster": self.cluster,
            "protected": True,
            "until": rfc3339(self.until) if self.until else None,
            "by": self.by,
        }


def parse_until(text: str, now: dt.datetime | None = None) -> dt.datetime:
    """An RFC 3339 time with an offset, in the future; :class:`SpecError` otherwise."""
    now = now or dt.datetime.now(dt.timezone.utc)
    try:
        moment = parse_rfc3339(text.strip())
    except ValueError:
        raise SpecError("until", text, "is not an RFC 3339 time", _UNTIL_EXAMPLE) from None
    if moment.tzinfo is None:
        raise SpecError("until", text, "needs a UTC offset (Z or +01:00)", _UNTIL_EXAMPLE)
    if moment <= now:
        raise SpecError(
            "until", text, f"is not in the future (now: {rfc3339(now)})", _UNTIL_EXAMPLE
        )
    return moment.astimezone(dt.timezone.utc)


def protection_of(mark: str | None, until: str | None) -> tuple[bool, dt.datetime | None]:
    """(protected, until) from a protect mark (``"true"``) and a protect-until value. Pure.

    A protect-until time alone protects until then. Raises ``ValueError`` for a value that is
    neither, so the caller can keep the cluster (fail closed) rather than guess.
    """
    mark = (mark or "").strip().lower()
    if mark not in ("", "true", "false"):
        raise ValueError(f"recc.io/protect={mark!r} is neither true nor false")
    moment = None
    if until is not None and until.strip().lower() not in _NEVER:
        moment = parse_rfc3339(until.strip())
        if moment.tzinfo is None:
            raise ValueError(f"protect-until={until!r} has no UTC offset")
    if mark == "false" and moment is None:
        return False, None
    return (mark == "true" or moment is not None), moment


def protect(name: str, until: dt.datetime | None = None, backend: str | None = None) -> Protection:
    """Keep cluster ``name`` from the harvester (until ``until``, else until unprotected).

    Raises :class:`~recc.errors.ClusterNotFound` for an unknown cluster,
    :class:`~recc.errors.SpecError` for a name that cannot be a cluster name.

    Example
    -------
    >>> protect("recc-alice-1a2b3c", parse_until("2026-12-01T18:00:00Z"))  # doctest: +SKIP
    Protection(cluster='recc-alice-1a2b3c', until=datetime.datetime(2026, 12, 1, 18, 0, ...
    """
    check_cluster_name(name)
    chosen = get_backend(backend)
    protection = Protection(name, until, current_user())
    if chosen.name == "eks":
        from recc.harvest import eks

        eks.protect(name, protection)
    else:
        chosen.find(name)  # ClusterNotFound for a name it does not know
        path = state.cluster_dir(name) / PROTECT_FILE
        tmp = path.with_name(f".{PROTECT_FILE}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**protection.to_dict(), "at": rfc3339(utcnow())}))
        os.replace(tmp, path)
    return protection


def unprotect(name: str, backend: str | None = None) -> bool:
    """Let the harvester judge cluster ``name`` again; False when it was not protected."""
    check_cluster_name(name)
    chosen = get_backend(backend)
    if chosen.name == "eks":
        from recc.harvest import eks

        return eks.unprotect(name)
    chosen.find(name)
    try:
        (state.cluster_dir(name) / PROTECT_FILE).unlink()
        return True
    except FileNotFoundError:
        return False


def local_protection(name: str) -> tuple[bool, dt.datetime | None]:
    """The protection of local cluster ``name``; ``ValueError`` when its file is unreadable."""
    path = state.cluster_dir(name) / PROTECT_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return False, None
    except (OSError, ValueError) as e:
        raise ValueError(f"its protection file {path} is unreadable ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"its protection file {path} is not a JSON object")
    return protection_of("true" if data.get("protected", True) else "false", data.get("until"))
