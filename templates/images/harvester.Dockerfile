# The harvester's image: RECC and nothing else, run as a non-root user.
#
# Build from the repository root (the build context is the source tree):
#   docker build -f templates/images/harvester.Dockerfile -t registry.example.org/recc-harvester:0.1.0 .
# then set recc.eks.harvester-image (Terraform: harvester_image) to it and run
# `recc platform install`. Without it, the CronJob runs the Dask image and installs RECC at
# start (EXTRA_PIP_PACKAGES): slower, and it needs PyPI from inside the cluster.

FROM python:3.11-slim AS build
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
# tini reaps the port-forward threads' children and passes SIGTERM from the CronJob on.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
RUN useradd --uid 10001 --create-home --shell /usr/sbin/nologin harvester \
    && mkdir -p /var/lib/recc && chown harvester /var/lib/recc
USER 10001
ENV DASK_CONFIG=/etc/recc \
    DASK_RECC__STATE_DIR=/var/lib/recc \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["/usr/bin/tini", "--"]
# The CronJob passes these as its args (a dry run needs only: recc harvest --backend eks).
CMD ["recc", "harvest", "--backend", "eks", "--yes", "--json"]
