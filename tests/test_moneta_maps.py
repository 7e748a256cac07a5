"""Moneta's three normalisations (docs/semantics.md, "Boundary maps"): the literal Eq. 24 map, the p-norm mirror
map and q = 2; the checker's rules for `lq(form = ...)`, what explain prints, and the compiled op's map against
the formulas written out here. Chunked-vs-oracle equality of every variant is in tests/test_chunked.py."""

from __future__ import annotations

import pytest
import torch
from helpers import make_inputs, model_path, rel_rms

import mirasc
from mirasc.components.maps.lq import LqMap
from mirasc.errors import SpecError

BASE = """model m
memory mlp(depth = 2, expansion = 2)
gate alpha : channel, range (0, 1], activation sigmoid
gate eta : channel, range [0, inf), activation softplus
bias l2()
retention decay(alpha) + {map}
algorithm gd(lr = eta)
"""


def _map(text: str):
    return mirasc.load(BASE.format(map=text)).retention.map


def test_lq_forms_parse():
    assert _map("lq(q = 4)") == LqMap(q=4.0, form="literal", span=_map("lq(q = 4)").span)
    m = _map("lq(q = 3, form = pnorm, eps = 1e-8)")
    assert (m.q, m.form, m.eps) == (3.0, "pnorm", 1e-8)
    assert _map("lq(q = 2, form = pnorm)").form == "pnorm"


@pytest.mark.parametrize("text,msg", [
    ("lq(q = 2.5, form = pnorm)", "q = 2 or q ≥ 3"),
    ("lq(q = 1.5, form = pnorm)", "q = 2 or q ≥ 3"),
    ("lq(q = 4, form = dual)", "form must be one of"),
])
def test_lq_form_errors_are_located(text, msg):
    with pytest.raises(SpecError) as ei:
        _map(text)
    assert msg in str(ei.value)
    assert ":6:" in str(ei.value)  # the retention line


def test_moneta_offers_three_normalisations_and_defaults_to_pnorm():
    forms = {}
    for opt in ("pnorm", "lq", "none"):
        forms[opt] = mirasc.load("moneta", {"normalisation": opt}).retention.map
    assert forms["pnorm"] == LqMap(q=4.0, form="pnorm", span=forms["pnorm"].span)
    assert forms["lq"].form == "literal" and forms["lq"].q == 4.0
    assert forms["none"] is None
    assert dict(mirasc.load("moneta").options)["normalisation"] == "pnorm"
    assert mirasc.load("moneta", {"q": 3}).retention.map.q == 3.0


def test_explain_names_the_form():
    from mirasc.derive import derive, explain

    text = explain(derive(mirasc.load("moneta")))
    assert "p-norm mirror map" in text and "sign(P_t)" in text
    assert "Eq. 24 as printed" in explain(derive(mirasc.load("moneta", {"normalisation": "lq"})))


def _by_hand(a: torch.Tensor, q: float, eps: float = 1e-6) -> torch.Tensor:
    mu = (a.abs() ** q).mean(dim=(-2, -1), keepdim=True) ** (1 / q)
    return torch.sign(a) * a.abs() ** (q - 1) / (mu ** (q - 2) + eps)


@pytest.mark.parametrize("form", ["pnorm", "lq"])
def test_compiled_op_reads_the_mapped_state_at_chunk_ends(form):
    """C = 1: every token reads φ(A_t) of the state it carries. The op's output at T = 1 from a given state equals
    the memory evaluated at φ of the written state, φ by hand (p-norm) or A / ||A||_4^2 (literal)."""
    op = mirasc.compile(model_path("moneta"), backend="torch", options={"normalisation": form})
    q, k, v, gates, params, state = make_inputs(op, 1, 1, 1, 4, seed=2)
    o, (a1, a2) = op(q, k, v, gates=gates, params=params, initial_state=state, output_final_state=True,
                     chunk_size=1)

    def phi(a):
        if form == "pnorm":
            return _by_hand(a, 4.0)
        return a / ((a.abs() ** 4).sum(dim=(-2, -1), keepdim=True) ** 0.5 + 1e-6)

    w1, w2 = phi(a1[0, 0]), phi(a2[0, 0])
    x = q[0, 0, 0]
    h = torch.nn.functional.gelu(w1 @ x)
    z = w2 @ h
    ln = torch.nn.functional.layer_norm(z, (z.shape[-1],), params["ln_weight"][0], params["ln_bias"][0], eps=1e-5)
    assert rel_rms(o[0, 0, 0], x + ln) < 1e-10


def test_pnorm_map_scale_does_not_depend_on_the_matrix_size():
    """The power mean keeps the map's slope O(1) at any width: the same entry distribution gives the same
    per-entry scale of W in a 4 x 4 and a 64 x 64 matrix (a sum-normalised map would shrink by 16^(1/2))."""
    gen = torch.Generator().manual_seed(0)
    small = torch.randn(4, 4, generator=gen, dtype=torch.float64)
    big = torch.randn(64, 64, generator=gen, dtype=torch.float64)
    ratio = float(_by_hand(big, 4.0).std() / _by_hand(small, 4.0).std())
    assert 0.5 < ratio < 2.0
