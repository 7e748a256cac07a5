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


def _needle_rows(capsys, *argv: str) -> dict[str, tuple[float, float]]:
    """bench.needle's table as {model: (mean cosine, share nearest)}."""
    from bench.needle import main

    main([*argv, "--chunk-sizes", "64", "--trials", "4"])
    rows = [line.strip("|").split("|") for line in capsys.readouterr().out.splitlines()[2:]]
    return {r[0].strip(): (float(r[2]), float(r[3])) for r in rows}


def test_a_delta_rule_keeps_the_needle(capsys):
    # one write of a new unit key into a gated delta rule: its readout at that key moves by η_s (v − W k), the
    # haystack's later writes (other keys) move it little, so the needle's value is the nearest candidate
    cosine, nearest = _needle_rows(capsys, "--models", "gated_deltanet")["gated_deltanet"]
    assert cosine > 0.8 and nearest == 1.0


def test_the_needle_tool_takes_spec_options_and_the_layernorm_eps(capsys):
    # with its p-norm map Moneta's readout at the needle's key barely moves towards the needle's value; with the
    # identity map (normalisation = none) and the LayerNorm's eps at 1 it does (bench/README.md, S-NIAH, "Moneta's
    # map and the needle"): the options and the eps reach the op
    shipped = _needle_rows(capsys, "--models", "moneta")
    identity = _needle_rows(capsys, "--models", "moneta:normalisation=none", "--norm-eps", "1")
    assert set(identity) == {"moneta:normalisation=none"}
    assert shipped["moneta"][0] < 0.2 and identity["moneta:normalisation=none"][0] > 0.4


def test_gate_init_says_which_gates_it_cannot_reach():
    """bench.tasks --gate-init sets a start by role, but a gate whose spec declares `init` keeps it (Moneta's η
    starts at its param eta_init): the run says so instead of training from a start nobody asked for."""
    from bench.tasks import unreached_gate_inits

    (line,) = unreached_gate_inits(["moneta", "yaad", "transformer"], {"lr": 1.0})
    assert line.startswith("--gate-init lr=1 does not reach moneta's gate eta") and "at 0.2" in line, line
    assert "at 0.5" in unreached_gate_inits(["moneta:eta_init=0.5"], {"lr": 1.0})[0]
    assert unreached_gate_inits(["moneta", "yaad"], {"decay": 0.999}) == []
    assert unreached_gate_inits(["not_a_spec"], {}) == []  # without --gate-init nothing is compiled
