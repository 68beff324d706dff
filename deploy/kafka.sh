#!/usr/bin/env bash
# The local single-node Kafka: fetch | start | stop | run. Settings come from PINWATCH_* variables
# (PINWATCH_KAFKA_BOOTSTRAP, PINWATCH_DATA_DIR, PINWATCH_KAFKA_VERSION, ...).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PINWATCH_PYTHON:-.venv/bin/python}" -m devstack.localkafka "$@"
