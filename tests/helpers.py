"""Shared test utilities: random inputs in natural gate units, relative RMS error, gradient collection."""

from __future__ import annotations

import math

import torch

from mirasc.sample import random_inputs


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """rms(a - b) / rms(b), fla's habit (0 when both are 0). A NaN anywhere (an element a NaN-poisoned output
    never got) is an infinite error: a NaN would compare false both ways and vanish from max() over errors."""
    a, b = a.detach().double(), b.detach().double()
    den = b.pow(2).mean().sqrt()
    num = (a - b).pow(2).mean().sqrt()
    err = float(num) if den == 0 else float(num / den)
    return math.inf if math.isnan(err) else err


def make_inputs(op, B: int, T: int, H: int, D: int, dtype=torch.float64, seed: int = 0, scale_params=0.1):
    """mirasc.sample.random_inputs plus an initial state: the op's default, or (where that is all zero) small
    random matrices from the same generator, so that state gradients are exercised."""
    gen = torch.Generator().manual_seed(seed)
    q, k, v, gates, params = random_inputs(op, B, T, H, D, dtype, generator=gen, param_scale=scale_params)
    state = [s.clone() for s in op.init_state(B, H, D, dtype)]
    if state and float(sum(s.abs().sum() for s in state)) == 0.0:
        state = [0.1 * torch.randn(*s.shape, generator=gen, dtype=torch.float64).to(dtype) for s in state]
    return q, k, v, gates, params, state


def outputs_and_grads(fn, q, k, v, gates, params, state, seed: int = 1):
    """Run fn(q, k, v, gates, params, state) -> (o, final_state); return o, state and the gradients of a fixed
    random projection of both with respect to every input (q, k, v, each gate, each param, each state)."""
    leaves = [x.detach().clone().requires_grad_(True) for x in (q, k, v)]
    g_leaves = {n: x.detach().clone().requires_grad_(True) for n, x in gates.items()}
    p_leaves = {n: x.detach().clone().requires_grad_(True) for n, x in params.items()}
    s_leaves = [x.detach().clone().requires_grad_(True) for x in state]
    o, final = fn(*leaves, g_leaves, p_leaves, s_leaves)
    gen = torch.Generator().manual_seed(seed)
    def weights(x):
        return torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype=x.dtype, device=x.device)

    loss = (o * weights(o)).sum()
    for s in final:
        loss = loss + (s * weights(s)).sum()
    names = ["q", "k", "v"] + [f"gate {n}" for n in g_leaves] + [f"param {n}" for n in p_leaves] + [
        f"state {j}" for j in range(len(s_leaves))]
    tensors = leaves + list(g_leaves.values()) + list(p_leaves.values()) + s_leaves
    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
    grads = [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]
    return o.detach(), [s.detach() for s in final], dict(zip(names, grads))


# ------------------------------------------------------------------------------------------------ additions
MODELS_DIR = __import__("pathlib").Path(__file__).resolve().parent.parent / "models"
PREBUILT = sorted(p.stem for p in MODELS_DIR.glob("*.miras"))


def model_path(stem: str) -> str:
    return str(MODELS_DIR / f"{stem}.miras")


def chunked_fn(op, chunk_size):
    """fn(q, k, v, gates, params, state) -> (o, final_state) running the compiled chunkwise op."""

    def fn(q, k, v, g, p, s):
        return op(q, k, v, gates=g, params=p, initial_state=s, output_final_state=True, chunk_size=chunk_size)

    return fn


def oracle_fn(op, chunk_size):
    """fn(q, k, v, gates, params, state) -> (o, final_state) running the reference oracle."""

    def fn(q, k, v, g, p, s):
        return op.recurrent(q, k, v, gates=g, params=p, initial_state=s, chunk_size=chunk_size)

    return fn


def assert_all_finite(res, what: str = "") -> None:
    """Every output, state and gradient of an outputs_and_grads result is finite."""
    o, state, grads = res
    assert torch.isfinite(o).all(), f"{what}: output has non-finite values"
    for j, s in enumerate(state):
        assert torch.isfinite(s).all(), f"{what}: state {j} has non-finite values"
    for name, g in grads.items():
        assert torch.isfinite(g).all(), f"{what}: gradient of {name} has non-finite values"


def _close(a: torch.Tensor, b: torch.Tensor, tol: float, label: str) -> None:
    assert a.shape == b.shape, f"{label}: shape {list(a.shape)} != {list(b.shape)}"
    err = rel_rms(a, b)
    assert err < tol, f"{label}: relative RMS error {err:.3e} >= {tol:g}"
    # a relative RMS over many elements could hide a few wrong ones: bound the worst element too
    scale = float(b.detach().double().abs().max())
    worst = float((a.detach().double() - b.detach().double()).abs().max())
    assert worst <= 10 * tol * max(scale, 1e-300) or worst == 0.0, (
        f"{label}: worst element error {worst:.3e} vs max |ref| {scale:.3e}")


def assert_results_close(a, b, tol: float, what: str = "") -> None:
    """Compare two outputs_and_grads results: output, every state tensor, every gradient (all elements)."""
    assert_all_finite(a, what)
    assert_all_finite(b, what + " (reference)")
    _close(a[0], b[0], tol, f"{what}: output")
    assert len(a[1]) == len(b[1]), f"{what}: {len(a[1])} state tensors vs {len(b[1])}"
    for j, (x, y) in enumerate(zip(a[1], b[1])):
        _close(x, y, tol, f"{what}: final state {j}")
    assert a[2].keys() == b[2].keys()
    for name in a[2]:
        _close(a[2][name], b[2][name], tol, f"{what}: gradient of {name}")
