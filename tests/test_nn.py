"""mirasc.nn: the Miras token mixer and the attention / block layer (tiny fp32 sizes)."""

from __future__ import annotations

import pytest
import torch

from mirasc.nn import CausalAttention, MirasBlock, MirasLayer, build_mixer, gate_activation, gate_init_value

HID, HEADS = 32, 2


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # tiny tensors: thread start-up and contention dominate on a shared machine
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def rel(a, b):
    return ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def layer(name, **kw):
    torch.manual_seed(0)
    return MirasLayer(f"models/{name}.miras", HID, HEADS, **kw)


@pytest.mark.parametrize("name", ["moneta", "titans", "gated_deltanet", "retnet"])
def test_shapes_and_gate_init(name):
    m = layer(name)
    x = torch.randn(2, 9, HID)
    y, cache = m(x)
    assert y.shape == x.shape and cache is None and torch.isfinite(y).all()
    for g in m.op.meta.gates:
        val = m.gates(x)[g.name]
        want = gate_init_value(g)
        # near the target on average, with a small data-dependent spread (its width follows the activation's slope
        # there: softplus at 0.5 has slope 0.39, so eta spreads over about ±0.2)
        scale = max(1.0, abs(want))
        assert abs(val.mean().item() - want) < 0.05 * scale, (g.name, val.mean())
        assert (val - want).abs().max() < 0.3 * scale, (g.name, val.min(), val.max())
    gates = {g.name: g for g in m.op.meta.gates}
    if "alpha" in gates:
        assert abs(m.gates(x)["alpha"].mean().item() - 0.99) < 0.005


def test_gate_activations_respect_ranges():
    z = torch.tensor([-200.0, -5.0, 0.0, 5.0, 200.0])
    cases = [("alpha", 0.0, 1.0, True, False, "exp"), ("alpha", 0.0, 1.0, True, False, "sigmoid"),
             ("theta", 0.0, 1.0, False, True, "sigmoid"), ("delta", 0.0, float("inf"), True, True, "softplus"),
             ("eta", 0.0, float("inf"), False, True, "sigmoid"), ("x", -1.0, 1.0, False, False, "tanh")]
    from mirasc.nn.gates import clamp_to_range
    from mirasc.opmeta import GateInfo

    for name, lo, hi, lo_open, hi_open, act in cases:
        g = GateInfo(name=name, low=lo, high=hi, low_open=lo_open, high_open=hi_open, activation=act, kind="scalar",
                     data_dependent=True)
        v = clamp_to_range(gate_activation(g)(z), g)
        assert (v > lo if lo_open else v >= lo).all() and (v < hi if hi_open else v <= hi).all(), (g, v)
    g = GateInfo(name="alpha", low=0.0, high=1.0, low_open=True, high_open=False, activation="exp", kind="scalar",
                 data_dependent=True)
    assert torch.allclose(gate_activation(g)(torch.tensor([0.0])), torch.exp(-torch.log(torch.tensor([2.0]))))


@pytest.mark.parametrize("name", ["moneta", "titans", "gated_deltanet"])
def test_causal(name):
    m = layer(name, chunk_size=4)
    x = torch.randn(2, 11, HID)
    y, _ = m(x)
    for t in (0, 3, 6, 9):
        x2 = x.clone()
        x2[:, t + 1:] = torch.randn_like(x2[:, t + 1:])
        y2, _ = m(x2)
        assert torch.equal(y[:, :t + 1], y2[:, :t + 1]), t


def _segments(lens):
    torch.manual_seed(1)
    return [torch.randn(1, n, HID) for n in lens]


