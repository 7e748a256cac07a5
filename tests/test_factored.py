"""The factored chunk programs (channel decay as e^{Λ_t} e^{-Λ_s}) and the (C, C, D) ones they stand in for.

The torch module picks per chunk: factored while the decay across the chunk stays within SPREAD_LIMIT in log
space, the (C, C, D) programs beyond. Both must equal the chunked oracle, also in one sequence that needs both.
"""

from __future__ import annotations

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
    op = mirasc.compile(MODELS / f"{name}.miras", backend="torch").use_factored()
    assert op.module.DECAY_INPUT == "gate_alpha"
    ins = list(make_inputs(op, 1, 40, 2, 4, seed=11))
    alpha = ins[3]["alpha"].clone()
    alpha[:, :16] = 0.001 + 0.01 * alpha[:, :16]  # chunk 1: log-decay spread ~ 16 * 6 > SPREAD_LIMIT
    ins[3] = {**ins[3], "alpha": alpha}
    chunks = [ins[3]["alpha"][:, lo:lo + 16] for lo in (0, 16, 32)]
    spreads = [float(-torch.log(a).sum(dim=1).max()) for a in chunks]
    limit = op.module.SPREAD_LIMIT
    assert spreads[0] > limit and spreads[1] < limit, spreads  # both programs run
    try:
        errs = _compare(op, ins, 16)
    finally:
        op.use_factored(False)
    assert max(errs.values()) < 1e-10, errs


def test_specs_without_channel_decay_have_one_program():
    op = mirasc.compile(MODELS / "titans.miras", backend="torch")
    assert op.module.DECAY_INPUT is None
    assert not hasattr(op.module, "chunk_forward_factored")
