#!/usr/bin/env bash
# Installs what memz needs (first time only), then runs memzd on the bundled
# model with this folder as its home. Extra arguments go to memzd.
set -euo pipefail
cd "$(dirname "$0")"
scripts/setup.sh
exec .venv/bin/memzd --home "${MEMZ_HOME:-$PWD}" "$@"
