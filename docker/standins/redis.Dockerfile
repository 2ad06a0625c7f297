# A stand-in for redis:7.0-alpine from Debian bookworm's redis-server (7.0): redis-server and redis-cli.
ARG BASE=scaleout/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools \
    && rm -rf /var/lib/apt/lists/*
CMD ["redis-server"]
