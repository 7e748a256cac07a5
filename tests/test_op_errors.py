"""Bad arguments to a MemoryOp raise ValueError naming the argument; a bad spec raises SpecError with a location."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from helpers import make_inputs, model_path

import mirasc
from mirasc.sample import random_inputs

B, T, H, D = 2, 5, 2, 4


@pytest.fixture(scope="module")
def moneta():
    return mirasc.compile(model_path("moneta"), backend="torch")


@pytest.fixture(scope="module")
def retnet():
    return mirasc.compile(model_path("retnet"), backend="torch")


def _call(op, q, k, v, gates, params, state, **kw):
    return op(q, k, v, gates=gates, params=params, initial_state=state, **kw)


def _bad_cases():
    def q3(i):
        i["q"] = i["q"][:, :, 0]
        return "q"

    def k_shape(i):
        i["k"] = i["k"][:, :, :, :3]
        return "k"

    def v_shape(i):
        i["v"] = i["v"][:, :4]
        return "v"

    def int_dtype(i):
        i["q"] = i["q"].long()
        i["k"] = i["k"].long()
        i["v"] = i["v"].long()
        return "q"

    def dtype_mismatch(i):
        i["v"] = i["v"].float()
        return "v"

    def missing_gate(i):
        del i["gates"]["eta"]
        return "eta"

    def extra_gate(i):
        i["gates"]["gamma"] = i["gates"]["eta"].clone()
        return "gamma"

    def gate_shape(i):
        i["gates"]["alpha"] = i["gates"]["alpha"][..., 0]
        return "alpha"

    def gate_nan(i):
        i["gates"]["eta"] = i["gates"]["eta"].clone()
        i["gates"]["eta"][0, 0, 0, 0] = float("nan")
        return "eta"

    def gate_inf(i):
        i["gates"]["alpha"] = i["gates"]["alpha"].clone()
        i["gates"]["alpha"][0, 1, 0, 0] = float("inf")
        return "alpha"

    def gate_range(i):
        i["gates"]["alpha"] = i["gates"]["alpha"].clone()
        i["gates"]["alpha"][1, 2, 1, 3] = 1.5
        return "alpha"

    def gate_range_zero(i):
        i["gates"]["alpha"] = i["gates"]["alpha"].clone()
        i["gates"]["alpha"][0, 0, 0, 0] = 0.0  # the range is (0, 1]
        return "alpha"

    def gate_negative_eta(i):
        i["gates"]["eta"] = -i["gates"]["eta"] - 0.1
        return "eta"

    def param_name(i):
        i["params"]["ln_wieght"] = torch.ones(H, D, dtype=torch.float64)
        return "ln_wieght"

    def param_shape(i):
        i["params"]["ln_weight"] = torch.ones(H, D + 1, dtype=torch.float64)
        return "ln_weight"

    def state_len(i):
        i["state"] = i["state"][:1]
        return "initial_state"

    def state_shape(i):
        i["state"] = [i["state"][0], i["state"][1][:, :, :, :3]]
        return "initial_state"

    def chunk_zero(i):
        i["kw"] = {"chunk_size": 0}
        return "chunk_size"

    def chunk_negative(i):
        i["kw"] = {"chunk_size": -16}
        return "chunk_size"

    def empty(i):
        for n in ("q", "k", "v"):
            i[n] = i[n][:, :0]
        for n in ("alpha", "eta"):
            i["gates"][n] = i["gates"][n][:, :0]
        return "T = 0"

    return [q3, k_shape, v_shape, int_dtype, dtype_mismatch, missing_gate, extra_gate, gate_shape, gate_nan,
            gate_inf, gate_range, gate_range_zero, gate_negative_eta, param_name, param_shape, state_len,
            state_shape, chunk_zero, chunk_negative, empty]


def _entries():
    for case in _bad_cases():
        yield pytest.param(case, "call", id=f"call-{case.__name__}")
        if not case.__name__.startswith("chunk"):  # chunk_size is the op's; the oracle's None means exact
            yield pytest.param(case, "recurrent", id=f"recurrent-{case.__name__}")


@pytest.mark.parametrize("case,entry", list(_entries()))
def test_bad_argument_raises_value_error_naming_it(moneta, case, entry):
    q, k, v, gates, params, state = make_inputs(moneta, B, T, H, D)
    i = {"q": q, "k": k, "v": v, "gates": dict(gates), "params": dict(params), "state": list(state), "kw": {}}
    name = case(i)
    fn = moneta if entry == "call" else moneta.recurrent
    with pytest.raises(ValueError) as exc:
        fn(i["q"], i["k"], i["v"], gates=i["gates"], params=i["params"], initial_state=i["state"], **i["kw"])
    assert name in str(exc.value), str(exc.value)
    # the valid inputs still work
    moneta(q, k, v, gates=gates, params=params, initial_state=state)


def test_static_gate_errors(retnet):
    q, k, v, _, _, _ = make_inputs(retnet, B, T, H, D)
    with pytest.raises(ValueError, match="alpha"):
        retnet(q, k, v, gates={"alpha": torch.full((B, T, H), 0.9, dtype=torch.float64)})  # not data-dependent
    with pytest.raises(ValueError, match="alpha"):
        retnet(q, k, v, gates={"alpha": torch.tensor([0.9, 1.2], dtype=torch.float64)})
    with pytest.raises(ValueError, match="alpha"):
        retnet(q, k, v)  # gates missing altogether
    retnet(q, k, v, gates={"alpha": torch.tensor([0.9, 1.0], dtype=torch.float64)})


def test_not_a_tensor(moneta):
    q, k, v, gates, params, state = make_inputs(moneta, B, T, H, D)
    with pytest.raises(ValueError, match="k"):
        moneta(q, k.tolist(), v, gates=gates)
    with pytest.raises(ValueError, match="eta"):
        moneta(q, k, v, gates={**gates, "eta": 0.1})


def test_bad_spec_raises_spec_error():
    with pytest.raises(mirasc.SpecError) as exc:
        mirasc.compile("not a spec at all", backend="torch")
    err = exc.value
    assert err.line == 1 and err.col >= 1
    assert f"{err.line}:{err.col}" in str(err)


def test_bad_spec_location_on_later_line():
    text = "model x\nmemory linear\nbias l2()\nretention none\nalgorithm gd(lr = etaa)\n"
    with pytest.raises(mirasc.SpecError) as exc:
        mirasc.compile(text, backend="torch")
    assert exc.value.line == 5
    assert exc.value.col > 1
    assert "5:" in str(exc.value)


def test_bad_backend():
    with pytest.raises(ValueError, match="backend"):
        mirasc.compile(model_path("moneta"), backend="cuda-magic")


def test_empty_sequence_without_gates():
    op = mirasc.compile(model_path("linear_attention"), backend="torch")
    x = torch.zeros(1, 0, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="T = 0"):
        op(x, x, x)


# ------------------------------------------------------------------ value checks without host synchronisation
def _meta_inputs(op, T=70, grad=False):
    """Inputs on the meta device: shapes and dtypes but no values, so any read of a value on the host raises.
    A stand-in for CUDA tensors on a machine without a GPU (on CUDA each such read is a device sync)."""
    q, k, v, gates, params = random_inputs(op, 1, T, 2, 4, torch.float32)

    def meta(x):
        return x.to("meta").requires_grad_(grad)

    return meta(q), meta(k), meta(v), {n: meta(g) for n, g in gates.items()}


@pytest.mark.parametrize("name", ["moneta", "retnet", "gated_deltanet", "titans"])
def test_op_path_reads_no_value_off_a_device(name, monkeypatch):
    """Forward, backward and a decoding step run on tensors that have no values: nothing on the op's path (the
    checks included) reads a value back to the host. The factored programs are off: the generated module picks
    them per chunk from the gates' log-decay spread, a value it reads."""
    monkeypatch.delenv("MIRASC_CHECK", raising=False)
    op = mirasc.compile(model_path(name), backend="torch").use_factored(False)
    q, k, v, gates = _meta_inputs(op, grad=True)
    o, state = op(q, k, v, gates=gates, output_final_state=True)
    o.sum().backward()
    assert q.grad.shape == q.shape and all(g.grad.shape == g.shape for g in gates.values())
    step_gates = {g.name: (gates[g.name][:, 0] if g.data_dependent else gates[g.name])
                  for g in op.meta.gates}
    o_t, _ = op.step(q[:, 0], k[:, 0], v[:, 0], step_gates, state)
    assert o_t.shape == (1, 2, 4) and o_t.device.type == "meta"


