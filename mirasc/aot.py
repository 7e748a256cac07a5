"""Ahead-of-time compilation of a spec's Triton kernels for an NVIDIA GPU, on any machine: what the hardware gets.

`triton.compile(..., target=GPUTarget("cuda", ARCH, 32))` builds the real cubin with the ptxas shipped in the
triton wheel; `cuobjdump` (also in the wheel) reads back its registers, stack (bytes of register spills per
thread), shared memory and SASS, where tensor-core instructions (HMMA, HGMMA, DMMA) are counted, and the TritonGPU
IR, where products whose warps repeat each other's rows are counted (`replicated_dots`). Nothing is launched.
Each kernel compiles in a fresh process with a time limit, so one that hangs is a result, not a hang.

    mirasc aot SPEC... [--arch 90|80] [--chunk-size 64] [--head-dim 64] [--dtype bf16|fp16|fp32] [--json]
               [--num-warps N] [--num-stages N] [--block-hidden BH] [--block-value BV] [--only KERNEL]
"""

from __future__ import annotations

import ast
import multiprocessing as mp
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

# Pointers read and written in the caller's dtype (everything else is fp32 state, gates and gradients).
TOKEN_POINTERS = ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "d_out_ptr", "grad_q_ptr", "grad_k_ptr", "grad_v_ptr")
INT_POINTERS = ("cu_seqlens_ptr", "chunk_offsets_ptr")
DTYPES = ("bf16", "fp16", "fp32")


@dataclass
class KernelReport:
    spec: str
    kernel: str
    head_dim: int
    hidden: int
    chunk_size: int
    dtype: str
    arch: int
    ok: bool
    compile_s: float | None = None
    regs: int | None = None
    stack: int | None = None  # bytes per thread in local memory: register spills
    shared: int | None = None  # bytes
    mma: int | None = None  # tensor-core instructions in the SASS
    replicated: int | None = None  # matrix products whose warps' tiles overlap: the same MMA work done twice or more
    dots: int = 0  # tl.dot calls in the kernel's source
    num_warps: int | None = None
    num_stages: int | None = None
    sass: int | None = None
    error: str = ""
    extra: dict = field(default_factory=dict)


def _kernel_source(path: Path, kernel: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"def {kernel}(")
    nxt = text.find("\n@triton.jit", start)
    return text[start:] if nxt < 0 else text[start:nxt]


def _cuobjdump(cubin: bytes) -> tuple[str, str]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.cubin"
        f.write_bytes(cubin)
        usage = subprocess.run([str(tool), "-res-usage", str(f)], capture_output=True, text=True).stdout
        sass = subprocess.run([str(tool), "-sass", str(f)], capture_output=True, text=True).stdout
    return usage, sass


_MMA_LAYOUT = re.compile(r"^#(\w+) = #ttg\.nvidia_mma<\{versionMajor = (\d+), versionMinor = \d+, "
                         r"warpsPerCTA = \[(\d+), (\d+)\], instrShape = \[(\d+), (\d+)", re.M)
_DOT_RESULT = re.compile(r"(?:warp_group_dot|tt\.dot) .*-> tensor<(\d+)x(\d+)x\w+, #(\w+)>")


def replicated_dots(ttgir: str) -> int:
    """Matrix products in a kernel's TritonGPU IR whose tensor-core layout covers more than the result tile, so that
    several warps compute the same entries. Each warp takes instrShape[0] rows and instrShape[1] columns per step
    (16 rows for wgmma and mma.sync), spread as warpsPerCTA: with 8 warps, Triton puts all warps on the rows of a
    product that feeds another product (its rule for flash attention), and a 64-row tile then has two warp groups
    doing the same rows: twice the tensor-core work, and twice the accumulator registers a thread holds."""
    layouts = {name: (int(wm), int(wn), int(im), int(inn))
               for name, _, wm, wn, im, inn in _MMA_LAYOUT.findall(ttgir)}
    count = 0
    for rows, cols, layout in _DOT_RESULT.findall(ttgir):
        if layout in layouts:
            wm, wn, im, inn = layouts[layout]
            count += wm * im > int(rows) or wn * inn > int(cols)
    return count


def job_of(kernel: str) -> str:
    """The DESCRIPTION["kernels"] key of a generated kernel: chunk_<job>_kernel<suffix> -> <job><suffix>."""
    return kernel.removeprefix("chunk_").replace("_kernel", "", 1)


