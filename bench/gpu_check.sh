#!/usr/bin/env bash
# On a machine with a CUDA GPU (H100/H200): the Triton kernels' GPU tests, then fwd+bwd times beside fla and
# titans-pytorch, installing nothing from the network (packages missing there, fla and titans-pytorch included,
# are installed from ./wheels when that folder holds them; `pip download -d wheels ...` on a networked machine).
# Logs go under $OUT when it is set; the benchmark tables are printed last. Budget: 10 minutes in all, Triton's
# compilation included: each step has its own timeout, and the first fwd+bwd of each op (which compiles every
# kernel) is timed apart from the measured runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
if [ -d wheels ]; then
  for pkg in lark sympy jinja2 opt_einsum pytest numpy flash-linear-attention titans-pytorch; do
    "$PY" -m pip install -q --no-index --find-links wheels "$pkg" >>"$OUT/pip.log" 2>&1 || echo "no wheel: $pkg"
  done
fi
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >>"$OUT/pip.log" 2>&1 || export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
export MIRASC_CACHE=$OUT/cache TRITON_CACHE_DIR=$OUT/triton-cache

# bf16 inputs against the fp32 torch backend, and fp64 against fp64, natively on the GPU (tests/test_triton.py)
timeout 200 "$PY" -m pytest -q tests/test_triton.py -k "bf16_on_gpu or (float64 and (mamba2 or gated_deltanet \
or moneta))" >"$OUT/tests.log" 2>&1
echo "tests: $(tail -n 1 "$OUT/tests.log")"

bench() {  # spec, head dim, timeout (s), extra bench.ops flags
  timeout "$3" "$PY" -m bench.ops --spec "$1" --B 8 --T 4096 --H 16 --D "$2" --dtype bf16 --no-recurrent \
    --repeats 5 --warmup 2 "${@:4}" --json "$OUT/ops_$1.json" >"$OUT/ops_$1.txt" 2>"$OUT/ops_$1.err" \
    || echo "bench $1: exit $? (timeout $3 s?), see $OUT/ops_$1.err"
}
# the linear specs also with autotuned launch configs (--autotune: a second Triton row, and the configs each kernel
# chose in the JSON), to weigh tuning against the launcher's defaults; --defaults-row: a row at the default configs
# without the spill guard's replacements (the JSON's "spill_guard" lists them, with every candidate's stack bytes)
bench mamba2 128 100 --no-titans --autotune          # beside fla chunk_simple_gla; goal: within 1.25x of it
bench gated_deltanet 128 100 --no-titans --autotune --defaults-row  # beside fla chunk_gated_delta_rule
bench moneta 64 200 --defaults-row       # beside titans-pytorch; goal: at least 10x faster
echo "== benchmark tables ($(tail -n 1 "$OUT/gpu.txt"))"
cat "$OUT"/ops_*.txt
