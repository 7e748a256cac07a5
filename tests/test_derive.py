"""The sympy-derived inner gradient (what the chunk kernel computes) against autograd of the loss.

Route: a `memory linear` spec with the bias under test and `algorithm gd(lr = 1)`, one token, chunk size 1,
a random initial state W0. The op's final state is W0 − g_y ⊗ k, with g_y the derived gradient at y = W0 k.
It is compared with torch.func.grad of (a) the emitted loss `op.module.loss` and (b) the loss written by hand
below in torch (with the surrogate substituted as docs/language.md says), whose value must also equal the
emitted loss. Float64, 1e-10.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import rel_rms

import mirasc

TOL = 1e-10
B, H, D = 2, 3, 5

SURROGATES = {
    "exact": ("", lambda x: x.abs()),
    "sqrt": ("surrogate abs = sqrt(eps = 1e-3)", lambda x: torch.sqrt(x * x + 1e-3)),
    "logcosh": ("surrogate abs = logcosh(sharpness = 5)", lambda x: torch.log(torch.cosh(5 * x)) / 5),
}
SIGN = {
    "exact": ("", torch.sign),
    "tanh": ("surrogate sign = tanh(sharpness = 3)", lambda x: torch.tanh(3 * x)),
}


def norm2(r):
    return torch.sqrt((r * r).sum(-1))


# name -> (gate declarations, bias text (and lets/defs), uses abs, uses sign, hand loss(y, v, gates, A, S))
CASES = {
    "dot": ("", "bias dot()", False, False, lambda y, v, g, A, S: -(y * v).sum(-1)),
    "l2": ("", "bias l2()", False, False, lambda y, v, g, A, S: 0.5 * ((y - v) ** 2).sum(-1)),
    "lp1": ("", "bias lp(1)", True, False, lambda y, v, g, A, S: A(y - v).sum(-1)),
    "lp1.5": ("", "bias lp(1.5)", True, False, lambda y, v, g, A, S: (A(y - v) ** 1.5).sum(-1)),
    "lp3": ("", "param p = 3\nbias lp(p)", True, False, lambda y, v, g, A, S: (A(y - v) ** 3).sum(-1)),
    "huber": ("gate delta : channel, range (0, inf)", "bias huber(delta)", True, False,
              lambda y, v, g, A, S: torch.where((y - v).abs() <= g["delta"], 0.5 * (y - v) ** 2,
                                                g["delta"] * (A(y - v) - 0.5 * g["delta"])).sum(-1)),
    "huber_scalar": ("gate delta : scalar, range (0, inf)", "bias huber(delta)", True, False,
                     lambda y, v, g, A, S: torch.where((y - v).abs() <= g["delta"][:, None], 0.5 * (y - v) ** 2,
                                                       g["delta"][:, None] * (A(y - v) - 0.5 * g["delta"][:, None])
                                                       ).sum(-1)),
    "huber_norm": ("gate delta : scalar, range (0, inf)", "bias huber_norm(delta)", False, False,
                   lambda y, v, g, A, S: torch.where(norm2(y - v) <= g["delta"], 0.5 * norm2(y - v) ** 2,
                                                     g["delta"] * (norm2(y - v) - 0.5 * g["delta"]))),
    "huber_mix": ("gate delta : scalar, range (0, inf)", "bias huber_mix(delta)", True, False,
                  lambda y, v, g, A, S: torch.where(norm2(y - v) <= g["delta"], 0.5 * ((y - v) ** 2).sum(-1),
                                                    g["delta"] * A(y - v).sum(-1))),
    "value_shift": ("gate shift : scalar, range [0, inf)", "bias value_shift(shift)", False, False,
                    lambda y, v, g, A, S: 0.5 * ((y - v) ** 2).sum(-1) + g["shift"] * norm2(y - v)
                    + 0.5 * g["shift"] ** 2),
    "log1p_r2": ("", "bias sum(log(1 + r^2))", False, False,
                 lambda y, v, g, A, S: torch.log(1 + (y - v) ** 2).sum(-1)),
    "softplus_eta": ("gate eta : channel, range [0, inf)", "bias sum(softplus(r) * eta)", False, False,
                     lambda y, v, g, A, S: (torch.nn.functional.softplus(y - v) * g["eta"]).sum(-1)),
    "norm_times_l1": ("", "bias norm2(r) * sum(abs(r))", True, False,
                      lambda y, v, g, A, S: norm2(y - v) * A(y - v).sum(-1)),
    "where_r4_l1": ("", "bias where(sum(r^2) <= 1, sum(r^4), sum(abs(r)))", True, False,
                    lambda y, v, g, A, S: torch.where(((y - v) ** 2).sum(-1) <= 1, ((y - v) ** 4).sum(-1),
                                                      A(y - v).sum(-1))),
    "tanh_v": ("", "bias sum(tanh(r) * v)", False, False, lambda y, v, g, A, S: (torch.tanh(y - v) * v).sum(-1)),
    "sign_r2": ("", "bias sum(sign(r) * r^2)", False, True,
                lambda y, v, g, A, S: (S(y - v) * (y - v) ** 2).sum(-1)),
    "let_def": ("gate c : scalar, range (0, inf)",
                "def f(x) = x^2 / (1 + x^2)\nlet s = sum(r^2)\nbias c * sqrt(1 + s) + sum(f(r)) + max(s, 1)",
                False, False,
                lambda y, v, g, A, S: g["c"] * torch.sqrt(1 + ((y - v) ** 2).sum(-1))
                + ((y - v) ** 2 / (1 + (y - v) ** 2)).sum(-1) + torch.clamp(((y - v) ** 2).sum(-1), min=1)),
    "exp_pow": ("", "bias sum(exp(-y) * pow(abs(r), 2.5)) - sum(sigmoid(y) * v)", True, False,
                lambda y, v, g, A, S: (torch.exp(-y) * A(y - v) ** 2.5).sum(-1) - (torch.sigmoid(y) * v).sum(-1)),
}


def _cases():
    for name, (_, _, uses_abs, uses_sign, _) in CASES.items():
        for a in (SURROGATES if uses_abs else ["exact"]):
            for s in (SIGN if uses_sign else ["exact"]):
                yield pytest.param(name, a, s, id=f"{name}-abs_{a}-sign_{s}")


def _spec_text(name, abs_form, sign_form):
    gates, bias, _, _, _ = CASES[name]
    return "\n".join(["model derive_test", "memory linear", gates, bias, "retention none", "algorithm gd(lr = 1)",
                      SURROGATES[abs_form][0], SIGN[sign_form][0], ""])


def _inputs(op, seed):
    gen = torch.Generator().manual_seed(seed)
    k = torch.randn(B, 1, H, D, generator=gen, dtype=torch.float64)
    q = torch.randn(B, 1, H, D, generator=gen, dtype=torch.float64)
    W0 = torch.randn(B, H, D, D, generator=gen, dtype=torch.float64) / math.sqrt(D)
    y = torch.einsum("bhoi,bhi->bho", W0, k[:, 0])
    # residuals of assorted sizes, so both sides of every `where` (|r| vs delta, ||r|| vs delta, sum r^2 vs 1)
    # are taken: row n has scale 0.1 .. 1.5
    scale = torch.linspace(0.1, 1.5, B * H, dtype=torch.float64).reshape(B, H, 1)
    r = scale * torch.randn(B, H, D, generator=gen, dtype=torch.float64)
    v = (y - r)[:, None]
    gates = {}
    for g_name, shape in op.gate_shapes(B, 1, H, D).items():
        gates[g_name] = 0.2 + 1.0 * torch.rand(shape, generator=gen, dtype=torch.float64)
    return q, k, v, gates, W0, y


def _rows(x):
    """[B, 1, H, ...] -> [N, ...] with N = B*H (the row order the emitted loss expects)."""
    return x[:, 0].reshape(B * H, *x.shape[3:])


@pytest.mark.parametrize("name,abs_form,sign_form", list(_cases()))
def test_derived_gradient_matches_autograd(name, abs_form, sign_form):
    op = mirasc.compile(_spec_text(name, abs_form, sign_form), backend="torch")
    A, S = SURROGATES[abs_form][1], SIGN[sign_form][1]
    hand = CASES[name][4]
    for seed in range(3):
        q, k, v, gates, W0, y = _inputs(op, seed)
        _, final = op(q, k, v, gates=gates, initial_state=[W0], output_final_state=True, chunk_size=1)
        G = W0 - final.w1  # = g_y ⊗ k

        yr, vr = y.reshape(B * H, D), _rows(v)
        gr = {n: _rows(x) for n, x in gates.items()}
        emitted = torch.func.grad(lambda y_, vr=vr, gr=gr: op.module.loss(y_, vr, gr).sum())(yr)
        by_hand = torch.func.grad(lambda y_, vr=vr, gr=gr: hand(y_, vr, gr, A, S).sum())(yr)
        assert rel_rms(op.module.loss(yr, vr, gr), hand(yr, vr, gr, A, S)) < TOL, "emitted loss value"
        assert rel_rms(emitted, by_hand) < TOL, "autograd of the emitted loss vs the hand-written loss"
        want = torch.einsum("no,ni->noi", by_hand, _rows(k)).reshape(B, H, D, D)
        assert torch.isfinite(G).all()
        assert rel_rms(G, want) < TOL, f"derived gradient (seed {seed})"


def test_where_cases_take_both_branches():
    """The inputs above really straddle the `where` thresholds (else a wrong branch could go unnoticed)."""
    op = mirasc.compile(_spec_text("where_r4_l1", "exact", "exact"), backend="torch")
    below = above = 0
    for seed in range(3):
        _, _, v, _, _, y = _inputs(op, seed)
        s = ((y - v[:, 0]) ** 2).sum(-1)
        below += int((s <= 1).sum())
        above += int((s > 1).sum())
    assert below > 0 and above > 0


# Names the derivation and the emitters use inside: reduction and adjoint symbols, the channel count, the
# activation variable, the IR's argument symbols, the generated loss's locals. A gate may take any of them.
INTERNAL_LOOKING = ["R1", "R2", "R3", "R1_bar", "R2_bar", "D", "x", "a0", "a1", "_R1", "_r", "n", "gates"]
STDLIB_WITH_A_GATE = {  # bias -> (its call with the gate, the gate's range)
    "huber": ("huber({g})", "(0, inf)"), "huber_norm": ("huber_norm({g})", "(0, inf)"),
    "huber_mix": ("huber_mix({g})", "(0, inf)"), "value_shift": ("value_shift({g})", "[0, inf)"),
    "lp": ("lp(3) + {g} * sum(r^2)", "[0, inf)"), "l2": ("{g} * l2()", "[0, inf)"), "dot": ("{g} * dot()", "[0, inf)"),
}


def _gated_spec(bias: str, gate: str, rng: str) -> str:
    return (f"memory linear\ngate eta : scalar, range [0, inf)\ngate {gate} : scalar, range {rng}\n"
            f"bias {bias.format(g=gate)}\nretention none\nalgorithm gd(lr = eta)\n")


@pytest.mark.parametrize("bias", sorted(STDLIB_WITH_A_GATE))
def test_gate_names_never_collide_with_internal_symbols(bias):
    """Every stdlib bias, with its gate named like an internal symbol, derives the same update as with a plain
    name (a gate `R1` once became the reduction R1 = ||r||^2 in huber_norm's threshold)."""
    call, rng = STDLIB_WITH_A_GATE[bias]
    plain = mirasc.compile(_gated_spec(call, "delta", rng), backend="torch")
    q, k, v, gates, W0, _ = _inputs(plain, 0)
    want, _ = plain(q, k, v, gates=gates, initial_state=[W0], chunk_size=1)
    for name in INTERNAL_LOOKING:
        op = mirasc.compile(_gated_spec(call, name, rng), backend="torch")
        renamed = {"eta": gates["eta"], name: gates["delta"]}
        got, _ = op(q, k, v, gates=renamed, initial_state=[W0], chunk_size=1)
        assert rel_rms(got, want) < TOL, f"{bias} with its gate named {name}"
