"""Self-checks of the reference oracle (`mirasc/oracle.py`) against hand-written recurrences.

Specs are built straight from the `mirasc.spec` dataclasses and the component records (no parser), losses are
written by hand.
"""

from __future__ import annotations

import pytest
import torch

from mirasc import oracle
from mirasc.components.algorithms.gd import GradientDescent
from mirasc.components.algorithms.momentum import Momentum
from mirasc.components.base import LearningAlgorithm, MemoryArchitecture
from mirasc.components.maps.kl import KLMap
from mirasc.components.maps.lq import LqMap
from mirasc.components.maps.sigmoid import SigmoidMap
from mirasc.components.maps.softthreshold import SoftThresholdMap
from mirasc.components.memories.linear import LinearMemory
from mirasc.components.memories.mlp import MLPMemory
from mirasc.spec import (
    Bias,
    Const,
    Gate,
    GateRef,
    Num,
    Retention,
    Spec,
)

F64 = torch.float64

LINEAR = LinearMemory()
MLP_LN = MLPMemory(depth=2, expansion=2, activation="gelu", residual=True, norm="layernorm")
MLP_PLAIN = MLPMemory(depth=2, expansion=2, activation="tanh", residual=False, norm="none")
MLP_DEEP = MLPMemory(depth=3, expansion=1, activation="silu", residual=True, norm="none")

# Gate ranges by role; the value generator below draws inside (lo, hi).
RANGES = {"alpha": (0.7, 1.0), "eta": (0.05, 0.4), "theta": (0.3, 0.9), "gamma": (0.0, 0.05)}


def l2(y: torch.Tensor, v: torch.Tensor, g: dict) -> torch.Tensor:
    return 0.5 * ((y - v) ** 2).sum(-1)


def dot(y: torch.Tensor, v: torch.Tensor, g: dict) -> torch.Tensor:
    return -(y * v).sum(-1)


def huber_gated(y: torch.Tensor, v: torch.Tensor, g: dict) -> torch.Tensor:
    """A loss that reads a gate, to exercise the `g` argument."""
    r = y - v
    return (g["eta"].reshape(-1, *([1] * (r.dim() - 1))) * torch.sqrt(r**2 + 0.1)).sum(-1)


def gate(name: str, kind: str = "scalar", static: bool = False) -> Gate:
    lo, hi = RANGES[name]
    return Gate(name, kind, lo, hi, True, False, None, not static)


def make_spec(memory: MemoryArchitecture, gates: list[Gate], retention: Retention,
              algorithm: LearningAlgorithm) -> Spec:
    bias = Bias(Num(0.0), "hand-written loss_fn")
    return Spec("t", "<test>", "", memory, tuple(gates), bias, retention, algorithm)


def make_gates(spec: Spec, b: int, t: int, h: int, d: int, gen: torch.Generator) -> dict:
    out = {}
    for g in spec.gates:
        shape = ([h] if not g.data_dependent else [b, t, h]) + ([d] if g.kind == "channel" else [])
        lo, hi = RANGES[g.name]
        out[g.name] = lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=F64)
    return out


def layer_shapes(spec: Spec, d: int) -> list[tuple[int, int]]:
    if spec.memory.kind == "linear":
        return [(d, d)]
    depth, hid = spec.memory.depth, spec.memory.expansion * d
    if depth == 1:
        return [(d, d)]
    return [(hid, d)] + [(hid, hid)] * (depth - 2) + [(d, hid)]


def make_state(spec: Spec, b: int, h: int, d: int, gen: torch.Generator, scale: float = 0.3) -> tuple:
    ws = []
    for out_dim, in_dim in layer_shapes(spec, d):
        w = scale * torch.randn(b, h, out_dim, in_dim, generator=gen, dtype=F64)
        if isinstance(spec.retention.map, KLMap):
            w = torch.softmax(w, dim=-1)
        ws.append(w)
    if spec.algorithm.kind == "momentum":
        ws += [0.1 * torch.randn(w.shape, generator=gen, dtype=F64) for w in ws]
    return tuple(ws)


