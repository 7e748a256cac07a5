#!/usr/bin/env bash
# The main job on its embedded default: set up if needed, then run it (extra arguments are passed on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m mirasc.demo "$@"
