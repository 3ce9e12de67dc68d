"""The harvester's decision function, exhaustively, without AWS, Kubernetes or a scheduler.

Every combination of the facts that matter (managed, readable, protection, age, completeness,
expiry, what the scheduler said) is decided and compared with the precedence the issue asks
for, written here as a table over the *names* of the cases rather than over observation
fields, so it does not repeat the implementation.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools

import dask.config
import pytest

from recc.errors import ConfigError
from recc.harvest.decide import decide
from recc.harvest.evidence import (
    HarvestSettings,
    Observation,
    SchedulerEvidence,
    human_duration,
)

NOW = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.timezone.utc)
SETTINGS = HarvestSettings(
    idle_timeout=3600, grace_period=900, unreachable_grace=600, orphan_grace=1800, max_deletions=5
)
MIN = 60.0


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


AGES = {"unknown": None, "young": ago(5 * MIN), "mid": ago(20 * MIN), "old": ago(3 * 3600)}
PROTECTION = {
    "none": {},
    "forever": {"protected": True},
    "future": {"protected": True, "protected_until": NOW + dt.timedelta(hours=1)},
    "past": {"protected": True, "protected_until": NOW - dt.timedelta(seconds=1)},
}
EXPIRY = {
    "none": None,
    "past": NOW - dt.timedelta(seconds=1),
    "future": NOW + dt.timedelta(hours=1),
}
IDLE_LONG = SchedulerEvidence(idle_seconds=2 * 3600, clients=0, workers=1)
SCHEDULER = {
    "busy": {"scheduler": SchedulerEvidence(idle_seconds=None, clients=1, processing=2)},
    "queued-only": {"scheduler": SchedulerEvidence(idle_seconds=None, clients=0, queued=7)},
    "client": {"scheduler": SchedulerEvidence(idle_seconds=2 * 3600, clients=1)},
    "idle-long": {"scheduler": IDLE_LONG},
    "idle-short": {"scheduler": SchedulerEvidence(idle_seconds=10 * MIN, clients=0)},
    "active": {"scheduler": SchedulerEvidence(idle_seconds=None, clients=0)},
    # The cluster's own idle timeout (3h) is longer than its idle time (2h): not yet.
    "idle-long-own-timeout": {"scheduler": IDLE_LONG, "idle_timeout": 3 * 3600.0},
    # The cluster's own idle timeout (30m) is shorter than the default (1h): it applies.
    "idle-mid-own-timeout": {
        "scheduler": SchedulerEvidence(idle_seconds=45 * MIN, clients=0),
        "idle_timeout": 30 * MIN,
    },
    "gone": {"unreachable": "scheduler process 42 is not running", "scheduler_gone": True},
    "silent-new": {"unreachable": "timed out", "unreachable_since": ago(2 * MIN)},
    "silent-first": {"unreachable": "timed out"},
    "silent-long": {"unreachable": "timed out", "unreachable_since": ago(11 * MIN)},
    "self-idle": {
        "unreachable": "scheduler process 42 is not running",
        "scheduler_gone": True,
        "shut_down_idle": True,
    },
    "unknown": {},
}


def expected(
    managed, readable, protection, interrupted, age, parts, expiry, scheduler
) -> tuple[str, str]:
    """(category, decision) by the issue's precedence, from the names of the cases."""
    if not managed:
        return "unmanaged", "keep"
    if not readable:
        return "unreadable", "keep"
    if protection in ("forever", "future"):
        return "protected", "keep"
    if interrupted:
        return "idle", "reap"  # the interrupted reap's own category
    if age == "unknown":
        return "unreadable", "keep"
    if age == "young":
        return "young", "keep"
    if parts == "partial":
        return ("orphaned", "reap") if age == "old" else ("waiting", "keep")
    if expiry == "past":
        return "expired", "reap"
    return {
        "busy": ("busy", "keep"),
        "queued-only": ("busy", "keep"),
        "client": ("in-use", "keep"),
        "idle-long": ("idle", "reap"),
        "idle-short": ("active", "keep"),
        "active": ("active", "keep"),
        "idle-long-own-timeout": ("active", "keep"),
        "idle-mid-own-timeout": ("idle", "reap"),
        "gone": ("unreachable", "reap"),
        "silent-new": ("waiting", "keep"),
        "silent-first": ("waiting", "keep"),
        "silent-long": ("unreachable", "reap"),
        "self-idle": ("idle", "reap"),
        "unknown": ("unreadable", "keep"),
    }[scheduler]


