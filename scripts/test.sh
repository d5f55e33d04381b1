#!/usr/bin/env bash
# The README's test command: set up (idempotent) and run the default test suite
# (everything except tests marked slow or gpu).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -m "not slow and not gpu" -n 2 -q "$@"
