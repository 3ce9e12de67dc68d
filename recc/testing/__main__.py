"""``python -m recc.testing``: the test platform's command line.

``assets`` builds (or finds) the Kubernetes binaries the platform runs and prints their
directory (see :mod:`recc.testing.assets`).

``token --cluster-name NAME`` prints an ExecCredential with an EKS token for boto3's
credentials, as ``aws eks get-token`` does: the credential plugin of the served platform's
researcher and harvester kubeconfigs (``RECC_TESTING_RESEARCHER_KUBECONFIG``,
``RECC_TESTING_HARVESTER_KUBECONFIG``), so kubectl acts as they do.

``serve`` runs the emulated platform on loopback for other processes. It prints
``export NAME=value`` lines (moto's endpoint, fake credentials and region for boto3;
``DASK_RECC__*`` for RECC; ``KUBECONFIG`` and ``PATH`` for kubectl) once everything is up,
then runs until SIGTERM or SIGINT and stops every process it started. Its own output after the
exports goes nowhere (stdout is closed),
so a parent may read the exports through a pipe and close it; Dask processes log to files.

Example
-------
.. code-block:: console

    $ python -m recc.testing serve --port-file /tmp/recc-platform.env &
    $ while [ ! -s /tmp/recc-platform.env ]; do sleep 0.2; done
    $ . /tmp/recc-platform.env
    $ recc up --n-workers 2 && recc ls && kubectl get pods -A && recc down --all
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


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {name}={shlex.quote(value)}\n" for name, value in sorted(env.items()))


def serve(
    port_file: Path | None = None,
    region: str = "us-east-1",
    eks_cluster_name: str = "recc-emulated",
    state_dir: Path | None = None,
) -> int:
    """Run the served platform until SIGTERM/SIGINT; returns the exit status."""
    from recc.testing.platform import emulated_platform

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with emulated_platform(
        region=region, eks_cluster_name=eks_cluster_name, state_dir=state_dir
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


def token(cluster_name: str) -> int:
    """Print an ``ExecCredential`` (client.authentication.k8s.io/v1) for kubectl."""
    import datetime as dt
    import json

    import boto3

    from recc.kube.auth import eks_token

    # Short of EKS's 15 minutes: kubectl asks again before the server would refuse it.
    expires = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)
    credential = {
        "apiVersion": "client.authentication.k8s.io/v1",
        "kind": "ExecCredential",
        "status": {
            "token": eks_token(cluster_name, boto3.Session()),
            "expirationTimestamp": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        },
    }
    print(json.dumps(credential))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recc.testing", description="RECC's emulated platform for tests."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "assets", help="build or find the Kubernetes binaries; print their directory"
    )
    serve_parser = commands.add_parser(
        "serve",
        help="serve moto, a Kubernetes control plane with the dask-kubernetes operator, and "
        "the node agent on 127.0.0.1",
    )
    serve_parser.add_argument(
        "--port-file", type=Path, help="also write the export lines to this file (atomically)"
    )
    serve_parser.add_argument("--region", default="us-east-1")
    serve_parser.add_argument("--eks-cluster-name", default="recc-emulated")
    serve_parser.add_argument(
        "--state-dir", type=Path, help="RECC state directory to export (default: a temporary one)"
    )
    token_parser = commands.add_parser(
        "token", help="print an ExecCredential with an EKS token (as `aws eks get-token`)"
    )
    token_parser.add_argument("--cluster-name", required=True)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.command == "assets":
        from recc.testing.assets import AssetsError, ensure_assets

        try:
            paths = ensure_assets()
        except AssetsError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(paths["recc-kubelet"].parent)
        return 0
    if args.command == "token":
        return token(args.cluster_name)
    return serve(args.port_file, args.region, args.eks_cluster_name, args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
