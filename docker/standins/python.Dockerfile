# A stand-in for python:3.11-slim, built from the machine's own Debian packages when the public registry
# cannot be reached (`make compose-up` builds it once). Debian bookworm's Python is 3.11.
ARG BASE=scaleout/debian:bookworm
FROM ${BASE}
# The host's CA bundle, so that pip in the project's build trusts what the host trusts.
COPY host-ca.crt /etc/ssl/host-ca.crt
ENV PIP_CERT=/etc/ssl/host-ca.crt SSL_CERT_FILE=/etc/ssl/host-ca.crt REQUESTS_CA_BUNDLE=/etc/ssl/host-ca.crt
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       python3 python3-pip python-is-python3 ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && rm -f /usr/lib/python3*/EXTERNALLY-MANAGED
CMD ["python3"]
