"""mirasc's Triton kernels beside flash-linear-attention's, compiled ahead of time for the same GPU and sizes.

    python -m bench.aot [--arch 90] [--head-dim 64] [--chunk-size 64] [--dtype bf16] [--json]

Rows: every kernel of mirasc's mamba2, gated_deltanet, a channel-decay linear spec (bench/specs/gla.miras) and
ttt_linear, then fla's kernels of the matching ops (chunk_simple_gla, chunk_gated_delta_rule, chunk_gla,
chunk_ttt_linear; fla's TTT takes a chunk of 16 by default, so compare at --chunk-size 16 too), each compiled with
`triton.compile` for sm_90a (or sm_80) on this CPU: compile seconds, registers, stack bytes per thread
(spills), shared memory, tensor-core instructions. fla must be importable (.venv-bench, `bash bench/setup.sh`);
without it only mirasc's rows print.

fla's kernels take many constexprs; they are filled from the sizes (H, K, V, BT, BK, BV, BC), the op's gating
(USE_G, USE_GK, ...) and the first config of any autotune wrapper. A kernel whose signature needs something not
covered here is reported as not compiled, with the name it lacked.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

from mirasc.aot import (
    KernelReport,
    _cuobjdump,
    aot_report,
    as_json,
    compile_in_child,
    format_rows,
    replicated_dots,
)

SPECS = [("mamba2", "mamba2"), ("gated_deltanet", "gated_deltanet"),
         ("gla (channel decay)", str(Path(__file__).parent / "specs" / "gla.miras")), ("ttt_linear", "ttt_linear")]

# fla kernels per op: (module, kernel, constexpr overrides)
FLA = {
    "chunk_simple_gla": [("fla.ops.common.chunk_h", "chunk_fwd_kernel_h", {"USE_G": True}),
                         ("fla.ops.common.chunk_o", "chunk_fwd_kernel_o", {"USE_G": True}),
                         ("fla.ops.common.chunk_h", "chunk_bwd_kernel_dh", {"USE_G": True}),
                         ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dqkwg", {"USE_G": True}),
                         ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dv", {"USE_G": True})],
    "chunk_gated_delta_rule": [
        ("fla.ops.gated_delta_rule.chunk_fwd", "chunk_gated_delta_rule_fwd_kkt_solve_kernel", {"USE_G": True}),
        ("fla.ops.gated_delta_rule.wy_fast", "recompute_w_u_fwd_kernel", {"USE_G": True}),
        ("fla.ops.common.chunk_delta_h", "chunk_gated_delta_rule_fwd_kernel_h_blockdim64", {"USE_G": True}),
        ("fla.ops.common.chunk_o", "chunk_fwd_kernel_o", {"USE_G": True}),
        ("fla.ops.common.chunk_delta_h", "chunk_gated_delta_rule_bwd_kernel_dhu_blockdim64", {"USE_G": True}),
        ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dqkwg", {"USE_G": True, "USE_DW": True}),
        ("fla.ops.common.chunk_o", "chunk_bwd_kernel_dv_local", {"USE_G": True}),
        ("fla.ops.gated_delta_rule.wy_fast", "prepare_wy_repr_bwd_kernel", {"USE_G": True})],
    "chunk_gla": [("fla.ops.gla.chunk", "chunk_gla_fwd_A_kernel_intra_sub_inter", {}),
                  ("fla.ops.gla.chunk", "chunk_gla_fwd_A_kernel_intra_sub_intra", {}),
                  ("fla.ops.common.chunk_h", "chunk_fwd_kernel_h", {"USE_GK": True}),
                  ("fla.ops.gla.chunk", "chunk_gla_fwd_kernel_o", {}),
                  ("fla.ops.common.chunk_h", "chunk_bwd_kernel_dh", {"USE_GK": True}),
                  ("fla.ops.gla.chunk", "chunk_gla_bwd_kernel_intra", {}),
                  ("fla.ops.gla.chunk", "chunk_gla_bwd_kernel_dA", {}),
                  ("fla.ops.gla.chunk", "chunk_gla_bwd_kernel_dv", {}),
                  ("fla.ops.gla.chunk", "chunk_gla_bwd_kernel_inter", {})],
    "chunk_ttt_linear": [("fla.ops.ttt.chunk", kernel, {"USE_INITIAL_STATE_B": True, "STORE_FINAL_STATE_B": True,
                                                         "USE_FINAL_STATE_GRADIENT_B": True,
                                                         "STORE_INITIAL_STATE_GRADIENT_B": True})
                         for kernel in ("chunk_ttt_linear_fwd_kernel_h", "chunk_ttt_linear_fwd_kernel_o",
                                        "chunk_ttt_linear_bwd_kernel_h", "chunk_ttt_linear_bwd_kernel_dv_local",
                                        "chunk_ttt_linear_bwd_kernel_norm", "chunk_bwd_kernel_dqke")],
}
FP32_POINTERS = {"g", "gk", "gv", "g_cumsum", "h0", "ht", "dh0", "dht", "dg", "dgk", "dgv", "A", "Aw", "Au", "Ai",
                 "dA", "Akk", "dAkk"}
INT_POINTERS = {"cu_seqlens", "chunk_indices", "chunk_offsets", "split_indices", "split_offsets"}
SCALARS = {"T": "i32", "NT": "i32", "B": "i32", "scale": "fp32", "eps": "fp32"}
TOKENS = 4096  # the sequence length of bench/gpu_check.sh, for a kernel that takes its chunk count as a constexpr


def _fla_constexprs(D: int, C: int, heads: int = 16) -> dict:
    block = min(64, D)
    return {"H": heads, "HV": heads, "HQ": heads, "B": 8, "USE_GRAPH": False,
            "K": D, "V": D, "BT": C, "BK": block, "BV": block, "BC": 16, "BS": 16,
            "NC": C // 16, "NT": TOKENS // C, "USE_G": False, "USE_GK": False, "USE_GV": False, "USE_G_GAMMA": False,
            "USE_INITIAL_STATE": True, "STORE_FINAL_STATE": True, "USE_FINAL_STATE_GRADIENT": True,
            "SAVE_NEW_VALUE": True, "STATE_V_FIRST": False, "IS_VARLEN": False, "USE_EXP2": False,
            "STORE_INITIAL_STATE_GRADIENT": True, "USE_QK_L2NORM_IN_KERNEL": False, "IS_BETA_HEADWISE": True,
            "CHECK": False, "USE_A": True}


def _compile_fla(module: str, kernel: str, consts: dict, dtype: str, arch: int, queue) -> None:
    os.environ.pop("TRITON_INTERPRET", None)
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"
    try:
        import importlib

        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
        from triton.runtime.jit import JITFunction

        fn = getattr(importlib.import_module(module), kernel)
        values, warps, stages = dict(consts), 4, None
        while not isinstance(fn, JITFunction):  # autotune / heuristics wrappers: one config of 4 warps
            if getattr(fn, "configs", None):
                # the first config may have 1 or 2 warps (capped near 32 registers a thread: spills that
                # fla's autotuner would never choose on a GPU); 4 warps is the common choice on an H100
                config = next((c for c in fn.configs if c.num_warps == 4), fn.configs[0])
                values = {**values, **config.kwargs}  # the tuned block sizes win
                warps, stages = config.num_warps, config.num_stages
            fn = fn.fn
        signature, constexprs = {}, {}
        for j, arg in enumerate(fn.arg_names):
            if fn.params[j].is_constexpr:
                if arg not in values:
                    raise KeyError(f"no value for the constexpr {arg}")
                signature[arg], constexprs[arg] = "constexpr", values[arg]
            elif arg in SCALARS:
                signature[arg] = SCALARS[arg]
            elif arg in INT_POINTERS:
                signature[arg] = "*i32"
            else:
                signature[arg] = "*fp32" if arg in FP32_POINTERS else "*" + dtype
        options = {"num_warps": warps, **({"num_stages": stages} if stages else {})}
        t0 = time.time()
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32), options=options)
        seconds = time.time() - t0
        usage, sass = _cuobjdump(compiled.asm["cubin"])
        lines = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", ln)]

        def field_of(name: str) -> int | None:
            m = re.search(rf"\b{name}:(\d+)", usage)
            return int(m.group(1)) if m else None

        del tl
        queue.put({"ok": True, "compile_s": round(seconds, 1), "regs": field_of("REG"), "stack": field_of("STACK"),
                   "shared": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
                   "num_stages": compiled.metadata.num_stages,
                   "mma": sum(1 for ln in lines if re.search(r"\b(HGMMA|HMMA|DMMA)", ln)),
                   "replicated": replicated_dots(compiled.asm["ttgir"]), "dots": _count_dots(fn)})
    except Exception as e:  # noqa: BLE001 - reported as a row
        queue.put({"ok": False, "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"})


def _count_dots(fn) -> int:
    import inspect

    return inspect.getsource(fn.fn).count("tl.dot(")


def fla_report(op: str, head_dim: int, chunk: int, dtype: str, arch: int, timeout: float) -> list[KernelReport]:
    consts = _fla_constexprs(head_dim, chunk)
    return [compile_in_child(KernelReport(f"fla {op}", kernel, head_dim, head_dim, chunk, dtype, arch, ok=False),
                             _compile_fla, (module, kernel, {**consts, **overrides}, dtype, arch), timeout)
            for module, kernel, overrides in FLA[op]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", type=int, default=90, choices=[80, 90])
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--chunk-size", type=int, default=64)
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    for label, spec in SPECS:
        found = aot_report(spec, args.arch, args.chunk_size, args.head_dim, args.dtype, args.timeout)
        for r in found:
            r.spec = label
        rows += found
    try:
        import fla  # noqa: F401
    except ImportError:
        print("flash-linear-attention is not installed here (bash bench/setup.sh makes .venv-bench): mirasc only")
    else:
        for op in FLA:
            rows += fla_report(op, args.head_dim, args.chunk_size, args.dtype, args.arch, args.timeout)
    if args.json:
        for r in rows:
            print(json.dumps(as_json(r)))
    else:
        print(f"sm_{args.arch}, C = {args.chunk_size}, D = {args.head_dim}, {args.dtype} inputs")
        print(format_rows(rows))


if __name__ == "__main__":
    main()
