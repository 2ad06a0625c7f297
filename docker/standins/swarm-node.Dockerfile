# A Swarm worker node on one machine: Debian's Docker engine in a container (`SWARM_NODES=3`). It runs with
# the few capabilities this kind of machine grants (not --privileged); its /var/lib/docker is a volume on the
# host's disk, so overlay2 works inside it (vfs, on the container's own layer, makes image roots that only
# root can enter: the services' uid cannot start). scaleout/lab/swarmnodes.py has the rest.
ARG BASE=scaleout/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends docker.io iptables ca-certificates \
    && rm -rf /var/lib/apt/lists/*
CMD ["dockerd", "--storage-driver=overlay2", "--host=unix:///var/run/docker.sock"]