def observation(
    managed, readable, protection, interrupted, age, parts, expiry, scheduler
) -> Observation:
    return Observation(
        cluster="recc-alice-1",
        backend="eks",
        managed=managed,
        owner="alice",
        created_at=AGES[age],
        usd_per_hour=1.25,
        expires_at=EXPIRY[expiry],
        unreadable=None if readable else "the namespace's labels could not be read (HTTP 500)",
        present=("namespace", "launch template") if parts == "partial" else (),
        missing=("node group recc-alice-1-default",) if parts == "partial" else (),
        interrupted=INTERRUPTED if interrupted else None,
        **PROTECTION[protection],
        **SCHEDULER[scheduler],
    )


INTERRUPTED = ("idle", "idle for 2h with no client connected", "2026-11-02T11:50:00Z")
CASES = list(
    itertools.product(
        (True, False),
        (True, False),
        PROTECTION,
        (False, True),
        AGES,
        ("complete", "partial"),
        EXPIRY,
        SCHEDULER,
    )
)


def test_every_combination_follows_the_precedence():
    # One test over all combinations (thousands): a parametrized test per case would spend
    # most of its time in pytest, not in the function under test.
    wrong = []
    for case in CASES:
        decision = decide(observation(*case), NOW, SETTINGS)
        got = (decision.category, decision.decision)
        if got != expected(*case):
            wrong.append((case, got, expected(*case)))
        assert decision.cluster == "recc-alice-1"
        assert decision.reason  # always a reason a person can read
        # Only a reap reclaims money, and then exactly the cluster's $/h.
        assert decision.usd_per_hour_reclaimed == (1.25 if decision.reap else 0.0)
        assert decision.reap is (decision.decision == "reap")
    assert not wrong, f"{len(wrong)} of {len(CASES)} wrong, e.g. {wrong[:3]}"
    # Every rule is reached by some combination (the table covers the precedence).
    reached = {decide(observation(*c), NOW, SETTINGS).category for c in CASES}
    assert reached == {
        "unmanaged", "unreadable", "protected", "young", "orphaned", "waiting", "expired",
        "busy", "in-use", "idle", "active", "unreachable",
    }  # fmt: skip


def test_the_decision_is_a_function_of_its_inputs_only():
    seen = observation(True, True, "none", False, "old", "complete", "none", "idle-long")
    before = dataclasses.replace(seen)
    first = decide(seen, NOW, SETTINGS)
    assert all(decide(seen, NOW, SETTINGS) == first for _ in range(3))
    assert seen == before  # the observation is not changed
    # Earlier on the same evidence: the same cluster at creation + 10 minutes is young.
    assert decide(seen, AGES["old"] + dt.timedelta(minutes=10), SETTINGS).category == "young"


@pytest.mark.parametrize(
    ("scheduler", "reason"),
    [
        ("busy", "busy: 2 tasks processing"),
        ("queued-only", "busy: 7 queued"),
        ("client", "in use: 1 client connected"),
        ("idle-long", "idle for 2h with no client connected (idle timeout 1h)"),
        ("idle-short", "idle for 10m, under its idle timeout of 1h"),
        ("idle-mid-own-timeout", "idle for 45m with no client connected (idle timeout 30m)"),
        ("gone", "unreachable: scheduler process 42 is not running"),
        ("silent-long", "unreachable: the scheduler has not answered for 11m (timed out)"),
        ("silent-new", "the scheduler is not answering (timed out); reaped if that lasts 10m"),
        ("self-idle", "idle: the scheduler shut itself down after its idle timeout; removing"),
    ],
)
def test_reasons_say_what_was_seen(scheduler, reason):
    seen = observation(True, True, "none", False, "old", "complete", "none", scheduler)
    assert decide(seen, NOW, SETTINGS).reason.startswith(reason)


