#!/usr/bin/env bash
# The whole test suite: set up if needed, check the committed generated modules are fresh, run pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export MIRASC_CACHE=${MIRASC_CACHE:-$(mktemp -d)/mirasc-cache}
.venv/bin/mirasc check -q models/*.miras
.venv/bin/mirasc compile models/*.miras -o generated --check -q
.venv/bin/python -m pytest -q "$@"
