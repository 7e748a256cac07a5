"""Launching a spec's Triton kernels: buffers, grid, dtypes and the autograd Function around them.

A generated Triton module (templates/triton_module.py.j2) holds only kernels and its DESCRIPTION: the state
fields and inputs with their axes, which inputs run along the sequence, the hidden size, and each kernel's grid,
scratch memory and value blocks. Everything that runs on the host is here; nothing is read back from the device
to choose a kernel.

Layout (mirasc.runtime prepares it): state tensors [P, ...] with one entry per program (a sequence of one head),
token inputs [R, T, ...] with one row per head and batch element (with cu_seqlens, R = H rows holding every
sequence, packed), static gates and outer parameters [R, ...].

Dtypes: q, k, v arrive in the caller's dtype and are read as such; contractions take DOT_DTYPE operands (bf16 and
fp16 as given, fp32 as tf32 on tensor cores unless precision='ieee', fp64 exact); arithmetic, state and gradients
of gates are fp32 (fp64 for fp64 inputs); `out` and the gradients of q, k, v come back in the input's dtype.
"""

from __future__ import annotations

import itertools
import math
import os
from types import ModuleType

import torch

from . import tuning
from .tuning import Config, autotune_enabled, candidates, refinements, spill_guard_enabled

PRECISIONS = ("tf32", "ieee")


def poisoned() -> bool:
    """Whether buffers that kernels must write in full start as NaN (`MIRASC_POISON=1`, read at each call; the test
    suite sets it): an element no program writes then fails the comparison with the reference instead of passing
    with stale memory, as fla's tests do. Off by default, since filling them is a memset per buffer and call (an MLP
    memory's backward fills about a dozen token-sized fp32 buffers)."""
    return os.environ.get("MIRASC_POISON") == "1"


