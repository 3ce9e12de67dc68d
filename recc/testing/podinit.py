"""The first process of a container the node agent runs: ``python -m recc.testing.podinit SPEC``.

Started by the agent inside a private mount namespace (``unshare --mount``), it makes the
container's view of the file system and then becomes the container's command (``exec``):

- the Pod's own ``/etc/hosts`` is mounted over the machine's (the agent keeps Service names in
  it: the stand-in for cluster DNS), and a ``/etc/resolv.conf`` whose only name server is
  loopback, where none answers: a name that is not a Service fails at once, as it would in a
  cluster without egress, instead of waiting for the machine's name servers;
- every volume is bind-mounted at its ``mountPath`` (read-only where the Pod says so). A
  ``mountPath`` that does not exist on this machine is made inside an overlay of its nearest
  existing parent directory, whose changes live in the Pod's directory: nothing outside the
  Pod's directory is ever written, and no other process sees these mounts.

``SPEC`` is a JSON file: ``{"hosts": path, "resolv": path,
"mounts": [[source, target, read_only], ...],
"argv": [...], "env": {...}, "cwd": path, "scratch": dir}``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True, text=True)


def _make_target(target: Path, is_file: bool, scratch: Path, overlaid: set[Path]) -> None:
    if target.exists():
        return
    parent = target.parent
    while not parent.exists():
        parent = parent.parent
    parent = parent.resolve()
    if parent not in overlaid and not any(parent.is_relative_to(o) for o in overlaid):
        if parent == Path("/"):
            raise RuntimeError(f"cannot make mount point {target}: its parent would be /")
        layer = scratch / f"overlay-{len(overlaid)}"
        (layer / "upper").mkdir(parents=True)
        (layer / "work").mkdir()
        _mount(
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={parent},upperdir={layer / 'upper'},workdir={layer / 'work'}",
            str(parent),
        )
        overlaid.add(parent)
    if is_file:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()
    else:
        target.mkdir(parents=True, exist_ok=True)


def main(spec_file: str) -> None:
    spec = json.loads(Path(spec_file).read_text())
    scratch = Path(spec["scratch"])
    overlaid: set[Path] = set()
    for source, target, read_only in spec["mounts"]:
        target_path = Path(target)
        _make_target(target_path, Path(source).is_file(), scratch, overlaid)
        _mount("--bind", source, target)
        if read_only:
            _mount("-o", "remount,bind,ro", target)
    # Last, so that no overlay made above for a mount point in /etc hides them.
    _mount("--bind", spec["hosts"], "/etc/hosts")
    _mount("--bind", spec["resolv"], "/etc/resolv.conf")
    os.chdir(spec.get("cwd") or "/")
    argv = spec["argv"]
    os.execvpe(argv[0], argv, spec["env"])


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except (OSError, RuntimeError, subprocess.CalledProcessError, KeyError, ValueError) as e:
        detail = getattr(e, "stderr", "") or ""
        print(
            f"recc.testing.podinit: cannot start the container: {e} {detail}".strip(),
            file=sys.stderr,
        )
        sys.exit(128)
