"""Ahead-of-time compilation of a spec's Triton kernels for an NVIDIA GPU, on any machine: what the hardware gets.

`triton.compile(..., target=GPUTarget("cuda", ARCH, 32))` builds the real cubin with the ptxas shipped in the
triton wheel; `cuobjdump` (also in the wheel) reads back its registers, stack (bytes of register spills per
thread), shared memory and SASS, where tensor-core instructions (HMMA, HGMMA, DMMA) are counted, and the TritonGPU
IR, where products whose warps repeat each other's rows are counted (`replicated_dots`); for a kernel that spills,
`nvdisasm -g` (also in the wheel) says which source lines the spills come from (`spill_sites`). Nothing is launched.
Each kernel compiles in a fresh process with a time limit, so one that hangs is a result, not a hang.

    mirasc aot SPEC... [--arch 90|80] [--chunk-size 64] [--head-dim 64] [--dtype bf16|fp16|fp32] [--json]
               [--num-warps N] [--num-stages N] [--block-hidden BH] [--block-value BV] [--only KERNEL]
               [--no-spill-guard]
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
    dots: int = 0  # tl.dot products in the kernel's source (one written both ways counted once)
    num_warps: int | None = None
    num_stages: int | None = None
    block_value: int | None = None  # BV (the head dim in a kernel not run by value blocks)
    block_hidden: int | None = None  # BH
    sub_chunk: int | None = None  # BC, the sub-chunk of channel-decay products or token blocks (0: neither)
    row_block: int | None = None  # BR, the rows of a block of values made token by token (0: none)
    head_block: int | None = None  # BK, the columns of a block of channel-decay products (0: not by blocks)
    swap_products: bool = False  # its transposed products made with their operands swapped (SWAP_PRODUCTS)
    index_per_chunk: bool = False  # a state pass's index vectors made again for each chunk (INDEX_PER_CHUNK)
    reread_inputs: bool = False  # input tiles loaded again after the loops that do not read them (REREAD_INPUTS)
    params_once: bool = False  # a state pass's per-row parameters loaded once, before its chunk loop (PARAMS_ONCE)
    default_stack: int | None = None  # the stack bytes of the launcher's default config, before the spill guard
    configs_compiled: int = 1  # configs the spill guard compiled for this kernel (the default first)
    compile_total_s: float | None = None  # their compile seconds in all: what a first launch on a GPU spends
    sass: int | None = None
    spill_sites: list[dict] = field(default_factory=list)  # where the spills are (`spill_sites`), most first
    error: str = ""
    extra: dict = field(default_factory=dict)


def _kernel_source(path: Path, kernel: str) -> str:
    text = path.read_text(encoding="utf-8")
    start = text.index(f"def {kernel}(")
    nxt = text.find("\n@triton.jit", start)
    return text[start:] if nxt < 0 else text[start:nxt]


def _products(source: str) -> int:
    """The kernel's tl.dot products, a product written both ways (emit_triton.dot_expr) counted once."""
    return source.count("tl.dot(") - source.count(" if SWAP_PRODUCTS else ")


def _cuobjdump(cubin: bytes) -> tuple[str, str]:
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.cubin"
        f.write_bytes(cubin)
        usage = subprocess.run([str(tool), "-res-usage", str(f)], capture_output=True, text=True).stdout
        sass = subprocess.run([str(tool), "-sass", str(f)], capture_output=True, text=True).stdout
    return usage, sass


# A SASS instruction's line in `nvdisasm -g` output, and the source line the instructions after it come from.
_SASS_LINE = re.compile(r"^\s+/\*[0-9a-f]{4,}\*/")
_SOURCE_MARK = re.compile(r'//## File "(.*)", line (\d+)')
_SPILL_OP = re.compile(r"\b(STL|LDL)(\.\w+)*\b")


