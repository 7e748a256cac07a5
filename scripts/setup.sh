#!/usr/bin/env bash
# Create .venv (once) with the CPU build of torch and mirasc installed editable with its test extras.
# torch==2.13.0 is pinned here, not in pyproject.toml: on this machine kind it is a CPU wheel on local disk,
# while a range would pull a multi-GB CUDA build. Users who bring their own torch keep it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.mirasc-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  # triton 3.6.0 matches the lent GPU machines; on a CPU-only machine the tests run its interpreter
  .venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0" "triton==3.6.0" 2>&1 \
    | grep -v "^WARNING: Location" || true
  .venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,hf,train]" 2>&1 | grep -v "^WARNING: Location" || true
  .venv/bin/python -c "import torch, triton, mirasc, lark, sympy, jinja2, opt_einsum, transformers, matplotlib, xdist" >/dev/null
  touch "$stamp"
fi
