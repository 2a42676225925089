#!/usr/bin/env bash
# Installs what memz needs (first time only), then runs the test suite.
# Extra arguments go to pytest (e.g. ./test.sh -m "not slow").
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
