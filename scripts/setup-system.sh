#!/usr/bin/env bash
# Installs the Debian packages the cluster runs on, only when missing. Idempotent and non-interactive.
set -euo pipefail

need=()
have() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/usr/bin/$1" ]; }
have nginx || need+=(nginx)
have redis-server || need+=(redis-server)
have redis-sentinel || need+=(redis-sentinel)  # REDIS_TOPOLOGY=sentinel
have wrk || need+=(wrk)
have chromium || need+=(chromium)  # the real browser the panel's tests drive (through Playwright)
[ -f /usr/share/javascript/chart.js/chart.min.js ] || [ -f /usr/share/javascript/chart.js/chart.umd.js ] \
  || need+=(libjs-chart.js)  # the panel's charts, served locally (no CDN)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || need+=(python3-venv)

[ ${#need[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "need root or sudo to install: ${need[*]}" >&2; exit 1; }
  sudo="sudo -n"
fi
echo "installing Debian packages: ${need[*]}"
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The packages start system-wide services on ports 80 and 6379; the cluster uses neither, so leave them be.
