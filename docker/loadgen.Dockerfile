# The loadgen project image: `loadgen` (run, gateway, faultproxy, connect) and Locust with
# the scenarios.  Build context: the repository root (compose.yaml does this).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/loadgen
COPY pyproject.toml README.md ./
COPY loadgen ./loadgen
RUN pip install . && loadgen --version
# Locust scenarios are files, not part of the package.
COPY scenarios ./scenarios
COPY docker/faultproxy.json ./docker/faultproxy.json

# Tunnels are tun-less (no NET_ADMIN needed); one TCP connection per session wants many fds.
EXPOSE 8089 8443/tcp 8443/udp 8474 9101 9646
CMD ["loadgen", "--help"]
