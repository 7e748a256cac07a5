"""Time a compiled spec's op, forward and forward+backward, side by side with the exact recurrence and titans-pytorch.

    python -m bench.ops [--spec moneta] [--B 2 --T 1024 --H 4 --D 32 --chunk 64] [--repeats 5 --warmup 2]
                        [--json [PATH]] [--csv [PATH]] [--no-recurrent] [--no-titans] [--autotune]
                        [--defaults-row]

Rows, all in this one process, on CUDA when it is available and on the CPU otherwise:
  mirasc (chunk C)       the compiled torch backend, op(q, k, v, gates=..., params=..., chunk_size=C)
  recurrent (exact)      op.recurrent(...): the per-token reference loop; warmed up once at T = C (the same code
                         paths), then timed once at the real T (it is slow)
  titans-pytorch         NeuralMemory on x [B, T, H*D] (retrieve + store), configured as close to the spec as
                         titans-pytorch allows (see titans_row); skipped with a note when it is not importable

Columns: median wall time of the forward (under torch.no_grad) and of forward+backward (backward of a fixed random
cotangent of the output to every input that has a gradient), the ratio of each fwd+bwd to the fastest fwd+bwd, and
peak memory: on CPU, the peak of bytes live in torch's CPU allocator during one fwd+bwd, counted from the
start of that run (torch.profiler with profile_memory=True, a separate untimed run); on CUDA,
torch.cuda.max_memory_allocated during one fwd+bwd minus what was allocated before it.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"


# ---------------------------------------------------------------------------------------------------- helpers
def resolve_spec(spec: str) -> Path:
    """A path to a .miras file, or the name of a prebuilt spec in models/."""
    path = Path(spec)
    if path.exists():
        return path
    path = ROOT / "models" / f"{spec}.miras"
    if not path.exists():
        raise SystemExit(f"bench.ops: no spec {spec!r} (neither a file nor models/{spec}.miras)")
    return path


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_ms(fn: Callable[[], object], repeats: int, warmup: int, device: torch.device) -> list[float]:
    for _ in range(warmup):
        fn()
    sync(device)
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append((time.perf_counter() - t0) * 1e3)
    return out


def peak_mib(fn: Callable[[], object], device: torch.device) -> float:
    """Peak bytes live in torch's allocator during one call of fn, above what was live when it started, in MiB."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        live += e.nbytes()
        peak = max(peak, live)
    return peak / 2**20


