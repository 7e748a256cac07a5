#!/usr/bin/env bash
# The package as a new user gets it: build the wheel, install it (not editable) into a fresh venv, and from a
# folder outside the checkout run `mirasc check moneta`, `mirasc explain yaad`, a `mirasc.compile("memora")`
# forward and `mirasc train moneta --steps 2`. Called by .ci/run; needs the project's .venv (scripts/setup.sh)
# only to build the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
PY=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PIP=(--disable-pip-version-check -q)

# Build from a copy of the sources: the build writes build/ and mirasc.egg-info beside them.
mkdir -p "$WORK/src"
cp pyproject.toml README.md "$WORK/src/"
cp -r mirasc grammar templates models "$WORK/src/"
find "$WORK/src" -name __pycache__ -prune -exec rm -rf {} +
.venv/bin/python -m pip wheel "${PIP[@]}" --no-deps --no-build-isolation -w "$WORK/dist" "$WORK/src" 2>&1 \
  | grep -v "^WARNING: Location" || true
WHEEL=$(ls "$WORK"/dist/mirasc-*.whl)
echo "wheel_check: built $(basename "$WHEEL")"

# A fresh venv (no system site-packages). torch is pinned first, as scripts/setup.sh does, so that the
# unpinned `torch>=2.1` of the wheel's metadata is already satisfied by the CPU build and never pulls a CUDA one.
"$PY" -m venv "$WORK/venv"
V="$WORK/venv/bin"
"$V/python" -m pip install "${PIP[@]}" "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
"$V/python" -m pip install "${PIP[@]}" "$WHEEL[hf]" 2>&1 | grep -v "^WARNING: Location" || true

mkdir -p "$WORK/user"
cd "$WORK/user"
export MIRASC_CACHE="$WORK/user/cache"
site=$("$V/python" -c "import mirasc, os; print(os.path.dirname(mirasc.__file__))")
case "$site" in
  "$REPO"*) echo "wheel_check: mirasc was imported from the checkout ($site), not the wheel" >&2; exit 1 ;;
esac
"$V/mirasc" check moneta
"$V/mirasc" explain yaad > explain.txt
grep -q "update" explain.txt || { echo "wheel_check: mirasc explain yaad printed no update rule" >&2; exit 1; }
"$V/python" - <<'EOF'
import torch
import mirasc
op = mirasc.compile("memora")
B, T, H, D = 1, 40, 2, 8
gen = torch.Generator().manual_seed(0)
q, k, v = (torch.randn(B, T, H, D, generator=gen) for _ in range(3))
gates = {n: torch.rand(*s, generator=gen) * 0.5 + 0.25 for n, s in op.gate_shapes(B, T, H, D).items()}
o, state = op(q, k, v, gates=gates, output_final_state=True)
assert o.shape == (B, T, H, D) and bool(torch.isfinite(o).all()), "memora forward"
print(f"wheel_check: mirasc.compile('memora') forward ok, |o| = {float(o.norm()):.4f}")
EOF
"$V/mirasc" train moneta --steps 2 --batch-size 8 --seq-len 32 --kv-pairs 2 --hidden-size 16 --heads 2 --layers 1 \
  --eval-examples 8 --out run --quiet
test -s run/checkpoint.pt && test -s run/metrics.jsonl
"$V/mirasc" eval run --json --num-examples 8 | tail -n 1
echo "wheel_check: ok (wheel installed into a fresh venv, run from $(pwd))"