def kernel_names(text: str) -> list[str]:
    """The kernels of a generated Triton module's source, in order (its other jit functions are helpers)."""
    return re.findall(r"@triton\.jit[^\n]*\ndef (chunk_\w+_kernel)\(", text)


def generated_description(text: str) -> dict:
    """The DESCRIPTION literal of a generated Triton module's source (read, not executed)."""
    start = text.index("DESCRIPTION = ") + len("DESCRIPTION = ")
    end = text.index("\n\n", start)
    return ast.literal_eval(text[start:end])


def _compile_one(path: str, kernel: str, consts: dict, dtype: str, arch: int, num_warps: int, num_stages: int,
                 maxnreg: int | None, queue) -> None:
    """In a child process: compile one kernel and put its figures (or its error) on the queue."""
    os.environ.pop("TRITON_INTERPRET", None)  # compile for the GPU, not the interpreter
    os.environ["TRITON_ALWAYS_COMPILE"] = "1"  # a cached kernel would report no compile time
    try:
        import importlib.util

        import triton
        import triton.language as tl
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource

        spec = importlib.util.spec_from_file_location("_mirasc_aot_target", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        fn = getattr(module, kernel)
        tl_types = {"fp32": tl.float32, "bf16": tl.bfloat16, "fp16": tl.float16, "fp64": tl.float64}
        signature, constexprs = {}, {}
        for j, arg in enumerate(fn.arg_names):
            if fn.params[j].is_constexpr:
                value = consts[arg]
                constexprs[arg] = tl_types.get(value, value) if isinstance(value, str) and arg != "DOT_PRECISION" \
                    else value
                signature[arg] = "constexpr"
            elif arg in INT_POINTERS:
                signature[arg] = "*i32"
            elif arg.endswith("_ptr"):
                signature[arg] = "*" + (dtype if arg in TOKEN_POINTERS else "fp32")
            else:
                signature[arg] = "i32"
        t0 = time.time()
        compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                                  target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": num_warps, "num_stages": num_stages,
                                           **({"maxnreg": maxnreg} if maxnreg else {})})
        seconds = time.time() - t0
        usage, sass = _cuobjdump(compiled.asm["cubin"])

        def field_of(name: str) -> int | None:
            m = re.search(rf"\b{name}:(\d+)", usage)
            return int(m.group(1)) if m else None

        lines = [ln for ln in sass.splitlines() if re.match(r"\s+/\*[0-9a-f]{4,}\*/", ln)]
        queue.put({"ok": True, "compile_s": round(seconds, 1), "regs": field_of("REG"), "stack": field_of("STACK"),
                   "shared": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
                   "num_stages": compiled.metadata.num_stages, "sass": len(lines),
                   "mma": sum(1 for ln in lines if re.search(r"\b(HGMMA|HMMA|DMMA)", ln)),
                   "replicated": replicated_dots(compiled.asm["ttgir"])})
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a result to report
        queue.put({"ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"})


