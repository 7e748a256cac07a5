"""Calls on packed sequences (flash-linear-attention's `cu_seqlens`): MemoryOp.__call__ hands them here."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .runtime import MemoryOp


def call_packed(op: MemoryOp, q, k, v, gates, initial_state, output_final_state, chunk_size, params, cu_seqlens,
                check: bool | None = None):
    """Packed sequences, flash-linear-attention's convention: B = 1, sequence j is tokens
    cu_seqlens[j]:cu_seqlens[j+1]; initial and final states are [num_sequences, H, ...]; each sequence
    starts its own chunks."""
    if q.dim() != 4 or q.shape[0] != 1:
        raise ValueError(f"q: with cu_seqlens, expected shape [1, T, H, D], got {list(q.shape)}")
    bounds = [int(x) for x in torch.as_tensor(cu_seqlens).tolist()]
    if len(bounds) < 2 or bounds[0] != 0 or bounds[-1] != q.shape[1] or any(
            a >= b for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"cu_seqlens: expected increasing offsets from 0 to T={q.shape[1]}, got {bounds}")
    if op.module_for(q) is op.triton_module:  # the kernels walk every sequence in one launch
        return _packed_triton(op, q, k, v, gates, initial_state, output_final_state, chunk_size, params, bounds,
                              check)
    gates = dict(gates or {})
    data_dependent = {g.name for g in op.meta.gates if g.data_dependent}
    outs, finals = [], []
    for j, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
        seg_gates = {n: (x[:, lo:hi] if n in data_dependent else x) for n, x in gates.items()}
        state = None if initial_state is None else [s[j:j + 1] for s in initial_state]
        o, st = op(q[:, lo:hi], k[:, lo:hi], v[:, lo:hi], gates=seg_gates, initial_state=state,
                   output_final_state=output_final_state, chunk_size=chunk_size, params=params, check=check)
        outs.append(o)
        finals.append(st)
    o = torch.cat(outs, dim=1)
    if not output_final_state:
        return o, None
    return o, op.State(*(torch.cat(parts, dim=0) for parts in zip(*finals)))


def _packed_triton(op: MemoryOp, q, k, v, gates, initial_state, output_final_state, chunk_size, params, bounds,
                   check):
    from .backends.triton import chunkwise

    n_seq = len(bounds) - 1
    if initial_state is not None:
        shapes = op.state_shapes(n_seq, q.shape[2], q.shape[3])
        for (name, shape), x in zip(shapes.items(), initial_state):
            if tuple(x.shape) != shape:
                raise ValueError(f"initial_state.{name}: with {n_seq} sequences, expected shape {list(shape)}, "
                                 f"got {list(x.shape)}")
    gates, params = op._check(q, k, v, gates, params, None, check)
    chunk = op.meta.chunk_size if chunk_size is None else int(chunk_size)
    if chunk < 1:
        raise ValueError(f"chunk_size: expected a positive integer, got {chunk_size}")
    _, T, H, D = q.shape
    flat, tok, gate_rows, param_rows = op._prepare(q, k, v, gates, params, initial_state, sequences=n_seq,
                                                   keep_dtype=True)
    cu = torch.tensor(bounds, dtype=torch.int32, device=q.device)
    res = chunkwise(op.triton_module, chunk, *flat, *tok, *gate_rows, *param_rows, cu_seqlens=cu,
                    precision=op.dot_precision)
    o = res[0].reshape(1, H, T, D).permute(0, 2, 1, 3).to(q.dtype)
    if not output_final_state:
        return o, None
    return o, op.State(*(s.reshape(n_seq, H, *s.shape[1:]) for s in res[1:]))
