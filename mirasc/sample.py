"""Random inputs for a compiled op, in natural gate units: what the tests, the benchmarks and the demo feed it."""

from __future__ import annotations

import torch

# Gate values drawn uniformly from these ranges (any other gate: (0.1, 0.9)): mild retention, a small inner
# learning rate, moderate momentum, Huber thresholds near the scale of unit-norm errors.
GATE_RANGES = {"alpha": (0.85, 1.0), "eta": (0.0, 0.2), "theta": (0.0, 0.6), "delta": (0.3, 1.0)}


def random_inputs(op, B: int, T: int, H: int, D: int, dtype: torch.dtype = torch.float64, device="cpu",
                  seed: int = 0, generator: torch.Generator | None = None, gate_ranges: dict | None = None,
                  param_scale: float = 0.1):
    """q, k, v [B, T, H, D] (q and k l2-normalised, as a layer feeds them), gates by `op.gate_shapes`, and the
    memory's outer params near identity. Drawn in float64 from `generator` (else one seeded with `seed`), so every
    dtype sees the same draws, and rounded to `dtype` before q and k are normalised."""
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    ranges = {**GATE_RANGES, **(gate_ranges or {})}

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    q, k, v = randn(B, T, H, D), randn(B, T, H, D), randn(B, T, H, D)
    q = q / q.norm(dim=-1, keepdim=True)
    k = k / k.norm(dim=-1, keepdim=True)
    gates = {}
    for name, shape in op.gate_shapes(B, T, H, D).items():
        lo, hi = ranges.get(name, (0.1, 0.9))
        gates[name] = (lo + (hi - lo) * torch.rand(*shape, generator=gen, dtype=torch.float64)).to(dtype)
    params = {p.name: p.default + param_scale * randn(H, D) for p in op.meta.params}

    def to(x):
        return x.to(device=device)

    return to(q), to(k), to(v), {n: to(x) for n, x in gates.items()}, {n: to(x) for n, x in params.items()}
