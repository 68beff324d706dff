#!/usr/bin/env bash
# The README's second command: install what the tests need, then run every test (the unit,
# integration and e2e tiers, against real Kafka, chDB, Prometheus and Alertmanager) and the linter.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh
.venv/bin/ruff check .
exec .venv/bin/python -m pytest -p no:cacheprovider "$@"
