#!/usr/bin/env bash
# The README's first command: install what is missing, then run the local pipeline demo.
set -euo pipefail
cd "$(dirname "$0")/.."
deploy/install.sh
exec .venv/bin/pinwatch demo "$@"
