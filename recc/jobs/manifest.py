"""The manifest: which file belongs to which group (``manifest.csv``, columns ``file,group``).

``file`` is relative to the manifest's directory (or an absolute path / URL). A row with an
empty ``file`` declares a group with no files, so empty groups survive a round trip.

>>> groups = parse_manifest("file,group\\na.parquet,g1\\nb.parquet,g1\\n,g2\\n", "/data")
>>> groups["g1"], groups["g2"]
(['/data/a.parquet', '/data/b.parquet'], [])
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping, Sequence

from recc.errors import RECCError

MANIFEST_NAME = "manifest.csv"
# Group names become output file names: keep them to characters every store accepts.
_GROUP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=-]{0,199}")


class ManifestError(RECCError, ValueError):
    """The manifest cannot be read or names an invalid group."""


def check_group_name(group: str, where: str = "group") -> str:
    """``group`` if it is usable as an output file name, else a ManifestError saying why."""
    if not _GROUP_NAME.fullmatch(group):
        raise ManifestError(
            f"{where}={group!r}: a group name becomes <output>/<group>.parquet, so it must "
            "start with a letter or digit and use only letters, digits and . _ = - "
            "(for example: portfolio-042)"
        )
    return group


def is_absolute(location: str) -> bool:
    """Whether ``location`` is an absolute path or a URL (not relative to the manifest)."""
    return location.startswith("/") or "://" in location


def parse_manifest(text: str, base: str, source: str = MANIFEST_NAME) -> dict[str, list[str]]:
    """Groups and their file locations, in manifest order; relative files resolved on ``base``."""
    reader = csv.DictReader(io.StringIO(text))
    if reader.fieldnames is None or not {"file", "group"} <= set(reader.fieldnames):
        raise ManifestError(
            f"{source}: needs a header with columns file,group (found "
            f"{','.join(reader.fieldnames or []) or 'nothing'}); for example:\n"
            "file,group\npart-00000.parquet,portfolio-1"
        )
    groups: dict[str, list[str]] = {}
    for line, row in enumerate(reader, start=2):
        group = (row.get("group") or "").strip()
        file = (row.get("file") or "").strip()
        if not group:
            raise ManifestError(f"{source} line {line}: the group is empty (file={file!r})")
        check_group_name(group, f"{source} line {line}: group")
        files = groups.setdefault(group, [])
        if file:
            files.append(file if is_absolute(file) else f"{base.rstrip('/')}/{file}")
    return groups


def format_manifest(groups: Mapping[str, Sequence[str]]) -> str:
    """CSV text for ``groups`` (files as given, usually relative); empty groups get a row."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["file", "group"])
    for group, files in groups.items():
        check_group_name(group)
        for file in files:
            writer.writerow([file, group])
        if not files:
            writer.writerow(["", group])
    return out.getvalue()
