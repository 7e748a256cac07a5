"""The reference oracle: a plain, token-by-token implementation of `docs/semantics.md`.

This is the yardstick generated kernels are tested against (relative RMS error < 1e-10 in float64), so it
follows the document literally and shares nothing with the compiler: a Python loop over tokens, batched
over the N = B*H heads (row n = b*H + h), in plain torch. A boundary map's step is its component's own reference
(`reference_map`, `reference_slope`, `reference_lag_write` of mirasc.components.maps), written in torch apart from
the map's lowering; so are the memory's output map (`reference_output`) and the learning algorithm's write
(`reference_write`). The inner gradient G of every token comes from
`torch.func.grad` of the caller's loss, never from a hand derivation, and everything stays differentiable
with ordinary autograd (outputs and final state w.r.t. q, k, v, the gates, the params and the initial state).

`recurrent(..., chunk_size=None)` is the exact per-token recurrence ("One token, exactly");
`chunk_size=C` is the chunk approximation of Eq. 28 ("Chunks of C tokens"), with C = 1 equal to the exact
recurrence. (Specs whose update is affine in the state are chunked exactly; for them the op's semantics at
every chunk size is the exact recurrence, and `MemoryOp.recurrent` says so. The approximation stays
available here, so that its error can be measured.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mirasc.spec import Const, GateRef, Operand, Spec

LossFn = Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]
Weights = list[torch.Tensor]  # one [N, out, in] tensor per layer, in application order

_ACTIVATIONS = {
    "identity": lambda x: x,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "silu": F.silu,
    "relu": torch.relu,
    "tanh": torch.tanh,
}


@dataclass
class _Run:
    """Everything fixed for one call: the spec, the loss, the memory's outer parameters per row, the shapes."""

    spec: Spec
    loss_fn: LossFn
    depth: int
    params: dict[str, torch.Tensor]  # name -> [N, D] (a LayerNorm's weight and bias)


# ---------------------------------------------------------------------------------------------------------
# The memory M(x; W) and its inner gradient.
# ---------------------------------------------------------------------------------------------------------


def _memory(run: _Run, ws: Weights, x: torch.Tensor) -> torch.Tensor:
    """M(x; W) for x [N, D]: x_l = act(W_l x_{l-1}) for l < L, z = W_L x_{L-1}, then the memory's output map."""
    mem = run.spec.memory
    act = _ACTIVATIONS[mem.activation]
    h = x
    for l, w in enumerate(ws):
        h = torch.einsum("noi,ni->no", w, h)
        if l < len(ws) - 1:
            h = act(h)
    return mem.reference_output(h, x, run.params)


