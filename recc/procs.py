"""Detached Dask processes on this machine: start, check, stop, and their command lines.

Used by the local backend and by the emulated operator in recc.testing, so both start
schedulers and workers the same way. A process is identified by its pid and start time, so a
reused pid is never mistaken for it (and a zombie counts as gone).
"""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from recc.tls import TLSFiles

STOP_GRACE = 10.0


def spawn(args: list[str], log: Path, env: dict[str, str], cwd: Path) -> dict[str, Any]:
    """Start ``python -m *args`` detached: its own session and process group (so it outlives
    the caller and one signal reaches the nanny and its worker), no terminal, output to
    ``log``. Returns a reference for :func:`alive` and :func:`stop`."""
    return spawn_command([sys.executable, "-m", *args], log, env, cwd)


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """In a child before ``exec``: have the kernel send it ``sig`` when the thread that started
    it ends (Linux's PR_SET_PDEATHSIG; elsewhere nothing). For helpers that must never outlive
    what runs them, such as a test platform's servers when a test run is killed."""
    if sys.platform != "linux":
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG


def start_detached(
    argv: list[str],
    log: Path,
    env: dict[str, str],
    cwd: Path | None = None,
    tied: bool = False,
    tied_signal: int = signal.SIGTERM,
) -> subprocess.Popen[bytes]:
    """The one way RECC starts a process that must not hold its caller's terminal: its own
    session and process group, no stdin, stdout and stderr appended to ``log``. ``tied``: it
    gets ``tied_signal`` when the calling thread ends (:func:`die_with_parent`)."""
    tie = functools.partial(die_with_parent, tied_signal) if tied else None
    with open(log, "ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=env,
            cwd=cwd,
            preexec_fn=tie,
        )


def spawn_command(
    argv: list[str], log: Path, env: dict[str, str], cwd: Path, tied: bool = False
) -> dict[str, Any]:
    """Start the program ``argv`` detached, as :func:`spawn` does; ``tied=True`` ends it when
    the calling thread ends (:func:`die_with_parent`)."""
    process = start_detached(argv, log, env, cwd, tied)
    try:
        created = psutil.Process(process.pid).create_time()
    except psutil.NoSuchProcess:
        created = 0.0
    return {"pid": process.pid, "create_time": created}


def alive(ref: dict[str, Any]) -> bool:
    """Whether the referenced process still runs (not reused, not a zombie)."""
    try:
        proc = psutil.Process(ref["pid"])
        if abs(proc.create_time() - ref["create_time"]) > 1:
            return False
        if proc.status() == psutil.STATUS_ZOMBIE:
            _reap(ref["pid"])
            return False
        return True
    except psutil.NoSuchProcess:
        return False


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass  # not our child: init reaps it


def stop(refs: list[dict[str, Any]], grace: float = STOP_GRACE) -> None:
    """SIGTERM each process group, wait up to ``grace`` seconds, then SIGKILL what is left."""
    live = [r for r in refs if alive(r)]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for ref in live:
            try:
                os.killpg(ref["pid"], sig)
            except (ProcessLookupError, PermissionError):
                pass
        deadline = time.monotonic() + grace
        while live and time.monotonic() < deadline:
            live = [r for r in live if alive(r)]
            time.sleep(0.05)
        if not live:
            return


def tls_args(tls: TLSFiles) -> list[str]:
    """The dask CLI flags that make a scheduler or worker use ``tls``."""
    return [
        "--tls-ca-file",
        str(tls.ca_file),
        "--tls-cert",
        str(tls.cert_file),
        "--tls-key",
        str(tls.key_file),
    ]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, below the ephemeral range.

    The caller hands the port to a process that binds it a moment later. A port from the
    kernel's ephemeral range could meanwhile become the local end of any outgoing connection
    on the machine (a test suite makes thousands), and the scheduler would fail to start;
    ports below that range are only ever taken by an explicit bind.
    """
    low = _ephemeral_start()
    for _ in range(64):
        port = random.randrange(_LOWEST_PORT, low) if low - _LOWEST_PORT > 1000 else 0
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    with socket.socket() as probe:  # everything tried was taken: let the kernel choose
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


_LOWEST_PORT = 20000  # above the registered ports most services listen on


def _ephemeral_start() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the range is similar or higher


def scheduler_args(scheduler_file: Path, tls: TLSFiles, port: int = 0) -> list[str]:
    """A TLS-only scheduler on loopback (``port`` 0: any), writing its address to
    ``scheduler_file``."""
    return [
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--protocol",
        "tls",
        "--scheduler-file",
        str(scheduler_file),
        "--dashboard-address",
        "127.0.0.1:0",
        *tls_args(tls),
    ]