@contextlib.contextmanager
def _quiet_stderr():
    """Silence the profiler's start/stop lines and warnings, which kineto writes to file descriptor 2."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ---------------------------------------------------------------------------------------------------- inputs
def make_inputs(op, B: int, T: int, H: int, D: int, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """q, k, v [B, T, H, D], gates in natural units, params (mirasc.sample.random_inputs, as the tests use)."""
    from mirasc.sample import random_inputs

    return random_inputs(op, B, T, H, D, dtype, device, seed=seed)


# ---------------------------------------------------------------------------------------------------- rows
class Row:
    def __init__(self, name: str, fwd: Callable[[], object], fwdbwd: Callable[[], object], note: str = ""):
        self.name, self.fwd, self.fwdbwd, self.note = name, fwd, fwdbwd, note


def memory_op_row(name: str, call: Callable, inputs, seed: int = 1) -> Row:
    """fwd / fwd+bwd closures of call(q, k, v, gates, params) -> o, with gradients to q, k, v, gates and params."""
    q, k, v, gates, params = inputs
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    g_leaves = {n: x.detach().clone().requires_grad_(True) for n, x in gates.items()}
    p_leaves = {n: x.detach().clone().requires_grad_(True) for n, x in params.items()}
    every = leaves + list(g_leaves.values()) + list(p_leaves.values())
    gen = torch.Generator().manual_seed(seed)
    cot = torch.randn(q.shape, generator=gen, dtype=torch.float64).to(dtype=q.dtype, device=q.device)

    def fwd():
        with torch.no_grad():
            return call(q, k, v, gates, params)

    def fwdbwd():
        for x in every:
            x.grad = None
        o = call(*leaves, g_leaves, p_leaves)
        o.backward(cot)

    return Row(name, fwd, fwdbwd)


def mirasc_row(op, inputs, chunk: int) -> Row:
    def call(q, k, v, gates, params):
        return op(q, k, v, gates=gates, params=params, chunk_size=chunk)[0]

    return memory_op_row(f"mirasc torch (chunk {chunk})", call, inputs)


def triton_row(op, inputs, chunk: int) -> Row:
    def call(q, k, v, gates, params):
        return op(q, k, v, gates=gates, params=params, chunk_size=chunk)[0]

    return memory_op_row(f"mirasc triton (chunk {chunk})", call, inputs)


def autotuned_row(op, inputs, chunk: int, args, device, memory: bool, log) -> dict:
    """The Triton row again with autotuning on: the first fwd+bwd times each kernel's candidate configs; the row
    carries what was chosen (and every candidate's time) per kernel."""
    from mirasc.backends import tuning

    row = triton_row(op, inputs, chunk)
    row.name += ", autotuned"
    tuning.set_autotune(True)
    try:
        log(f"  {row.name}: first fwd+bwd (compiles and times every candidate config) ...")
        first_s = time_ms(row.fwdbwd, 1, 0, device)[0] / 1e3
        out = run_row(row, args.repeats, args.warmup, device, memory, log)
    finally:
        tuning.set_autotune(None)
    out["first_call_s"] = first_s
    out["note"] = f"first fwd+bwd {first_s:.1f} s (tunes every kernel; not in the times)"
    out["configs"] = [{"kernel": r["kernel"], "chosen": dataclasses.asdict(r["chosen"]),
                       "ms": {str(dataclasses.astuple(c)): round(t * 1e3, 4) for c, t in r["seconds"].items()}}
                      for r in tuning.tuned_configs()]
    return out


def guard_choices() -> list[dict]:
    """The kernels whose default config spilled on this GPU, what the spill guard chose instead and every
    candidate's stack bytes (mirasc.backends.tuning.spill_guard_choices), as JSON."""
    from mirasc.backends import tuning

    return [{"kernel": r["kernel"], "chosen": dataclasses.asdict(r["chosen"]),
             "stack_bytes": {str(dataclasses.astuple(c)): n for c, n in r["stack_bytes"].items()}}
            for r in tuning.spill_guard_choices()]


def defaults_row(op, inputs, chunk: int, args, device, memory: bool, log) -> dict:
    """The Triton row again with the spill guard off (MIRASC_SPILL_GUARD=0): every kernel at the launcher's default
    config, spills and all, to weigh the guard's choices."""
    row = triton_row(op, inputs, chunk)
    row.name += ", default configs (spill guard off)"
    before = os.environ.get("MIRASC_SPILL_GUARD")
    os.environ["MIRASC_SPILL_GUARD"] = "0"
    try:
        log(f"  {row.name}: first fwd+bwd (compiles the defaults not compiled yet) ...")
        time_ms(row.fwdbwd, 1, 0, device)
        out = run_row(row, args.repeats, args.warmup, device, memory, log)
    finally:
        if before is None:
            os.environ.pop("MIRASC_SPILL_GUARD")
        else:
            os.environ["MIRASC_SPILL_GUARD"] = before
    return out


def fla_row(spec_name: str, inputs, chunk: int) -> Row | None:
    """flash-linear-attention's kernel for the same job, when the spec has one (None otherwise)."""
    q, k, v, gates, _ = inputs
    if spec_name == "mamba2":
        from fla.ops.simple_gla import chunk_simple_gla

        def call(q, k, v, gates, params):  # the same function: g = log alpha
            return chunk_simple_gla(q, k, v, g=torch.log(gates["alpha"]), scale=1.0)[0]

        return memory_op_row("fla chunk_simple_gla", call, inputs)
    if spec_name == "gated_deltanet":
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule

        def call(q, k, v, gates, params):  # fla's exact delta rule: same job, different values
            return chunk_gated_delta_rule(q, k, v, g=torch.log(gates["alpha"]), beta=gates["eta"], scale=1.0)[0]

        return memory_op_row("fla chunk_gated_delta_rule", call, inputs)
    return None


def matmul_ceiling_tflops(device, dtype) -> float:
    """The card's measured dense matmul rate (4096^3, median of 10), the ceiling achieved TFLOP/s is read against."""
    n = 4096
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    times = time_ms(lambda: a @ b, 10, 3, device)
    return 2 * n**3 / (statistics.median(times) * 1e-3) / 1e12


def recurrent_row(op, inputs) -> Row:
    def call(q, k, v, gates, params):
        return op.recurrent(q, k, v, gates=gates, params=params, output_final_state=False)[0]

    return memory_op_row("recurrent (exact, per token)", call, inputs)


def _lp3_loss(pred, target):
    """Moneta's attentional bias ||M(k) - v||_3^3 (Eq. 10, p = 3), per token."""
    return (pred - target).abs().pow(3).sum(dim=-1)


def _l2_loss(pred, target):
    """||M(k) - v||_2^2 per token (titans-pytorch's default takes the mean over the dimension instead)."""
    return (pred - target).pow(2).sum(dim=-1)


# the spec's attentional bias, as a titans-pytorch store_memory_loss_fn (l2 for every spec not listed)
TITANS_LOSS = {"moneta": _lp3_loss}


def titans_row(op, B: int, T: int, H: int, D: int, chunk: int, dtype, device, seed: int = 2) -> Row:
    """titans-pytorch's NeuralMemory, as close to the spec as it allows.

    Mapping (spec -> NeuralMemory argument):
      heads H, head dim D        -> dim = H*D, heads = H, dim_head = D; input x [B, T, H*D]
      chunk C                    -> chunk_size = C (gradients summed over a chunk, one update per chunk) and
                                    batch_size = C (the memory weights are updated after every chunk, so each
                                    chunk's gradients are taken at that chunk's start weights, as mirasc's chunkwise
                                    form does; with batch_size=None every gradient would be taken at the initial
                                    weights, a different and cheaper algorithm)
      memory mlp(depth, expansion, gelu)
                                 -> model = MemoryMLP(dim = D, depth = depth, expansion_factor = expansion) (gelu)
      residual + layernorm       -> mem_model_norm_add_residual = True (x + LayerNorm(MLP(x)), the default)
      algorithm gd (no momentum) -> momentum = False (momentum = True for the spec's `momentum` algorithm)
      bias lp(3) (Moneta)        -> store_memory_loss_fn = sum |M(k) - v|^3 (TITANS_LOSS; l2 for other specs)
    What cannot be matched: titans-pytorch computes q, k, v, the step size and the decay from x itself (linear
    projections, RMSNorm, a retrieve gate and an output projection, all inside the timed row, a small share of the
    cost); its decay and step are one scalar per head and chunk (the spec's alpha and eta are per token and
    channel); it has no lq retention (Moneta's normalisation of the weights); and a token reads the weights at the
    end of the previous chunk, where mirasc reads the per-token in-chunk weights (the dual form).
    """
    from titans_pytorch import NeuralMemory
    from titans_pytorch.memory_models import MemoryMLP

    mem_meta = op.meta.memory
    depth = mem_meta.depth
    expansion = float(mem_meta.expansion)
    torch.manual_seed(seed)
    model = MemoryMLP(dim=D, depth=depth, expansion_factor=expansion)
    mem = NeuralMemory(
        dim=H * D,
        heads=H,
        dim_head=D,
        chunk_size=chunk,
        batch_size=chunk,
        model=model,
        momentum=op.meta.algorithm.name == "momentum",
        store_memory_loss_fn=TITANS_LOSS.get(op.name, _l2_loss),
        mem_model_norm_add_residual=bool(mem_meta.arguments.get("residual", False)),
    ).to(device=device, dtype=dtype)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)
    x_leaf = x.clone().requires_grad_(True)
    cot = torch.randn(B, T, H * D, generator=gen, dtype=torch.float64).to(dtype=dtype, device=device)

    def fwd():
        with torch.no_grad():
            return mem(x)[0]

    def fwdbwd():
        mem.zero_grad(set_to_none=True)
        x_leaf.grad = None
        out, _ = mem(x_leaf)
        out.backward(cot)

    import importlib.metadata as md

    return Row(f"titans-pytorch {md.version('titans-pytorch')}", fwd, fwdbwd,
               note="NeuralMemory(x [B, T, H*D]): projections + retrieve + store")


