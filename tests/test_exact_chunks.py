"""Exact chunking where the update is affine in the state (mirasc.chunkform, docs/semantics.md).

The delta-rule family (a linear memory, an l2-like bias, linear retention, gd) is chunked exactly: the chunked
op equals the per-token recurrence at every chunk size, in float64 to < 1e-10 relative RMS, for outputs, the
final state and every gradient (q, k, v, every gate, the initial state). T = 100 is a multiple of none of the
chunk sizes. The specs that are not affine keep the chunk approximation (tests/test_chunked.py).
"""

from __future__ import annotations

import pytest
import torch
from helpers import assert_results_close, chunked_fn, make_inputs, model_path, oracle_fn, outputs_and_grads, rel_rms

import mirasc
from mirasc.chunkform import chunk_form
from mirasc.errors import SpecError

TOL = 1e-10
B, T, H, D = 2, 100, 2, 8

# A delta rule with channel-wise (per key channel) decay, KDA-style, in both gradient placements.
CHANNEL_DELTA = """
model channel_delta
option gradient_at = decayed | previous
memory linear
gate alpha : channel, range (0, 1],   activation exp
gate eta   : scalar,  range [0, inf), activation sigmoid
bias l2()
retention decay(alpha)
when gradient_at = decayed {
    algorithm gd(lr = eta, gradient_at = decayed)
}
when gradient_at = previous {
    algorithm gd(lr = eta)
}
"""

# name -> (spec source (path or text), options)
AFFINE = {
    "deltanet": (model_path("deltanet"), None),
    "gated_deltanet": (model_path("gated_deltanet"), None),
    "gated_deltanet[previous]": (model_path("gated_deltanet"), {"gradient_at": "previous"}),
    "channel_delta": (CHANNEL_DELTA, None),
    "channel_delta[previous]": (CHANNEL_DELTA, {"gradient_at": "previous"}),
    "linear_attention": (model_path("linear_attention"), None),
}


@pytest.fixture(scope="module")
def affine_ops():
    cache: dict = {}

    def get(name):
        if name not in cache:
            src, opts = AFFINE[name]
            cache[name] = mirasc.compile(src, backend="torch", options=opts)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def exact_results(affine_ops):
    """The exact recurrence's outputs and gradients, once per (spec, initial state)."""
    cache: dict = {}

    def get(name, init):
        if (name, init) not in cache:
            op = affine_ops(name)
            ins = list(make_inputs(op, B, T, H, D, seed=4))
            if init == "zero":
                ins[5] = list(op.init_state(B, H, D, torch.float64))
                assert all(float(s.abs().max()) == 0 for s in ins[5])
            cache[(name, init)] = (ins, outputs_and_grads(oracle_fn(op, None), *ins))
        return cache[(name, init)]

    return get


@pytest.mark.parametrize("init", ["random", "zero"])
@pytest.mark.parametrize("chunk", [1, 3, 16, 64])
@pytest.mark.parametrize("name", list(AFFINE))
def test_chunked_equals_exact_recurrence(affine_ops, exact_results, name, chunk, init):
    op = affine_ops(name)
    assert op.meta.chunk_form == "exact"
    ins, want = exact_results(name, init)
    got = outputs_and_grads(chunked_fn(op, chunk), *ins)
    assert_results_close(got, want, TOL, f"{name} C={chunk} {init} initial state")


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet[previous]", "channel_delta[previous]"])
def test_the_chunk_approximation_differs(affine_ops, exact_results, name):
    """Eq. 28's approximation (the oracle's chunked mode) is far from these models: exactness is not free.
    (gradient_at = decayed has no chunk approximation; the oracle refuses it.)"""
    op = affine_ops(name)
    ins, want = exact_results(name, "random")
    q, k, v, gates, params, state = ins
    from mirasc.oracle import recurrent

    approx, _ = recurrent(op.spec, op.module.loss, q, k, v, gates, params, tuple(state), chunk_size=16)
    assert rel_rms(approx, want[0]) > 1e-2


def test_recurrent_ignores_chunk_size_when_exact(affine_ops):
    op = affine_ops("deltanet")
    q, k, v, gates, params, state = make_inputs(op, 1, 20, 2, 4, seed=1)
    a, _ = op.recurrent(q, k, v, gates=gates, initial_state=state, chunk_size=8)
    b, _ = op.recurrent(q, k, v, gates=gates, initial_state=state, chunk_size=None)
    assert torch.equal(a, b)


