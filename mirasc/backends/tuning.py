"""Choosing each kernel's launch config among its candidates on the GPU, once per set of sizes: by timing them
(autotuning), or by their register spills (the spill guard).

The launcher (mirasc.backends.triton) has a default config per kernel: its warps from the kernel's register tiles,
the value block BV and the hidden block BH from the head dim, all read from ahead-of-time compiles. Those compiles
show no single config best for every kernel (bench/README.md: BV 16 spills less in the backward state passes at
D = 128, 4 warps repeat no products but spill where 8 do not), and only a GPU can weigh spills against repeated
products and the number of programs. With tuning on, the first launch of a kernel at a set of sizes runs each
candidate (`candidates`) and keeps the fastest; later launches at those sizes use it.

Without tuning, a GPU launch still checks the default: where it spills registers, the first candidate that compiles
without spills replaces it (`SpillGuard`, compiles only; `MIRASC_SPILL_GUARD=0` turns it off).

Tuning is off by default: every candidate is a compile (1 to 30 s per kernel on the CPU of a GPU machine, the MLP
memories' the slowest), and no GPU timing has yet shown what tuning gains over the defaults. `MIRASC_AUTOTUNE=1`
(read at each launch) or `set_autotune(True)` turns it on; under the Triton interpreter it runs only with a `Tuner`
given a timer (the tests), since interpreter times say nothing about a GPU.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

import torch

# The rows of a block of an MLP memory's stretch of values made token by token on a GPU (mirasc.kernel_body, row
# blocks; mirasc.backends.triton.row_block)
ROW_BLOCK = 16


@dataclass(frozen=True)
class Config:
    """One launch config of a kernel: warps per program, the value block BV, the hidden block BH, the sub-chunk BC
    of its channel-decay products (0 for a kernel that makes none), SWAP_PRODUCTS: its transposed products made
    with their operands swapped (emit_triton.dot_expr), INDEX_PER_CHUNK: a chunk-walking kernel's index vectors
    made again for each chunk (mirasc.triton_kernels.chunk_offsets), REREAD_INPUTS: its input tiles loaded again
    after the hidden-block loops that do not read them rather than held through them (mirasc.kernel_body), and
    PARAMS_ONCE: an MLP memory's state pass loading its per-row parameters once, before its chunk loop, rather than
    in each chunk where read (mirasc.triton_kernels, _Assembler.params_once). row_block: BR, the rows of a block of
    an MLP memory's stretch of values made token by token (mirasc.kernel_body, row blocks; 0 for a kernel without
    one). head_block: BK, the channel columns of a block of an MLP memory's channel-decay products
    (emit_triton.decayed_product, by channel blocks; 0 for a kernel without them: the launcher's BK)."""

    num_warps: int
    block_value: int
    block_hidden: int
    sub_chunk: int = 0
    swap_products: bool = False
    index_per_chunk: bool = False
    reread_inputs: bool = False
    params_once: bool = False
    row_block: int = 0
    head_block: int = 0

    def constexprs(self, chunk_size: int) -> dict:
        """The kernel's compile-time arguments this config sets (its warps are a launch option, not one of them);
        BC is the whole chunk in a kernel without channel-decay products."""
        return {"BV": self.block_value, "BH": self.block_hidden, "BC": self.sub_chunk or chunk_size,
                "BR": self.row_block or chunk_size,
                "SWAP_PRODUCTS": self.swap_products, "INDEX_PER_CHUNK": self.index_per_chunk,
                "REREAD_INPUTS": self.reread_inputs, "PARAMS_ONCE": self.params_once,
                **({"BK": self.head_block} if self.head_block else {})}


def candidates(default: Config, value_blocks: str, head_dim: int, hidden: int, on_gpu: bool,
               chunk_size: int = 0, swappable: bool = False, walks_chunks: bool = False,
               rereads: bool = False, holds_params: bool = False) -> list[Config]:
    """The configs tried for one kernel, the default first (it wins ties): the other warp count (4 or 8) on a GPU,
    another value block for a kernel run by blocks of value columns, half the default or, where half would pass
    below 16 (sm_80's default), twice it (on a GPU also with the other warp count: of Gated DeltaNet's two
    key-gradient terms that spilled at D = 128 before their results were made by head-axis blocks, 208 B each at 8
    warps and BV = 32, 4 warps alone left 56 B and 4 warps with BV = 16 none, sm_90a ahead of time), half the hidden
    block for an MLP memory's kernel, and for a kernel with
    channel-decay products the whole chunk as one sub-chunk (every pair of tokens made exactly: more exponentials, no
    matrix products across sub-chunks, fewer live tiles), and on a GPU, for a kernel whose transposed products are
    written both ways (`swappable`), the default with them swapped, and so the half hidden block: neither form spills
    less in every kernel (Memora's kernels at D = 64, sm_90a: 1,256 B in all transposed, 992 swapped, most of the
    gain with BH halved too; Gated DeltaNet's at D = 128, sm_80: 144 and 2,424; bench/README.md, "Products in either
    order"), and, for a kernel that walks the chunks (a state pass), the default with its index vectors made again
    for each chunk: TTT-Linear's backward state pass at sm_90a spilled 224 B at D = 64 and 2,688 at D = 128 with the
    vectors made once, 96 and 1,944 per chunk, but titans' 472 and 2,640 against 1,440 and 3,464 (bench/README.md,
    "Where the spills are"), and, for a kernel with hidden-block loops that holds input tiles through a loop not
    reading them, or a linear memory's kernel through a matrix product not reading them (`rereads`), the default
    with those tiles loaded again after it: of the MLP memories' kernels at
    sm_90a, D = 64, with their defaults, titans' spill 808 B in all with the tiles held and 592 loaded again, Moneta's
    1,568 and 1,120, but Yaad's 248 and 424 and TTT-MLP's 176 and 320 (bench/README.md, "Inputs read again after the
    loops"; DeltaNet's key-gradient terms at sm_80, D = 64: 40 → 0 B and 40 → 0, but 48 → 56 and 56 → 80 at
    D = 128), and for a state pass that can take both, the two at once (TTT-Linear's backward state pass at sm_90a:
    224 B at D = 64 by default, 96 with its index vectors per chunk, 280 with its inputs loaded again, 32 with
    both; at D = 128 2,688, 1,944, 2,976 and 1,896), and for an MLP memory's state pass (`holds_params`), the default
    with its per-row parameters loaded once before its chunk loop (PARAMS_ONCE; the figures are at
    mirasc.triton_kernels, _Assembler.params_once), and for a kernel with a stretch of values made token by token, the
    whole chunk as one row block (and with the whole chunk as one sub-chunk, in the candidate above, the row blocks
    whole too: Yaad's backward state pass at sm_90a, D = 64 spills 96 B a thread with the guard's choice with or
    without that candidate, 24 before the row blocks), and last, twice the default's rows where that is still part of
    the chunk: ptxas's spills do not fall with the rows either way (that pass: 200 B by blocks of 16, 40 by 32, 96 as
    one block; titans' local backward pass 80 by 16, 8 with its inputs loaded again, 0 by 32; Moneta's 160 by 16, 56
    as one block with one sub-chunk, 0 by 32; sm_90a, D = 64), and, for a kernel making its channel-decay products
    by blocks of channel columns, the default with the whole head as one block, placed before that: by blocks most
    such kernels spill less, but not all (Memora's term 5 of the LayerNorm weight's gradient at sm_90a, D = 128,
    default config: 832 B a thread before the blocks, 1,048 by blocks of 64, 848 as one block).
    Blocks stay at least 16 on a GPU (tl.dot's smallest side). A kernel whose blocks each write a share of a sum
    (value_blocks "partial") varies its BV too: the launcher sizes those shares' buffer from the config it
    launches."""
    smallest = 16 if on_gpu else 1
    out = [default]
    if on_gpu:
        out.append(replace(default, num_warps=12 - default.num_warps))  # 4 <-> 8
    other_value = _other_value_block(default.block_value, head_dim, smallest)
    if value_blocks != "none" and other_value:
        out.append(replace(default, block_value=other_value))
        if on_gpu:  # both at once: the one spill-free config of some kernels
            out.append(replace(default, num_warps=12 - default.num_warps, block_value=other_value))
    half_hidden = hidden > head_dim and default.block_hidden // 2 >= smallest
    if half_hidden:
        out.append(replace(default, block_hidden=default.block_hidden // 2))
    if 0 < default.sub_chunk < chunk_size:  # the row blocks too, if any: the whole chunk at once
        out.append(replace(default, sub_chunk=chunk_size, row_block=default.row_block and chunk_size))
    if on_gpu and 0 < default.row_block < chunk_size:
        out.append(replace(default, row_block=chunk_size))
    if on_gpu and swappable:
        out.append(replace(default, swap_products=True))
        if half_hidden:
            out.append(replace(default, block_hidden=default.block_hidden // 2, swap_products=True))
    if on_gpu and walks_chunks:
        out.append(replace(default, index_per_chunk=True))
    if on_gpu and rereads:
        out.append(replace(default, reread_inputs=True))
        if walks_chunks:
            out.append(replace(default, index_per_chunk=True, reread_inputs=True))
    if on_gpu and holds_params:
        out.append(replace(default, params_once=True))
    if on_gpu and 0 < default.head_block < head_dim:
        out.append(replace(default, head_block=head_dim))
    if on_gpu and 0 < 2 * default.row_block < chunk_size:
        out.append(replace(default, row_block=2 * default.row_block))
    return out


def refinements(chosen: Config, on_gpu: bool, holds_params: bool, chunk_size: int = 0) -> list[Config]:
    """The configs tried on top of the spill guard's choice among `candidates` where that choice still spills, each
    composed with whichever change the choice made, where listing it beside every candidate would double their
    compiles. For an MLP memory's state pass (`holds_params`), the choice with its per-row parameters loaded once,
    before the chunk loop (PARAMS_ONCE): at sm_90a, D = 64, titans' backward state pass spilled 112 B a thread with
    its inputs read again (the choice), 192 with the parameters once and 96 with both; Yaad's 40 with its chunk one
    sub-chunk (the choice), 48 by default and 24 with both. For a kernel with row blocks, the choice with twice its
    rows, up to the whole chunk: Memora's term 1 of the value gradient spilled 8 B with half the hidden block (the
    choice) and none with that and 32 rows, 64 with 32 rows alone."""
    out = []
    if on_gpu and holds_params and not chosen.params_once:
        out.append(replace(chosen, params_once=True))
    if on_gpu and 0 < 2 * chosen.row_block <= chunk_size:
        out.append(replace(chosen, row_block=2 * chosen.row_block))
    return out


def _other_value_block(block: int, head_dim: int, smallest: int) -> int:
    """The value block tried beside the default: half of it, or twice it where half would pass below `smallest`
    (sm_80's default of 16); 0 where neither is legal."""
    if block // 2 >= smallest:
        return block // 2
    return 2 * block if 2 * block <= head_dim else 0


def cuda_time(run: Callable[[], None], config: Config, repeats: int = 3) -> float:
    """Seconds of the fastest of `repeats` runs, after one that compiles and warms up."""
    run()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    best = math.inf
    for _ in range(repeats):
        start.record()
        run()
        end.record()
        end.synchronize()
        best = min(best, start.elapsed_time(end) / 1e3)
    return best


class Tuner:
    """The fastest config of each kernel, by key (the kernel and its compile-time sizes), found on first use.

    `timer(run, config)` returns the seconds `run` takes with `config` (it must call `run`); a candidate that does not
    fit the device (Triton's OutOfResources) is skipped. `interpreter`: tune under the Triton interpreter too (for
    tests, with a timer of their own)."""

    def __init__(self, timer: Callable[[Callable[[], None], Config], float] = cuda_time, interpreter: bool = False):
        self.timer, self.interpreter = timer, interpreter
        self.best: dict[Hashable, Config] = {}
        self.timings: dict[Hashable, dict[Config, float]] = {}

    def choose(self, key: Hashable, configs: list[Config], run: Callable[[Config], None]) -> Config:
        if key in self.best:
            return self.best[key]
        from triton.runtime.errors import OutOfResources

        times = {}
        for config in configs:
            try:
                times[config] = self.timer(lambda config=config: run(config), config)
            except OutOfResources:
                continue
        if not times:
            raise RuntimeError(f"autotuning: no candidate config fits the device for {key!r}: {configs}")
        self.best[key] = min(times, key=times.__getitem__)  # dict order: the default wins ties
        self.timings[key] = times
        return self.best[key]


class SpillGuard:
    """Each kernel's first candidate (`candidates` order, the default first) that ptxas compiles without register
    spills, by key (the kernel and its compile-time sizes), found on first use; where every candidate spills, the
    one that spills least (the earlier wins ties), after trying that one's `refinements`, and where none fits the
    device, the default.

    The defaults come from ahead-of-time compiles of whole spec families and do not suit every kernel: Gated
    DeltaNet's two key-gradient terms at D = 128 spill 208 B a thread each at the default 8 warps and BV = 32, and
    none at 4 warps and BV = 16 (sm_90a, bench/README.md). Spilled registers live in local memory, which every
    read and write of them goes through. Choosing by spills costs compiles, not runs: the default's compile is
    needed anyway, and only a kernel whose default spills compiles more. `spill_bytes(config)` gives the stack bytes
    a thread of the compiled kernel keeps (ptxas's spills; CUDA's local size), or None where the config does not
    fit the device. Timing (Tuner), when asked for, decides instead."""

    def __init__(self):
        self.chosen: dict[Hashable, Config] = {}
        self.spills: dict[Hashable, dict[Config, int | None]] = {}

    def choose(self, key: Hashable, configs: list[Config], spill_bytes: Callable[[Config], int | None],
               refine: Callable[[Config], list[Config]] | None = None) -> Config:
        """`refine(choice)`: configs tried after `configs` where the choice among them still spills (`refinements`),
        by the same rule."""
        if key in self.chosen:
            return self.chosen[key]
        seen: dict[Config, int | None] = {}
        for config in configs:
            seen[config] = spill_bytes(config)
            if seen[config] == 0:
                break
        best = _least(seen)
        if refine and best is not None and seen[best]:
            for config in refine(best):
                if config not in seen:
                    seen[config] = spill_bytes(config)
            best = _least(seen)
        self.chosen[key] = best if best is not None else configs[0]
        self.spills[key] = seen
        return self.chosen[key]


def _least(seen: dict[Config, int | None]) -> Config | None:
    """The config with the fewest stack bytes among those that fit (the earlier wins ties); None if none fits."""
    fitting = {c: n for c, n in seen.items() if n is not None}
    return min(fitting, key=fitting.__getitem__) if fitting else None


TUNER = Tuner()
SPILL_GUARD = SpillGuard()
_AUTOTUNE: bool | None = None  # None: the environment's MIRASC_AUTOTUNE decides


def set_autotune(on: bool | None) -> None:
    """Turn autotuning on or off for this process (None: follow MIRASC_AUTOTUNE again)."""
    global _AUTOTUNE
    _AUTOTUNE = on


def autotune_enabled(on_gpu: bool, tuner: Tuner) -> bool:
    """Whether launches tune: asked for (set_autotune, else MIRASC_AUTOTUNE=1), and on a GPU or by a tuner meant
    for the interpreter (whose times say nothing about a GPU)."""
    asked = _AUTOTUNE if _AUTOTUNE is not None else os.environ.get("MIRASC_AUTOTUNE", "0") == "1"
    return asked and (on_gpu or tuner.interpreter)


def spill_guard_enabled(on_gpu: bool) -> bool:
    """Whether launches on a GPU choose each kernel's config by its spills (SpillGuard): yes unless
    MIRASC_SPILL_GUARD=0 (read at each launch). The interpreter compiles nothing to read spills from."""
    return on_gpu and os.environ.get("MIRASC_SPILL_GUARD", "1") != "0"


def spill_guard_choices(guard: SpillGuard | None = None) -> list[dict]:
    """What the spill guard replaced so far: one row per kernel and set of sizes whose default spilled, with the
    stack bytes of every candidate compiled (None: did not fit the device) and the config chosen (for reports)."""
    guard = guard or SPILL_GUARD
    rows = []
    for key, seen in guard.spills.items():
        if len(seen) > 1:
            kernel, *sizes = key
            rows.append({"kernel": getattr(kernel, "__name__", str(kernel)), "sizes": dict(sizes),
                         "chosen": guard.chosen[key], "stack_bytes": dict(seen)})
    return rows


def tuned_configs(tuner: Tuner | None = None) -> list[dict]:
    """What tuning chose so far: one row per kernel and set of sizes, with every candidate's time (for reports)."""
    tuner = tuner or TUNER
    rows = []
    for key, best in tuner.best.items():
        kernel, *sizes = key
        rows.append({"kernel": getattr(kernel, "__name__", str(kernel)), "sizes": dict(sizes), "chosen": best,
                     "seconds": dict(tuner.timings[key])})
    return rows


__all__ = ["Config", "SPILL_GUARD", "SpillGuard", "TUNER", "Tuner", "autotune_enabled", "candidates", "cuda_time",
           "set_autotune", "spill_guard_choices", "spill_guard_enabled", "tuned_configs"]