def test_value_checks_off_a_cpu_run_only_when_asked(moneta, monkeypatch):
    """MIRASC_CHECK=1 or check=True turns the gate value checks on for non-CPU tensors (here they read a meta
    tensor's value, which raises); check=False turns them off on CPU tensors."""
    monkeypatch.delenv("MIRASC_CHECK", raising=False)
    q, k, v, gates = _meta_inputs(moneta, T=5)
    moneta._check(q, k, v, gates, None, None)  # default: no value read
    with pytest.raises(RuntimeError, match="meta"):
        moneta._check(q, k, v, gates, None, None, check=True)
    monkeypatch.setenv("MIRASC_CHECK", "1")
    with pytest.raises(RuntimeError, match="meta"):
        moneta._check(q, k, v, gates, None, None)
    moneta._check(q, k, v, gates, None, None, check=False)
    monkeypatch.setenv("MIRASC_CHECK", "0")
    moneta._check(q, k, v, gates, None, None)

    qc, kc, vc, gc, pc, sc = make_inputs(moneta, B, T, H, D)
    bad = {**gc, "alpha": gc["alpha"].clone()}
    bad["alpha"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        moneta(qc, kc, vc, gates=bad, initial_state=sc)          # CPU: checked by default
    o, _ = moneta(qc, kc, vc, gates=bad, initial_state=sc, check=False)   # asked not to: runs, and says so in NaN
    assert torch.isnan(o).any()


def test_value_checks_count_host_reads(moneta, monkeypatch):
    """On CPU the checks read two numbers per gate (one aminmax each), and none with check=False."""
    monkeypatch.delenv("MIRASC_CHECK", raising=False)
    q, k, v, gates, params, state = make_inputs(moneta, B, T, H, D)
    package = os.path.dirname(mirasc.__file__)

    calls = []
    real = torch.Tensor.item

    def counting_item(self):  # reads made by mirasc's own code (the op's checks live in mirasc.op_inputs)
        if sys._getframe(1).f_code.co_filename.startswith(package):
            calls.append(self.shape)
        return real(self)

    monkeypatch.setattr(torch.Tensor, "item", counting_item)
    moneta(q, k, v, gates=gates, initial_state=state, check=False)
    assert calls == []
    moneta(q, k, v, gates=gates, initial_state=state)
    assert len(calls) == 2 * len(gates)


@pytest.mark.parametrize("T", [1, 2])
def test_one_and_two_token_sequences(moneta, T):
    """The shortest sequences run and equal the (chunked) reference recurrence at the op's chunk size."""
    q, k, v, gates, params, state = make_inputs(moneta, 1, T, H, D)
    o, final = moneta(q, k, v, gates=gates, params=params, initial_state=state, output_final_state=True)
    o_ref, final_ref = moneta.recurrent(q, k, v, gates=gates, params=params, initial_state=state,
                                        chunk_size=moneta.meta.chunk_size)
    assert o.shape == (1, T, H, D) and torch.isfinite(o).all()
    assert torch.allclose(o, o_ref, rtol=1e-9, atol=1e-12)
    for a, b in zip(final, final_ref):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)
