#!/usr/bin/env bash
# On a machine with a CUDA GPU: the GPU test subset and the benchmark table, installing nothing from the
# network (wheels for lark/sympy/jinja2/opt_einsum, if missing, are taken from ./wheels when present).
# Logs go under $OUT when it is set; the benchmark table is printed last. Budget: under 5 minutes.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d wheels ]; then
  "$PY" -m pip install -q --no-index --find-links wheels lark sympy jinja2 opt_einsum pytest >"$OUT/pip.log" 2>&1
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/pip.log" 2>&1 || export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
export MIRASC_CACHE=$OUT/cache
timeout 150 "$PY" -m pytest -q tests/test_triton.py -x >"$OUT/tests.log" 2>&1
echo "tests: $(tail -n 1 "$OUT/tests.log")"
for spec in mamba2 gated_deltanet; do
  timeout 40 "$PY" -m bench.ops --spec $spec --B 8 --T 4096 --H 16 --D 128 --dtype bf16 --no-recurrent \
    --no-titans --repeats 5 --warmup 2 --json "$OUT/ops_$spec.json" >"$OUT/ops_$spec.txt" 2>"$OUT/ops_$spec.err"
done
for spec in moneta yaad memora; do
  timeout 40 "$PY" -m bench.ops --spec $spec --B 8 --T 4096 --H 16 --D 64 --dtype bf16 --no-recurrent \
    --repeats 3 --warmup 1 --json "$OUT/ops_$spec.json" >"$OUT/ops_$spec.txt" 2>"$OUT/ops_$spec.err"
done
echo "== benchmark tables ($(head -n 2 "$OUT/gpu.txt" | tail -n 1))"
cat "$OUT"/ops_*.txt