@pytest.mark.parametrize("name", ["moneta", "titans", "gated_deltanet", "attention", "swa"])
def test_packed_padded_alone(name):
    if name == "attention":
        m = CausalAttention(HID, HEADS)
    elif name == "swa":
        m = CausalAttention(HID, HEADS, window=3)
    else:
        m = layer(name, chunk_size=4, use_rope=True)
    lens, T = [5, 10, 7], 10
    xs = _segments(lens)
    alone = [m(x)[0][0] for x in xs]
    tol = 1e-6
    yp, _ = m(torch.cat(xs, 1), cu_seqlens=torch.tensor([0, 5, 15, 22]))
    for a, b, ya in zip([0, 5, 15], [5, 15, 22], alone):
        assert rel(yp[0, a:b], ya) < tol
    for side in ("right", "left"):
        x = torch.zeros(3, T, HID)
        mask = torch.zeros(3, T, dtype=torch.long)
        for i, (s, n) in enumerate(zip(xs, lens)):
            sl = slice(0, n) if side == "right" else slice(T - n, T)
            x[i, sl], mask[i, sl] = s[0], 1
        y, _ = m(x, attention_mask=mask)
        for i, n in enumerate(lens):
            sl = slice(0, n) if side == "right" else slice(T - n, T)
            assert rel(y[i, sl], alone[i]) < tol, (side, i)
            assert (y[i][mask[i] == 0] == 0).all()


def _decode_all(m, x, prefix):
    y0, cache = m(x[:, :prefix], use_cache=True)
    ys = [y0]
    for t in range(prefix, x.shape[1]):
        yt, cache = m(x[:, t:t + 1], cache=cache, use_cache=True)
        ys.append(yt)
    return torch.cat(ys, 1)


@pytest.mark.parametrize("name,chunk", [("gated_deltanet", 1), ("titans", 1), ("mamba2", None), ("attention", None),
                                        ("swa", None)])
def test_cached_decoding_equals_full(name, chunk):
    torch.manual_seed(2)
    if name == "attention":
        m = CausalAttention(HID, HEADS)
    elif name == "swa":
        m = CausalAttention(HID, HEADS, window=4)
    else:
        m = layer(name, chunk_size=chunk, use_rope=True)
    x = torch.randn(2, 12, HID)
    y, _ = m(x)
    assert rel(_decode_all(m, x, 5), y) < 1e-5
    assert rel(_decode_all(m, x, 1), y) < 1e-5


@pytest.mark.parametrize("name", ["moneta", "memora", "titans", "gated_deltanet"])
@pytest.mark.parametrize("prefix", [1, 5, 8])
def test_chunked_decoding_equals_prefix_forwards(name, prefix):
    """chunk 4 > 1: decoding reproduces the chunked forward (gradients at the chunk-start memory, Moneta's lq map
    and Memora's lag step at chunk boundaries): each token's output equals a forward of the sequence up to it,
    and equals one forward of the whole sequence."""
    torch.manual_seed(3)
    m = layer(name, chunk_size=4, use_rope=True)
    x = torch.randn(2, 13, HID)
    y = _decode_all(m, x, prefix)
    want = torch.cat([m(x[:, :prefix])[0]] + [m(x[:, :t + 1])[0][:, -1:] for t in range(prefix, x.shape[1])], 1)
    assert rel(y, want) < 1e-5
    assert rel(y, m(x)[0]) < 1e-5


def test_left_padded_chunked_decode():
    m = layer("moneta", chunk_size=4)
    lens, T, steps = [3, 6], 6, 6
    xs = _segments(lens)
    x = torch.zeros(2, T, HID)
    mask = torch.zeros(2, T, dtype=torch.long)
    for i, (s, n) in enumerate(zip(xs, lens)):
        x[i, T - n:], mask[i, T - n:] = s[0], 1
    _, cache = m(x, attention_mask=mask, use_cache=True)
    nxt = torch.randn(2, steps, HID)
    for t in range(steps):
        mask = torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1)
        y, cache = m(nxt[:, t:t + 1], attention_mask=mask, cache=cache, use_cache=True)
        for i in range(2):
            ref = m(torch.cat([xs[i], nxt[i:i + 1, :t + 1]], 1))[0][0, -1]
            assert rel(y[i, 0], ref) < 1e-5, (t, i)


