"""The measuring tools under bench/ that bench/README.md's conclusions rest on, checked where the answer is known."""

import pytest
import torch

from bench.step_gain import spec_text, step_gain
from mirasc.nn.layer import MirasLayer
from mirasc.runtime import compile as compile_spec


def _gain(name: str, norm_eps: float | None = None) -> float:
    torch.manual_seed(0)
    op = compile_spec(spec_text(name, norm_eps), backend="torch")
    return step_gain(MirasLayer(op, hidden_size=32, num_heads=1), keys=4)


@pytest.mark.parametrize("name", ["deltanet", "gated_deltanet"])
def test_a_linear_memory_moves_its_readout_by_the_step_itself(name):
    # M(k) = W k: the Jacobian with respect to W is k ⊗ I, so trace(J Jᵀ)/D = |k|² = 1 for a unit key
    assert _gain(name) == pytest.approx(1.0, abs=1e-5)


def test_a_small_layernorm_eps_multiplies_the_step_by_the_inverse_spread_squared():
    tight, soft = _gain("ttt_linear", 1e-5), _gain("ttt_linear", 1.0)
    # the layer's start W x has a spread of about 0.18 for a unit key: 1/σ² ≈ 30 with the small eps, ≈ 1 with eps 1
    assert tight > 20 * soft
    assert 0.5 < soft < 1.2


def test_the_eps_switch_refuses_a_memory_without_a_layernorm():
    with pytest.raises(SystemExit, match="no LayerNorm"):
        spec_text("deltanet", 1.0)
