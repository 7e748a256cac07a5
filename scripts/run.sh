#!/usr/bin/env bash
# The main job on its embedded default (MQAR on the CPU): set up if needed, then run it (arguments pass on).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m mirasc.train.main_job "$@"