def spill_sites(cubin: bytes, source: str, top: int = 5) -> list[dict]:
    """Where a kernel's spills are: the source lines whose SASS stores registers to local memory or loads them back
    (STL, LDL), the `top` with the most such instructions, each {"line", "code", "stores", "loads"}. Lines of the
    kernel's own module (path `source`) carry their code; a line of Triton's library (say the combine of a tl.sum,
    which ptxas keeps apart from its caller's line) is named "file:line (function)". The line table is the one
    Triton compiles in (off only under TRITON_DISABLE_LINE_INFO=1, and then this is empty); `nvdisasm -g` reads it."""
    import triton

    tool = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "nvdisasm"
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "k.cubin"
        f.write_bytes(cubin)
        listing = subprocess.run([str(tool), "-g", "-c", str(f)], capture_output=True, text=True).stdout
    counts: dict[tuple[str, int], list[int]] = {}
    here: tuple[str, int] | None = None
    for ln in listing.splitlines():
        mark = _SOURCE_MARK.search(ln)
        if mark:
            here = (mark.group(1), int(mark.group(2)))
        elif here and _SASS_LINE.match(ln) and (op := _SPILL_OP.search(ln)):
            counts.setdefault(here, [0, 0])[op.group(1) == "LDL"] += 1
    ranked = sorted(counts.items(), key=lambda kv: -sum(kv[1]))[:top]
    return [{**_source_line(path, line, source), "stores": st, "loads": ld} for (path, line), (st, ld) in ranked]


def _source_line(path: str, line: int, source: str) -> dict:
    """A line of the kernel's module with its code, or of another file with its enclosing function's name."""
    try:
        text = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError:
        return {"line": f"{Path(path).name}:{line}", "code": ""}
    if os.path.samefile(path, source):
        return {"line": line, "code": text[line - 1].strip() if line <= len(text) else ""}
    defs = [t.strip() for t in text[:line] if t.lstrip().startswith("def ")]
    where = f" ({defs[-1][4:].split('(')[0]})" if defs else ""
    return {"line": f"{Path(path).name}:{line}{where}", "code": ""}


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

        lines = [ln for ln in sass.splitlines() if _SASS_LINE.match(ln)]
        stack = field_of("STACK")
        queue.put({"ok": True, "compile_s": round(seconds, 1), "regs": field_of("REG"), "stack": stack,
                   "shared": compiled.metadata.shared, "num_warps": compiled.metadata.num_warps,
                   "num_stages": compiled.metadata.num_stages, "sass": len(lines),
                   "mma": sum(1 for ln in lines if re.search(r"\b(HGMMA|HMMA|DMMA)", ln)),
                   "replicated": replicated_dots(compiled.asm["ttgir"]),
                   "spill_sites": spill_sites(compiled.asm["cubin"], path) if stack else []})
    except Exception as e:  # noqa: BLE001 - a kernel that does not compile is a result to report
        queue.put({"ok": False, "error": f"{type(e).__name__}: {str(e)[:400]}"})


# Shared memory one program may take: an H100's 227 KiB, an A100's 163 KiB. A config that takes more does not launch.
DEVICE_SHARED = {90: 227 * 1024, 80: 163 * 1024}


