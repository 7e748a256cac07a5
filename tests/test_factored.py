"""The factored chunk programs (channel decay as e^{Λ_t} e^{-Λ_s}) and the (C, C, D) ones they stand in for.

The torch module picks per chunk: factored while the decay across the chunk stays within SPREAD_LIMIT in log
space, the (C, C, D) programs beyond. Both must equal the chunked oracle, also in one sequence that needs both.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import make_inputs, outputs_and_grads, rel_rms

import mirasc

MODELS = Path(__file__).resolve().parent.parent / "models"


def _compare(op, ins, chunk):
    a = outputs_and_grads(lambda q, k, v, g, p, s: op(q, k, v, gates=g, params=p, initial_state=s,
                                                      output_final_state=True, chunk_size=chunk), *ins)
    b = outputs_and_grads(lambda q, k, v, g, p, s: op.recurrent(q, k, v, gates=g, params=p, initial_state=s,
                                                                chunk_size=chunk), *ins)
    errs = {"out": rel_rms(a[0], b[0])}
    errs.update({f"state {j}": rel_rms(x, y) for j, (x, y) in enumerate(zip(a[1], b[1]))})
    errs.update({n: rel_rms(a[2][n], b[2][n]) for n in b[2]})
    return errs


@pytest.mark.parametrize("name", ["moneta", "memora"])
def test_strong_and_mild_decay_chunks_both_match_the_oracle(name):
    op = mirasc.compile(MODELS / f"{name}.miras", backend="torch")
    assert op.module.DECAY_INPUT == "gate_alpha" and op.module.USE_FACTORED
    ins = list(make_inputs(op, 1, 40, 2, 4, seed=11))
    alpha = ins[3]["alpha"].clone()
    alpha[:, :16] = 0.001 + 0.01 * alpha[:, :16]  # chunk 1: log-decay spread ~ 16 * 6 > SPREAD_LIMIT
    ins[3] = {**ins[3], "alpha": alpha}
    chunks = [ins[3]["alpha"][:, lo:lo + 16] for lo in (0, 16, 32)]
    spreads = [op.module.decay_spread(a) for a in chunks]
    limit = op.module.SPREAD_LIMIT
    assert spreads[0] > limit and spreads[1] < limit, spreads  # both programs run
    errs = _compare(op, ins, 16)
    assert max(errs.values()) < 1e-10, errs


def test_specs_without_channel_decay_have_one_program():
    op = mirasc.compile(MODELS / "titans.miras", backend="torch")
    assert op.module.DECAY_INPUT is None
    assert not hasattr(op.module, "chunk_forward_factored")


def test_spread_is_the_largest_over_channels():
    op = mirasc.compile(MODELS / "moneta.miras", backend="torch")
    alpha = torch.ones(3, 16, 8)
    alpha[1, :, 5] = 0.5  # one channel of one head decays by 16 log 2
    assert abs(op.module.decay_spread(alpha) - 16 * math.log(2.0)) < 1e-4


def _ladder_alpha(shape, spread, dtype):
    """Channel i decays at a constant rate, from 0 up to `spread` in log space across 64 tokens."""
    rate = torch.linspace(0.0, spread / 64, shape[-1], dtype=torch.float64)
    return torch.exp(-rate).expand(shape).to(dtype).clone()


@pytest.mark.parametrize("spread", [30.0, 200.0])
def test_fp32_mixed_channel_decay_stays_accurate(spread):
    """fp32, one chunk in which most channels barely decay and one decays by `spread`: within the limit the
    factored programs run, beyond it the (C, C, D) ones; both must stay finite and near a float64 reference.
    (A guard that looked at the least-decaying channel once sent e^{85} through the factored program.)"""
    op = mirasc.compile(MODELS / "moneta.miras", backend="torch")
    ins = list(make_inputs(op, 2, 64, 2, 16, seed=3))
    ins[3] = {**ins[3], "alpha": _ladder_alpha(ins[3]["alpha"].shape, spread, torch.float64)}
    assert (op.module.decay_spread(ins[3]["alpha"]) < op.module.SPREAD_LIMIT) == (spread < op.module.SPREAD_LIMIT)
    chosen = []
    programs = op.module._programs
    op.module._programs = lambda args: chosen.append(programs(args)[0].__name__) or programs(args)
    try:
        ref = _run(op, ins, torch.float64)
        got = _run(op, ins, torch.float32)
    finally:
        op.module._programs = programs
    assert chosen[-1] == ("chunk_forward_factored" if spread < op.module.SPREAD_LIMIT else "chunk_forward")
    errs = {"out": rel_rms(got[0], ref[0])}
    errs.update({n: rel_rms(got[2][n], ref[2][n]) for n in ref[2]})
    assert all(math.isfinite(e) for e in errs.values()) and max(errs.values()) < 1e-4, errs


def _run(op, ins, dtype):
    def cast(x):
        if isinstance(x, dict):
            return {n: t.to(dtype) for n, t in x.items()}
        return [t.to(dtype) for t in x] if isinstance(x, list) else x.to(dtype)

    return outputs_and_grads(lambda q, k, v, g, p, s: op(q, k, v, gates=g, params=p, initial_state=s,
                                                         output_final_state=True, chunk_size=64),
                             *[cast(x) for x in ins])


@pytest.mark.parametrize("name", ["moneta", "titans"])
def test_recomputing_backward_equals_the_kept_values_backward(name):
    """op.keep_forward_values(False) keeps only chunk-start states and re-runs each chunk's forward in the backward;
    outputs, state and every gradient are the same as with the kept values (float64, both against the oracle)."""
    op = mirasc.compile(MODELS / f"{name}.miras", backend="torch")
    lean = op.keep_forward_values(False)
    assert lean.module.KEEP_FORWARD_VALUES is False and op.module.KEEP_FORWARD_VALUES is True
    ins = list(make_inputs(op, 1, 40, 2, 4, seed=2))
    a, b = _compare(op, ins, 16), _compare(lean, ins, 16)
    assert max(a.values()) < 1e-10 and max(b.values()) < 1e-10, (a, b)
