"""torch.autograd.gradcheck of the chunkwise op (its hand-written backward) against finite differences.

Tiny float64 problems: B = 1, T = 5, H = 1, D = 3, chunk sizes 2 (two full chunks and a short one) and 1.
Every differentiable input is checked at once: q, k, v, every gate, the params and every initial-state tensor.
Gates are drawn well inside their ranges, so the finite-difference steps never leave them.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_inputs, model_path

import mirasc

# gate values well away from the range boundaries (0, 1 and inf)
SAFE = {"alpha": (0.88, 0.97), "eta": (0.1, 0.3), "theta": (0.2, 0.5), "delta": (0.4, 0.9)}
STEMS = ["moneta", "yaad", "memora", "titans", "ttt_linear", "gated_deltanet"]
# fast mode checks random projections of the Jacobian (the full Jacobian takes ~5 minutes for this set); chunk
# size 2 of two specs is also checked in full for the output w.r.t. q, k, v
FAST = True
VARIANTS = [(s, None) for s in STEMS] + [("yaad", {"huber_form": "token"})]


def _inputs(op, seed=0):
    q, k, v, gates, params, state = make_inputs(op, 1, 5, 1, 3, seed=seed)
    gen = torch.Generator().manual_seed(seed + 100)
    for name, x in gates.items():
        lo, hi = SAFE.get(name, (0.3, 0.7))
        gates[name] = lo + (hi - lo) * torch.rand(x.shape, generator=gen, dtype=torch.float64)
    if op.meta.map is not None and op.meta.map.name == "kl":
        # the KL state is row-stochastic; the default one has entries near 1e-3, where log's third derivative
        # (2 / W^3) makes central differences with eps = 1e-6 off by ~1e-6 relative: use flatter rows
        state = [torch.softmax(0.3 * torch.randn(s.shape, generator=gen, dtype=torch.float64), dim=-1)
                 for s in state]
    return q, k, v, gates, params, state


@pytest.mark.parametrize("chunk", [2, 1])
@pytest.mark.parametrize("stem,options", VARIANTS, ids=lambda x: x if isinstance(x, str) else
                         ("token" if x else "default"))
def test_gradcheck(stem, options, chunk):
    op = mirasc.compile(model_path(stem), backend="torch", options=options)
    q, k, v, gates, params, state = _inputs(op)
    gnames, pnames = list(gates), list(params)
    ng, np_ = len(gnames), len(pnames)
    leaves = [x.detach().clone().requires_grad_(True)
              for x in (q, k, v, *gates.values(), *params.values(), *state)]

    def fn(*xs):
        q, k, v = xs[:3]
        g = dict(zip(gnames, xs[3:3 + ng]))
        p = dict(zip(pnames, xs[3 + ng:3 + ng + np_]))
        s = list(xs[3 + ng + np_:])
        o, final = op(q, k, v, gates=g, params=p, initial_state=s, output_final_state=True, chunk_size=chunk)
        return (o, *final)

    assert torch.autograd.gradcheck(fn, tuple(leaves), eps=1e-6, atol=1e-7, rtol=1e-5,
                                     fast_mode=FAST)


@pytest.mark.parametrize("stem", ["moneta", "titans"])
def test_gradcheck_full_jacobian_q_k_v(stem):
    """The full Jacobian (slow mode) of the output with respect to q, k and v, chunk size 2."""
    op = mirasc.compile(model_path(stem), backend="torch")
    q, k, v, gates, params, state = _inputs(op, seed=1)
    leaves = tuple(x.detach().clone().requires_grad_(True) for x in (q, k, v))

    def fn(q, k, v):
        o, _ = op(q, k, v, gates=gates, params=params, initial_state=state, chunk_size=2)
        return o

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-7, rtol=1e-5, fast_mode=False)


def test_gradcheck_can_fail():
    """The harness detects a wrong backward: a function whose backward is off by a factor fails gradcheck."""

    class Wrong(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x * 2

        @staticmethod
        def backward(ctx, g):
            return g * 2.001

    x = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert not torch.autograd.gradcheck(Wrong.apply, (x,), eps=1e-6, atol=1e-7, rtol=1e-5, raise_exception=False)