def make_case(spec: Spec, b=2, t=7, h=2, d=4, seed=0):
    gen = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, t, h, d, generator=gen, dtype=F64) / d**0.5 for _ in range(3))
    gates = make_gates(spec, b, t, h, d, gen)
    params = {}
    if spec.memory.kind == "mlp" and spec.memory.norm == "layernorm":
        params = {
            "ln_weight": 1 + 0.1 * torch.randn(h, d, generator=gen, dtype=F64),
            "ln_bias": 0.1 * torch.randn(h, d, generator=gen, dtype=F64),
        }
    return q, k, v, gates, params, make_state(spec, b, h, d, gen)


GD = GradientDescent(GateRef("eta"))
MOMENTUM = Momentum(GateRef("eta"), GateRef("theta"))
DECAY = Retention(decay=GateRef("alpha"))

CONFIGS = {
    "linear-gd-decay": (make_spec(LINEAR, [gate("alpha"), gate("eta")], DECAY, GD), l2),
    "linear-gd-channel": (make_spec(LINEAR, [gate("alpha", "channel"), gate("eta", "channel")], DECAY, GD), l2),
    "mlp-layernorm-lq": (
        make_spec(
            MLP_LN,
            [gate("alpha", "channel"), gate("eta", "channel")],
            Retention(GateRef("alpha"), LqMap(q=4.0)),
            GD,
        ),
        l2,
    ),
    "mlp-layernorm-pnorm": (
        make_spec(
            MLP_LN,
            [gate("alpha", "channel"), gate("eta", "channel")],
            Retention(GateRef("alpha"), LqMap(q=4.0, form="pnorm")),
            GD,
        ),
        l2,
    ),
    "mlp-kl": (make_spec(MLP_PLAIN, [gate("alpha"), gate("eta")], Retention(GateRef("alpha"), KLMap()), GD), l2),
    "linear-momentum": (
        make_spec(LINEAR, [gate("alpha"), gate("eta", "channel"), gate("theta", "channel")], DECAY, MOMENTUM),
        l2,
    ),
    "mlp-momentum-channel": (
        make_spec(MLP_LN, [gate("alpha", "channel"), gate("eta"), gate("theta", "channel")], DECAY, MOMENTUM),
        huber_gated,
    ),
    "mlp-deep-sigmoid": (
        make_spec(MLP_DEEP, [gate("eta")], Retention(map=SigmoidMap()), GD),
        l2,
    ),
    "linear-softthreshold-retaining": (
        make_spec(
            LINEAR,
            [gate("alpha"), gate("eta"), gate("gamma", "channel", static=True)],
            Retention(GateRef("alpha"), SoftThresholdMap(GateRef("gamma"), "retaining")),
            GD,
        ),
        l2,
    ),
    "mlp-softthreshold-ftrl": (
        make_spec(
            MLP_PLAIN,
            [gate("eta", "channel")],
            Retention(map=SoftThresholdMap(Const(0.02), "ftrl")),
            GradientDescent(GateRef("eta")),
        ),
        l2,
    ),
}


def run(name: str, chunk_size=None, seed=0, **case):
    spec, loss = CONFIGS[name]
    q, k, v, gates, params, state = make_case(spec, seed=seed, **case)
    return oracle.recurrent(spec, loss, q, k, v, gates, params, state, chunk_size=chunk_size)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


# ---------------------------------------------------------------------------------------------------------
# (1) chunk_size = 1 is the exact recurrence; chunking changes the result but not the shapes.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunk_one_is_exact(name):
    o_exact, s_exact = run(name)
    o_one, s_one = run(name, chunk_size=1)
    assert torch.isfinite(o_exact).all()
    assert torch.equal(o_exact, o_one)
    assert len(s_exact) == len(s_one)
    for a, b in zip(s_exact, s_one):
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunking_is_a_different_op(name):
    o_exact, _ = run(name)
    o_chunk, _ = run(name, chunk_size=3)
    assert o_chunk.shape == o_exact.shape and torch.isfinite(o_chunk).all()
    assert not torch.equal(o_exact, o_chunk)
    # Any chunk longer than the sequence is the same single short chunk.
    o_t, s_t = run(name, chunk_size=8)
    o_big, s_big = run(name, chunk_size=64)
    assert torch.equal(o_t, o_big)
    assert all(torch.equal(a, b) for a, b in zip(s_t, s_big))


