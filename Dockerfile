# edge: DNS server and reverse proxy for Docker Swarm, in one Twisted program.
#
#   docker build -t edge .
#
# BASE is any Debian-like image with Python 3.11+ and its venv module; the
# default is the official slim image.  Where no registry can be reached, make
# a base locally (debootstrap + docker import, see tests/testbed/image.sh) and
# pass WHEELS, a directory in the build context holding edge's wheel and all
# its dependencies, so nothing is downloaded during the build:
#
#   pip wheel . -w ctx/wheels && cp Dockerfile ctx/ &&
#   docker build --build-arg BASE=my/python:3.11 --build-arg WHEELS=wheels ctx
#
# Every dependency ships manylinux wheels for amd64 and arm64 (httptools,
# cryptography, bcrypt, cffi and zope.interface are the compiled ones), so
# neither stage needs a compiler; the final stage copies only the virtualenv.
# The image takes its base's architecture: an arm64 BASE (or buildx
# --platform linux/arm64) with aarch64 wheels in WHEELS gives the arm64
# image, its RUN steps under qemu-user-static on an x86 machine
# (README.md, "The image, for amd64 and arm64"; tests/testbed/image.sh).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
ARG WHEELS=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_ROOT_USER_ACTION=ignore
COPY . /src
# Then drop what only installing needs (pip, setuptools) and the libraries
# own test suites (~30 MB); the last step checks that twistd still finds the
# plugin, and writes its dropin.cache.
RUN python3 -m venv /opt/edge \
 && if [ -n "$WHEELS" ]; then \
        /opt/edge/bin/pip install --no-index --find-links "/src/$WHEELS" edge; \
    else \
        /opt/edge/bin/pip install /src; \
    fi \
 && /opt/edge/bin/pip uninstall -q -y setuptools pip \
 && find /opt/edge/lib -depth -type d \( -name test -o -name tests \) -exec rm -rf {} + \
 && /opt/edge/bin/twistd edge --version

FROM ${BASE}
ARG VERSION=0.1.0
ARG REVISION=""
LABEL org.opencontainers.image.title="edge" \
      org.opencontainers.image.description="DNS server and reverse proxy for Docker Swarm (replaces dnsmasq + Traefik)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.documentation="docs/getting-started.md"
COPY --from=build /opt/edge /opt/edge
ENV PATH=/opt/edge/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    EDGE_HEALTHCHECK_URL=http://127.0.0.1:8081/healthz
# Relative paths in the config ([tls] state_dir = "state") land here.
WORKDIR /var/lib/edge
EXPOSE 80/tcp 443/tcp 53/tcp 53/udp
# twistd stops the service tree on SIGTERM and waits for requests in flight
# ([http] shutdown_grace); give the container a longer stop timeout than that.
STOPSIGNAL SIGTERM
# The check is a fresh Python that imports edge.admin (Twisted web with it):
# 0.5-0.9 s on an x86 core here, 3-11 s for the arm64 image under qemu on a
# loaded machine, and slow ARM boards sit in between. A timeout shorter than
# that start-up marks a working edge unhealthy and swarm restarts it.
HEALTHCHECK --interval=10s --timeout=15s --start-period=30s --retries=3 \
    CMD ["python3", "-m", "edge.admin.healthcheck"]
ENTRYPOINT ["twistd", "--nodaemon", "--pidfile=", "edge"]
# Without a config file: the standard ports on every interface.  A stack
# passes `--config /etc/edge/edge.toml` instead (config/edge-stack.yml).
CMD ["--http", "tcp:80", "--https", "tcp:443", "--dns-port", "53", "--dns-interface", "0.0.0.0"]
