"""The ledger: events fold into lives, windows clip them, appends from several processes at
once all land, on local disk and on S3 (moto's server on 127.0.0.1); plus cost so far."""

from __future__ import annotations

import datetime as dt
import json
import multiprocessing
import os
import random
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import dask.config
import pytest
from helpers import s3_on_loopback

from recc.catalog import bundled_catalog
from recc.cost import estimate_cost, local_cost
from recc.errors import SpecError
from recc.ledger import (
    Ledger,
    Life,
    StartRecord,
    fold,
    in_window,
    read_lives,
    relevant_paths,
)
from recc.plan import plan_cluster
from recc.pricing import PriceBook
from recc.spec import resolve_spec
from recc.spend import cost_so_far, describe_spend, needs_confirmation, overlap_hours
from recc.tags import Ownership

T0 = dt.datetime(2026, 11, 2, 9, 0, tzinfo=dt.timezone.utc)


def hours(n: float) -> dt.timedelta:
    return dt.timedelta(hours=n)


def record(
    cluster: str, start: dt.datetime = T0, usd: float = 2.0, user: str = "alice"
) -> StartRecord:
    return StartRecord(cluster, user, cluster, "job-a", "eks", start, usd, 1, ("c5.xlarge",))


def start_event(rec: StartRecord) -> dict:
    return {"event": "start", "at": rec.to_json()["created_at"], **rec.to_json()}


def end_event(cluster: str, at: dt.datetime, how: str = "closed") -> dict:
    return {"event": "end", "at": at.strftime("%Y-%m-%dT%H:%M:%SZ"), "cluster": cluster, "how": how}


# --- cost so far and windows (pure) ---------------------------------------------------------


def test_cost_so_far_is_rate_times_hours_and_never_negative() -> None:
    assert cost_so_far(1.5, T0, T0 + hours(2)) == 3.0
    assert cost_so_far(1.5, T0, T0 + dt.timedelta(minutes=20)) == 0.5
    assert cost_so_far(1.5, T0, T0 - hours(1)) == 0.0  # a clock behind created-at
    assert cost_so_far(0.0, T0, T0 + hours(100)) == 0.0  # the local backend


def test_cost_so_far_takes_naive_times_as_utc() -> None:
    naive = T0.replace(tzinfo=None)
    assert cost_so_far(2.0, naive, T0 + hours(1)) == 2.0


def test_describe_spend_says_estimate() -> None:
    text = describe_spend(1.289, T0, T0 + hours(3))
    assert text == "$1.29/h, ~$3.87 so far (estimate)"


@pytest.mark.parametrize(
    ("since", "until", "expected"),
    [
        (None, None, 5.0),
        (T0 + hours(1), None, 4.0),
        (None, T0 + hours(2), 2.0),
        (T0 + hours(1), T0 + hours(2), 1.0),
        (T0 - hours(10), T0 + hours(10), 5.0),
        (T0 + hours(6), T0 + hours(8), 0.0),  # window after the life
        (T0 - hours(3), T0, 0.0),  # window ends when the life starts
    ],
)
def test_overlap_hours_clips_to_the_window(since, until, expected) -> None:  # noqa: ANN001
    assert overlap_hours(T0, T0 + hours(5), since, until) == expected


def test_needs_confirmation_follows_config_threshold() -> None:
    with dask.config.set({"recc.cost.confirm-above-usd-per-hour": 5}):
        assert needs_confirmation(5.01)
        assert not needs_confirmation(5.0)
    with dask.config.set({"recc.cost.confirm-above-usd-per-hour": None}):
        assert not needs_confirmation(10_000)
    assert needs_confirmation(2, threshold=1) and not needs_confirmation(2, threshold=3)


# --- folding events into lives (pure) --------------------------------------------------------


def test_fold_pairs_start_and_end() -> None:
    [life] = fold([start_event(record("c1")), end_event("c1", T0 + hours(3), "reaped")])
    assert (life.ended_at, life.how, life.running) == (T0 + hours(3), "reaped", False)
    assert life.cost() == 6.0


def test_second_end_is_ignored() -> None:
    events = [
        end_event("c1", T0 + hours(5), "reaped"),  # later duplicate, listed first
        start_event(record("c1")),
        end_event("c1", T0 + hours(3), "closed"),
    ]
    [life] = fold(events)
    assert (life.ended_at, life.how) == (T0 + hours(3), "closed")


def test_end_without_start_is_ignored() -> None:
    assert fold([end_event("ghost", T0)]) == []