def test_state_order_shapes_and_dtypes():
    o, state = run("mlp-momentum-channel")
    assert o.shape == (2, 7, 2, 4) and o.dtype == F64
    assert [tuple(s.shape) for s in state] == [(2, 2, 8, 4), (2, 2, 4, 8)] * 2
    spec, loss = CONFIGS["mlp-momentum-channel"]
    q, k, v, gates, params, st = make_case(spec)

    def f32(x: torch.Tensor) -> torch.Tensor:
        return x.float()

    o32, s32 = oracle.recurrent(
        spec, loss, f32(q), f32(k), f32(v), {n: f32(g) for n, g in gates.items()},
        {n: f32(p) for n, p in params.items()}, tuple(f32(s) for s in st), chunk_size=4,
    )
    assert o32.dtype == torch.float32 and all(s.dtype == torch.float32 for s in s32)
    o64, _ = oracle.recurrent(spec, loss, q, k, v, gates, params, st, chunk_size=4)
    assert rel_err(o32.double(), o64) < 1e-5


def test_kl_rows_are_distributions():
    _, state = run("mlp-kl")
    for w in state:
        assert (w > 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), rtol=0, atol=1e-12)
    _, state = run("mlp-kl", chunk_size=3)  # linear in-chunk steps: rows still sum to 1
    for w in state:
        torch.testing.assert_close(w.sum(-1), torch.ones_like(w.sum(-1)), rtol=0, atol=1e-12)


# ---------------------------------------------------------------------------------------------------------
# (2) linear + l2 + gd: the delta rule; (3) linear + dot + decay + lr 1: gated linear attention.
# ---------------------------------------------------------------------------------------------------------


def test_delta_rule():
    spec = make_spec(LINEAR, [gate("eta")], Retention(), GD)
    q, k, v, gates, _, (s0,) = make_case(spec, seed=1)
    o, (s_end,) = oracle.recurrent(spec, l2, q, k, v, gates, {}, (s0,))
    s, outs = s0.clone(), []
    for t in range(q.shape[1]):
        kt, vt, qt, eta = k[:, t], v[:, t], q[:, t], gates["eta"][:, t, :, None, None]
        s = s - eta * ((s @ kt[..., None]) - vt[..., None]) @ kt[..., None, :]
        outs.append((s @ qt[..., None])[..., 0])
    assert rel_err(o, torch.stack(outs, 1)) < 1e-13
    assert rel_err(s_end, s) < 1e-13


def test_gated_linear_attention():
    spec = make_spec(LINEAR, [gate("alpha")], DECAY, GradientDescent(Const(1.0)))
    q, k, v, gates, _, (s0,) = make_case(spec, seed=2)
    o, _ = oracle.recurrent(spec, dot, q, k, v, gates, {}, (torch.zeros_like(s0),))
    alpha, t_len = gates["alpha"], q.shape[1]
    expect = torch.zeros_like(o)
    for t in range(t_len):
        for s in range(t + 1):
            decay = alpha[:, s + 1 : t + 1].prod(dim=1)  # [B, H]
            score = (q[:, t] * k[:, s]).sum(-1)
            expect[:, t] += (decay * score)[..., None] * v[:, s]
    assert rel_err(o, expect) < 1e-13


def test_gla_channel_decay_scales_the_key_axis():
    """A channel decay on a D x D memory scales its input (key) columns, as GLA does."""
    spec = make_spec(LINEAR, [gate("alpha", "channel")], DECAY, GradientDescent(Const(1.0)))
    q, k, v, gates, _, (s0,) = make_case(spec, seed=2)
    o, _ = oracle.recurrent(spec, dot, q, k, v, gates, {}, (torch.zeros_like(s0),))
    alpha, t_len = gates["alpha"], q.shape[1]  # [B, T, H, D]
    expect = torch.zeros_like(o)
    for t in range(t_len):
        for s in range(t + 1):
            decay = alpha[:, s + 1 : t + 1].prod(dim=1)  # [B, H, D] on the key axis
            score = (q[:, t] * decay * k[:, s]).sum(-1)
            expect[:, t] += score[..., None] * v[:, s]
    assert rel_err(o, expect) < 1e-13