def test_left_padded_prefill_then_decode():
    m = layer("titans", chunk_size=1)
    lens, T = [3, 6], 6
    xs = _segments(lens)
    x = torch.zeros(2, T, HID)
    mask = torch.zeros(2, T, dtype=torch.long)
    for i, (s, n) in enumerate(zip(xs, lens)):
        x[i, T - n:], mask[i, T - n:] = s[0], 1
    _, cache = m(x, attention_mask=mask, use_cache=True)
    nxt = torch.randn(2, 1, HID)
    y, cache = m(nxt, attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), cache=cache,
                 use_cache=True)
    for i in range(2):
        ref = m(torch.cat([xs[i], nxt[i:i + 1]], 1))[0][0, -1]
        assert rel(y[i, 0], ref) < 1e-5


@pytest.mark.parametrize("name", ["titans", "moneta", "retnet"])
def test_gradients_reach_every_parameter(name):
    m = layer(name, chunk_size=4)
    block = MirasBlock(HID, m)
    x = torch.randn(2, 9, HID)
    y, _ = block(x)
    y.pow(2).mean().backward()
    names = [n for n, _ in block.named_parameters()]
    assert any("initial_state" in n for n in names)
    if m.op.meta.params:
        assert any("memory_params" in n for n in names)
    for n, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_build_mixer_hybrid():
    mixers = [build_mixer(i, HID, HEADS, spec="models/gated_deltanet.miras", hybrid=True, window=8)
              for i in range(4)]
    assert [type(x).__name__ for x in mixers] == ["MirasLayer", "CausalAttention"] * 2
    assert mixers[1].window == 8
    assert isinstance(build_mixer(0, HID, HEADS, mixer="attention"), CausalAttention)


def test_deepcopy_shares_the_op():
    import copy

    m = layer("titans")
    m2 = copy.deepcopy(m)
    x = torch.randn(1, 5, HID)
    assert m2.op is m.op and m2.q_proj.weight is not m.q_proj.weight
    assert torch.equal(m(x)[0], m2(x)[0])


def test_qkv_projections_keep_their_scale_inside_a_model():
    """The projections that feed the memory get nn.Linear's default U(±1/sqrt(fan_in)) even when the model's
    generic init (initializer_range 0.02) runs over every Linear: with normal(0, 0.02) the MLP memories do not learn
    (bench/README.md, "Initialisation"). The output gate and projection keep the model's init."""
    pytest.importorskip("transformers", reason="MirasForCausalLM needs transformers (the hf extra)")
    from mirasc.models import MirasConfig, MirasForCausalLM

    torch.manual_seed(0)
    hid = 64
    model = MirasForCausalLM(MirasConfig(spec="titans", vocab_size=64, hidden_size=hid, num_hidden_layers=1,
                                         num_heads=2, initializer_range=0.02))
    mixer = model.model.layers[0].mixer
    bound = hid ** -0.5
    for lin in (mixer.q_proj, mixer.k_proj, mixer.v_proj):
        w = lin.weight
        assert float(w.abs().max()) <= bound
        assert abs(float(w.std()) - bound / 3 ** 0.5) < 0.1 * bound  # uniform: std = bound / sqrt(3), not 0.02
    assert abs(float(mixer.o_proj.weight.std()) - 0.02) < 0.004
    assert abs(float(mixer.g_proj.weight.std()) - 0.02) < 0.004


def test_qkv_init_std_restores_a_normal_init(monkeypatch):
    monkeypatch.setattr(MirasLayer, "qkv_init_std", 0.02)
    m = layer("titans")
    for lin in (m.q_proj, m.k_proj, m.v_proj):
        assert abs(float(lin.weight.std()) - 0.02) < 0.003


