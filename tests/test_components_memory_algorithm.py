"""A memory architecture and a learning algorithm added from this test module alone (docs/compiler.md, "Adding a
component"): registered, checked with located errors, explained, compiled by both backends' generators, and equal
to their own reference steps.

No file of the package knows them: everything below goes through the registry (mirasc.components).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import pytest
import sympy as sp
import torch
from helpers import assert_results_close, chunked_fn, make_inputs, oracle_fn, outputs_and_grads

import mirasc
from mirasc.codegen import generate_triton
from mirasc.components import learning_algorithms, memory_architectures, register, unregister
from mirasc.components.algorithms.momentum import Momentum
from mirasc.components.base import Argument, LearningAlgorithm, MemoryArchitecture
from mirasc.derive import derive, explain
from mirasc.errors import SpecError
from mirasc.loader import load
from mirasc.spec import NO_SPAN, Operand, Span


@dataclass(frozen=True)
class RMSMemory(MemoryArchitecture):
    """M(x) = x + RMSNorm(W2 tanh(W1 x)) ⊙ w: a two-layer MLP whose output is RMS-normalised, with a weight per
    head and channel (an outer parameter)."""

    keyword: ClassVar[str] = "rms_mlp"
    arguments: ClassVar[tuple[Argument, ...]] = (Argument("eps", "number", default=1e-6),)
    depth: ClassVar[int] = 2
    expansion: ClassVar[int] = 2
    activation: ClassVar[str] = "tanh"

    eps: float = 1e-6
    span: Span = NO_SPAN

    def outer_params(self):
        return [("rms_weight", 1.0)]

    def nonlinear_reason(self):
        return "the memory is an MLP, nonlinear in its weights"

    def explain(self, fmt, act):
        return [f"memory: M(x) = x + RMSNorm(W2 tanh(W1 x)) ⊙ w, eps {self.eps:g}"]

    def lower_output(self, lw, z, x):
        g, eps = lw.g, self.eps
        mean_sq = g.ew(lambda s, n: s / n, g.sum(g.ew(lambda a: a**2, z), "o"), g.size("o"))
        normed = g.ew(lambda a, m, w: a / sp.sqrt(m + eps) * w, z, mean_sq, lw.params["rms_weight"])
        return g.ew(lambda a, b: a + b, normed, g.rename(x, i="o"))

    def reference_output(self, z, x, params):
        return x + z * torch.rsqrt(z.pow(2).mean(-1, keepdim=True) + self.eps) * params["rms_weight"]


@dataclass(frozen=True)
class EMAMomentum(LearningAlgorithm):
    """S_t = θ_t S_(t−1) − (1 − θ_t) η_t G_t; P_t = α_t P_(t−1) + S_t: momentum whose buffer is an average of the
    steps (Adam's first moment), so θ changes how long a step lasts without changing its total size."""

    keyword: ClassVar[str] = "ema_momentum"
    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("lr", "operand", low=0.0, high=math.inf, on_weights=True),
        Argument("beta", "operand", low=0.0, high=1.0, on_weights=True),
    )
    buffer: ClassVar[str | None] = "s"

    lr: Operand
    beta: Operand
    span: Span = NO_SPAN

    def explain(self, decay, operand):
        b = operand(self.beta)
        return f"  S_t = {b} ⊙ S_(t−1) − (1 − {b}) ⊙ {operand(self.lr)} ⊙ G_t;  P_t = {decay} ⊙ P_(t−1) + S_t"

    def lower_coefficients(self, decay, alpha, lr, operand):
        # momentum with the step (1 − θ) η: the same coefficients (Eq. 28) with a scaled step size
        beta = operand(self.beta)
        step = decay.g.ew(lambda e, b: (1 - b) * e, lr, beta)
        return Momentum(self.lr, self.beta).lower_coefficients(decay, alpha, step, operand)

    def reference_write(self, kept, step, buffers, scale):
        averaged = [s - b for s, b in zip(step, scale(self.beta, step))]  # (1 − β) η G
        buffers = [a - s for a, s in zip(scale(self.beta, buffers), averaged)]
        return [a + s for a, s in zip(kept, buffers)], buffers


MEMORY_SPEC = """model rms_memory
memory rms_mlp(eps = {eps})
gate alpha : scalar, range (0, 1], activation sigmoid
gate eta : scalar, range [0, 1], activation sigmoid
bias l2()
retention decay(alpha)
algorithm gd(lr = eta)
chunk 16
"""

ALGORITHM_SPEC = """model ema_memory
memory linear
gate alpha : scalar, range (0, 1], activation sigmoid
gate eta : channel, range [0, 1], activation sigmoid
gate beta : scalar, range [0, 1), activation sigmoid
bias l2()
retention decay(alpha)
algorithm ema_momentum(lr = eta, beta = beta)
chunk 16
"""

B, H, D = 2, 2, 8


@pytest.fixture
def rms_mlp():
    register(RMSMemory)
    yield RMSMemory
    unregister(RMSMemory.keyword, MemoryArchitecture)


@pytest.fixture
def ema_momentum():
    register(EMAMomentum)
    yield EMAMomentum
    unregister(EMAMomentum.keyword, LearningAlgorithm)