def written_in_full(shape: tuple, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """A buffer whose every element a kernel writes: NaN where `poisoned()`, else uninitialised."""
    return torch.full(shape, float("nan"), device=device, dtype=dtype) if poisoned() else \
        torch.empty(shape, device=device, dtype=dtype)


def hidden_block(hidden: int, head_dim: int = 64) -> int:
    """BH, the block of an MLP memory's hidden axis a kernel holds at a time: 32 at D = 64, halved as D doubles (at
    least 16, tl.dot's smallest side), since the shared memory of the (C, BH) and (BH, D) dot operands grows with
    D·BH. From ahead-of-time compiles (mirasc aot titans --block-hidden ...), C = 64, bf16, sm_90a: at D = 64, hidden
    256, BH = 64 spills 1.4 KB in the state pass and takes 376 KB of shared memory in the backward state pass (over
    the H100's 227 KB), 32 takes 209 KB; at D = 128, hidden 512, BH = 32 takes 328 KB there, 16 takes 208 KB."""
    return min(max(16, HIDDEN_BLOCK * 64 // max(head_dim, 64)), hidden)


HIDDEN_BLOCK = 32
INTERPRETER_HIDDEN_BLOCK: int | None = None  # tests set a small block to walk several blocks on the CPU


def value_block(head_dim: int, arch: int = 90) -> int:
    """BV, the value columns one program of a value-blocked kernel holds (DESCRIPTION's "value_blocks"), by head dim
    and compute capability (90 for an H100, 80 for an A100): 32 from sm_90, 16 below.

    sm_90, from ahead-of-time compiles of gated_deltanet (C = 64, bf16, sm_90a, 8 warps), stack bytes of the state
    pass / the backward state pass: D = 128, BV = 64: 248 / 624; BV = 32: 0 / 608. D = 64, BV = 64: 0 / 184; BV = 32:
    0 / 32. Since the backward state pass reads its carry-free values (mirasc.triton_kernels.carry_free), all of
    gated_deltanet's kernels at D = 128 spill 416 B in all with BV = 32 and 120 B with 16 (two key-gradient terms);
    with 16 and 4 warps in every kernel none spills and no product repeats, with 32 and 4 warps 224 B (four
    kernels); DeltaNet's kernels, spill-free as launched, spill 16 B in one kernel with 16 and 4 warps. 32 stays
    there, for tensor-core tiles twice as wide and half the per-block work repeated; a kernel that spills at 32 is
    launched at the first of its other candidates that does not (the spill guard, mirasc.backends.tuning: Gated
    DeltaNet's two key-gradient terms take 4 warps and BV = 16), and the autotuner tries them all.

    sm_80 (255 registers a thread, mma.sync's accumulators in registers, no wgmma): the value-blocked gradient terms
    spill at BV = 32 and spill less at 16 in every spec. Stack bytes of all kernels (mirasc aot SPEC --arch 80
    --block-value 32 / 16, C = 64, bf16, the launcher's warps), D = 64: RetNet 24 / 0, Mamba2 16 / 0, DeltaNet
    496 / 272, Gated DeltaNet 680 / 584; D = 128: RetNet 464 / 192, Mamba2 456 / 176, DeltaNet 1,488 / 760, Gated
    DeltaNet 2,336 / 1,640 (TTT-Linear's spilling kernels are not value-blocked: 1,256 and 7,704 B either way;
    linear attention spills at neither). The autotuner tries 32 there (mirasc.backends.tuning.candidates)."""
    return min(head_dim, 32 if arch >= 90 else 16)


INTERPRETER_VALUE_BLOCK: int | None = None  # as INTERPRETER_HIDDEN_BLOCK, for the value axis


def head_block(head_dim: int, arch: int = 90) -> int:
    """BK, the head-axis columns of a chunk's scores (q·kᵀ) a kernel makes at a time (mirasc.kernel_body, "head-axis
    blocks"): 64 from sm_90, 32 below (or the whole head where it is smaller). On sm_80 (mma.sync: every warp holds
    a product's whole right operand in registers) 32 spills less, from ahead-of-time compiles (C = 64, bf16, 8
    warps, BV = 16): Gated DeltaNet's gate-gradient terms 3, 6 and η's 2 at D = 64, 160 / 160 / 136 B by blocks of
    64 (the whole head), none by 32; Mamba2's at D = 128, none either way. sm_90a spills in no linear spec's kernel
    with 64 (wgmma reads its operands from shared memory)."""
    return min(head_dim, HEAD_BLOCK if arch >= 90 else HEAD_BLOCK // 2)


HEAD_BLOCK = 64
INTERPRETER_HEAD_BLOCK: int | None = None  # as INTERPRETER_HIDDEN_BLOCK, for the head axis


def channel_block(head_dim: int) -> int:
    """BK of a kernel that makes its channel-decay products by blocks of channel columns (an MLP memory's chunk-parallel
    kernels, emit_triton.decayed_product): 32 on every GPU (or the whole head where it is smaller). On sm_80 it was
    32 from the first (`head_block`); on sm_90a, D = 128, blocks of 32 against 64 took Yaad's kernels, each with its
    default config, from 7,992 B of stack in all to 3,456, Moneta's from 14,032 to 8,048 and Memora's from 19,504 to
    10,776 (bench/README.md, "Channel blocks of 32 on an H100"). The spill guard also tries the whole head."""
    return min(head_dim, CHANNEL_BLOCK)


CHANNEL_BLOCK = 32


def sub_chunk(chunk_size: int, on_gpu: bool) -> int:
    """BC, the sub-chunk of a channel-decay product (mirasc.emit_triton.decayed_product): pairs of tokens in one
    sub-chunk are made a pair at a time, the rest by matrix products. 16 on a GPU (flash-linear-attention's chunk_gla
    takes the same; C·D·(C/BC + 1 + BC) exponentials per product, 21·C·D at C = 64 where a position at a time of
    the summed axis took 64·C·D); 4 on the interpreter, so that a test's chunk of 16 has both kinds of pairs."""
    return min(chunk_size, SUB_CHUNK if on_gpu else INTERPRETER_SUB_CHUNK)


SUB_CHUNK = 16
INTERPRETER_SUB_CHUNK = 4


def row_block(chunk_size: int, on_gpu: bool) -> int:
    """BR, the rows of a block of an MLP memory's stretch of values made token by token (mirasc.kernel_body, row
    blocks): tuning.ROW_BLOCK on a GPU, where TTT-MLP's backward state pass spilled 1,880 B a thread whole and 584 by
    blocks of 16 at D = 128 (sm_90a, C = 64, bf16, its default config); the spill guard also tries the whole chunk,
    with which titans' forward state pass spills none at D = 64 against 96 B by blocks of 16 (bench/README.md, "Row
    blocks"). On the interpreter the sub-chunk's 4, so that a test's chunk runs several blocks."""
    return min(chunk_size, tuning.ROW_BLOCK if on_gpu else INTERPRETER_SUB_CHUNK)


# Scratch memory of one launch of a chunk kernel that keeps blocks in scratch (an MLP memory's: a program's slot is
# up to 25 (C, hidden) tiles, 0.1 to 1.6 MiB at C = 64, hidden 256, fp32): the launcher runs the chunks in waves of
# as many as fit, reusing one buffer. 256 MiB holds about 256 programs of 1 MiB, two for each of an H100's 132 SMs.
SCRATCH_BYTES = 256 * 2**20
INTERPRETER_SCRATCH_BYTES: int | None = None  # tests set a small budget to run several waves on the CPU


# Register tiles (kernel_plan.peak_units, 64 x 64 fp32 each) up to which a kernel at C = 64 runs with 4 warps.
FOUR_WARP_TILES = 3.0


def num_warps(chunk_size: int, head_dim: int, hidden: int, tiles: float, value_blocked: bool = True) -> int:
    """Warps per program: one warp group (4) unless a chunk's (C, D) tiles reach 64 x 64 and the kernel keeps more
    than FOUR_WARP_TILES of them live at once (`tiles`, DESCRIPTION's estimate, in 64 x 64 units: a kernel that is
    not `value_blocked` holds its tiles D wide, so they count D / 64 units each), then 8.

    Why not always 8: Triton lays every matrix product that feeds another product with all warps along its rows
    (its rule for flash attention), and a warp group of 4 warps already covers 64 rows, so at C = 64 with 8 warps
    the two warp groups compute the same rows: twice the tensor-core work and twice the accumulator registers
    (mirasc aot's `replicated` column). With 4 warps each (64, 64) fp32 tile takes 32 registers a thread instead of 16,
    so a kernel with many live tiles spills there. From ahead-of-time compiles (mirasc aot --num-warps 4 / 8, C = 64,
    bf16) of the kernels of linear attention, RetNet, Mamba2, DeltaNet, Gated DeltaNet, TTT-Linear and a
    channel-decay spec (bench/specs/gla.miras) at D = 64 and 128, sm_90a and sm_80: no kernel of at most 3 tiles
    spills at 4 warps; at 4 tiles some do (the channel-decay spec's on sm_90a, 16 to 560 B, 7 kernels of the linear
    specs on sm_80, 8 to 160 B) where 8 warps spill less or not at all; above 4, 20 of the linear specs' 32 such
    kernels spill at 4 warps against 9 at 8 (sm_90a, D = 64). At D = 128, TTT-Linear's kernels (a LayerNorm over the
    value axis, so none runs by value blocks) of 3 tiles spilled up to 224 B at 4 warps and at most 16 at 8."""
    units = tiles if value_blocked else tiles * max(head_dim, 64) / 64
    if chunk_size * max(head_dim, hidden) < 64 * 64 or units <= FOUR_WARP_TILES:
        return 4
    return 8


def num_stages(head_dim: int, hidden: int) -> int:
    """Software-pipelining stages of the kernels' `for` loops (Triton's num_stages; the chunk loop is a `while`,
    never pipelined). An MLP memory's loops over hidden blocks read the blocks of the chunk-start weights: with
    more than one stage, Triton prefetches the next blocks into shared memory while it holds this one's tiles in
    registers, which its register-bound kernels cannot afford. 1 there, Triton's default 3 elsewhere. From
    ahead-of-time compiles (mirasc aot titans --num-stages ..., C = 64, D = 64, bf16, sm_90a, 8 warps), stack bytes
    of all 28 kernels and the most shared memory of one: 3 stages 38,520 B and 204 KiB, 2 stages 34,136 B and 140
    KiB, 1 stage 28,312 B and 76 KiB (the state pass alone goes the other way: 104 B at 3 stages, 520 B at 1)."""
    return 1 if hidden > head_dim else 3


def max_registers(arch: int) -> int | None:
    """The register ceiling per thread given to ptxas (Triton's `maxnreg`), by compute capability (80 for an A100,
    90 for an H100): 255 below 90, else None (ptxas's own choice). Without it ptxas for sm_80 gave titans' outputs
    kernel 32 registers and 5,200 B of spills, with it 255 and 1,880 B (mirasc aot titans --arch 80, C = D = 64,
    bf16, 8 warps); on sm_90 ptxas already takes 255 where it needs them, and the ceiling moved its spills both
    ways (the outputs kernel 64 -> 56 B, the backward state pass 2,712 -> 2,968 B), so it is left alone there."""
    return 255 if arch < 90 else None


def _arch(device: torch.device) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _tl_dtypes(token_dtype: torch.dtype, precision: str):
    import triton.language as tl

    if token_dtype == torch.float64:
        return tl.float64, tl.float64, "ieee"
    dot = {torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}.get(token_dtype, tl.float32)
    return tl.float32, dot, precision if dot == tl.float32 else "ieee"


def _power_of_two(name: str, size: int) -> None:
    if size < 1 or size & (size - 1):
        raise ValueError(f"{name}: the Triton backend needs a power of two, got {size}")


def check_sizes(chunk_size: int, head_dim: int, hidden: int, on_gpu: bool) -> None:
    """The sizes the kernels take: powers of two, and on a GPU at least 16 (tl.dot's smallest tile side)."""
    for what, size in (("chunk_size", chunk_size), ("head dim D", head_dim), ("hidden size", hidden)):
        _power_of_two(what, size)
    if on_gpu and min(chunk_size, head_dim) < 16:
        raise ValueError(f"the Triton kernels on a GPU need chunk_size and D of at least 16 (tensor-core tiles), "
                         f"got chunk_size={chunk_size}, D={head_dim}")


class _Launch:
    """Sizes, grid and constexprs of one call."""

    def __init__(self, module: ModuleType, inputs: tuple, chunk_size: int, cu_seqlens: torch.Tensor | None,
                 precision: str):
        desc = module.DESCRIPTION
        self.module, self.desc = module, desc
        self.n_state = len(desc["states"])
        self.token = [tok for _, _, tok in desc["inputs"]]
        states, rest = inputs[:self.n_state], inputs[self.n_state:]
        q = rest[0]
        self.rows, self.T, self.D = q.shape
        self.C, self.HID = chunk_size, desc["hidden"] * self.D
        # the hidden-axis block (on the interpreter the whole axis, one block, unless INTERPRETER_HIDDEN_BLOCK says:
        # the interpreter runs every block's operations one by one)
        self.BH = hidden_block(self.HID, self.D) if q.is_cuda else min(self.HID, INTERPRETER_HIDDEN_BLOCK or self.HID)
        self.BV = value_block(self.D, _arch(q.device)) if q.is_cuda else min(self.D, INTERPRETER_VALUE_BLOCK or self.D)
        self.BK = head_block(self.D, _arch(q.device)) if q.is_cuda else min(self.D, INTERPRETER_HEAD_BLOCK or self.D)
        self.channel_block = channel_block(self.D) if q.is_cuda else self.BK
        check_sizes(self.C, self.D, self.HID, on_gpu=q.is_cuda)
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self.dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        dtype, dot, prec = _tl_dtypes(q.dtype, precision)
        self.programs = states[0].shape[0]
        device = q.device
        self.on_gpu = q.is_cuda
        if cu_seqlens is None:
            self.cu = self.offsets = torch.zeros(1, dtype=torch.int32, device=device)
            self.max_chunks = -(-self.T // self.C)
            self.n_chunks = self.programs * self.max_chunks
            varlen, heads = False, 1
        else:
            self.cu = cu_seqlens.to(device=device, dtype=torch.int32)
            lengths = self.cu[1:] - self.cu[:-1]
            chunks = (lengths + self.C - 1) // self.C
            self.offsets = torch.cat([chunks.new_zeros(1), chunks.cumsum(0)[:-1]]).to(torch.int32)
            heads = self.rows
            self.n_chunks = int(chunks.sum()) * heads
            self.max_chunks = int(chunks.max())
            varlen = True
        self.scalars = (self.cu, self.offsets, self.T, heads)
        self.consts = dict(C=self.C, D=self.D, HID=self.HID, BH=self.BH, BK=self.BK, IS_VARLEN=varlen, DTYPE=dtype,
                           DOT_DTYPE=dot, DOT_PRECISION=prec, ON_GPU=self.on_gpu,
                           num_stages=num_stages(self.D, self.HID))
        if q.is_cuda and (ceiling := max_registers(_arch(device))) is not None:
            self.consts["maxnreg"] = ceiling

    def kernels(self) -> dict:
        """The kernels of this call by job (DESCRIPTION["kernels"]), each with its entry there."""
        return {job: (getattr(self.module, f"chunk_{job}_kernel"), info) for job, info in self.desc["kernels"].items()}

    def config(self, info: dict) -> Config:
        """A kernel's default launch config: its warps from its register tiles, BV and BH from the head dim, BC from
        the chunk (for a kernel with channel-decay products), BR (for a kernel with row blocks) and BK (for one
        making those products by blocks of channel columns)."""
        bv = self.BV if info["value_blocks"] != "none" else self.D
        bc = sub_chunk(self.C, self.on_gpu) if info["sub_chunks"] else 0
        br = row_block(self.C, self.on_gpu) if info["row_blocks"] else 0
        return Config(num_warps(self.C, self.D, self.HID, info["tiles"], info["value_blocks"] != "none"), bv,
                      self.BH, bc, row_block=br, head_block=self.channel_block if info["channel_blocks"] else 0)

    def run(self, kernels: dict, job: str, *args) -> None:
        """Launch one job's kernel with the config `choose` gives it."""
        fn, info = kernels[job]
        self.launch(fn, info, self.choose(kernels, job, lambda config: args), args)

    def choose(self, kernels: dict, job: str, args_for) -> Config:
        """A job's launch config at these sizes: its default or, on a GPU, the first of its candidates that compiles
        without spills (mirasc.backends.tuning.SpillGuard), or, when autotuning is on, the fastest of them (the
        candidates are compiled, or timed, on the first launch). `args_for(config)`: the kernel's arguments under
        that config (a kernel whose value blocks write shares of a sum has a buffer sized by its value block)."""
        fn, info = kernels[job]
        config = self.config(info)
        key = (fn, *((k, str(v)) for k, v in self.consts.items()), ("job", job))
        configs = candidates(config, info["value_blocks"], self.D, self.HID, self.on_gpu, self.C, info["swappable"],
                             info["grid"] == "sequences", info["rereads"], info["holds_params"])
        if autotune_enabled(self.on_gpu, tuning.TUNER):
            return tuning.TUNER.choose(key, configs, lambda c: self.launch(fn, info, c, args_for(c)))
        if spill_guard_enabled(self.on_gpu):
            return tuning.SPILL_GUARD.choose(key, configs, lambda c: self.spill_bytes(fn, info, c, args_for(c)),
                                             lambda c: refinements(c, self.on_gpu, info["holds_params"], self.C))
        return config

    def launch(self, fn, info: dict, config: Config, args: tuple) -> None:
        """One program per sequence, or per chunk in waves of chunks (all of them at once unless the kernel's scratch
        memory, a slot per program, would pass the scratch budget)."""
        for grid, wave_args, consts in self.waves(info, config, args):
            launch_fitting(fn, grid, wave_args, consts)

    def waves(self, info: dict, config: Config, args: tuple):
        """(grid, arguments, constexprs) of each launch a kernel's call makes with `config`."""
        bv = config.block_value
        blocks = self.D // bv  # programs per chunk along the value axis, each with its own scratch slot
        consts = {**self.consts, **config.constexprs(self.C), "num_warps": config.num_warps}
        if info["grid"] != "chunks":
            scratch = self.scratch(info, self.programs * blocks, bv)
            yield (self.programs, 1, blocks), (*args, *scratch, *self.scalars, 0), consts
            return
        wave = self.wave(info, bv)
        scratch = self.scratch(info, self.programs * wave * blocks, bv)  # one buffer: the waves run in turn
        for base in range(0, self.max_chunks, wave):
            grid = (self.programs, min(wave, self.max_chunks - base), blocks)
            yield grid, (*args, *scratch, *self.scalars, base), consts

    def spill_bytes(self, fn, info: dict, config: Config, args: tuple) -> int | None:
        """Stack bytes a thread of fn compiled with `config` for this call keeps (ptxas's spills: Triton reads CUDA's
        local size per thread and reports it in 4-byte words), compiled, not run; None where it does not fit the
        device."""
        from triton.runtime.errors import OutOfResources

        grid, wave_args, consts = next(self.waves(info, config, args))
        try:
            compiled = fn.warmup(*wave_args, grid=grid, **consts)
            if hasattr(compiled, "result"):  # Triton's asynchronous compile mode hands back a future
                compiled = compiled.result()
            if compiled is None:  # a compile hook declined it
                return None
            compiled._init_handles()  # loads the binary: its registers and spills, and the device's limits
        except OutOfResources:
            return None
        return 4 * compiled.n_spills

    def scratch_per_program(self, info: dict, bv: int) -> int:
        """Elements of one program's scratch memory (DESCRIPTION's scratch axes; the value axis by its block)."""
        return sum(math.prod(bv if a == "o" else self.size(a) for a in axes) for axes in info["scratch"])

    def scratch(self, info: dict, programs: int, bv: int) -> list[torch.Tensor]:
        """The scratch-memory argument of a kernel that has scratch, for `programs` programs, or none."""
        if not info["scratch"]:
            return []
        return [torch.empty(programs * self.scratch_per_program(info, bv), device=self.cu.device, dtype=self.dtype)]

    def wave(self, info: dict, bv: int) -> int:
        """Chunks per launch of a chunk kernel: all of them, or as many as the scratch budget holds (at least 1)."""
        slots = self.programs * (self.D // bv)  # a chunk's programs, each with its own slot
        per_chunk = slots * self.scratch_per_program(info, bv) * torch.finfo(self.dtype).bits // 8
        budget = SCRATCH_BYTES if self.cu.is_cuda else INTERPRETER_SCRATCH_BYTES or SCRATCH_BYTES
        return self.max_chunks if per_chunk == 0 else max(1, min(self.max_chunks, budget // per_chunk))

    def size(self, axis: str) -> int:
        return {"t": self.C, "s": self.C, "u": self.C, "o": self.D, "i": self.D, "h": self.HID, "g": self.HID}[axis]


# The hidden block each kernel fell back to on this device, by (kernel, sizes): a kernel that needs more shared memory
# than the device has at the launcher's BH is compiled again with half of it, once per process.
_FITTING_BH: dict[tuple, int] = {}


def launch_fitting(kernel, grid: tuple, args: tuple, consts: dict) -> None:
    """Launch kernel[grid](*args, **consts); where the device has too little shared memory for it (an A100 has 164 KiB
    where an H100 has 227, and an MLP memory's backward kernels take up to 220 KiB at BH = 32), halve the hidden
    block BH, down to 16, tl.dot's smallest side. Shared memory grows with the (C, BH) and (BH, D) dot operands;
    the kernels' results do not depend on BH (the hidden axis is summed block by block in fp32 either way)."""
    from triton.runtime.errors import OutOfResources

    def key() -> tuple:
        return (kernel, *sorted((k, str(v)) for k, v in consts.items() if k != "BH"))

    consts = {**consts, "BH": _FITTING_BH.get(key(), consts["BH"])} if _FITTING_BH else dict(consts)
    while True:
        try:
            kernel[grid](*args, **consts)
            return
        except OutOfResources as err:
            if "shared memory" not in str(err) or consts["BH"] <= 16:
                raise
            consts["BH"] //= 2
            _FITTING_BH[key()] = consts["BH"]


class TritonChunkwise(torch.autograd.Function):
    """out, *final_state = TritonChunkwise.apply(module, chunk_size, cu_seqlens, precision, *inputs)."""

    @staticmethod
    def forward(ctx, module, chunk_size, cu_seqlens, precision, *inputs):
        launch = _Launch(module, inputs, chunk_size, cu_seqlens, precision)
        inputs = [x.contiguous() for x in inputs]
        states, rest = inputs[:launch.n_state], inputs[launch.n_state:]
        states = [s.to(launch.dtype) for s in states]
        q = rest[0]
        out = written_in_full((launch.rows, launch.T, launch.D), q.device, q.dtype)
        final = [torch.empty_like(s) for s in states]
        starts = [torch.empty((launch.n_chunks, *s.shape[1:]), device=s.device, dtype=launch.dtype) for s in states]
        stored = [torch.empty((launch.n_chunks, *(launch.size(a) for a in axes)), device=q.device, dtype=launch.dtype)
                  for _, axes in launch.desc["stored"]]
        kernels = launch.kernels()
        if "stored_fwd" in kernels:  # the stored values, for every chunk at once (else the state pass makes them)
            launch.run(kernels, "stored_fwd", *rest, *stored)
        launch.run(kernels, "state_fwd", *states, *rest, *final, *starts, *stored)
        launch.run(kernels, "out_fwd", *starts, *rest, *stored, out)
        ctx.save_for_backward(*rest, *starts, *stored)
        ctx.launch, ctx.kernels = launch, kernels
        return (out, *final)

    @staticmethod
    def backward(ctx, d_out, *d_state):
        launch, kernels = ctx.launch, ctx.kernels
        saved = list(ctx.saved_tensors)
        n_rest = len(launch.token)
        rest, starts, stored = saved[:n_rest], saved[n_rest:n_rest + launch.n_state], saved[n_rest + launch.n_state:]
        rest = [*rest, *stored]  # the kernels read the stored values after the inputs
        q = rest[0]
        d_out = torch.zeros(launch.rows, launch.T, launch.D, device=q.device, dtype=q.dtype) if d_out is None \
            else d_out.contiguous()
        shapes = [(launch.programs, *s.shape[1:]) for s in starts]
        d_state = [torch.zeros(shape, device=q.device, dtype=launch.dtype) if d is None else
                   d.contiguous().to(launch.dtype) for d, shape in zip(d_state, shapes)]
        d_init = [written_in_full(shape, q.device, launch.dtype) for shape in shapes]
        carries = [torch.empty_like(s) for s in starts]
        # the backward state pass's values that need no adjoint from the next chunk, every chunk at once, first
        local = [written_in_full((launch.n_chunks, *(launch.size(a) for a in axes)), q.device, launch.dtype)
                 for _, axes in launch.desc.get("local", [])]
        if local:
            launch.run(kernels, "local_bwd", *starts, *rest, d_out, *local)
        launch.run(kernels, "state_bwd", *starts, *rest, *local, d_out, *d_state, *d_init, *carries)
        # a static input's gradient comes per chunk: summed here over chunks, and over the sequences of a row
        grads = []
        for (name, _, tok), x in zip(launch.desc["inputs"], rest):
            total = None
            jobs = itertools.takewhile(kernels.__contains__, (f"grad_{name}_{j}_bwd" for j in itertools.count()))
            for job in jobs:  # one kernel per summand of the gradient, numbered from 0
                fn, info = kernels[job]

                def args_for(config, x=x, tok=tok, info=info):
                    # a kernel run by value blocks that each add a share of a sum over the value axis: a copy per
                    # block
                    copies = launch.D // config.block_value if info["value_blocks"] == "partial" else 1
                    shape = (copies, *x.shape) if tok else (copies, launch.n_chunks, *x.shape[1:])
                    wide = x.dtype if copies == 1 else launch.dtype  # the shares are added in fp32 (fp64)
                    term = written_in_full(shape, x.device, wide) if tok else \
                        torch.zeros(shape, device=x.device, dtype=launch.dtype)
                    return (*starts, *carries, *rest, *local, d_out, term, term[0].numel() if copies > 1 else 0)

                config = launch.choose(kernels, job, args_for)
                args = args_for(config)
                launch.launch(fn, info, config, args)
                term = args[-2]
                term = term[0] if len(term) == 1 else term.sum(0).to(x.dtype if tok else launch.dtype)
                total = term if total is None else total + term
            grads.append(total)
        grads = [g if tok else _per_row(g, x, launch) for g, x, tok in zip(grads, rest, launch.token)]
        return (None, None, None, None, *d_init, *grads)


def _per_row(per_chunk: torch.Tensor, x: torch.Tensor, launch: _Launch) -> torch.Tensor:
    """Sum a static input's per-chunk gradients [chunks, ...] onto its rows [R, ...]."""
    if launch.consts["IS_VARLEN"]:  # chunks are grouped by sequence, then head: scatter each onto its head's row
        heads = launch.rows
        lengths = launch.cu[1:] - launch.cu[:-1]
        per_seq = ((lengths + launch.C - 1) // launch.C).repeat_interleave(heads)
        row = torch.arange(heads, device=x.device).repeat(len(lengths)).repeat_interleave(per_seq)
        return torch.zeros_like(x, dtype=per_chunk.dtype).index_add_(0, row, per_chunk).to(x.dtype)
    return per_chunk.reshape(x.shape[0], -1, *x.shape[1:]).sum(1).to(x.dtype)


def chunkwise(module: ModuleType, chunk_size: int, *inputs: torch.Tensor, cu_seqlens: torch.Tensor | None = None,
              precision: str = "tf32") -> tuple[torch.Tensor, ...]:
    """Run a Triton module's kernels: (out [R, T, D], *final state [P, ...]) for inputs laid out as above."""
    return TritonChunkwise.apply(module, chunk_size, cu_seqlens, precision, *inputs)


__all__ = ["PRECISIONS", "TritonChunkwise", "chunkwise"]
