"""Sizes, CPU amounts and durations as users write them, and back again."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from recc.units import (
    MAX_CPU,
    MAX_DURATION,
    MAX_MEMORY,
    GiB,
    MiB,
    cpu_millis,
    format_duration,
    format_memory,
    parse_cpu,
    parse_duration,
    parse_memory,
)


@pytest.mark.parametrize(
    "given, size",
    [
        ("1.5GiB", 1536 * MiB),
        ("1536MiB", 1536 * MiB),
        (1.5, 1536 * MiB),  # a bare number is GiB, the unit users think in
        ("1.5", 1536 * MiB),
        (2, 2 * GiB),
        ("1.5 GiB", 1536 * MiB),
        ("1.5gib", 1536 * MiB),
        (".5GiB", 512 * MiB),
        ("2GB", 2_000_000_000),  # decimal units stay decimal
        ("10kB", 10_000),
        ("56GiB", 56 * GiB),
    ],
)
def test_parse_memory_accepts_the_spellings_users_write(given: object, size: int) -> None:
    assert parse_memory(given) == size


@pytest.mark.parametrize(
    "bad",
    ["", "   ", "GiB", "abc", "1.5XB", "-1GiB", "0", 0, -2, "inf", "nan", True, None, [1.5],
     "1e400GiB", "1e400", 10**400, 1e300, float("nan"), "33TiB", "0.5B"],
    ids=lambda v: repr(v)[:30],
)
def test_parse_memory_rejects_what_is_not_a_positive_size(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_memory(bad)


@pytest.mark.parametrize(
    "given, cores",
    [
        (1, 1.0),
        (0.5, 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("500m", 0.5),
        (" 250m ", 0.25),
        ("1000m", 1.0),
    ],
)
def test_parse_cpu_accepts_cores_and_millicores(given: object, cores: float) -> None:
    assert parse_cpu(given) == cores


@pytest.mark.parametrize(
    "bad",
    ["", "abc", "1.5m", "0m", 0, -1, "-1", float("inf"), True, None, "1 core",
     float("nan"), "nan", 10**400, "1" + "0" * 400, "1e400", 1025, "0.0001"],
    ids=lambda v: repr(v)[:30],
)
def test_parse_cpu_rejects_what_is_not_a_positive_number_of_cores(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_cpu(bad)


@pytest.mark.parametrize(
    "given, seconds",
    [
        ("1h", 3600.0),
        ("30m", 1800.0),
        ("7d", 604800.0),
        ("90s", 90.0),
        ("1.5h", 5400.0),
        (45, 45.0),
        (2.5, 2.5),
        (dt.timedelta(hours=2), 7200.0),
        (" 30m", 1800.0),
    ],
)
def test_parse_duration_accepts_units_and_seconds(given: object, seconds: float) -> None:
    assert parse_duration(given) == seconds


@pytest.mark.parametrize("never", [None, "never", "Never", " none "])
def test_parse_duration_reads_never_as_none(never: object) -> None:
    assert parse_duration(never) is None


@pytest.mark.parametrize(
    "bad",
    ["", " ", "h", "abc", "soon", "-1h", "0s", 0, -5, "inf", "nan", True, [1], {},
     "1e400s", "1e400", 10**400, 1e300, float("nan"), float("inf"), "3651d"],
    ids=lambda v: repr(v)[:30],
)
def test_parse_duration_rejects_what_is_not_a_positive_duration(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


@pytest.mark.parametrize(
    "size, text",
    [
        (1536 * MiB, "1.5GiB"),
        (2 * GiB, "2GiB"),
        (1000 * MiB, "1000MiB"),
        (123456, "123456B"),
        (int(1.001 * GiB), f"{int(1.001 * GiB)}B"),
    ],
)
def test_format_memory_is_exact_and_parses_back(size: int, text: str) -> None:
    assert format_memory(size) == text
    assert parse_memory(text) == size


@pytest.mark.parametrize(
    "seconds, text",
    [
        (None, "never"),
        (3600.0, "1h"),
        (5400.0, "90m"),
        (86400.0, "1d"),
        (45.0, "45s"),
        (90.5, "90.5s"),
    ],
)
def test_format_duration_is_exact_and_parses_back(seconds: float | None, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "cores, millis", [(1, 1000), (0.5, 500), (0.1 + 0.2, 300), (1 / 3, 334), (0.0011, 2)]
)
def test_cpu_millis_rounds_up_but_ignores_float_noise(cores: float, millis: int) -> None:
    # 0.1 + 0.2 is 0.30000000000000004: that must be 300m, not 301m; a real third is 334m
    # because requests are never rounded below what was asked.
    assert cpu_millis(cores) == millis


def test_the_bounds_themselves_are_accepted() -> None:
    assert parse_memory("32TiB") == MAX_MEMORY
    assert parse_cpu(MAX_CPU) == MAX_CPU and parse_cpu("1m") == 0.001
    assert parse_duration("3650d") == MAX_DURATION


@pytest.mark.parametrize(
    "parse, value, words",
    [
        (parse_memory, "1e400GiB", "at most 32TiB"),
        (parse_cpu, 10**400, "from 1m to 1024"),
        (parse_duration, "1e400s", "at most 3650d"),
    ],
)
def test_out_of_bounds_errors_state_the_bound(parse: Any, value: object, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse(value)