def test_published_form_differs_from_eq9(affine_ops):
    """gradient_at = decayed takes the gradient at α_t S_{t-1}: a different model from Eq. 9 whenever α < 1."""
    pub, eq9 = affine_ops("gated_deltanet"), affine_ops("gated_deltanet[previous]")
    ins = make_inputs(pub, 1, 30, 2, 4, seed=2)
    q, k, v, gates, params, state = ins
    a, _ = pub(q, k, v, gates=gates, initial_state=state, chunk_size=16)
    b, _ = eq9(q, k, v, gates=gates, initial_state=state, chunk_size=16)
    assert rel_rms(a, b) > 1e-3
    ones = {"alpha": torch.ones_like(gates["alpha"]), "eta": gates["eta"]}
    a, _ = pub(q, k, v, gates=ones, initial_state=state, chunk_size=16)
    b, _ = eq9(q, k, v, gates=ones, initial_state=state, chunk_size=16)
    assert rel_rms(a, b) < TOL


def test_published_form_is_the_gated_delta_rule(affine_ops):
    """S_t = α_t S_{t-1} (I − β_t k_t k_tᵀ) + β_t v_t k_tᵀ, o_t = S_t q_t, written out here by hand."""
    op = affine_ops("gated_deltanet")
    q, k, v, gates, _, state = make_inputs(op, 1, 25, 2, 4, seed=6)
    o, final = op(q, k, v, gates=gates, initial_state=state, output_final_state=True, chunk_size=16)
    s = state[0][0].clone()  # [H, D, D]: rows index v's channels, columns k's
    eye = torch.eye(4, dtype=torch.float64)
    outs = []
    for t in range(25):
        a, b = gates["alpha"][0, t], gates["eta"][0, t]
        kt, vt, qt = k[0, t], v[0, t], q[0, t]
        s = a[:, None, None] * s @ (eye - b[:, None, None] * kt[:, :, None] * kt[:, None, :]) + \
            b[:, None, None] * vt[:, :, None] * kt[:, None, :]
        outs.append(torch.einsum("hvk,hk->hv", s, qt))
    assert rel_rms(o[0], torch.stack(outs)) < TOL
    assert rel_rms(final.w1[0], s) < TOL


# --------------------------------------------------------------------------- which specs are exact, and why
def _form(text: str):
    return chunk_form(mirasc.load(text))


LINEAR = "memory linear\ngate eta : scalar, range [0, inf)\nretention none\nalgorithm gd(lr = eta)\n"


@pytest.mark.parametrize("stem,kind", [
    ("deltanet", "exact"), ("gated_deltanet", "exact"), ("linear_attention", "exact"), ("mamba2", "exact"),
    ("retnet", "exact"), ("moneta", "approximate"), ("yaad", "approximate"), ("memora", "approximate"),
    ("titans", "approximate"), ("ttt_linear", "approximate"), ("ttt_mlp", "approximate")])
def test_prebuilt_chunk_forms(stem, kind):
    form = chunk_form(mirasc.load(model_path(stem)))
    assert form.kind == kind, form.describe()


@pytest.mark.parametrize("bias,exact,why", [
    ("l2()", True, "affine"),
    ("dot()", True, "does not depend on y"),
    ("0.5 * eta * sum(r^2)", True, "affine"),           # a per-token slope h_t = eta_t
    ("sum(abs(r)^2)", True, "affine"),                   # |r|^2 = r^2 exactly (no surrogate)
    ("lp(3)", False, "not affine"),
    ("huber(1)", False, "not affine"),
    ("value_shift(0.5)", False, "reduction"),
    ("0.5 * sum(r^2) + sum(r)^2", False, "reduction"),
])
def test_chunk_form_from_the_loss(bias, exact, why):
    form = _form(LINEAR + f"bias {bias}\n")
    assert form.exact is exact, form.describe()
    assert why in form.describe()


def test_channel_varying_curvature_is_approximate():
    text = ("memory linear\ngate eta : scalar, range [0, inf)\ngate w : channel, range (0, inf)\n"
            "bias 0.5 * sum(w * r^2)\nretention none\nalgorithm gd(lr = eta)\n")
    form = _form(text)
    assert not form.exact and "varies across channels" in form.describe()


