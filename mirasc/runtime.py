"""runtime: `mirasc.compile` and the `MemoryOp` a compiled spec becomes.

A compiled spec is a generated Python module (mirasc.codegen), cached on disk and verified before it is executed
(mirasc.module_cache). The op checks and lays out its arguments with mirasc.op_inputs and runs the chunk programs
of its torch module, or the kernels of its Triton module (mirasc.backends.triton).
"""

from __future__ import annotations

import copy
import itertools
import threading
import warnings
from collections import namedtuple
from pathlib import Path
from types import ModuleType

import torch

from .cachekey import cache_key
from .module_cache import exec_module, generated_module, spec_source, triton_usable
from .op_inputs import as_rows, check_inputs, default_state
from .opmeta import OpMeta

_LOCK = threading.Lock()
_VARIANT_IDS = itertools.count(1)
_OPS: dict[tuple[str, str], MemoryOp] = {}


def compile(spec_or_path, backend: str = "auto", options: dict | None = None) -> MemoryOp:  # noqa: A001
    """Compile a spec to a MemoryOp, cached by content hash.

    spec_or_path: a prebuilt name ("moneta"), a path, spec text, or a Spec (which keeps the options it was loaded
    with; `options` apply on top). backend: "torch" (the chunkwise torch path), "triton" (the Triton kernels:
    natively on CUDA tensors, under the Triton interpreter on CPU tensors), or "auto" (Triton on CUDA tensors
    when triton is installed, torch otherwise, decided per call).
    """
    if backend not in ("auto", "torch", "triton"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'triton', got {backend!r}")
    text, file, options, spec = spec_source(spec_or_path, options)
    with _LOCK:
        key = (cache_key(text, options, "torch"), backend)
        if key in _OPS:
            return _OPS[key]
        torch_module, _ = generated_module(text, file, options, "torch", spec)
        triton_module = None
        if backend == "triton" or (backend == "auto" and triton_usable()):
            triton_module = _triton_module(text, file, options, spec, required=backend == "triton")
        op = MemoryOp(torch_module, text, file, options, backend=backend, triton_module=triton_module)
        op._spec = spec
        _OPS[key] = op
        return op


def _triton_module(text: str, file, options, spec, required: bool) -> ModuleType | None:
    """The spec's Triton module; where its chunk program has no Triton form (a tile with three axes, e.g. momentum
    with a channel decay gate), an error naming the spec when Triton was asked for, else a warning and None (the
    torch backend runs every call)."""
    from .emit_triton import CubeTileError

    try:
        return generated_module(text, file, options, "triton", spec)[0]
    except CubeTileError as err:
        where = f"{file}: " if file else ""
        if required:
            raise CubeTileError(f"{where}the Triton backend cannot run this spec: {err}") from None
        warnings.warn(f"{where}no Triton kernels for this spec, the torch backend runs it on every device ({err})",
                      stacklevel=3)
        return None


class MemoryOp:
    """A compiled Miras memory. See docs/semantics.md for what it computes.

    op(q, k, v, gates=..., initial_state=None, output_final_state=False, chunk_size=None, params=None)
        -> (o, final_state or None); q, k, v [B, T, H, D]; o in q's dtype; state fp32 (fp64 for fp64 inputs).
    op.recurrent(...)  the exact per-token recurrence (or the chunked oracle with chunk_size=C)
    op.step(q_t, k_t, v_t, gates_t, state)  one decoding step ([B, H, D] inputs)
    """

    def __init__(self, module: ModuleType, text: str, file: str, options: dict | None, backend: str = "torch",
                 triton_module: ModuleType | None = None):
        self.module = module
        self.triton_module = triton_module
        self.backend = backend
        self.meta = OpMeta.from_dict(module.METADATA)
        self.name = self.meta.name
        self.source, self.file, self.options = text, file, options
        self.State = namedtuple(f"{self.name.title().replace('_', '')}State", module.STATE_FIELDS)
        self._spec = None
        self.dot_precision = "tf32"  # fp32 contractions in the Triton kernels (with_dot_precision)

    def __repr__(self) -> str:
        return f"MemoryOp({self.name!r}, backend={self.backend!r}, state={self.module.STATE_FIELDS})"

    # Module-level switches of the torch module that a variant inherits from the op it was made from.
    _SWITCHES = ("USE_FACTORED", "KEEP_FORWARD_VALUES", "_mirasc_compiled")

    def _variant(self, **switches) -> MemoryOp:
        """A new op over a private copy of this op's torch module, so that its switches stay local to it (ops
        are cached per spec, and the module of `mirasc.compile(spec)` is shared by every caller)."""
        src = self.module
        module = exec_module(src.__mirasc_source__, Path(src.__file__), f"{src.__name__}_v{next(_VARIANT_IDS)}")
        for name, value in vars(src).items():
            if name.startswith(("chunk_forward", "chunk_backward")) or name in self._SWITCHES:
                setattr(module, name, value)
        for name, value in switches.items():
            setattr(module, name, value)
        op = MemoryOp(module, self.source, self.file, self.options, self.backend, self.triton_module)
        op.dot_precision = self.dot_precision
        op._spec = self._spec
        return op

    def compile_chunks(self, **torch_compile_kwargs) -> MemoryOp:
        """A new op whose torch chunk programs run through torch.compile (Inductor fuses the many small
        elementwise and contraction steps into a few kernels; measured on a 2-core CPU for Moneta, bench/README.md:
        3.5x faster forward+backward, 2.5x forward). This op is unchanged.
        The first call of each chunk shape compiles (tens of seconds on a small CPU; Inductor caches on disk)."""
        op = self._variant(_mirasc_compiled=True)
        if not getattr(self.module, "_mirasc_compiled", False):
            for name in [n for n in vars(op.module) if n.startswith(("chunk_forward", "chunk_backward"))]:
                setattr(op.module, name, torch.compile(getattr(op.module, name), **torch_compile_kwargs))
        return op

    def use_factored(self, enabled: bool = True) -> MemoryOp:
        """A new op that does (the default) or does not run the factored chunk programs for chunks with mild
        channel-wise decay (two (C, D) tiles instead of a (C, C, D) one; about 2x faster on CPU). Chunks whose
        log-decay spread exceeds the module's SPREAD_LIMIT always take the (C, C, D) programs."""
        return self._variant(USE_FACTORED=bool(enabled))

    def keep_forward_values(self, enabled: bool = True) -> MemoryOp:
        """A new op whose torch backward does (the default) or does not read values its forward kept per chunk.
        Off keeps only the chunk-start states (like the Triton kernels) and re-runs each chunk's forward in the
        backward: for Moneta at D = 64, C = 64 about 512 instead of about 4,400 floats per token and head, for
        one more forward pass of time."""
        return self._variant(KEEP_FORWARD_VALUES=bool(enabled))

    def module_for(self, x: torch.Tensor) -> ModuleType:
        """The generated module that runs a call on tensors like x (see compile's `backend`)."""
        if self.backend == "triton" or (self.backend == "auto" and x.is_cuda and self.triton_module is not None):
            return self.triton_module
        return self.module

    @property
    def spec(self):
        """The checked Spec (parsed on first use; a cached compile does not need it)."""
        if self._spec is None:
            from .loader import load_source

            self._spec = load_source(self.source, self.file, options=self.options)
        return self._spec

    # ------------------------------------------------------------------ shapes
    def gate_shapes(self, B: int, T: int, H: int, D: int) -> dict[str, tuple[int, ...]]:
        return self.meta.gate_shapes(B, T, H, D)

    def param_shapes(self, H: int, D: int) -> dict[str, tuple[int, ...]]:
        return self.meta.param_shapes(H, D)

    def state_shapes(self, B: int, H: int, D: int) -> dict[str, tuple[int, ...]]:
        return self.meta.state_shapes(B, H, D)

    def init_state(self, batch: int, heads: int, head_dim: int, dtype=torch.float32, device="cpu"):
        """The default initial state (what initial_state=None means): mirasc.op_inputs.default_state."""
        return self.State(*default_state(self.meta, batch, heads, head_dim, dtype, device))

    # ------------------------------------------------------------------ validation
    def _check(self, q, k, v, gates, params, initial_state, check: bool | None = None):
        return check_inputs(self.meta, q, k, v, gates, params, initial_state, check)

    # ------------------------------------------------------------------ calls
    def _prepare(self, q, k, v, gates, params, initial_state, sequences: int | None = None,
                 keep_dtype: bool = False):
        """The call's inputs as rows (mirasc.op_inputs.as_rows), the default state filled in for `sequences` (B,
        or the number of packed sequences) when none is given."""
        if initial_state is None:
            B, _, H, D = q.shape
            dt = torch.float64 if q.dtype == torch.float64 else torch.float32
            initial_state = self.init_state(sequences or B, H, D, dt, q.device)
        return as_rows(self.meta, q, k, v, gates, params, initial_state, keep_dtype)

    def __call__(self, q, k, v, gates=None, initial_state=None, output_final_state=False, chunk_size=None,
                 params=None, cu_seqlens=None, check: bool | None = None):
        """check: validate gate values (finite, in range) even on a GPU (True), never (False), or on CPU tensors
        only unless MIRASC_CHECK=1 (None, the default); see `mirasc.op_inputs.values_checked`."""
        if cu_seqlens is not None:
            from .packed import call_packed

            return call_packed(self, q, k, v, gates, initial_state, output_final_state, chunk_size, params,
                               cu_seqlens, check)
        gates, params = self._check(q, k, v, gates, params, initial_state, check)
        chunk = self.meta.chunk_size if chunk_size is None else int(chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
        B, T, H, D = q.shape
        if T == 0:
            raise ValueError("q: the sequence is empty (T = 0)")
        module = self.module_for(q)
        on_triton = module is self.triton_module
        flat, tok, gate_rows, param_rows = self._prepare(q, k, v, gates, params, initial_state, keep_dtype=on_triton)
        if on_triton:
            from .backends.triton import chunkwise

            res = chunkwise(module, chunk, *flat, *tok, *gate_rows, *param_rows, precision=self.dot_precision)
        else:
            res = module.ChunkwiseMemory.apply(chunk, *flat, *tok, *gate_rows, *param_rows)
        o = res[0].reshape(B, H, T, D).permute(0, 2, 1, 3).to(q.dtype)
        state = None
        if output_final_state:
            state = self.State(*(s.reshape(B, H, *s.shape[1:]) for s in res[1:]))
        return o, state

    def with_dot_precision(self, precision: str) -> MemoryOp:
        """A copy of this op whose Triton kernels run fp32 contractions as `precision`: "tf32" (tensor cores, the
        default) or "ieee" (exact fp32 products). bf16/fp16 inputs always use their own tensor-core path, fp64 is
        always exact."""
        from .backends.triton import PRECISIONS

        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        op = copy.copy(self)
        op.dot_precision = precision
        return op

    def recurrent(self, q, k, v, gates=None, initial_state=None, chunk_size=None, params=None,
                  output_final_state=True):
        """The reference recurrence (mirasc.oracle): exact per token, or chunked with chunk_size=C.

        What the op computes at chunk size C: for a spec chunked exactly (METADATA["chunk_form"], see
        mirasc.chunkform) that is the exact recurrence at every C, and chunk_size is ignored."""
        from .oracle import recurrent

        if self.meta.chunk_form == "exact":
            chunk_size = None
        gates, params = self._check(q, k, v, gates, params, initial_state)
        B, T, H, D = q.shape
        dt = torch.float64 if q.dtype == torch.float64 else torch.float32
        if initial_state is None:
            initial_state = self.init_state(B, H, D, dt, q.device)
        o, state = recurrent(self.spec, self.module.loss, q, k, v, gates, params, tuple(initial_state),
                             chunk_size=chunk_size)
        return o, (self.State(*state) if output_final_state else None)

    def step(self, q_t, k_t, v_t, gates_t=None, state=None, params=None, check: bool | None = None):
        """One decoding step: q_t, k_t, v_t [B, H, D]; data-dependent gates [B, H(, D)]. Exact (chunk size 1)."""
        gates = {}
        for g in self.meta.gates:
            x = (gates_t or {}).get(g.name)
            gates[g.name] = x.unsqueeze(1) if (x is not None and g.data_dependent) else x
        gates = {n: x for n, x in gates.items() if x is not None}
        o, new_state = self(q_t.unsqueeze(1), k_t.unsqueeze(1), v_t.unsqueeze(1), gates=gates,
                            initial_state=state, output_final_state=True, chunk_size=1, params=params, check=check)
        return o[:, 0], new_state
