# A stand-in for nginx:1.27-alpine from Debian bookworm's nginx-light: the `nginx` binary with the core
# modules the template uses (upstream, map, limit_req, limit_conn, proxy).
ARG BASE=scaleout/debian:bookworm
FROM ${BASE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends nginx-light \
    && rm -rf /var/lib/apt/lists/* \
    && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
CMD ["nginx", "-g", "daemon off;"]
