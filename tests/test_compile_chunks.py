"""`op.compile_chunks()`: the generated chunk programs run through torch.compile (Inductor) give the same outputs,
final state and gradients as the eager programs (fp32): a linear memory, and an MLP memory with channel gates and a
nonlinear bias (Yaad, about 30 s of compiling on 2 cores), as `bench.tasks --torch-compile` trains them."""

from __future__ import annotations

import pytest
import torch
from helpers import MODELS_DIR, make_inputs, outputs_and_grads, rel_rms

import mirasc


def _run(op, ins, chunk):
    return outputs_and_grads(lambda q, k, v, g, p, s: op(q, k, v, gates=g, params=p, initial_state=s,
                                                         output_final_state=True, chunk_size=chunk), *ins)


@pytest.mark.skipif(not hasattr(torch, "compile"), reason="this torch has no torch.compile")
@pytest.mark.parametrize("name", ["gated_deltanet", "yaad"])
def test_compiled_chunk_programs_equal_eager(name):
    eager = mirasc.compile(MODELS_DIR / f"{name}.miras", backend="torch")
    compiled = mirasc.compile(MODELS_DIR / f"{name}.miras", backend="torch").compile_chunks()
    assert compiled.module is not eager.module and not getattr(eager.module, "_mirasc_compiled", False)
    ins = make_inputs(eager, 1, 32, 2, 16, dtype=torch.float32, seed=5)
    counters = torch._dynamo.utils.counters["stats"]
    graphs = counters["unique_graphs"]
    a, b = _run(eager, ins, 16), _run(compiled, ins, 16)
    assert counters["unique_graphs"] > graphs  # Inductor really compiled the chunk programs
    errs = {"out": rel_rms(b[0], a[0])}
    errs.update({f"state {j}": rel_rms(y, x) for j, (x, y) in enumerate(zip(a[1], b[1]))})
    errs.update({n: rel_rms(b[2][n], a[2][n]) for n in a[2]})
    assert max(errs.values()) < 1e-5, errs
