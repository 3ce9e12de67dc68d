"""``python -m recc.testing serve``: the emulated platform, served on loopback for other processes.

Prints ``export NAME=value`` lines (moto's endpoint, fake credentials and region for boto3;
``DASK_RECC__*`` for RECC) once everything is up, then runs until SIGTERM or SIGINT and stops
every process it started. Its own output after the exports goes nowhere (stdout is closed),
so a parent may read the exports through a pipe and close it; Dask processes log to files.

Example
-------
.. code-block:: console

    $ python -m recc.testing serve --port-file /tmp/recc-platform.env &
    $ while [ ! -s /tmp/recc-platform.env ]; do sleep 0.2; done
    $ . /tmp/recc-platform.env
    $ recc up --n-workers 2 && recc ls && recc down --all
    $ kill %1
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from recc.testing.platform import emulated_platform


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def serve(
    port_file: Path | None = None,
    region: str = "us-east-1",
    eks_cluster_name: str = "recc-emulated",
    state_dir: Path | None = None,
) -> int:
    """Run the served platform until SIGTERM/SIGINT; returns the exit status."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with emulated_platform(
        region=region, eks_cluster_name=eks_cluster_name, state_dir=state_dir, serve_aws=True
    ) as platform:
        text = _exports(platform.environment())
        if port_file is not None:
            partial = port_file.with_name(port_file.name + ".partial")
            partial.write_text(text)
            partial.replace(port_file)  # readers never see half a file
        sys.stdout.write(text)
        sys.stdout.flush()
        # The reader may close the pipe now; nothing else must go to it (nor fail on it).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
        while not stop.wait(1.0):
            pass
        logging.getLogger(__name__).info("stopping the emulated platform")
    if port_file is not None:
        port_file.unlink(missing_ok=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recc.testing", description="RECC's emulated platform for tests."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve_parser = commands.add_parser(
        "serve",
        help="serve moto, the fake Kubernetes API and the emulated Dask operator on 127.0.0.1",
    )
    serve_parser.add_argument(
        "--port-file", type=Path, help="also write the export lines to this file (atomically)"
    )
    serve_parser.add_argument("--region", default="us-east-1")
    serve_parser.add_argument("--eks-cluster-name", default="recc-emulated")
    serve_parser.add_argument(
        "--state-dir", type=Path, help="RECC state directory to export (default: a temporary one)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    return serve(args.port_file, args.region, args.eks_cluster_name, args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