# ---------------------------------------------------------------------------------------------------- main
def run_row(row: Row, repeats: int, warmup: int, device, memory: bool, log) -> dict:
    log(f"  {row.name}: fwd ...")
    fwd = time_ms(row.fwd, repeats, warmup, device)
    log(f"  {row.name}: fwd+bwd ...")
    fb = time_ms(row.fwdbwd, repeats, warmup, device)
    peak = None
    if memory:
        log(f"  {row.name}: peak memory ...")
        peak = peak_mib(row.fwdbwd, device)
    return {"impl": row.name, "fwd_ms": statistics.median(fwd), "fwdbwd_ms": statistics.median(fb),
            "fwd_min_ms": min(fwd), "fwdbwd_min_ms": min(fb), "fwd_all_ms": fwd, "fwdbwd_all_ms": fb,
            "repeats": repeats, "warmup": warmup, "peak_mib": peak, "note": row.note}


def format_table(rows: list[dict], memory_label: str) -> str:
    head = ["impl", "fwd ms", "fwd+bwd ms", "x fastest fwd+bwd", f"peak MiB ({memory_label})", "runs"]
    lines = []
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        ratio = "-" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        lines.append([r["impl"], f"{r['fwd_ms']:.1f}", f"{r['fwdbwd_ms']:.1f}", ratio, peak,
                      f"{r['repeats']} (+{r['warmup']} warm-up)"])
    widths = [max(len(str(x)) for x in col) for col in zip(head, *lines)]

    def fmt(cells):
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep] + [fmt(x) for x in lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.ops", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="moneta", help="prebuilt spec name (models/NAME.miras) or a .miras path")
    ap.add_argument("--B", type=int, default=2)
    ap.add_argument("--T", type=int, default=1024)
    ap.add_argument("--H", type=int, default=4)
    ap.add_argument("--D", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs per row (median reported)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed runs before them")
    ap.add_argument("--recurrent-repeats", type=int, default=1, help="timed runs of the exact recurrence")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    ap.add_argument("--dtype", choices=["fp32", "fp64", "bf16"], default="fp32")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                    help="write the results as JSON (default path bench/results/ops_<spec>.json)")
    ap.add_argument("--csv", nargs="?", const="", default=None, metavar="PATH",
                    help="write the table as CSV (default path bench/results/ops_<spec>.csv)")
    ap.add_argument("--no-recurrent", action="store_true", help="skip the exact recurrence row")
    ap.add_argument("--no-titans", action="store_true", help="skip the titans-pytorch row")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    ap.add_argument("--no-factored", action="store_true",
                    help="always run the (C, C, D) chunk programs for channel-wise decay (op.use_factored(False))")
    ap.add_argument("--defaults-row", action="store_true",
                    help="on CUDA, add a row of the Triton kernels at the launcher's default configs, without the "
                         "spill guard's replacements for defaults that spill")
    ap.add_argument("--autotune", action="store_true",
                    help="on CUDA, add a row of the Triton kernels with their launch configs autotuned "
                         "(mirasc.backends.tuning; the first call times every candidate and is not in the times)")
    ap.add_argument("--torch-compile", action="store_true",
                    help="add a row with the chunk functions compiled by torch.compile (Inductor)")
    args = ap.parse_args(argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import mirasc

    torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16}[args.dtype]
    spec_path = resolve_spec(args.spec)
    op = mirasc.compile(str(spec_path), backend="torch").use_factored(not args.no_factored)
    B, T, H, D, C = args.B, args.T, args.H, args.D, args.chunk
    inputs = make_inputs(op, B, T, H, D, dtype, device)
    memory = not args.no_memory
    memory_label = ("CUDA max_memory_allocated above start, one fwd+bwd" if device.type == "cuda"
                    else "torch CPU allocator, live bytes above start, one fwd+bwd")
    load_before = load_average()
    log(f"bench.ops: {op.name} B={B} T={T} H={H} D={D} chunk={C} {args.dtype} on {device}, "
        f"{torch.get_num_threads()} threads")

    rows = [run_row(mirasc_row(op, inputs, C), args.repeats, args.warmup, device, memory, log)]
    skipped = []
    if args.torch_compile:
        log("  torch.compile of the chunk functions (the first calls compile; they are warm-up runs)")
        compiled = mirasc_row(op.compile_chunks(), inputs, C)
        compiled.name = f"mirasc torch + torch.compile (chunk {C})"
        compiled.note = "Inductor-compiled chunk functions; compile time excluded (warm-up runs)"
        rows.append(run_row(compiled, args.repeats, max(args.warmup, 2), device, memory, log))
    if device.type == "cuda":
        top = mirasc.compile(str(spec_path), backend="triton")
        trow = triton_row(top, inputs, C)
        log(f"  {trow.name}: first fwd+bwd (compiles every kernel) ...")
        first_s = time_ms(trow.fwdbwd, 1, 0, device)[0] / 1e3
        rows.insert(0, run_row(trow, args.repeats, args.warmup, device, memory, log))
        rows[0]["first_call_s"] = first_s
        rows[0]["note"] = f"first fwd+bwd {first_s:.1f} s (Triton compiles each kernel; not in the times)"
        rows[0]["spill_guard"] = guard_choices()
        if args.defaults_row:
            rows.insert(1, defaults_row(top, inputs, C, args, device, memory, log))
        if args.autotune:
            rows.insert(1, autotuned_row(top, inputs, C, args, device, memory, log))
        try:
            frow = fla_row(op.name, inputs, C)
        except ImportError as e:
            skipped.append(f"fla is not importable here ({e})")
            frow = None
        if frow is not None:
            rows.append(run_row(frow, args.repeats, args.warmup, device, memory, log))
        from mirasc.cost import op_flops

        f_fl, b_fl = op_flops(str(spec_path), B, T, H, D, C)
        ceiling = matmul_ceiling_tflops(device, dtype if dtype != torch.float64 else torch.float32)
        for r in rows:
            if r["impl"].startswith("mirasc"):
                r["tflops_fwdbwd"] = (f_fl + b_fl) / (r["fwdbwd_ms"] * 1e-3) / 1e12
                bytes_moved = sum(x.numel() * x.element_size() for x in (inputs[0], inputs[1], inputs[2],
                                                                          *inputs[3].values())) * 3
                r["gbs_fwdbwd"] = bytes_moved / (r["fwdbwd_ms"] * 1e-3) / 1e9
                r["note"] = (r["note"] + "; " if r["note"] else "") + (
                    f"contraction TFLOP/s {r['tflops_fwdbwd']:.2f} of a measured {ceiling:.0f} matmul ceiling, "
                    f"~{r['gbs_fwdbwd']:.0f} GB/s of q/k/v/gates traffic")

    if not args.no_recurrent:
        short = (inputs[0][:, :C], inputs[1][:, :C], inputs[2][:, :C],
                 {n: (x[:, :C] if x.dim() >= 3 and x.shape[1] == T else x) for n, x in inputs[3].items()}, inputs[4])
        warm = recurrent_row(op, short)
        log(f"  recurrent: warm-up at T={C}")
        warm.fwd()
        warm.fwdbwd()
        row = run_row(recurrent_row(op, inputs), args.recurrent_repeats, 0, device, memory, log)
        row["warmup"] = 0
        row["note"] = f"warmed up once at T={C}, then timed at T={T}"
        rows.append(row)

    if not args.no_titans:
        try:
            trow = titans_row(op, B, T, H, D, C, dtype, device)
        except ImportError as e:
            msg = f"titans-pytorch is not importable here ({e}); skipping its row (bash bench/setup.sh installs it)"
            print(msg)
            skipped.append(msg)
        else:
            rows.append(run_row(trow, args.repeats, args.warmup, device, memory, log))

    fastest = min(r["fwdbwd_ms"] for r in rows)
    for r in rows:
        r["ratio"] = r["fwdbwd_ms"] / fastest

    config = {"spec": op.name, "spec_path": str(spec_path), "B": B, "T": T, "H": H, "D": D, "chunk": C,
              "dtype": args.dtype, "device": str(device), "threads": torch.get_num_threads(),
              "torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or
              platform.machine(), "cpu_count": os.cpu_count(), "load_average_before": load_before,
              "load_average_after": load_average(), "memory": memory_label if memory else None}
    if device.type == "cuda":
        config["gpu"] = torch.cuda.get_device_name(device)

    print(f"{op.name}: B={B} T={T} H={H} D={D} chunk={C} {args.dtype}, {device}"
          f"{' (' + config['gpu'] + ')' if device.type == 'cuda' else ''}, torch {torch.__version__}, "
          f"{config['threads']} threads; median of the timed runs; load average before/after "
          f"{load_before} / {config['load_average_after']}")
    print(format_table(rows, "torch CPU allocator" if device.type == "cpu" else "CUDA allocator"))
    if memory:
        print(f"peak MiB: {memory_label}")
    busy = max((load_before or [0.0])[0], (config["load_average_after"] or [0.0])[0])  # 1-minute averages
    if device.type == "cpu" and busy > (os.cpu_count() or 1):
        print(f"warning: load average {busy} exceeds the {os.cpu_count()} CPUs: other processes share them and the "
              "times are inflated (multi-threaded torch ops suffer most; compare with --threads 1)")
    for r in rows:
        if r["note"]:
            print(f"  {r['impl']}: {r['note']}")

    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"ops_{op.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"config": config, "rows": rows, "skipped": skipped}, indent=2) + "\n")
        print(f"wrote {path}")
    if args.csv is not None:
        path = Path(args.csv) if args.csv else RESULTS / f"ops_{op.name}.csv"
        path.parent.mkdir(parents=True, exist_ok=True)
        keys = ["impl", "fwd_ms", "fwdbwd_ms", "ratio", "peak_mib", "fwd_min_ms", "fwdbwd_min_ms", "repeats",
                "warmup", "note"]
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["spec", "B", "T", "H", "D", "chunk", "dtype", "device"] + keys)
            w.writeheader()
            for r in rows:
                w.writerow({**{k: config[k] for k in ("B", "T", "H", "D", "chunk", "dtype", "device")},
                            "spec": op.name, **{k: r[k] for k in keys}})
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
