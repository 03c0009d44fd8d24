#!/usr/bin/env bash
# Installs the Debian binaries the tests and `make run` use, when they are missing.
# Needs root (or sudo) and apt; on a machine where that is impossible it says so and
# returns 0, and the tests that need the binaries skip with the reason (or fail under CI=true).
set -u
want=(redis-server:redis-server prometheus:prometheus promtool:prometheus
      docker-compose:docker-compose fdupes:fdupes jdupes:jdupes rdfind:rdfind rmlint:rmlint)
missing=()
for pair in "${want[@]}"; do
  bin=${pair%%:*}; pkg=${pair#*:}
  command -v "$bin" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && { echo "system deps: all present"; exit 0; }
pkgs=$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')
sudo=""
[ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1 && sudo="sudo -n"
if ! command -v apt-get >/dev/null 2>&1 || { [ "$(id -u)" -ne 0 ] && [ -z "$sudo" ]; }; then
  echo "system deps: cannot install ($pkgs): no apt-get or no root; tests that need them will skip" >&2
  exit 0
fi
echo "system deps: installing $pkgs"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >/dev/null && \
  $sudo apt-get install -y -qq --no-install-recommends $pkgs >/dev/null || {
  echo "system deps: apt-get failed for $pkgs; tests that need them will skip" >&2; exit 0; }
# Debian starts a system redis/prometheus on install; the tests start their own on free ports.
for svc in redis-server prometheus; do
  (command -v systemctl >/dev/null && $sudo systemctl stop "$svc") >/dev/null 2>&1 || true
  $sudo service "$svc" stop >/dev/null 2>&1 || true
done
echo "system deps: done"