def test_channel_gate_axes_of_an_mlp():
    """Layer 1 [h, D] is scaled on its columns, the last layer [D, h] on its rows."""
    n, d, hid = 2, 3, 5
    value = torch.rand(n, d, dtype=F64)
    w1, w2 = torch.ones(n, hid, d, dtype=F64), torch.ones(n, d, hid, dtype=F64)
    s1, s2 = oracle._scale(value, [w1, w2], depth=2)
    assert torch.equal(s1, value[:, None, :].expand(n, hid, d))
    assert torch.equal(s2, value[:, :, None].expand(n, d, hid))
    with pytest.raises(ValueError):
        oracle._scale(value, [w1, torch.ones(n, hid, hid, dtype=F64), w2], depth=3)


# ---------------------------------------------------------------------------------------------------------
# (4) chunked, closed form: every gradient at the chunk-start weights.
# ---------------------------------------------------------------------------------------------------------


def _chunk_closed_form(s0, q, k, v, alpha, eta, chunk, phi=lambda p: p, kappa=lambda p: 1.0):
    """P_t = A_t P' − Σ_s (A_t / A_s) η_s G_s with G_s = (W' k_s − v_s) k_sᵀ at W' = φ(P'); reads W' + κ(P_t − P'),
    the last token of each complete chunk φ(P_end) (a sequence's short last chunk reads like mid-chunk tokens).
    One head at a time would be plainer; [B, H] batching is exact too."""
    p, outs, t_len = s0, [], q.shape[1]
    for c0 in range(0, t_len, chunk):
        p0 = p
        w0, kap = phi(p0), kappa(p0)
        idx = list(range(c0, min(c0 + chunk, t_len)))
        grads = [((w0 @ k[:, s, :, :, None]) - v[:, s, :, :, None]) @ k[:, s, :, None, :] for s in idx]
        for j, t in enumerate(idx):
            a_t = alpha[:, c0 : t + 1].prod(1)[..., None, None]
            p = a_t * p0
            for i, s in enumerate(idx[: j + 1]):
                a_s = alpha[:, c0 : s + 1].prod(1)[..., None, None]
                p = p - (a_t / a_s) * eta[:, s, :, None, None] * grads[i]
            w = phi(p) if t == idx[-1] and len(idx) == chunk else w0 + kap * (p - p0)
            outs.append((w @ q[:, t, :, :, None])[..., 0])
    return torch.stack(outs, 1), p


@pytest.mark.parametrize("chunk", [7, 3])
def test_chunked_linear_closed_form(chunk):
    spec, _ = CONFIGS["linear-gd-decay"]
    q, k, v, gates, _, (s0,) = make_case(spec, seed=3)
    o, (s_end,) = oracle.recurrent(spec, l2, q, k, v, gates, {}, (s0,), chunk_size=chunk)
    o_ref, s_ref = _chunk_closed_form(s0, q, k, v, gates["alpha"], gates["eta"], chunk)
    assert rel_err(o, o_ref) < 1e-13
    assert rel_err(s_end, s_ref) < 1e-13


@pytest.mark.parametrize("chunk", [7, 3])
def test_chunked_lq_closed_form(chunk):
    """The frozen slope κ inside a chunk, the map re-applied at the last token of each complete chunk."""
    qn, eps = 3.0, 1e-6
    spec = make_spec(LINEAR, [gate("alpha"), gate("eta")], Retention(GateRef("alpha"), LqMap(q=qn, eps=eps)), GD)
    q, k, v, gates, _, (s0,) = make_case(spec, seed=4)
    o, (s_end,) = oracle.recurrent(spec, l2, q, k, v, gates, {}, (s0,), chunk_size=chunk)

    def kappa(p):
        norm = (p.abs() ** qn).sum(dim=(-2, -1), keepdim=True) ** (1 / qn)
        return 1 / (norm ** (qn - 2) + eps)

    o_ref, s_ref = _chunk_closed_form(
        s0, q, k, v, gates["alpha"], gates["eta"], chunk, phi=lambda p: kappa(p) * p, kappa=kappa
    )
    assert rel_err(o, o_ref) < 1e-13
    assert rel_err(s_end, s_ref) < 1e-13


