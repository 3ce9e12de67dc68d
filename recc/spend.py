"""Spend while a cluster runs: cost so far, windows of time, and when ``recc up`` should ask.

Estimates are the plan's $/h times the hours a cluster lived (pure, below); actual spend comes
from Cost Explorer grouped by RECC's cost allocation tags (:func:`actual_spend`, the one
function here that calls AWS), and lags by up to a day.

Example
-------
>>> import datetime as dt
>>> start = dt.datetime(2026, 11, 1, 9, 0, tzinfo=dt.timezone.utc)
>>> cost_so_far(1.289, start, start + dt.timedelta(hours=3))
3.867
>>> describe_spend(1.289, start, start + dt.timedelta(hours=3))
'$1.29/h, ~$3.87 so far (estimate)'
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from recc import config
from recc.errors import BackendError, SpecError
from recc.tags import MANAGED_BY_TAG, MANAGED_BY_VALUE
from recc.units import parse_duration

if TYPE_CHECKING:  # the ledger builds on this module's window arithmetic
    from recc.ledger import Life

ESTIMATE_LABEL = "estimate"


def _utc(moment: dt.datetime) -> dt.datetime:
    # Naive datetimes are taken as UTC: RECC writes every timestamp in UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def overlap_hours(
    start: dt.datetime,
    end: dt.datetime,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> float:
    """Hours of ``[start, end)`` that fall inside ``[since, until)`` (None: unbounded).

    >>> t = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
    >>> overlap_hours(t, t + dt.timedelta(hours=5), since=t + dt.timedelta(hours=4))
    1.0
    """
    lo = max(_utc(start), _utc(since)) if since else _utc(start)
    hi = min(_utc(end), _utc(until)) if until else _utc(end)
    return max(0.0, (hi - lo).total_seconds() / 3600)


def cost_so_far(usd_per_hour: float, created_at: dt.datetime, now: dt.datetime) -> float:
    """Estimated USD spent by a cluster costing ``usd_per_hour`` since ``created_at``.

    Zero when ``now`` is before ``created_at`` (clocks disagree). Rounded to 1/10 cent.
    """
    return round(usd_per_hour * overlap_hours(created_at, now), 4)


def format_usd(amount: float) -> str:
    """``$1,234.57``; amounts under a cent show as ``$0.00``."""
    return f"${amount:,.2f}"


def describe_spend(usd_per_hour: float, created_at: dt.datetime, now: dt.datetime) -> str:
    """One phrase for a repr or a table cell, always labelled as an estimate."""
    so_far = cost_so_far(usd_per_hour, created_at, now)
    return f"{format_usd(usd_per_hour)}/h, ~{format_usd(so_far)} so far ({ESTIMATE_LABEL})"


def needs_confirmation(usd_per_hour: float, threshold: float | None = None) -> bool:
    """Whether ``recc up`` must ask before creating a cluster costing ``usd_per_hour``.

    ``threshold`` defaults to ``recc.cost.confirm-above-usd-per-hour``; null there means never
    ask.

    >>> needs_confirmation(12.5, threshold=10)
    True
    >>> needs_confirmation(0.0, threshold=0)
    False
    """
    limit = config.get("cost.confirm-above-usd-per-hour", override=threshold)
    return limit is not None and usd_per_hour > float(limit)


# How ``recc cost --by`` groups, and the cost allocation tag Cost Explorer groups by for each
# (teams are not tagged: they are sums of their users, from ``recc.quotas.teams``).
GROUPINGS = ("user", "team", "namespace", "job", "cluster")
GROUP_TAG = {
    "user": "recc:user",
    "team": "recc:user",
    "namespace": "recc:namespace",
    "job": "recc:job",
    "cluster": "recc:cluster",
}
NO_TEAM = "(no team)"
UNTAGGED = "(untagged)"


@dataclass
class SpendRow:
    """Spend of one group inside a window."""

    key: str
    clusters: int = 0
    running: int = 0
    hours: float = 0.0
    estimated_usd: float = 0.0
    actual_usd: float | None = None


def group_key(
    values: Mapping[str, Any] | Any, by: str, teams: Mapping[str, str] | None = None
) -> str:
    """The group of a life's record (or of a plain mapping) under ``--by``."""
    if by == "team":
        user = values["user"] if isinstance(values, Mapping) else values.user
        return (teams or {}).get(user, NO_TEAM)
    value = values[by] if isinstance(values, Mapping) else getattr(values, by)
    return value if value else "none"