def aot_report(spec, arch: int = 90, chunk_size: int = 64, head_dim: int = 64, dtype: str = "bf16",
               timeout: float = 300.0, options: dict | None = None, block_hidden: int | None = None,
               only: list[str] | None = None, warps: int | None = None,
               block_value: int | None = None, stages: int | None = None,
               sub_chunk: int | None = None, spill_guard: bool = True,
               row_block: int | None = None) -> list[KernelReport]:
    """Compile every kernel of the spec's Triton module (or the ones named in `only`) for the target and report one
    row per kernel.

    spec: a prebuilt name, a path, spec text or a Spec (as mirasc.compile takes). The module is generated into a
    temporary folder; the kernels' sizes are those of a call with this chunk size, head dim and input dtype, and
    the launcher's config unless `warps`, `stages`, `block_hidden`, `block_value`, `sub_chunk` (BC, of the
    channel-decay products) or `row_block` (BR, of the row blocks) say otherwise. The launcher's config is what a
    GPU launch takes: its default, or with `spill_guard` (and no block or warps given) the first candidate that
    compiles without spills where the default spills (mirasc.backends.tuning.SpillGuard, the same choice by the
    same rule); the row gives the default's stack too."""
    from .backends.triton import channel_block, check_sizes, hidden_block, num_warps, value_block
    from .backends.triton import row_block as default_row_block
    from .backends.triton import sub_chunk as default_sub_chunk
    from .backends.tuning import Config, candidates
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
    for what, rows in (("sub_chunk", sub_chunk), ("row_block", row_block)):
        if rows is not None and (rows < 1 or rows > chunk_size or rows & (rows - 1)):
            raise ValueError(f"{what}: expected a power of two from 1 to the chunk size {chunk_size}, got {rows}")
    guard = (spill_guard and warps is None and block_value is None and block_hidden is None and sub_chunk is None
             and row_block is None)
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
        target = _Target(str(path), checked.name, head_dim, hidden, chunk_size, dtype, arch, timeout, stages)
        for kernel in [n for n in names if only is None or n in only]:
            job = jobs[job_of(kernel)]
            by_value = job["value_blocks"] != "none"
            default = Config(warps or num_warps(chunk_size, head_dim, hidden, job["tiles"], by_value),
                             (block_value or value_block(head_dim, arch)) if by_value else head_dim,
                             block_hidden or hidden_block(hidden, head_dim),
                             (sub_chunk or default_sub_chunk(chunk_size, on_gpu=True)) if job["sub_chunks"] else 0,
                             row_block=(row_block or default_row_block(chunk_size, on_gpu=True))
                             if job["row_blocks"] else 0,
                             head_block=channel_block(head_dim) if job["channel_blocks"] else 0)
            configs = candidates(default, job["value_blocks"], head_dim, hidden, True, chunk_size,
                                 job["swappable"], job["grid"] == "sequences", job["rereads"],
                                 job["holds_params"]) if guard else [default]
            reports.append(target.guarded(kernel, configs, job["holds_params"], refine=guard))
    return reports


@dataclass
class _Target:
    """What every kernel of one report is compiled for."""

    path: str
    spec: str
    head_dim: int
    hidden: int
    chunk_size: int
    dtype: str
    arch: int
    timeout: float
    stages: int | None

    def guarded(self, kernel: str, configs: list, holds_params: bool = False, refine: bool = True) -> KernelReport:
        """The row of the config a GPU launch takes among `configs` (the default first): the first that compiles
        without spills and fits the device's shared memory, else the one that spills least after its refinements
        where `refine` (SpillGuard's rule; `holds_params`: the kernel can take PARAMS_ONCE)."""
        from .backends.tuning import SpillGuard, refinements

        rows: dict = {}

        def stack(config) -> int | None:
            rows[config] = row = self.compile(kernel, config)
            return row.stack if row.ok and (row.shared or 0) <= DEVICE_SHARED[self.arch] else None

        chosen = rows[SpillGuard().choose(kernel, configs, stack, (lambda c: refinements(
            c, True, holds_params, self.chunk_size)) if refine else None)]
        chosen.default_stack = rows[configs[0]].stack
        chosen.configs_compiled = len(rows)
        chosen.compile_total_s = round(sum(r.compile_s or 0 for r in rows.values()), 1)
        return chosen

    def compile(self, kernel: str, config) -> KernelReport:
        """One kernel compiled with one launch config, in a child process with the time limit."""
        from .backends.triton import head_block, max_registers, num_stages

        stages = self.stages or num_stages(self.head_dim, self.hidden)
        row = KernelReport(self.spec, kernel, self.head_dim, self.hidden, self.chunk_size, self.dtype, self.arch,
                           ok=False, dots=_products(_kernel_source(Path(self.path), kernel)),
                           num_warps=config.num_warps, num_stages=stages, block_value=config.block_value,
                           block_hidden=config.block_hidden, sub_chunk=config.sub_chunk, row_block=config.row_block,
                           head_block=config.head_block,
                           swap_products=config.swap_products, index_per_chunk=config.index_per_chunk,
                           reread_inputs=config.reread_inputs, params_once=config.params_once)
        consts = {"C": self.chunk_size, "D": self.head_dim, "HID": self.hidden,
                  "BK": head_block(self.head_dim, self.arch),  # a config's own BK (channel blocks) replaces it
                  **config.constexprs(self.chunk_size), "IS_VARLEN": False,
                  "DTYPE": "fp32", "DOT_DTYPE": self.dtype,
                  "DOT_PRECISION": "tf32" if self.dtype == "fp32" else "ieee", "ON_GPU": True}
        return compile_in_child(row, _compile_one, (self.path, kernel, consts, self.dtype, self.arch,
                                                     config.num_warps, stages, max_registers(self.arch)), self.timeout)