def _pnorm_by_hand(qn: float, eps: float):
    """φ(P) = sign(P)|P|^(q−1) / (μ_q(P)^(q−2) + eps), μ_q(P) = (mean |P|^q)^(1/q), and its frozen slope
    (q − 1) mean(|P|^(q−2)) / (μ_q(P)^(q−2) + eps), written out without the oracle's helpers."""

    def norm(p):
        return ((p.abs() ** qn).mean(dim=(-2, -1), keepdim=True) ** (1 / qn)) ** (qn - 2) + eps

    def phi(p):
        return torch.sign(p) * p.abs() ** (qn - 1) / norm(p)

    def kappa(p):
        return (qn - 1) * (p.abs() ** (qn - 2)).mean(dim=(-2, -1), keepdim=True) / norm(p)

    return phi, kappa


@pytest.mark.parametrize("chunk", [7, 3])
@pytest.mark.parametrize("qn", [3.0, 4.0])
def test_chunked_pnorm_closed_form(chunk, qn):
    """The p-norm map: reads W' + κ(P_t − P') with the mean elementwise slope κ, φ(P_end) at complete chunks."""
    eps = 1e-6
    spec = make_spec(LINEAR, [gate("alpha"), gate("eta")],
                     Retention(GateRef("alpha"), LqMap(q=qn, eps=eps, form="pnorm")), GD)
    q, k, v, gates, _, (s0,) = make_case(spec, seed=4)
    o, (s_end,) = oracle.recurrent(spec, l2, q, k, v, gates, {}, (s0,), chunk_size=chunk)
    phi, kappa = _pnorm_by_hand(qn, eps)
    o_ref, s_ref = _chunk_closed_form(s0, q, k, v, gates["alpha"], gates["eta"], chunk, phi=phi, kappa=kappa)
    assert rel_err(o, o_ref) < 1e-13
    assert rel_err(s_end, s_ref) < 1e-13


def test_pnorm_exact_recurrence_by_hand():
    """Chunk size None: G at W_{t−1} = φ(A_{t−1}), A_t = α A_{t−1} − η G, y_t = φ(A_t) q_t at every token."""
    qn, eps = 4.0, 1e-6
    spec = make_spec(LINEAR, [gate("alpha"), gate("eta")],
                     Retention(GateRef("alpha"), LqMap(q=qn, eps=eps, form="pnorm")), GD)
    q, k, v, gates, _, (s0,) = make_case(spec, seed=8)
    o, (s_end,) = oracle.recurrent(spec, l2, q, k, v, gates, {}, (s0,))
    phi, _ = _pnorm_by_hand(qn, eps)
    alpha, eta = gates["alpha"][..., None, None], gates["eta"][..., None, None]
    a, outs = s0, []
    for t in range(q.shape[1]):
        w = phi(a)
        grad = ((w @ k[:, t, :, :, None]) - v[:, t, :, :, None]) @ k[:, t, :, None, :]
        a = alpha[:, t] * a - eta[:, t] * grad
        outs.append((phi(a) @ q[:, t, :, :, None])[..., 0])
    assert rel_err(o, torch.stack(outs, 1)) < 1e-13
    assert rel_err(s_end, a) < 1e-13