def estimated_spend(
    lives: Iterable[Life],
    by: str,
    since: dt.datetime | None,
    until: dt.datetime | None,
    now: dt.datetime,
    teams: Mapping[str, str] | None = None,
) -> list[SpendRow]:
    """Estimated spend per group, each life clipped to ``[since, until)``; dearest first.

    A life that started before ``since`` or runs past ``until`` counts only its hours inside.
    """
    rows: dict[str, SpendRow] = {}
    for life in lives:
        hours = life.hours(since, until, now)
        key = group_key(life.record, by, teams)
        row = rows.setdefault(key, SpendRow(key))
        row.clusters += 1
        row.running += int(life.running)
        row.hours += hours
        row.estimated_usd += hours * life.record.usd_per_hour
    return sorted(rows.values(), key=lambda r: (-r.estimated_usd, r.key))


def whole_days(since: dt.datetime, until: dt.datetime, today: dt.date) -> tuple[dt.date, dt.date]:
    """Cost Explorer's window for ``[since, until)``: whole UTC days, end exclusive, ending
    no later than tomorrow (it reports nothing for the future)."""
    start = _utc(since).date()
    end_moment = _utc(until)
    end = end_moment.date() + dt.timedelta(days=int(end_moment.time() != dt.time(0)))
    end = min(end, today + dt.timedelta(days=1))
    return start, max(end, start + dt.timedelta(days=1))


@dataclass(frozen=True)
class Actuals:
    """Actual spend from Cost Explorer per group, for whole days ``[start, end)``."""

    by_key: dict[str, float]
    start: dt.date
    end: dt.date
    # Cost Explorer marks recent days as estimated until AWS closes them.
    provisional: bool


def _tag_value(key: str) -> str:
    # Cost Explorer names tag groups "<tag key>$<value>"; "$" alone means untagged.
    value = key.split("$", 1)[1] if "$" in key else key
    return value or UNTAGGED


def actual_spend(
    by: str,
    start: dt.date,
    end: dt.date,
    ce_client: Any = None,
    teams: Mapping[str, str] | None = None,
) -> Actuals:
    """Unblended cost of resources tagged ``recc:managed-by=recc``, grouped by RECC's tag for
    ``by``, over whole days ``[start, end)``.

    Needs RECC's tags activated as cost allocation tags (``recc budget activate-tags``).
    Each call costs USD 0.01 (Cost Explorer's API price). Raises
    :class:`~recc.errors.BackendError` when Cost Explorer cannot answer (no credentials, no
    permission, not enabled).
    """
    request: dict[str, Any] = {
        "TimePeriod": {"Start": start.isoformat(), "End": end.isoformat()},
        "Granularity": "MONTHLY",
        "Metrics": ["UnblendedCost"],
        "GroupBy": [{"Type": "TAG", "Key": GROUP_TAG[by]}],
        "Filter": {"Tags": {"Key": MANAGED_BY_TAG, "Values": [MANAGED_BY_VALUE]}},
    }
    by_key: dict[str, float] = {}
    provisional = False
    try:
        if ce_client is None:
            from recc.aws import client

            ce_client = client("ce", region="us-east-1")  # Cost Explorer's one endpoint
        while True:
            answer = ce_client.get_cost_and_usage(**request)
            for period in answer.get("ResultsByTime", []):
                provisional = provisional or bool(period.get("Estimated"))
                for group in period.get("Groups", []):
                    value = _tag_value(group["Keys"][0])
                    key = (teams or {}).get(value, NO_TEAM) if by == "team" else value
                    amount = float(group["Metrics"]["UnblendedCost"]["Amount"])
                    by_key[key] = by_key.get(key, 0.0) + amount
            token = answer.get("NextPageToken")
            if not token:
                break
            request["NextPageToken"] = token
    except (BotoCoreError, ClientError) as e:
        raise BackendError(f"Cost Explorer is unavailable: {e}") from e
    return Actuals(by_key, start, end, provisional)