def compile_in_child(row: KernelReport, compile_fn, args: tuple, timeout: float) -> KernelReport:
    """`compile_fn(*args, queue)` in a fresh process with a time limit; its figures (or why it gave none) go onto
    `row`, which is returned. A compile that hangs is a result, not a hang."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=compile_fn, args=(*args, queue))
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
    return row


def meets_targets(r: KernelReport, max_compile_s: float = 30.0, max_shared: int = 227 * 1024) -> bool:
    """The GPU targets: compiles within max_compile_s, no spills, tensor cores wherever there is a dot, shared
    memory within the H100's 227 KiB."""
    return (r.ok and (r.compile_s or 0) <= max_compile_s and r.stack == 0 and (r.dots == 0 or (r.mma or 0) > 0)
            and (r.shared or 0) <= max_shared)


def format_rows(reports: list[KernelReport]) -> str:
    head = ("| spec | kernel | D | hidden | ok | compile s | regs | stack B | shared B | mma | replicated | dots "
            "| warps | stages | BV / BH / BC (/ rows BR, channels BK, swapped products, index per chunk, "
            "inputs reread, parameters once) "
            "| default's stack B "
            "| targets |")
    out = [head, "|" + "---|" * 17]

    def cell(x) -> str:
        return "-" if x is None else str(x)

    for r in reports:
        out.append(f"| {r.spec} | {r.kernel} | {r.head_dim} | {r.hidden} | {'yes' if r.ok else 'no'} | "
                   f"{cell(r.compile_s)} | {cell(r.regs)} | {cell(r.stack)} | {cell(r.shared)} | {cell(r.mma)} | "
                   f"{cell(r.replicated)} | {r.dots} | {r.num_warps} | {r.num_stages} | "
                   f"{r.block_value} / {r.block_hidden} / {r.sub_chunk}"
                   f"{f' / rows {r.row_block}' if r.row_block else ''}"
                   f"{f' / channels {r.head_block}' if r.head_block else ''}{' / swapped' if r.swap_products else ''}"
                   f"{' / index per chunk' if r.index_per_chunk else ''}"
                   f"{' / inputs reread' if r.reread_inputs else ''}"
                   f"{' / parameters once' if r.params_once else ''} | "
                   f"{cell(r.default_stack)} | "
                   f"{'met' if meets_targets(r) else 'missed'} |" + (f" {r.error}" if r.error else ""))
    return "\n".join(out)


def format_spill_sites(reports: list[KernelReport], top: int = 3) -> str:
    """Below the table: for each kernel that spills, the source lines with the most spill instructions."""
    out = []
    for r in reports:
        if r.spill_sites:
            out.append(f"{r.spec} {r.kernel}, {r.stack} B of stack; spill stores / loads by source line:")
            out += [f"  {s['stores']} / {s['loads']}  line {s['line']}" + (f": {s['code'][:100]}" if s["code"] else "")
                    for s in r.spill_sites[:top]]
    return "\n".join(out)


def as_json(r: KernelReport) -> dict:
    d = asdict(r)
    d.pop("extra")
    return d


__all__ = ["KernelReport", "aot_report", "as_json", "compile_in_child", "format_rows", "format_spill_sites",
           "meets_targets", "replicated_dots", "spill_sites"]