def test_reused_cluster_name_gives_two_lives() -> None:
    first, second = record("c1"), record("c1", start=T0 + hours(10), usd=4.0)
    events = [
        start_event(first),
        end_event("c1", T0 + hours(1)),
        start_event(second),
        end_event("c1", T0 + hours(12), "down"),
        end_event("c1", T0 + hours(13), "reaped"),  # repeated end of the second life
    ]
    lives = fold(events)
    assert [(life.record.usd_per_hour, life.cost()) for life in lives] == [(2.0, 2.0), (4.0, 8.0)]
    assert [life.how for life in lives] == ["closed", "down"]


def test_running_life_costs_until_now() -> None:
    [life] = fold([start_event(record("c1"))])
    assert life.running
    assert life.cost(now=T0 + hours(4)) == 8.0
    assert life.cost(until=T0 + hours(1), now=T0 + hours(4)) == 2.0


def test_in_window_keeps_overlapping_lives_only() -> None:
    lives = fold(
        [
            start_event(record("early")),
            end_event("early", T0 + hours(1)),
            start_event(record("late", start=T0 + hours(5))),
            start_event(record("running", start=T0 - hours(48))),
        ]
    )
    now = T0 + hours(6)
    names = {life.record.cluster for life in in_window(lives, T0 + hours(2), T0 + hours(4), now)}
    assert names == {"running"}
    names = {life.record.cluster for life in in_window(lives, None, T0 + hours(0.5), now)}
    assert names == {"early", "running"}


# --- the ledger on disk ----------------------------------------------------------------------


def test_record_for_cluster_from_plan_and_estimate() -> None:
    spec = resolve_spec(n_workers=10)
    plan = plan_cluster(spec, bundled_catalog())
    estimate = estimate_cost(plan, PriceBook(cache_file=Path(os.devnull)))
    owner = Ownership(cluster="c1", user="alice", namespace="recc-c1", created_at=T0, job="j")
    rec = StartRecord.for_cluster(owner, "eks", estimate, plan)
    assert (rec.instances, rec.instance_types) == (plan.instances, ("c5.xlarge",))
    assert rec.usd_per_hour == estimate.usd_per_hour > 0
    local = StartRecord.for_cluster(owner, "local", local_cost())
    assert (local.usd_per_hour, local.instances, local.instance_types) == (0.0, 0, ())
    assert StartRecord.from_json(json.loads(json.dumps(rec.to_json()))) == rec


def test_local_ledger_round_trip(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path / "ledger"))
    ledger.record_start(record("c1"))
    ledger.record_start(record("c2", start=T0 + hours(1), user="bob"))
    ledger.record_end("c1", T0 + hours(2), "down")
    ledger.record_end("c1", T0 + hours(3), "reaped")  # idempotent: ignored
    files = sorted(p.name for p in (tmp_path / "ledger" / "events").iterdir())
    assert len(files) == 4 and all(f.endswith(".json") for f in files)
    lives = ledger.read_lives(now=T0 + hours(5))
    assert [(life.record.cluster, life.how, life.cost(now=T0 + hours(5))) for life in lives] == [
        ("c1", "down", 4.0),
        ("c2", None, 8.0),
    ]


