"""Autotuning the Triton kernels' launch configs (mirasc.backends.tuning), under the interpreter with a timer of the
test's own: which candidates are tried, that the fastest is kept per kernel and set of sizes and timed only once,
and that every candidate leaves the same results as the torch backend (whichever config wins, the kernels' results
must not depend on it)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import make_inputs, outputs_and_grads, rel_rms

import mirasc
from mirasc.backends import tuning
from mirasc.backends.tuning import (
    Config,
    SpillGuard,
    Tuner,
    autotune_enabled,
    candidates,
    refinements,
    spill_guard_enabled,
    tuned_configs,
)

pytest.importorskip("triton", reason="the Triton backend needs the triton package")

MODELS = Path(__file__).resolve().parent.parent / "models"
D = 8


def test_candidates_start_with_the_default_and_keep_blocks_legal():
    default = Config(num_warps=8, block_value=32, block_hidden=32)
    # on a GPU: the other warp count, half the value block for a kernel by value columns (alone and with the other
    # warp count), half the hidden block
    assert candidates(default, "columns", 64, 256, on_gpu=True) == [
        default, Config(4, 32, 32), Config(8, 16, 32), Config(4, 16, 32), Config(8, 32, 16)]
    # a kernel whose value blocks write shares of a sum varies its BV too (the launcher sizes the shares' buffer
    # from the config it launches); a linear memory (hidden = D) has no hidden block to vary
    assert candidates(default, "partial", 64, 64, on_gpu=True) == [
        default, Config(4, 32, 32), Config(8, 16, 32), Config(4, 16, 32)]
    assert candidates(default, "none", 64, 64, on_gpu=True) == [default, Config(4, 32, 32)]
    # blocks stay at least 16 on a GPU (tl.dot's smallest side): a value block of 16 (sm_80's) tries twice it, where
    # the head dim allows; under the interpreter warps mean nothing
    small = Config(num_warps=4, block_value=16, block_hidden=16)
    assert candidates(small, "columns", 64, 256, on_gpu=True) == [
        small, Config(8, 16, 16), Config(4, 32, 16), Config(8, 32, 16)]
    assert candidates(small, "columns", 16, 64, on_gpu=True) == [small, Config(8, 16, 16)]
    assert candidates(Config(4, 32, 32), "columns", 128, 128, on_gpu=True) == [
        Config(4, 32, 32), Config(8, 32, 32), Config(4, 16, 32), Config(8, 16, 32)]
    assert candidates(Config(4, 8, 32), "columns", 8, 32, on_gpu=False) == [
        Config(4, 8, 32), Config(4, 4, 32), Config(4, 8, 16)]
    # a kernel with channel-decay products: the whole chunk as one sub-chunk too (one without products has BC 0)
    products = Config(4, 32, 32, sub_chunk=16)
    assert candidates(products, "none", 64, 64, on_gpu=True, chunk_size=64) == [
        products, Config(8, 32, 32, 16), Config(4, 32, 32, 64)]
    assert candidates(Config(4, 32, 32, 64), "none", 64, 64, on_gpu=True, chunk_size=64) == [
        Config(4, 32, 32, 64), Config(8, 32, 32, 64)]
    assert candidates(default, "none", 64, 64, on_gpu=True, chunk_size=64) == [default, Config(4, 32, 32)]
    # a kernel whose transposed products are written both ways: the default with them swapped, last, on a GPU only
    assert candidates(default, "none", 64, 64, on_gpu=True, swappable=True) == [
        default, Config(4, 32, 32), Config(8, 32, 32, swap_products=True)]
    assert candidates(default, "none", 64, 64, on_gpu=False, swappable=True) == [default]
    assert candidates(default, "none", 64, 256, on_gpu=True, swappable=True)[-3:] == [
        Config(8, 32, 16), Config(8, 32, 32, swap_products=True), Config(8, 32, 16, swap_products=True)]
    # a kernel that walks the chunks: the default with its index vectors made per chunk, last, on a GPU only
    assert candidates(default, "none", 64, 64, on_gpu=True, swappable=True, walks_chunks=True) == [
        default, Config(4, 32, 32), Config(8, 32, 32, swap_products=True), Config(8, 32, 32, index_per_chunk=True)]
    assert candidates(default, "none", 64, 64, on_gpu=False, walks_chunks=True) == [default]
    # a kernel that can load its input tiles again after its loops: that form of the default, last, on a GPU only
    # and a state pass that can take both: the two at once, after each alone
    assert candidates(default, "none", 64, 64, on_gpu=True, walks_chunks=True, rereads=True)[-3:] == [
        Config(8, 32, 32, index_per_chunk=True), Config(8, 32, 32, reread_inputs=True),
        Config(8, 32, 32, index_per_chunk=True, reread_inputs=True)]
    assert candidates(default, "none", 64, 64, on_gpu=True, rereads=True)[-1] == Config(8, 32, 32, reread_inputs=True)
    assert candidates(default, "none", 64, 64, on_gpu=False, rereads=True) == [default]
    # an MLP memory's state pass: the default with its per-row parameters loaded once, last, on a GPU only
    assert candidates(default, "none", 64, 64, on_gpu=True, walks_chunks=True, rereads=True,
                      holds_params=True)[-2:] == [Config(8, 32, 32, index_per_chunk=True, reread_inputs=True),
                                                  Config(8, 32, 32, params_once=True)]
    assert candidates(default, "none", 64, 64, on_gpu=False, holds_params=True) == [default]
    # a kernel with row blocks: the whole chunk as one block, and last, twice the default's rows while under the chunk
    rows = Config(8, 32, 32, row_block=16)
    assert candidates(rows, "none", 64, 64, on_gpu=True, chunk_size=64) == [
        rows, Config(4, 32, 32, row_block=16), Config(8, 32, 32, row_block=64), Config(8, 32, 32, row_block=32)]
    assert candidates(rows, "none", 64, 64, on_gpu=True, chunk_size=64, holds_params=True)[-2:] == [
        Config(8, 32, 32, row_block=16, params_once=True), Config(8, 32, 32, row_block=32)]
    assert candidates(rows, "none", 64, 64, on_gpu=True, chunk_size=32)[-1] == Config(8, 32, 32, row_block=32)
    assert candidates(rows, "none", 64, 64, on_gpu=False, chunk_size=64) == [rows]
    # a kernel making its channel-decay products by blocks of channel columns: the whole head as one block, before
    # twice the rows; none where the block is the whole head already, or under the interpreter
    channels = Config(8, 64, 32, sub_chunk=16, row_block=16, head_block=64)
    assert candidates(channels, "none", 128, 128, on_gpu=True, chunk_size=64)[-2:] == [
        Config(8, 64, 32, 16, row_block=16, head_block=128), Config(8, 64, 32, 16, row_block=32, head_block=64)]
    whole = Config(8, 64, 32, head_block=128)
    assert candidates(whole, "none", 128, 128, on_gpu=True, chunk_size=64) == [whole, replace(whole, num_warps=4)]
    assert candidates(channels, "none", 128, 128, on_gpu=False, chunk_size=64)[-1].head_block == 64
    assert channels.constexprs(64)["BK"] == 64 and "BK" not in rows.constexprs(64)  # else the launcher's BK


def test_autotuning_is_asked_for_and_needs_a_gpu_or_a_tuner_for_the_interpreter(monkeypatch):
    monkeypatch.delenv("MIRASC_AUTOTUNE", raising=False)
    plain, for_tests = Tuner(), Tuner(timer=lambda run, config: 0.0, interpreter=True)
    assert not autotune_enabled(True, plain)  # off unless asked for
    monkeypatch.setenv("MIRASC_AUTOTUNE", "1")
    assert autotune_enabled(True, plain)
    assert not autotune_enabled(False, plain) and autotune_enabled(False, for_tests)
    tuning.set_autotune(False)
    try:
        assert not autotune_enabled(True, plain)  # the process's choice beats the environment
    finally:
        tuning.set_autotune(None)


def _run(op, ins, chunk):
    return outputs_and_grads(
        lambda q, k, v, g, p, s: op(q, k, v, gates=g, params=p, initial_state=s, output_final_state=True,
                                    chunk_size=chunk), *ins)


def _max_error(a, b) -> float:
    errors = [rel_rms(a[0], b[0])] + [rel_rms(x, y) for x, y in zip(a[1], b[1])]
    return max(errors + [rel_rms(a[2][n], b[2][n]) for n in b[2]])


# an MLP memory: ttt_mlp rather than titans, whose 28 kernels took 51 s here against 20 s
@pytest.mark.parametrize("name, prefer", [
    ("mamba2", lambda c: c.block_value),  # smallest value block first: the value-blocked kernels change config
    ("ttt_mlp", lambda c: c.block_hidden),  # smallest hidden block first
    ("gla", lambda c: -c.sub_chunk),  # channel decay: the whole chunk as one sub-chunk first
])
def test_tuned_kernels_match_torch_and_are_timed_once(name, prefer, monkeypatch):
    path = MODELS / f"{name}.miras" if name != "gla" else MODELS.parent / "bench" / "specs" / "gla.miras"
    tri = mirasc.compile(path, backend="triton")
    ref = mirasc.compile(path, backend="torch")
    timed = []

    def timer(run, config):
        run()
        timed.append(config)
        return float(prefer(config))

    tuner = Tuner(timer=timer, interpreter=True)
    monkeypatch.setattr(tuning, "TUNER", tuner)
    tuning.set_autotune(True)
    try:
        # two chunks of 8, the last partial; one head (ttt_mlp: 97 s with two, beside other jobs), as the tuning
        # under test is per kernel, not per head
        ins = make_inputs(ref, 1, 13, 1, D, dtype=torch.float64, seed=5)
        err = _max_error(_run(tri, ins, 8), _run(ref, ins, 8))
        assert err < 1e-10, err
        jobs = tri.triton_module.DESCRIPTION["kernels"]
        first = len(timed)
        assert len(tuner.best) == len(jobs)  # one choice per kernel at these sizes
        assert first == sum(len(t) for t in tuner.timings.values()) > len(jobs)  # each candidate timed once
        _run(tri, make_inputs(ref, 1, 13, 1, D, dtype=torch.float64, seed=6), 8)
        assert len(timed) == first  # the same sizes again: the choices are reused, nothing is timed
    finally:
        tuning.set_autotune(None)
    rows = {row["kernel"]: row for row in tuned_configs(tuner)}
    assert set(rows) == {f"chunk_{job}_kernel" for job in jobs}
    for job, info in jobs.items():
        row = rows[f"chunk_{job}_kernel"]
        assert row["chosen"] == min(row["seconds"], key=row["seconds"].get)
        assert row["sizes"]["D"] == str(D)
        if name == "mamba2" and info["value_blocks"] != "none":  # "partial" too: their shares' buffer follows BV
            assert row["chosen"].block_value == D // 2, (job, row)
        if name == "ttt_mlp":
            assert row["chosen"].block_hidden == 2 * D, (job, row)  # hidden 4·D in two blocks
        assert row["chosen"].sub_chunk == (8 if info["sub_chunks"] else 0), (job, row)  # sub-chunks of 4 or 8


def test_a_candidate_that_does_not_fit_is_skipped():
    from triton.runtime.errors import OutOfResources

    configs = [Config(8, 32, 32), Config(4, 32, 32)]

    def run(config):
        if config.num_warps == 8:
            raise OutOfResources(300_000, 232_448, "shared memory")

    tuner = Tuner(timer=lambda go, config: (go(), 1.0)[1], interpreter=True)
    assert tuner.choose("k", configs, run) == Config(4, 32, 32)
    with pytest.raises(RuntimeError, match="no candidate config fits"):
        tuner.choose("k2", configs[:1], run)


def test_the_spill_guard_takes_the_first_candidate_without_spills():
    configs = [Config(8, 32, 32), Config(4, 32, 32), Config(8, 16, 32), Config(4, 16, 32)]
    spills = {Config(8, 32, 32): 208, Config(4, 32, 32): 56, Config(8, 16, 32): 0, Config(4, 16, 32): 0}
    compiled = []

    def spill_bytes(config):
        compiled.append(config)
        return spills[config]

    guard = SpillGuard()
    assert guard.choose("k", configs, spill_bytes) == Config(8, 16, 32)
    assert compiled == configs[:3]  # nothing past the first without spills is compiled
    assert guard.choose("k", configs, spill_bytes) == Config(8, 16, 32) and len(compiled) == 3  # once per key
    # a default without spills is kept and is the only compile
    assert guard.choose("k2", configs, lambda c: 0) == configs[0]
    # where every candidate spills: the least (the earlier of equals); one that does not fit is passed over
    least = {Config(8, 32, 32): None, Config(4, 32, 32): 56, Config(8, 16, 32): 16, Config(4, 16, 32): 16}
    assert guard.choose("k3", configs, least.get) == Config(8, 16, 32)
    assert guard.spills["k3"] == least
    # none fits: the default (the launcher then halves BH where shared memory is short)
    assert guard.choose("k4", configs, lambda c: None) == configs[0]
    # a state pass that can hold its parameters: the least-spilling choice, then that choice with PARAMS_ONCE
    def refine(config):
        return refinements(config, on_gpu=True, holds_params=True)

    once = Config(8, 16, 32, params_once=True)
    assert guard.choose("k5", configs, {**least, once: 8}.get, refine) == once
    assert list(guard.spills["k5"]) == [*least, once]
    assert guard.choose("k6", configs, {**least, once: 24}.get, refine) == Config(8, 16, 32)  # kept: fewer
    assert guard.choose("k7", configs, lambda c: 0, refine) == configs[0]  # no spills: nothing more compiled
    assert list(guard.spills["k7"]) == configs[:1]
    assert refinements(Config(8, 16, 32), on_gpu=True, holds_params=False) == []
    assert refinements(Config(8, 16, 32), on_gpu=False, holds_params=True) == []
    # a kernel with row blocks: the choice with twice its rows, up to the whole chunk
    rows = Config(8, 16, 32, row_block=16)
    assert refinements(rows, on_gpu=True, holds_params=True, chunk_size=64) == [
        Config(8, 16, 32, row_block=16, params_once=True), Config(8, 16, 32, row_block=32)]
    assert refinements(Config(8, 16, 32, row_block=32), True, False, 64) == [Config(8, 16, 32, row_block=64)]
    assert refinements(Config(8, 16, 32, row_block=64), True, False, 64) == []
    assert refinements(rows, on_gpu=False, holds_params=False, chunk_size=64) == []


def test_the_spill_guard_is_on_for_gpu_launches_unless_turned_off(monkeypatch):
    monkeypatch.delenv("MIRASC_SPILL_GUARD", raising=False)
    assert spill_guard_enabled(True) and not spill_guard_enabled(False)
    monkeypatch.setenv("MIRASC_SPILL_GUARD", "0")
    assert not spill_guard_enabled(True)


def test_guarded_launches_match_torch(monkeypatch):
    """The launcher's path with the spill guard on, under the interpreter: a fake compile in which only the smaller
    value block is free of spills. Every value-blocked kernel launches with it (the share buffers of the "partial"
    kernels sized from it), each kernel is compiled once per set of sizes, and the results are the torch backend's."""
    from mirasc.backends import triton as launcher

    tri = mirasc.compile(MODELS / "gated_deltanet.miras", backend="triton")
    ref = mirasc.compile(MODELS / "gated_deltanet.miras", backend="torch")
    probed = []

    def spill_bytes(self, fn, info, config, args):
        probed.append((fn.__name__, config))
        return 0 if config.block_value < D or info["value_blocks"] == "none" else 64

    guard = SpillGuard()
    monkeypatch.setattr(tuning, "SPILL_GUARD", guard)
    monkeypatch.setattr(launcher, "spill_guard_enabled", lambda on_gpu: True)
    monkeypatch.setattr(launcher._Launch, "spill_bytes", spill_bytes)
    ins = make_inputs(ref, 1, 13, 2, D, dtype=torch.float64, seed=5)
    err = _max_error(_run(tri, ins, 8), _run(ref, ins, 8))
    assert err < 1e-10, err
    jobs = tri.triton_module.DESCRIPTION["kernels"]
    assert len(guard.chosen) == len(jobs)
    for key, config in guard.chosen.items():
        info = jobs[dict(key[1:])["job"]]
        assert config.block_value == (D // 2 if info["value_blocks"] != "none" else D), (key[-1], config)
    count = len(probed)
    _run(tri, make_inputs(ref, 1, 13, 2, D, dtype=torch.float64, seed=6), 8)
    assert len(probed) == count  # the same sizes again: the choices are reused