def parse_when(text: str, now: dt.datetime, field: str = "--since") -> dt.datetime:
    """A moment from ``2026-11-01``, RFC 3339 (``2026-11-01T09:00:00Z``), ``now``, ``today``
    or a duration ago (``7d``, ``12h``). Dates are midnight UTC; naive times are UTC.

    >>> now = dt.datetime(2026, 11, 22, 10, tzinfo=dt.timezone.utc)
    >>> parse_when("7d", now).isoformat()
    '2026-11-15T10:00:00+00:00'
    """
    word = text.strip().lower()
    if word == "now":
        return now
    if word == "today":
        return _utc(dt.datetime.combine(now.date(), dt.time(0)))
    try:
        return _utc(dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00")))
    except ValueError:
        pass
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if seconds is None:
        raise SpecError(field, text, "is not a date, a time or a duration ago", "2026-11-01 or 7d")
    return now - dt.timedelta(seconds=seconds)


def month_start(now: dt.datetime) -> dt.datetime:
    """Midnight UTC on the first day of ``now``'s month: ``recc cost``'s default window start."""
    return _utc(now).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass
class SpendReport:
    """``recc cost``: estimated (and, where available, actual) spend per group in a window."""

    by: str
    since: dt.datetime
    until: dt.datetime
    ledger_url: str
    rows: list[SpendRow]
    actual: Actuals | None = None
    # Why there are no actual figures (not asked for, or Cost Explorer could not answer).
    actual_note: str | None = None

    @property
    def estimated_total(self) -> float:
        """Estimated USD over all groups."""
        return sum(r.estimated_usd for r in self.rows)

    @property
    def actual_total(self) -> float | None:
        """Actual USD over all groups (None without Cost Explorer)."""
        return None if self.actual is None else sum(self.actual.by_key.values())

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "by": self.by,
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "ledger": self.ledger_url,
            "estimate": True,
            "rows": [
                {
                    self.by: r.key,
                    "clusters": r.clusters,
                    "running": r.running,
                    "hours": round(r.hours, 4),
                    "estimated_usd": round(r.estimated_usd, 4),
                    "actual_usd": None if r.actual_usd is None else round(r.actual_usd, 4),
                }
                for r in self.rows
            ],
            "estimated_total_usd": round(self.estimated_total, 4),
            "actual_total_usd": None if self.actual is None else round(self.actual_total or 0, 4),
            "actual": None
            if self.actual is None
            else {
                "source": "Cost Explorer (UnblendedCost)",
                "start": self.actual.start.isoformat(),
                "end_exclusive": self.actual.end.isoformat(),
                "provisional": self.actual.provisional,
            },
            "actual_note": self.actual_note,
        }


def merge_actuals(rows: list[SpendRow], actuals: Actuals) -> list[SpendRow]:
    """Rows with Cost Explorer's figure beside each estimate; groups only Cost Explorer knows
    (untagged spend, clusters missing from this ledger) get a row of their own."""
    merged = {r.key: r for r in rows}
    for key, amount in actuals.by_key.items():
        merged.setdefault(key, SpendRow(key)).actual_usd = amount
    for row in merged.values():
        if row.actual_usd is None:
            row.actual_usd = 0.0
    return sorted(merged.values(), key=lambda r: (-r.estimated_usd, -(r.actual_usd or 0), r.key))


def spend_report(
    by: str,
    since: dt.datetime,
    until: dt.datetime,
    now: dt.datetime,
    *,
    actual: bool | None = None,
    ledger: Any = None,
    ce_client: Any = None,
    teams: Mapping[str, str] | None = None,
) -> SpendReport:
    """Estimated spend from the ledger grouped ``by``, clipped to ``[since, until)``, and
    Cost Explorer's actual spend beside it when ``actual`` (None: when an EKS platform is
    configured). Cost Explorer failing is reported in ``actual_note``, never raised."""
    from recc.ledger import Ledger  # the ledger builds on this module

    if by not in GROUPINGS:
        raise SpecError("--by", by, f"must be one of {', '.join(GROUPINGS)}", "--by user")
    if until <= since:
        raise SpecError("--until", until.isoformat(), "must be after --since", "--since 7d")
    if teams is None:
        teams = {str(k): str(v) for k, v in (config.get("quotas.teams") or {}).items()}
    ledger = ledger or Ledger()
    lives = ledger.read_lives(since, until, now)
    report = SpendReport(
        by, since, until, ledger.url, estimated_spend(lives, by, since, until, now, teams)
    )
    if actual is None:
        actual = bool(config.get("eks.cluster-name"))
    if not actual:
        report.actual_note = "not queried (no EKS platform configured; --actual asks Cost Explorer)"
        return report
    start, end = whole_days(since, until, now.date())
    try:
        report.actual = actual_spend(by, start, end, ce_client, teams)
    except BackendError as e:
        report.actual_note = f"unavailable: {e}"
        return report
    report.rows = merge_actuals(report.rows, report.actual)
    return report
