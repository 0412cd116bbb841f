#!/usr/bin/env bash
# Sets everything up (scripts/setup.sh), then runs the demo study. Arguments go to
# `workbench demo`, e.g. `bash scripts/demo.sh --spokes 2 --participants 6`.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/scripts/setup.sh"
cd "$REPO"
exec .venv/bin/workbench demo "$@"