def aot_report(spec, arch: int = 90, chunk_size: int = 64, head_dim: int = 64, dtype: str = "bf16",
               timeout: float = 300.0, options: dict | None = None, block_hidden: int | None = None,
               only: list[str] | None = None, warps: int | None = None,
               block_value: int | None = None, stages: int | None = None,
               sub_chunk: int | None = None) -> list[KernelReport]:
    """Compile every kernel of the spec's Triton module (or the ones named in `only`) for the target and report one
    row per kernel.

    spec: a prebuilt name, a path, spec text or a Spec (as mirasc.compile takes). The module is generated into a
    temporary folder; the kernels' sizes are those of a call with this chunk size, head dim and input dtype, and
    the launcher's warps, pipelining stages, blocks and register ceiling for the target unless `warps`, `stages`,
    `block_hidden`, `block_value` or `sub_chunk` (BC, of the channel-decay products) say otherwise."""
    from .backends.triton import check_sizes, hidden_block, max_registers, num_stages, num_warps, value_block
    from .backends.triton import sub_chunk as default_sub_chunk
    from .codegen import generate_triton
    from .loader import load

    if dtype not in DTYPES:
        raise ValueError(f"dtype: expected one of {DTYPES}, got {dtype!r}")
    if arch not in (80, 90):
        raise ValueError(f"arch: expected 80 (A100) or 90 (H100/H200), got {arch}")
    checked = load(spec, options=options) if not hasattr(spec, "memory") else spec
    text = generate_triton(checked, options)
    hidden = head_dim * (checked.memory.expansion if checked.memory.depth > 1 else 1)
    check_sizes(chunk_size, head_dim, hidden, on_gpu=True)
    for what, block, whole in (("block_hidden", block_hidden, hidden), ("block_value", block_value, head_dim)):
        if block is not None and (block < 16 or block > whole or block & (block - 1)):
            raise ValueError(f"{what}: expected a power of two from 16 to {whole}, got {block}")
    if sub_chunk is not None and (sub_chunk < 1 or sub_chunk > chunk_size or sub_chunk & (sub_chunk - 1)):
        raise ValueError(f"sub_chunk: expected a power of two from 1 to the chunk size {chunk_size}, got {sub_chunk}")
    consts = {"C": chunk_size, "D": head_dim, "HID": hidden, "BH": block_hidden or hidden_block(hidden, head_dim),
              "BC": sub_chunk or default_sub_chunk(chunk_size, on_gpu=True),
              "IS_VARLEN": False, "DTYPE": "fp32",
              "DOT_DTYPE": dtype, "DOT_PRECISION": "tf32" if dtype == "fp32" else "ieee", "ON_GPU": True}
    reports = []
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{checked.name}_triton.py"
        path.write_text(text, encoding="utf-8")
        names = kernel_names(text)
        unknown = sorted(set(only or ()) - set(names))
        if unknown:
            raise ValueError(f"only: {checked.name} has no kernel {', '.join(unknown)}; "
                             f"its kernels: {', '.join(names)}")
        jobs = generated_description(text)["kernels"]
        ctx = mp.get_context("spawn")
        for kernel in [n for n in names if only is None or n in only]:
            job = jobs[job_of(kernel)]
            warps_here = warps or num_warps(chunk_size, head_dim, hidden, job["tiles"], job["value_blocks"] != "none")
            stages_here = stages or num_stages(head_dim, hidden)
            row = KernelReport(checked.name, kernel, head_dim, hidden, chunk_size, dtype, arch, ok=False,
                               dots=_kernel_source(path, kernel).count("tl.dot("), num_warps=warps_here,
                               num_stages=stages_here)
            bv = block_value or value_block(head_dim, arch)
            kernel_consts = {**consts, "BV": bv if job["value_blocks"] != "none" else head_dim}
            queue = ctx.Queue()
            proc = ctx.Process(target=_compile_one, args=(str(path), kernel, kernel_consts, dtype, arch,
                                                          warps_here, stages_here, max_registers(arch), queue))
            proc.start()
            proc.join(timeout)
            if proc.is_alive():
                proc.kill()
                proc.join()
                row.error = f"did not compile within {timeout:g} s"
            elif queue.empty():
                row.error = f"the compiler process exited with code {proc.exitcode}"
            else:
                for key, value in queue.get().items():
                    setattr(row, key, value)
            reports.append(row)
    return reports


def meets_targets(r: KernelReport, max_compile_s: float = 30.0, max_shared: int = 227 * 1024) -> bool:
    """The GPU targets: compiles within max_compile_s, no spills, tensor cores wherever there is a dot, shared
    memory within the H100's 227 KiB."""
    return (r.ok and (r.compile_s or 0) <= max_compile_s and r.stack == 0 and (r.dots == 0 or (r.mma or 0) > 0)
            and (r.shared or 0) <= max_shared)


def format_rows(reports: list[KernelReport]) -> str:
    head = ("| spec | kernel | D | hidden | ok | compile s | regs | stack B | shared B | mma | replicated | dots "
            "| warps | stages | targets |")
    out = [head, "|" + "---|" * 15]
    for r in reports:
        out.append(f"| {r.spec} | {r.kernel} | {r.head_dim} | {r.hidden} | {'yes' if r.ok else 'no'} | "
                   f"{r.compile_s if r.compile_s is not None else '-'} | {r.regs if r.regs is not None else '-'} | "
                   f"{r.stack if r.stack is not None else '-'} | {r.shared if r.shared is not None else '-'} | "
                   f"{r.mma if r.mma is not None else '-'} | {r.replicated if r.replicated is not None else '-'} | "
                   f"{r.dots} | {r.num_warps} | {r.num_stages} | "
                   f"{'met' if meets_targets(r) else 'missed'} |" + (f" {r.error}" if r.error else ""))
    return "\n".join(out)


def as_json(r: KernelReport) -> dict:
    d = asdict(r)
    d.pop("extra")
    return d


__all__ = ["KernelReport", "aot_report", "as_json", "format_rows", "meets_targets", "replicated_dots"]