def test_unregistered_components_are_unknown():
    assert "rms_mlp" not in memory_architectures() and "ema_momentum" not in learning_algorithms()
    with pytest.raises(SpecError, match=r"2:8: error: unknown memory `rms_mlp` \(use `linear` or `mlp`\)"):
        load(MEMORY_SPEC.format(eps=1e-6))
    with pytest.raises(SpecError, match=r"8:11: error: unknown algorithm `ema_momentum` \(use `gd` or `momentum`\)"):
        load(ALGORITHM_SPEC)


def test_the_registry_checks_their_arguments(rms_mlp, ema_momentum):
    spec = load(MEMORY_SPEC.format(eps=1e-3))
    assert spec.memory == RMSMemory(eps=1e-3, span=spec.memory.span)
    with pytest.raises(SpecError, match=r"2:22: error: eps must be > 0, got 0"):
        load(MEMORY_SPEC.format(eps=0))
    assert "x + RMSNorm(W2 tanh(W1 x)) ⊙ w, eps 0.001" in explain(derive(spec))
    spec = load(ALGORITHM_SPEC)
    assert spec.algorithm == EMAMomentum(spec.algorithm.lr, spec.algorithm.beta, span=spec.algorithm.span)
    assert [g.roles for g in spec.gates] == [("decay",), ("lr",), ("beta",)]
    with pytest.raises(SpecError, match=r"8:41: error: beta must be in \[0, 1\], got 1.5"):
        load(ALGORITHM_SPEC.replace("beta = beta", "beta = 1.5"))
    with pytest.raises(SpecError, match=r"8:11: error: `ema_momentum` needs the argument `beta`"):
        load(ALGORITHM_SPEC.replace(", beta = beta", ""))
    assert "S_t = beta ⊙ S_(t−1) − (1 − beta) ⊙ eta ⊙ G_t" in explain(derive(spec))


def test_the_memory_equals_its_reference(rms_mlp):
    op = mirasc.compile(MEMORY_SPEC.format(eps=1e-6), backend="torch")
    assert op.meta.memory.kind == "rms_mlp" and op.meta.param_names == ["rms_weight"]
    assert op.meta.chunk_form == "approximate"
    ins = make_inputs(op, B, 9, H, D, seed=3)
    assert_results_close(outputs_and_grads(chunked_fn(op, 1), *ins), outputs_and_grads(oracle_fn(op, None), *ins),
                         1e-10, "rms_mlp C=1 vs its reference recurrence")
    ins = make_inputs(op, B, 37, H, D, seed=4)
    assert_results_close(outputs_and_grads(chunked_fn(op, 16), *ins), outputs_and_grads(oracle_fn(op, 16), *ins),
                         1e-10, "rms_mlp C=16 vs the chunked reference")


def test_the_algorithm_equals_its_reference(ema_momentum):
    op = mirasc.compile(ALGORITHM_SPEC, backend="torch")
    assert op.meta.algorithm.name == "ema_momentum" and op.meta.algorithm.buffer == "s"
    assert list(op.meta.state_shapes(B, H, D)) == ["w1", "s1"]
    ins = make_inputs(op, B, 9, H, D, seed=5)
    assert_results_close(outputs_and_grads(chunked_fn(op, 1), *ins), outputs_and_grads(oracle_fn(op, None), *ins),
                         1e-10, "ema_momentum C=1 vs its reference recurrence")
    ins = make_inputs(op, B, 37, H, D, seed=6)
    result = outputs_and_grads(chunked_fn(op, 16), *ins)
    assert_results_close(result, outputs_and_grads(oracle_fn(op, 16), *ins), 1e-10,
                         "ema_momentum C=16 vs the chunked reference")
    # the average matters: plain momentum with the same operands writes other outputs
    plain = mirasc.compile(ALGORITHM_SPEC.replace("ema_momentum(lr = eta, beta = beta)",
                                                  "momentum(lr = eta, momentum = beta)"), backend="torch")
    assert not torch.allclose(outputs_and_grads(chunked_fn(plain, 16), *ins)[0], result[0])


def test_the_triton_generator_takes_them(rms_mlp, ema_momentum):
    """The Triton module's description of what its kernels take: the memory's outer parameter and its two layers,
    the algorithm's buffer as a state field beside the weights."""
    source = generate_triton(load(MEMORY_SPEC.format(eps=1e-6)))
    assert "['rms_weight', ['o'], False]" in source and "'states': {'w1': ['h', 'i'], 'w2': ['o', 'h']}" in source
    source = generate_triton(load(ALGORITHM_SPEC))
    assert "'states': {'w1': ['o', 'i'], 's1': ['o', 'i']}" in source


def test_a_registered_memory_or_algorithm_is_part_of_the_cache_key():
    from mirasc.cachekey import cache_key

    without = cache_key(ALGORITHM_SPEC, None, "torch")
    for cls, kind in ((RMSMemory, MemoryArchitecture), (EMAMomentum, LearningAlgorithm)):
        register(cls)
        try:
            assert cache_key(ALGORITHM_SPEC, None, "torch") != without
        finally:
            unregister(cls.keyword, kind)
    assert cache_key(ALGORITHM_SPEC, None, "torch") == without


def test_the_docs_tables_are_the_registrys():
    """docs/language.md lists every memory and algorithm of the package as its signature writes it."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "language.md").read_text(encoding="utf-8")
    for cls in (*memory_architectures().values(), *learning_algorithms().values()):
        row = f"| `{cls.signature().replace('|', chr(92) + '|')}` | `{cls.__module__.replace('.', '/')}.py` |"
        assert row in text, row
