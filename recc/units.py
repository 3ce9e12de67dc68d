"""Parsing and formatting of sizes, CPU amounts and durations given by users.

Every parser raises ``ValueError`` with a short reason; :mod:`recc.spec` turns that into a
:class:`~recc.errors.SpecError` that names the field and a valid example.

Every value is finite and bounded, so nothing downstream (planning, datetimes, ``int()``)
overflows: sizes are at least 1 byte and at most :data:`MAX_MEMORY` (32TiB, the largest EC2
instance), CPU amounts at least 1m and at most :data:`MAX_CPU` (1024 cores), durations more
than 0 and at most :data:`MAX_DURATION` (3650d, ten years).
"""

from __future__ import annotations

import math
import re

from dask.utils import parse_bytes, parse_timedelta

GiB = 2**30
MiB = 2**20
TiB = 2**40

MAX_MEMORY = 32 * TiB
MAX_CPU = 1024.0
MAX_DURATION = 3650 * 86400.0

_CPU_MILLI = re.compile(r"\s*(\d+)\s*m\s*")  # fullmatch
# dask's parsers read a missing number as 1 ("" -> 1 byte, "GiB" -> 1 GiB): demand one.
# A prefix test (match), not a validation.
_STARTS_WITH_NUMBER = re.compile(r"[-+]?\.?\d")


def parse_memory(value: object) -> int:
    """Bytes from ``"1.5GiB"``, ``"1536MiB"``, ``"2GB"`` or a bare number of GiB (``1.5``)."""
    if isinstance(value, bool):
        raise ValueError("expected a size, not a boolean")
    if isinstance(value, (int, float)):
        size = _finite(value) * GiB  # bare numbers are GiB: the unit users think in
    elif isinstance(value, str):
        text = value.strip()
        try:
            size = float(text) * GiB
        except ValueError:
            if not _STARTS_WITH_NUMBER.match(text):
                raise ValueError("not a size") from None
            try:
                size = float(parse_bytes(text))
            except (ValueError, KeyError) as e:
                raise ValueError("not a size") from e
            except OverflowError:  # "1e400GiB": parse_bytes's int(inf)
                size = math.inf
    else:
        raise ValueError(f"expected a size, got {type(value).__name__}")
    if not (math.isfinite(size) and 1 <= size <= MAX_MEMORY):
        raise ValueError(f"must be a positive size of at most {MAX_MEMORY // TiB}TiB")
    return int(size)


def _finite(value: float) -> float:
    """``float(value)``; inf for an int too large for a float (10**400), caught by the caller's
    bounds check."""
    try:
        return float(value)
    except OverflowError:
        return math.inf


def parse_cpu(value: object) -> float:
    """Cores from ``1``, ``0.5``, ``"2"`` or Kubernetes millicores ``"500m"``."""
    if isinstance(value, bool):
        raise ValueError("expected a number of cores, not a boolean")
    if isinstance(value, str) and (m := _CPU_MILLI.fullmatch(value)):
        cores = int(m.group(1)) / 1000
    else:
        try:
            cores = _finite(value)  # type: ignore[arg-type]
        except (TypeError, ValueError) as e:
            raise ValueError("not a number of cores") from e
    if not (math.isfinite(cores) and 0.001 <= cores <= MAX_CPU):
        raise ValueError(f"must be a number of cores from 1m to {MAX_CPU:g}")
    return cores


def parse_duration(value: object) -> float | None:
    """Seconds from ``"1h"``, ``"30m"``, ``"7d"`` or a number of seconds; None/"none" = never."""
    if value is None or (isinstance(value, str) and value.strip().lower() in {"none", "never"}):
        return None
    if isinstance(value, bool):
        raise ValueError("expected a duration, not a boolean")
    if isinstance(value, str) and not _STARTS_WITH_NUMBER.match(value.strip()):
        # parse_timedelta reads "h" as 1h and fails on "" with IndexError
        raise ValueError("not a duration")
    if isinstance(value, (int, float)):
        seconds = _finite(value)  # parse_timedelta would overflow on 10**400 or fail on nan
    else:
        try:
            seconds = float(parse_timedelta(value))  # type: ignore[arg-type]
        except (KeyError, ValueError, TypeError, AttributeError) as e:  # AttributeError: a list
            raise ValueError("not a duration") from e
        except OverflowError:  # "1e400s": parse_timedelta's int(inf)
            seconds = math.inf
    if not (math.isfinite(seconds) and 0 < seconds <= MAX_DURATION):
        raise ValueError(f"must be a positive duration of at most {format_duration(MAX_DURATION)}")
    return seconds


def seconds(value: object) -> float:
    """Seconds from ``"10s"``, ``"2m"`` or a number, zero allowed (e.g. a lease that has already
    run out); unlike :func:`parse_duration`, for settings rather than user specs."""
    return float(parse_timedelta(value, default="seconds"))  # type: ignore[arg-type]


def format_memory(size: int) -> str:
    """The shortest exact spelling of a size: ``"1.5GiB"``, ``"1000MiB"``, ``"123456B"``."""
    for unit, factor in (("GiB", GiB), ("MiB", MiB)):
        value = size / factor
        if value >= 1 and round(value, 3) == value:
            return f"{value:g}{unit}"
    return f"{size}B"


def format_duration(seconds: float | None) -> str:
    """``"1h"``, ``"90m"``, ``"45s"``; ``"never"`` for None."""
    if seconds is None:
        return "never"
    for unit, factor in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


def cpu_millis(cores: float) -> int:
    """Kubernetes millicores for a number of cores (rounded up: never under-request)."""
    return math.ceil(round(cores * 1000, 6))
