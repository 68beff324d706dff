#!/usr/bin/env bash
# Installs everything pinwatch needs on a Debian machine, idempotently: Java and Maven (for the
# local Kafka), Prometheus and Alertmanager, a virtualenv with pinwatch and its test extras, and
# the Kafka jars from Maven Central (cached in ~/.cache/pinwatch/kafka).
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m[install]\033[0m %s\n' "$*" >&2; }

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v prometheus-alertmanager >/dev/null || need+=(prometheus-alertmanager)
command -v amtool >/dev/null || need+=(prometheus-alertmanager)
if ((${#need[@]})); then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  say "Debian packages: ${need[*]}"
  $SUDO apt-get update -q >/dev/null
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    $(printf '%s\n' "${need[@]}" | sort -u) >/dev/null
  # The Debian packages start nothing without systemd, but make sure no packaged service holds
  # the ports pinwatch's own child processes will use.
  pkill -x prometheus 2>/dev/null || true
  pkill -x prometheus-alertmanager 2>/dev/null || true
fi

PY="${PINWATCH_BOOTSTRAP_PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  say "virtualenv .venv"
  "$PY" -m venv .venv
fi
stamp=.venv/.pinwatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  say "Python packages (pip install -e .[test])"
  .venv/bin/pip install -q -e ".[test]"
  touch "$stamp"
fi

say "Kafka jars"
.venv/bin/python -m devstack.localkafka fetch >/dev/null
say "ready"