def _inner_grad(run: _Run, ws: Weights, k: torch.Tensor, v: torch.Tensor, g: dict) -> Weights:
    """G_l = ∇_{W_l} ℓ(M(k; W), v), by torch.func.grad of the caller's loss (rows are independent)."""

    def total_loss(weights: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return run.loss_fn(_memory(run, list(weights), k), v, g).sum()

    return list(torch.func.grad(total_loss)(tuple(ws)))


# ---------------------------------------------------------------------------------------------------------
# Gates: per-token values and how they scale a matrix.
# ---------------------------------------------------------------------------------------------------------


def _token_gates(spec: Spec, gates: dict, t: int, n: int, dtype: torch.dtype) -> dict:
    """Token t's value of every gate: [N] for scalar gates, [N, D] for channel gates (static ones broadcast)."""
    out = {}
    for gate in spec.gates:
        x = gates[gate.name].to(dtype)
        if gate.data_dependent:
            x = x[:, t]  # [B, H] or [B, H, D]
        else:
            b = n // x.shape[0]
            x = x.expand(b, *x.shape)  # [H] -> [B, H], [H, D] -> [B, H, D]
        out[gate.name] = x.reshape(n, *x.shape[2:])
    return out


def _operand(op: Operand | None, g: dict, default: float) -> torch.Tensor | float:
    if op is None:
        return default
    if isinstance(op, Const):
        return float(op.value)
    if isinstance(op, GateRef):
        return g[op.name]
    raise TypeError(f"unknown operand {op!r}")


def _on_matrix(value: torch.Tensor | float, layer: int, depth: int) -> torch.Tensor | float:
    """Shape a gate value to scale layer `layer`'s [N, out, in] matrix.

    Scalar: the whole matrix. Channel: the D-sized axis — the input columns of layer 1 (and of a depth-1
    D x D matrix), the output rows of the last layer. A middle h x h matrix has no D axis.
    """
    if not isinstance(value, torch.Tensor):
        return value
    if value.dim() == 1:
        return value[:, None, None]
    if layer == 0:
        return value[:, None, :]
    if layer == depth - 1:
        return value[:, :, None]
    raise ValueError("a channel gate cannot scale a middle (h x h) matrix")


def _scale(value: torch.Tensor | float, ms: Weights, depth: int) -> Weights:
    """value ⊙ M_l for every layer l."""
    return [_on_matrix(value, l, depth) * m for l, m in enumerate(ms)]


# ---------------------------------------------------------------------------------------------------------
# Boundary maps.
# ---------------------------------------------------------------------------------------------------------


def _kind(spec: Spec) -> str | None:
    """mirror, projection or lag (mirasc.components.base.BoundaryMap.kind); None without a map."""
    m = spec.retention.map
    return None if m is None else m.kind


def _mapped(run: _Run, ps: Weights, g: dict) -> Weights:
    """The map's reference step on every layer: W = φ(P) (mirror) or the projected state (projection)."""
    m = run.spec.retention.map
    return [m.reference_map(p, lambda o, l=l: _on_matrix(_operand(o, g, 0.0), l, run.depth)) for l, p in enumerate(ps)]


def _phi(run: _Run, ps: Weights, g: dict) -> Weights:
    """The primal weights W = φ(P) for a mirror map; W = P for every other retention."""
    return _mapped(run, ps, g) if _kind(run.spec) == "mirror" else list(ps)


def _kappa(run: _Run, ps: Weights) -> list[torch.Tensor | float]:
    """The map's slope frozen at the chunk start (1 without one): token t in the chunk reads W' + slope (P_t - P'),
    or slope P_t for a map that scales (Eq. 24 as printed)."""
    m = run.spec.retention.map
    return [1.0 if m is None else m.reference_slope(p) for p in ps]


def _end_map(run: _Run, ps: Weights, g: dict) -> Weights:
    """What the last token of a complete chunk reads: φ(P_end) (mirror), S_γ(P_end) (projection), else P_end."""
    if _kind(run.spec) == "projection":
        return _mapped(run, ps, g)
    return _phi(run, ps, g)


# ---------------------------------------------------------------------------------------------------------
# One write.
# ---------------------------------------------------------------------------------------------------------


def _linear_write(run: _Run, ps: Weights, ss: Weights, grads: Weights, g: dict) -> tuple[Weights, Weights]:
    """The algorithm's write (its reference_write) from kept = α ⊙ P and step = η ⊙ G (gd: P = α ⊙ P − η ⊙ G;
    momentum: S = θ ⊙ S − η ⊙ G, P = α ⊙ P + S).  Returns (P, S)."""
    spec = run.spec
    alpha = _operand(spec.retention.decay, g, 1.0)
    eta = _operand(spec.algorithm.lr, g, 0.0)
    step = _scale(eta, grads, run.depth)
    kept = _scale(alpha, ps, run.depth)
    return spec.algorithm.reference_write(kept, step, ss, lambda o, ms: _scale(_operand(o, g, 0.0), ms, run.depth))


def _lag_write(run: _Run, ws: Weights, grads: Weights, g: dict) -> Weights:
    """A lag map's own step from W_prev (Memora's: W = softmax_in(α ⊙ log max(W_prev, eps) − η ⊙ G))."""
    alpha = _operand(run.spec.retention.decay, g, 1.0)
    eta = _operand(run.spec.algorithm.lr, g, 0.0)
    return [run.spec.retention.map.reference_lag_write(w, gr, _on_matrix(alpha, l, run.depth),
                                                       _on_matrix(eta, l, run.depth))
            for l, (w, gr) in enumerate(zip(ws, grads))]


# ---------------------------------------------------------------------------------------------------------
# The two recurrences.
# ---------------------------------------------------------------------------------------------------------


def _exact(run: _Run, ps, ss, qs, ks, vs, gs):
    """One token at a time: G at W_{t-1} = φ(P_{t-1}), write, then read W_t."""
    ys = []
    is_lag = _kind(run.spec) == "lag"
    decayed = run.spec.algorithm.gradient_at == "decayed"
    for q, k, v, g in zip(qs, ks, vs, gs):
        w_prev = _phi(run, ps, g)
        # the gradient at W_{t-1} (Eq. 9), or at α_t ⊙ W_{t-1} (gradient_at = decayed, the Gated DeltaNet paper)
        at = _scale(_operand(run.spec.retention.decay, g, 1.0), w_prev, run.depth) if decayed else w_prev
        grads = _inner_grad(run, at, k, v, g)
        if is_lag:
            ps = _lag_write(run, w_prev, grads, g)
        else:
            ps, ss = _linear_write(run, ps, ss, grads, g)
            if _kind(run.spec) == "projection":
                ps = _mapped(run, ps, g)
        ys.append(_memory(run, _phi(run, ps, g), q))
    return ys, ps, ss


def _chunk(run: _Run, ps, ss, qs, ks, vs, gs, chunk_size: int):
    """One chunk: gradients at the chunk-start weights, linear accumulation, frozen-map reads."""
    if run.spec.algorithm.gradient_at == "decayed":
        raise ValueError("gradient_at = decayed has no chunk approximation (its specs are chunked exactly: use "
                         "the exact recurrence)")
    n_tok = len(qs)
    ys = []
    first = 0
    if _kind(run.spec) == "lag":
        # The lag step: token 0 takes the exact step from W' = P'; the rest of the chunk starts from W1
        # with token 0's α := 1 and η := 0, i.e. P_0 = W1. Token 0 reads W1 (= P_end if it is also last).
        w1 = _lag_write(run, ps, _inner_grad(run, ps, ks[0], vs[0], gs[0]), gs[0])
        ps = w1
        ys.append(_memory(run, w1, qs[0]))
        first = 1
    p0 = ps
    base = _phi(run, p0, gs[0])  # W' (static gates only in a map, so any token's g will do)
    kappa = _kappa(run, p0)
    for t in range(first, n_tok):
        g = gs[t]
        grads = _inner_grad(run, base, ks[t], vs[t], g)
        ps, ss = _linear_write(run, ps, ss, grads, g)
        if t == n_tok - 1 and n_tok == chunk_size:  # a complete chunk's last token reads the mapped end state
            read = _end_map(run, ps, g)
        else:
            read = [b + kp * (p - p_start) for b, kp, p, p_start in zip(base, kappa, ps, p0)]
        ys.append(_memory(run, read, qs[t]))
    if _kind(run.spec) == "projection":
        ps = _mapped(run, ps, gs[-1])
    return ys, ps, ss


def _chunked(run: _Run, ps, ss, qs, ks, vs, gs, chunk_size: int):
    ys = []
    for c0 in range(0, len(qs), chunk_size):
        sl = slice(c0, c0 + chunk_size)
        y, ps, ss = _chunk(run, ps, ss, qs[sl], ks[sl], vs[sl], gs[sl], chunk_size)
        ys.extend(y)
    return ys, ps, ss


# ---------------------------------------------------------------------------------------------------------
# The entry point.
# ---------------------------------------------------------------------------------------------------------


def _outer_param(params: dict, name: str, fill: float, b: int, h: int, d: int, dtype) -> torch.Tensor:
    x = (params or {}).get(name)
    if x is None:
        x = torch.full((h, d), fill, dtype=dtype)
    return x.to(dtype).expand(b, h, d).reshape(b * h, d)


def recurrent(
    spec: Spec,
    loss_fn: LossFn,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    gates: dict,
    params: dict,
    initial_state: tuple,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, tuple]:
    """The op of `spec` on q, k, v `[B, T, H, D]`; returns (o `[B, T, H, D]`, final state).

    gates: name -> `[B, T, H]` / `[B, T, H, D]` (data-dependent) or `[H]` / `[H, D]` (static).
    params: the memory's outer parameters (`ln_weight`, `ln_bias` of a layernorm MLP), `[H, D]` or `[D]`; absent
    means the memory's defaults (ones / zeros).
    initial_state / final state: `w1 … wL` then, with an algorithm's buffer (momentum), `s1 … sL`, each
    `[B, H, out, in]`.
    chunk_size None is the exact per-token recurrence; an int C is the chunked semantics.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if spec.retention.map is not None and spec.retention.map.buffer_refusal and spec.algorithm.buffer is not None:
        raise ValueError(f"{spec.retention.map.keyword} with {spec.algorithm.keyword} is not defined")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    b, t_len, h, d = q.shape
    n = b * h
    depth = spec.memory.depth
    n_state = 2 * depth if spec.algorithm.buffer is not None else depth
    if len(initial_state) != n_state:
        raise ValueError(f"expected {n_state} state tensors, got {len(initial_state)}")
    run = _Run(spec, loss_fn, depth, {name: _outer_param(params, name, fill, b, h, d, dtype)
                                      for name, fill in spec.memory.outer_params()})

    def rows(x: torch.Tensor, t: int) -> torch.Tensor:
        return x[:, t].to(dtype).reshape(n, d)

    qs = [rows(q, t) for t in range(t_len)]
    ks = [rows(k, t) for t in range(t_len)]
    vs = [rows(v, t) for t in range(t_len)]
    gs = [_token_gates(spec, gates, t, n, dtype) for t in range(t_len)]
    state = [s.to(dtype).reshape(n, *s.shape[2:]) for s in initial_state]
    ps, ss = state[:depth], state[depth:]

    if chunk_size is None:
        ys, ps, ss = _exact(run, ps, ss, qs, ks, vs, gs)
    else:
        ys, ps, ss = _chunked(run, ps, ss, qs, ks, vs, gs, chunk_size)

    o = torch.stack(ys, dim=0).reshape(t_len, b, h, d).transpose(0, 1).to(q.dtype)
    final = tuple(x.reshape(b, h, *x.shape[1:]) for x in ps + ss)
    return o, final
