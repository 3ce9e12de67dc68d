"""Where the job reads and writes: checked before any cluster or output exists.

Locations are compared *canonically*: a local path absolute, with ``.``, ``..`` and symlinks
resolved (and also as spelled, made absolute, since an output replaces a symlink rather than
its target); a URL as ``scheme://bucket/key`` with empty and ``.`` segments dropped; a
``recc://`` key as every store it reads from (inputs) or writes to (outputs).

- **A group lists each file once.** ``x.parquet``, ``./x.parquet`` and a symlink to it are one
  file, which would otherwise be summed twice. A file may belong to several groups (each
  group's sum counts it once), and hard links are distinct files (the memory test and the
  benchmark's ``--copies`` list one file many times through them, on purpose).
- **The output directory holds no input.** It is not an input file, not the input directory,
  and not the directory that any input file or the manifest lives in. Outputs are exactly
  ``OUTPUT/<group>.parquet``, so this is what keeps every output path off every input path,
  whatever the group names; and a second run never reads what the first one wrote. An output
  directory inside or above the inputs' directories is fine (``--input /data/sims --output
  /data/sims/sums``).

>>> canonical("s3://bucket//sims/./a.parquet")
's3://bucket/sims/a.parquet'
>>> check_repeats({"g1": ["/data/x.parquet", "/data/./x.parquet"]})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
recc.jobs.manifest.ManifestError: groups, group 'g1': file='/data/./x.parquet' is the same ...
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO

from recc.datastore import SCHEME, DataStore
from recc.errors import SpecError
from recc.jobs.manifest import ManifestError


def _is_local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _local_path(url: str) -> str:
    return os.path.expanduser(url.removeprefix("file://"))


def canonical(url: str) -> str:
    """The one spelling of ``url`` that two locations of the same file share (see module docs).

    URLs keep ``..`` segments: object stores take them literally.
    """
    if _is_local(url):
        return os.path.realpath(_local_path(url))
    scheme, rest = url.split("://", 1)
    return f"{scheme}://" + "/".join(p for p in rest.split("/") if p not in ("", "."))


def _spellings(url: str) -> set[str]:
    """``url`` resolved, and (local paths) as spelled: both name what a write there replaces."""
    if _is_local(url):
        return {canonical(url), os.path.abspath(_local_path(url))}
    return {canonical(url)}


def _parent(location: str) -> str:
    if "://" in location:
        scheme, rest = location.split("://", 1)
        return f"{scheme}://{rest.rsplit('/', 1)[0]}" if "/" in rest else location
    return os.path.dirname(location)


def _places(store: DataStore, url: str, write: bool) -> list[str]:
    """The concrete locations ``url`` is read from (every read store) or written to."""
    if not url.startswith(SCHEME):
        return [url]
    if write:
        return store.targets(url)
    key = url[len(SCHEME) :]
    return [store.stores[name].join(key) for name in store.read]


def check_repeats(group_files: Mapping[str, Sequence[str]], source: str = "groups") -> None:
    """Refuse a group that lists one file twice (``ManifestError`` naming both entries)."""
    for group, files in group_files.items():
        seen: dict[str, str] = {}
        for entry in files:
            key = canonical(entry)
            if key in seen:
                first = seen[key]
                raise ManifestError(
                    f"{source}, group {group!r}: file={entry!r} is the same file as {first!r} "
                    f"(both {key}), so it would be summed twice; list each file once per group "
                    f"(for example: {first},{group})"
                )
            seen[key] = entry


def check_output(
    store: DataStore,
    output: str,
    inputs: Mapping[str, Sequence[str]],
    read: Iterable[str] = (),
    input_dir: str | None = None,
) -> None:
    """Refuse an output directory that holds inputs (``SpecError`` on ``output``).

    ``inputs`` are the groups' files, ``read`` other files the job reads (the manifest),
    ``input_dir`` the input directory; see the module docs for the rule.
    """
    outs = {s for target in _places(store, output, write=True) for s in _spellings(target)}
    example = f"--output {output.rstrip('/')}-sums"

    def refuse(problem: str) -> None:
        raise SpecError("output", output, f"{problem}; outputs are <output>/<group>.parquet, so "
                        "they could replace inputs and a second run would sum its own output. "
                        "Write the results to a directory that holds no input", example)

    if input_dir is not None:
        for place in _places(store, input_dir, write=False):
            if _spellings(place) & outs:
                refuse(f"is the input directory {input_dir}")
    entries = [(e, f" (group {g})") for g, files in inputs.items() for e in files]
    for entry, where in [*entries, *((e, "") for e in read)]:
        for place in _places(store, entry, write=False):
            spelled = _spellings(place)
            if spelled & outs:
                refuse(f"is the input file {entry}{where}")
            if {_parent(s) for s in spelled} & outs:
                refuse(f"is the directory that holds the input {entry}{where}")


def file_mode() -> int:
    """The mode a new file gets under this process's umask: ``0o666 & ~umask``."""
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    # Elsewhere only set-and-restore reads it; a file another thread creates meanwhile
    # gets the stricter 0o077, never a looser mode.
    mask = os.umask(0o077)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_output(store: DataStore, url: str, mode: int | None = None) -> Iterator[IO[bytes]]:
    """:meth:`DataStore.atomic_write` for the job's outputs, published with ``mode``.

    The datastore's temporary file is private (``mkstemp`` makes it 0o600) and keeps that mode
    when renamed into place; a job's output is data, not a secret, so it gets ``mode``
    (default :func:`file_mode`, what the user's umask gives any new file).
    """
    with store.atomic_write(url, file_mode() if mode is None else mode) as f:
        yield f