@pytest.mark.parametrize("change,why", [
    ("memory mlp(depth = 1, norm = layernorm)", "LayerNorm"),
    ("memory mlp(depth = 2, norm = none)", "depth-2"),
])
def test_nonlinear_memories_are_approximate(change, why):
    form = _form(LINEAR.replace("memory linear", change) + "bias l2()\n")
    assert not form.exact and why in form.describe()


def test_residual_linear_memory_is_exact():
    form = _form(LINEAR.replace("memory linear", "memory mlp(depth = 1, norm = none, residual = true)") + "bias l2()\n")
    assert form.exact and form.solves


def test_momentum_and_maps_are_approximate():
    mom = ("memory linear\ngate eta : scalar, range [0, inf)\ngate th : scalar, range [0, 1)\nbias l2()\n"
           "retention none\nalgorithm momentum(lr = eta, momentum = th)\n")
    assert "momentum" in _form(mom).describe()
    lq = LINEAR.replace("retention none", "retention lq(q = 4)") + "bias l2()\n"
    assert "`lq`" in _form(lq).describe()


def test_residual_memory_chunked_exactly():
    """An affine memory other than `linear` (x + W x) gets the solve too, and equals its recurrence."""
    text = LINEAR.replace("memory linear", "memory mlp(depth = 1, norm = none, residual = true)") + "bias l2()\n"
    op = mirasc.compile(text, backend="torch")
    ins = make_inputs(op, 1, 40, 2, 4, seed=8)
    assert_results_close(outputs_and_grads(chunked_fn(op, 16), *ins), outputs_and_grads(oracle_fn(op, None), *ins),
                         TOL, "residual linear memory")


def test_gradient_at_decayed_needs_an_exact_chunk_form():
    text = ("memory mlp(depth = 2)\ngate a : scalar, range (0, 1]\ngate eta : scalar, range [0, inf)\n"
            "bias l2()\nretention decay(a)\nalgorithm gd(lr = eta, gradient_at = decayed)\n")
    with pytest.raises(SpecError) as e:
        mirasc.load(text)
    assert e.value.line == 6 and e.value.col == len("algorithm gd(lr = eta, gradient_at = ") + 1
    assert "exactly chunked" in e.value.message and "depth-2" in e.value.message


def test_gradient_at_takes_a_known_word():
    with pytest.raises(SpecError) as e:
        mirasc.load(LINEAR.replace("gd(lr = eta)", "gd(lr = eta, gradient_at = decay)") + "bias l2()\n")
    assert "`decayed`" in e.value.message and e.value.line == 4


def test_explain_names_the_chunk_form():
    from mirasc.derive import derive, explain

    exact = explain(derive(mirasc.load(model_path("gated_deltanet"))))
    assert "exact: update affine in the state" in exact and "triangular" in exact
    approx = explain(derive(mirasc.load(model_path("titans"))))
    assert "chunk approximation: gradient at the chunk-start weights, Eq. 28" in approx


# --------------------------------------------------------------------------- the Triton kernels (interpreter on CPU)
@pytest.mark.parametrize("name", ["gated_deltanet", "gated_deltanet[previous]", "channel_delta[previous]", "deltanet"])
@pytest.mark.parametrize("T", [1, 40])
def test_triton_exact_chunks_equal_recurrence(affine_ops, name, T):
    """The Triton kernels run the same solve (forward substitution, and back substitution in the backward)."""
    pytest.importorskip("triton", reason="the Triton backend needs the triton package")
    src, opts = AFFINE[name]
    tri = mirasc.compile(src, backend="triton", options=opts)
    ins = make_inputs(affine_ops(name), 1, T, 2, 8, seed=T)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    moved = [x.to(device) for x in ins[:3]] + [{n: x.to(device) for n, x in ins[3].items()}, {},
                                                  [s.to(device) for s in ins[5]]]
    got = outputs_and_grads(chunked_fn(tri, 16), *moved)
    got = (got[0].cpu(), [x.cpu() for x in got[1]], {n: x.cpu() for n, x in got[2].items()})
    assert_results_close(got, outputs_and_grads(oracle_fn(affine_ops(name), None), *ins), TOL, f"triton {name}")
