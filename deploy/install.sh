#!/usr/bin/env bash
# Installs everything pinwatch needs on a Debian machine, idempotently: Java and Maven (for the
# local Kafka), Prometheus and Alertmanager, kubectl (renders deploy/k8s in the tests), a
# virtualenv with pinwatch, chDB and the test and development extras, and the Kafka jars from
# Maven Central (cached in ~/.cache/pinwatch/kafka).
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
# kubectl renders deploy/k8s in tests/integration/deploy/test_k8s.py (`kubectl kustomize`). Debian names the
# package kubernetes-client; a kubectl from elsewhere (a cloud SDK) is left alone.
command -v kubectl >/dev/null || need+=(kubernetes-client)
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
  say "Python packages (pip install -e .[test,chdb,dev])"
  .venv/bin/pip install -q -e ".[test,chdb,dev]"
  touch "$stamp"
fi

# deploy/k8s needs kustomize 5 (`labels`, `replacements`), which kubectl embeds from 1.27 on.
# Debian 12's kubernetes-client is 1.20 (kustomize 2): then the kustomize Go module is built
# once into ~/.cache/pinwatch/bin, where the tests look for it.
KUSTOMIZE_VERSION=v5.5.0
bin="$HOME/.cache/pinwatch/bin"
if ! kubectl version --client 2>/dev/null | grep -q "Kustomize Version: v5" \
  && [ ! -x "$bin/kustomize" ]; then
  command -v go >/dev/null || { say "kustomize 5 needs Go 1.22+ to build (or kubectl 1.27+)"; exit 1; }
  say "kustomize $KUSTOMIZE_VERSION (Go module)"
  GOBIN="$bin" go install "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
fi

say "Kafka jars"
.venv/bin/python -m devstack.localkafka fetch >/dev/null
say "ready"