def test_pnorm_map_degree_and_slope():
    """The p-norm map is homogeneous of degree 1 and the identity at q = 2; the literal Eq. 24 map is of degree
    −1 at q = 4. The frozen slope is the mean of the map's elementwise derivative with the normaliser held."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(2, 6, 5, generator=gen, dtype=F64)
    pn = LqMap(q=4.0, eps=0.0, form="pnorm")
    assert rel_err(pn.reference_map(3.0 * a, None), 3.0 * pn.reference_map(a, None)) < 1e-14
    assert rel_err(LqMap(q=2.0, eps=0.0, form="pnorm").reference_map(a, None), a) < 1e-15
    lit = LqMap(q=4.0, eps=0.0)
    assert rel_err((3.0 * a) * lit.reference_slope(3.0 * a), a * lit.reference_slope(a) / 3.0) < 1e-14
    # d/dA_ij of sign(A_ij)|A_ij|^3 / N with N held = 3 A_ij^2 / N: the slope is its mean over the matrix
    n_held = pn._reference_scale(a, mean=True)
    assert rel_err(pn.reference_slope(a), (3 * a**2 * n_held).mean(dim=(-2, -1), keepdim=True)) < 1e-14


def test_kl_lag_token_by_hand():
    """C = T on a linear kl memory: exact step at token 0, then linear from W1 with gradients at W1."""
    eps = 1e-6
    spec = make_spec(LINEAR, [gate("alpha"), gate("eta")], Retention(GateRef("alpha"), KLMap(eps)), GD)
    q, k, v, gates, _, (s0,) = make_case(spec, seed=5)
    t_len = q.shape[1]
    o, (s_end,) = oracle.recurrent(spec, l2, q, k, v, gates, {}, (s0,), chunk_size=t_len)
    alpha, eta = gates["alpha"][..., None, None], gates["eta"][..., None, None]

    def grad(w, t):
        return ((w @ k[:, t, :, :, None]) - v[:, t, :, :, None]) @ k[:, t, :, None, :]

    w1 = torch.softmax(alpha[:, 0] * torch.log(s0.clamp(min=eps)) - eta[:, 0] * grad(s0, 0), dim=-1)
    p, outs = w1, [(w1 @ q[:, 0, :, :, None])[..., 0]]
    for t in range(1, t_len):
        p = alpha[:, t] * p - eta[:, t] * grad(w1, t)
        outs.append((p @ q[:, t, :, :, None])[..., 0])
    assert rel_err(o, torch.stack(outs, 1)) < 1e-13
    assert rel_err(s_end, p) < 1e-13


# ---------------------------------------------------------------------------------------------------------
# (5) Outer gradients through torch.func.grad: gradcheck in float64.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,chunk",
    [
        ("mlp-layernorm-lq", None),
        ("mlp-layernorm-lq", 2),
        ("mlp-layernorm-pnorm", None),
        ("mlp-layernorm-pnorm", 2),
        ("mlp-kl", 2),
        ("mlp-momentum-channel", 2),
        ("mlp-deep-sigmoid", 2),
    ],
)
def test_gradcheck(name, chunk):
    spec, loss = CONFIGS[name]
    q, k, v, gates, params, state = make_case(spec, b=1, t=3, h=1, d=3, seed=6)
    gate_name = spec.gates[0].name

    def f(k_, g_, s0_, *ln):
        gs = dict(gates, **{gate_name: g_})
        ps = dict(zip(["ln_weight", "ln_bias"], ln))
        o, st = oracle.recurrent(spec, loss, q, k_, v, gs, ps, (s0_, *state[1:]), chunk_size=chunk)
        return (o, *st)

    args = [k, gates[gate_name], state[0], *params.values()]
    args = [a.clone().requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_lq_zero_initial_state_has_finite_gradients():
    spec, loss = CONFIGS["mlp-layernorm-lq"]
    q, k, v, gates, params, state = make_case(spec, b=1, t=4, h=1, d=3, seed=7)
    zeros = tuple(torch.zeros_like(s).requires_grad_(True) for s in state)
    k = k.clone().requires_grad_(True)
    for chunk in (None, 2):
        o, st = oracle.recurrent(spec, loss, q, k, v, gates, params, zeros, chunk_size=chunk)
        grads = torch.autograd.grad(o.sum() + sum(s.sum() for s in st), (k, *zeros))
        assert all(torch.isfinite(g).all() for g in grads)