def test_reasons_for_the_other_rules():
    def reason(**changes) -> str:
        base = observation(True, True, "none", False, "old", "complete", "none", "idle-long")
        return decide(dataclasses.replace(base, **changes), NOW, SETTINGS).reason

    assert reason(managed=False).startswith("not managed by RECC")
    assert reason(interrupted=INTERRUPTED, created_at=NOW) == (
        "finishing the reap started at 2026-11-02T11:50:00Z: idle for 2h with no client connected"
    )
    assert reason(unreadable="tags could not be read").startswith(
        "kept because tags could not be read"
    )
    assert reason(protected=True) == "protected (recc unprotect recc-alice-1 lifts it)"
    assert reason(protected=True, protected_until=NOW + dt.timedelta(hours=1)).startswith(
        "protected until 2026-11-02T13:00:00Z"
    )
    assert reason(created_at=ago(5 * MIN)) == (
        "created 5m ago, within the 15m grace period for new clusters"
    )
    assert reason(expires_at=NOW - dt.timedelta(hours=1)) == (
        "expired at 2026-11-02T11:00:00Z (max lifetime; 3h old)"
    )
    assert reason(missing=("node group x-default",), present=("namespace x",)) == (
        "orphaned: node group x-default gone; namespace x left (3h old)"
    )
    assert (
        reason(
            created_at=ago(20 * MIN), missing=("namespace x",), present=("node group x-default",)
        )
        == "incomplete (namespace x gone; node group x-default left); reaped if still "
        "incomplete at 30m old"
    )


def test_expiry_beats_busy_and_protection_beats_expiry():
    busy_and_expired = observation(True, True, "none", False, "old", "complete", "past", "busy")
    assert decide(busy_and_expired, NOW, SETTINGS).category == "expired"
    protected = dataclasses.replace(busy_and_expired, protected=True)
    assert decide(protected, NOW, SETTINGS).category == "protected"


def test_boundaries_are_inclusive_at_the_limit():
    exactly = Observation(
        "c", "local", created_at=ago(900), scheduler=SchedulerEvidence(3600, clients=0)
    )
    assert decide(exactly, NOW, SETTINGS).category == "idle"  # idle == timeout, age == grace
    just_under = dataclasses.replace(exactly, created_at=ago(899.5))
    assert decide(just_under, NOW, SETTINGS).category == "young"
    expiring_now = dataclasses.replace(exactly, expires_at=NOW)
    assert decide(expiring_now, NOW, SETTINGS).category == "expired"
    silent = dataclasses.replace(
        exactly, scheduler=None, unreachable="timed out", unreachable_since=ago(600)
    )
    assert decide(silent, NOW, SETTINGS).category == "unreachable"


def test_zero_grace_settings_reap_at_once():
    no_grace = HarvestSettings(0, 0, 0, 0, None)
    fresh = Observation(
        "c", "local", created_at=NOW, unreachable="connection refused", unreachable_since=NOW
    )
    assert decide(fresh, NOW, no_grace).category == "unreachable"
    first_sight = dataclasses.replace(fresh, unreachable_since=None)
    assert decide(first_sight, NOW, no_grace).category == "unreachable"


def test_settings_come_from_dask_config_with_overrides():
    with dask.config.set(
        {
            "recc.harvest.idle-timeout": "45m",
            "recc.harvest.grace-period": 0,
            "recc.harvest.unreachable-grace": "30s",
            "recc.harvest.orphan-grace": "2h",
            "recc.harvest.max-deletions": None,
        }
    ):
        settings = HarvestSettings.from_config()
        assert settings == HarvestSettings(2700, 0, 30, 7200, None)
        assert HarvestSettings.from_config(max_deletions=3, idle_timeout="1s").max_deletions == 3
    assert HarvestSettings.from_config() == HarvestSettings(3600, 900, 600, 1800, 20)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("idle-timeout", "soon", r"recc\.harvest\.idle-timeout='soon': not a duration.*30m"),
        ("grace-period", "never", r"recc\.harvest\.grace-period='never': must be a finite"),
        ("orphan-grace", -5, r"recc\.harvest\.orphan-grace=-5: .*for example"),
        ("max-deletions", -1, r"recc\.harvest\.max-deletions=-1: must be a whole number"),
        ("max-deletions", "ten", r"recc\.harvest\.max-deletions='ten'.*for example: 20"),
        ("max-deletions", 2.5, r"recc\.harvest\.max-deletions=2\.5"),
    ],
)
def test_bad_settings_name_the_key_and_an_example(key, value, message):
    with dask.config.set({f"recc.harvest.{key}": value}):
        with pytest.raises(ConfigError, match=message):
            HarvestSettings.from_config()


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(None, "-"), (0, "0s"), (4.7, "4s"), (60, "1m"), (200, "3m 20s"), (3600, "1h"),
     (7500, "2h 5m"), (3605, "1h 5s"), (2 * 86400 + 3 * 3600, "2d 3h"), (-3, "0s")],
)  # fmt: skip
def test_durations_for_people(seconds, text):
    assert human_duration(seconds) == text
