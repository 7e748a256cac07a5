"""Prebuilt specs that are classical models, against those models written out plainly with loops (float64).

State layout: `w1` is [B, H, out, in], so a value-key outer product v kᵀ has entry [o, i] = v_o k_i and the
read is S q.
"""

from __future__ import annotations

import pytest
import torch
from helpers import make_inputs, model_path, rel_rms

import mirasc

TOL = 1e-10
B, T, H, D = 2, 100, 2, 6


def _op(stem):
    return mirasc.compile(model_path(stem), backend="torch")


def gated_linear_attention(q, k, v, alpha):
    """o_t = Σ_{s≤t} (Π_{s<j≤t} α_j) (q_t·k_s) v_s and S_T = Σ_s (Π_{s<j≤T} α_j) v_s k_sᵀ, as double loops.
    alpha: [B, T, H]."""
    b_, t_, h_, d_ = q.shape
    o = torch.zeros_like(q)
    S = torch.zeros(b_, h_, d_, d_, dtype=q.dtype)
    for b in range(b_):
        for h in range(h_):
            for t in range(t_):
                acc = torch.zeros(d_, dtype=q.dtype)
                for s in range(t + 1):
                    decay = torch.prod(alpha[b, s + 1:t + 1, h])
                    acc = acc + decay * torch.dot(q[b, t, h], k[b, s, h]) * v[b, s, h]
                o[b, t, h] = acc
            for s in range(t_):
                decay = torch.prod(alpha[b, s + 1:, h])
                S[b, h] += decay * torch.outer(v[b, s, h], k[b, s, h])
    return o, S


@pytest.mark.parametrize("chunk", [16, 64])
def test_mamba2_is_gated_linear_attention(chunk):
    op = _op("mamba2")
    q, k, v, gates, _, _ = make_inputs(op, B, T, H, D, seed=1)
    alpha = gates["alpha"]
    o, state = op(q, k, v, gates=gates, output_final_state=True, chunk_size=chunk)  # zero initial state
    o_ref, S_ref = gated_linear_attention(q, k, v, alpha)
    assert rel_rms(o, o_ref) < TOL
    assert rel_rms(state.w1, S_ref) < TOL


@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_linear_attention_is_causal_sum(chunk):
    op = _op("linear_attention")
    q, k, v, _, _, _ = make_inputs(op, B, 50, H, D, seed=2)
    o, state = op(q, k, v, output_final_state=True, chunk_size=chunk)
    o_ref = torch.zeros_like(q)
    for t in range(50):
        for s in range(t + 1):
            o_ref[:, t] += torch.einsum("bhd,bhd->bh", q[:, t], k[:, s])[..., None] * v[:, s]
    S_ref = torch.einsum("bshi,bshj->bhij", v, k)
    assert rel_rms(o, o_ref) < TOL
    assert rel_rms(state.w1, S_ref) < TOL


@pytest.mark.parametrize("chunk", [1, 16, 64])
def test_retnet_static_decay(chunk):
    op = _op("retnet")
    q, k, v, _, _, _ = make_inputs(op, B, T, H, D, seed=3)
    gamma = torch.tensor([0.9, 0.97], dtype=torch.float64)  # one decay per head
    o, state = op(q, k, v, gates={"alpha": gamma}, output_final_state=True, chunk_size=chunk)
    o_ref = torch.zeros_like(q)
    for h in range(H):
        for t in range(T):
            for s in range(t + 1):
                o_ref[:, t, h] += gamma[h] ** (t - s) * (q[:, t, h] * k[:, s, h]).sum(-1, keepdim=True) * v[:, s, h]
    S_ref = torch.zeros(B, H, D, D, dtype=torch.float64)
    for h in range(H):
        for s in range(T):
            S_ref[:, h] += gamma[h] ** (T - 1 - s) * torch.einsum("bi,bj->bij", v[:, s, h], k[:, s, h])
    assert rel_rms(o, o_ref) < TOL
    assert rel_rms(state.w1, S_ref) < TOL


@pytest.mark.parametrize("chunk", [1, 16, 64])
@pytest.mark.parametrize("zero_start", [True, False])
def test_deltanet_is_delta_rule(zero_start, chunk):
    """The delta rule at every chunk size (the chunk form is exact: mirasc.chunkform)."""
    op = _op("deltanet")
    Tn = 40
    q, k, v, gates, _, state = make_inputs(op, B, Tn, H, D, seed=4)
    beta = gates["eta"]
    S0 = torch.zeros(B, H, D, D, dtype=torch.float64) if zero_start else state[0]
    o, final = op(q, k, v, gates=gates, initial_state=None if zero_start else [S0], output_final_state=True,
                  chunk_size=chunk)
    o_ref = torch.zeros_like(q)
    S = S0.clone()
    for t in range(Tn):
        for b in range(B):
            for h in range(H):
                kk, vv = k[b, t, h], v[b, t, h]
                S[b, h] = S[b, h] - beta[b, t, h] * torch.outer(S[b, h] @ kk - vv, kk)
                o_ref[b, t, h] = S[b, h] @ q[b, t, h]
    assert rel_rms(o, o_ref) < TOL
    assert rel_rms(final.w1, S) < TOL


@pytest.mark.parametrize("chunk", [1, 16, 64])
@pytest.mark.parametrize("gradient_at", ["decayed", "previous"])
def test_gated_deltanet_is_gated_delta_rule(gradient_at, chunk):
    """W_t = α_t W_{t−1} − η_t (U_t k_t − v_t) k_tᵀ with U_t = α_t W_{t−1} (the Gated DeltaNet paper, the spec's
    default) or U_t = W_{t−1} (Eq. 9, `gradient_at = previous`), at every chunk size."""
    op = mirasc.compile(model_path("gated_deltanet"), backend="torch", options={"gradient_at": gradient_at})
    Tn = 30
    q, k, v, gates, _, state = make_inputs(op, B, Tn, H, D, seed=5)
    o, final = op(q, k, v, gates=gates, initial_state=state, output_final_state=True, chunk_size=chunk)
    S = state[0].clone()
    o_ref = torch.zeros_like(q)
    for t in range(Tn):
        a = gates["alpha"][:, t][..., None, None]
        e = gates["eta"][:, t][..., None, None]
        at = a * S if gradient_at == "decayed" else S
        err = torch.einsum("bhij,bhj->bhi", at, k[:, t]) - v[:, t]
        S = a * S - e * torch.einsum("bhi,bhj->bhij", err, k[:, t])
        o_ref[:, t] = torch.einsum("bhij,bhj->bhi", S, q[:, t])
    assert rel_rms(o, o_ref) < TOL
    assert rel_rms(final.w1, S) < TOL
