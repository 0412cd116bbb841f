#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the whole test suite: lint, types, tests.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k catalog`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
echo "[test] ruff" >&2
.venv/bin/ruff check workbench tests bench studies
.venv/bin/ruff format --check workbench tests bench
echo "[test] mypy" >&2
.venv/bin/mypy
echo "[test] pytest" >&2
set +e
.venv/bin/pytest "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "[test] pytest collected no tests: that is a failure" >&2
    exit 1
fi
exit "$status"