def test_memory_layernorm_gain_starts_where_the_spec_says(monkeypatch):
    """`norm_start = identity` (titans): gain 1; `unit` (moneta): 1/sqrt(D); the ablation's c: c/sqrt(D) for all."""
    def gain(m):
        return m.memory_params["ln_weight"]

    titans, moneta = layer("titans"), layer("moneta")
    assert torch.equal(gain(titans), torch.ones_like(gain(titans)))
    assert torch.allclose(gain(moneta), torch.full_like(gain(moneta), moneta.head_dim ** -0.5))
    assert torch.equal(moneta.memory_params["ln_bias"], titans.memory_params["ln_bias"])
    monkeypatch.setattr(MirasLayer, "norm_gain_init", 0.5)
    for m in (layer("titans"), layer("moneta")):
        assert torch.allclose(gain(m), torch.full_like(gain(m), 0.5 / m.head_dim ** 0.5))
    assert dict(layer("gated_deltanet").memory_params) == {}  # no LayerNorm: nothing to scale


def test_kl_map_gets_its_own_eta_init():
    """Memora's KL map steps in log space: its learning rate starts at GATE_INIT_FOR_MAP's 2, the others (whose spec
    declares no `init`) at GATE_INIT's 0.5."""
    from mirasc.nn.gates import GATE_INIT, GATE_INIT_FOR_MAP

    x = torch.randn(2, 5, HID)
    assert abs(layer("memora").gates(x)["eta"].mean().item() - GATE_INIT_FOR_MAP["kl"]["lr"]) < 0.1
    assert abs(layer("titans").gates(x)["eta"].mean().item() - GATE_INIT["lr"]) < 0.05
    assert GATE_INIT_FOR_MAP["kl"]["lr"] != GATE_INIT["lr"]


def test_gates_start_by_their_role_not_their_name():
    """A spec that names its gates freely gets the same initial values as the prebuilt names: the layer reads each
    gate's role (what the spec uses it as) from the op's typed metadata."""
    text = """
        memory linear
        gate keep : scalar, range (0, 1], activation sigmoid
        gate step : scalar, range [0, inf), activation sigmoid
        gate cut  : scalar, range (0, inf), activation softplus
        bias huber(cut)
        retention decay(keep)
        algorithm gd(lr = step)
    """
    from mirasc.nn.gates import GATE_INIT

    m = MirasLayer(text, hidden_size=HID, num_heads=2)
    assert [(g.name, g.roles) for g in m.op.meta.gates] == [("keep", ("decay",)), ("step", ("lr",)),
                                                              ("cut", ("bias",))]
    got = {n: x.mean().item() for n, x in m.gates(torch.randn(2, 5, HID)).items()}
    for name, role in (("keep", "decay"), ("step", "lr"), ("cut", "bias")):
        assert abs(got[name] - GATE_INIT[role]) < 0.05, (name, got)


def test_a_gates_init_in_the_spec_comes_first():
    """A gate declared with `init X` starts at X, before its map's and its role's defaults, data-dependent (the
    projection's bias) and static (the parameter) alike."""
    text = """
        memory linear
        param start = 0.2
        gate keep : scalar, range (0, 1], activation sigmoid, static, init 0.9
        gate step : scalar, range [0, inf), activation softplus, init start
        bias l2()
        retention decay(keep)
        algorithm gd(lr = step)
    """
    m = MirasLayer(text, hidden_size=HID, num_heads=2)
    assert [g.init for g in m.op.meta.gates] == [0.9, 0.2]
    gates = m.gates(torch.randn(2, 5, HID))
    assert abs(gates["keep"].mean().item() - 0.9) < 1e-4 and abs(gates["step"].mean().item() - 0.2) < 0.05
    plain = MirasLayer(text.replace(", init start", ""), hidden_size=HID, num_heads=2)
    assert abs(plain.gates(torch.randn(2, 5, HID))["step"].mean().item() - 0.5) < 0.05  # GATE_INIT's lr