def test_unreadable_event_files_are_skipped(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    ledger.record_start(record("c1"))
    (tmp_path / "events" / "garbage.json").write_text("{not json")
    (tmp_path / "events" / "other.json").write_text('{"hello": 1}')
    (tmp_path / "events" / "half.json.tmp").write_text("{")
    assert [life.record.cluster for life in ledger.read_lives()] == ["c1"]


def test_end_rejects_unknown_how(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="how='crashed'.*closed, down, reaped, failed"):
        Ledger(str(tmp_path)).record_end("c1", T0, "crashed")
    assert not (tmp_path / "events").exists()


def test_default_url_is_in_the_state_dir(tmp_path: Path) -> None:
    with dask.config.set({"recc.state-dir": str(tmp_path), "recc.cost.ledger-url": None}):
        ledger = Ledger()
        assert ledger.url == str(tmp_path / "ledger")
        ledger.record_start(record("c1"))
        assert [life.record.cluster for life in read_lives()] == ["c1"]
    assert len(list((tmp_path / "ledger" / "events").iterdir())) == 1


def _append_many(url: str, options: dict, worker: int, count: int) -> None:
    """Runs in another process: ``count`` start/end pairs, as fast as it can."""
    ledger = Ledger(url, options)
    for i in range(count):
        name = f"w{worker}-{i}"
        ledger.record_start(record(name, start=T0 + dt.timedelta(seconds=i)))
        ledger.record_end(name, T0 + dt.timedelta(seconds=i) + hours(1), "closed")


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    """Two worker processes, shared by the concurrency tests; shut down (joined) after them."""
    # spawn, not fork: the moto server's threads live in this process.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=2, mp_context=spawn) as executor:
        yield executor


def _concurrent_appends(
    pool: ProcessPoolExecutor, url: str, options: dict, count: int
) -> list[Life]:
    futures = [pool.submit(_append_many, url, options, w, count) for w in range(2)]
    for future in futures:
        future.result(timeout=120)
    return Ledger(url, options).read_lives()


def test_two_processes_append_at_once_locally(pool: ProcessPoolExecutor, tmp_path: Path) -> None:
    lives = _concurrent_appends(pool, str(tmp_path / "ledger"), {}, count=40)
    assert len(lives) == 80
    assert all(life.how == "closed" and life.cost() == 2.0 for life in lives)


# --- the ledger on S3 (moto's server, on loopback) -------------------------------------------


@pytest.fixture(scope="module")
def s3_url() -> Iterator[tuple[str, dict]]:
    """A bucket on a moto server on 127.0.0.1, and the storage options that reach it."""
    with s3_on_loopback("team-ledger") as endpoint:
        options = {
            "key": "testing",
            "secret": "testing",
            "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
        }
        yield "s3://team-ledger/recc/ledger", options


def test_s3_ledger_round_trip(s3_url: tuple[str, dict]) -> None:
    url, options = s3_url
    ledger = Ledger(f"{url}/round-trip", options)
    assert ledger.read_lives() == []
    ledger.record_start(record("c1"))
    ledger.record_end("c1", T0 + hours(1.5), "reaped")
    ledger.record_end("c1", T0 + hours(9), "closed")
    [life] = Ledger(f"{url}/round-trip", options).read_lives()
    assert (life.how, life.cost()) == ("reaped", 3.0)


def test_s3_ledger_from_config(s3_url: tuple[str, dict]) -> None:
    url, options = s3_url
    settings = {
        "recc.cost.ledger-url": f"{url}/from-config",
        "recc.cost.ledger-storage-options": options,
    }
    with dask.config.set(settings):
        Ledger().record_start(record("c9", user="carol"))
        assert [life.record.user for life in read_lives()] == ["carol"]


def test_two_processes_append_at_once_on_s3(
    pool: ProcessPoolExecutor, s3_url: tuple[str, dict]
) -> None:
    url, options = s3_url
    lives = _concurrent_appends(pool, f"{url}/concurrent", options, count=15)
    assert len(lives) == 30
    assert {life.record.cluster for life in lives} == {
        f"w{w}-{i}" for w in range(2) for i in range(15)
    }
    assert all(life.how == "closed" for life in lives)


def test_lives_of_one_cluster(tmp_path: Path) -> None:
    ledger = Ledger(str(tmp_path))
    for name in ("c1", "c1-b", "x-c1", "c1-start"):
        ledger.record_start(record(name))
    ledger.record_end("c1", T0 + hours(1), "down")
    only = ledger.read_lives(cluster="c1")
    assert [(life.record.cluster, life.how) for life in only] == [("c1", "down")]
    assert [life.record.cluster for life in read_lives(ledger=ledger, cluster="c1-start")] == [
        "c1-start"
    ]
    assert ledger.read_lives(cluster="nope") == []


def test_reading_by_window_fetches_less_and_finds_the_same_lives(tmp_path: Path) -> None:
    """Pairing by file name gives the same lives as reading every event, for any window."""
    rng = random.Random(7)
    ledger = Ledger(str(tmp_path))
    for _ in range(60):
        name = f"c{rng.randrange(12)}"  # names are reused
        start = T0 + hours(rng.uniform(0, 200))
        ledger.record_start(record(name, start=start, usd=rng.choice([0.5, 1.0, 3.0])))
        for _ in range(rng.choice([0, 1, 1, 2])):  # running, ended, or ended twice
            ledger.record_end(
                name, start + hours(rng.uniform(0, 30)), rng.choice(["down", "reaped"])
            )
    every = fold(ledger.events())
    paths = [str(p) for p in (tmp_path / "events").iterdir()]
    now = T0 + hours(260)
    for _ in range(40):
        since = T0 + hours(rng.uniform(-20, 240))
        until = since + hours(rng.uniform(0.5, 60))
        expected = in_window(every, since, until, now)
        assert ledger.read_lives(since, until, now) == expected
        assert len(relevant_paths(paths, since, until)) <= len(paths)
    narrow = relevant_paths(paths, T0 + hours(100), T0 + hours(101))
    assert len(narrow) < len(paths) / 2
