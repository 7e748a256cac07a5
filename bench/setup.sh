#!/usr/bin/env bash
# Create (or refresh) the benchmark venv .venv-bench at the repo root: CPU torch 2.13.0, opt_einsum, numpy,
# psutil, pytest, mirasc (editable), titans-pytorch (the reference implementation the op benchmark compares with)
# and flash-linear-attention with triton 3.6.0 (its reference recurrences and kernels: bench.fla_reference).
# Idempotent: an existing venv is reused and pip only installs what is missing.
#
# torch is pinned to 2.13.0 (the CPU wheel on local disk; an unpinned resolve can pull a multi-GB CUDA build)
# and titans-pytorch is installed with the same pin as a constraint so that it can never replace torch.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv-bench
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
PIP="$VENV/bin/python -m pip"
CONSTRAINT=$(mktemp)
trap 'rm -f "$CONSTRAINT"' EXIT
echo "torch==2.13.0" > "$CONSTRAINT"

$PIP install --quiet "torch==2.13.0" "triton==3.6.0" opt_einsum numpy psutil pytest
$PIP install --quiet -c "$CONSTRAINT" -e .
$PIP install --quiet -c "$CONSTRAINT" titans-pytorch flash-linear-attention

"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
for name in ("torch", "triton", "opt_einsum", "numpy", "psutil", "mirasc", "titans-pytorch", "flash-linear-attention"):
    try:
        print(f"{name:16s} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name:16s} (not installed)")
PY
