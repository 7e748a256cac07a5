"""mirasc.models: the Hugging Face wrappers (needs the optional extra `transformers`)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers", reason="mirasc.models needs transformers (pip install mirasc[hf])")

from transformers import AutoConfig, AutoModel, AutoModelForCausalLM  # noqa: E402

from mirasc.models import MirasConfig, MirasForCausalLM, MirasModel  # noqa: E402

TINY = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_heads=2)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def make(**kw):
    torch.manual_seed(0)
    return MirasForCausalLM(MirasConfig(**{**TINY, **kw})).eval()


def test_config_holds_spec_text(tmp_path):
    cfg = MirasConfig(spec="models/titans.miras", **TINY)
    assert "model titans" in cfg.spec and "\n" in cfg.spec
    cfg.save_pretrained(tmp_path)
    again = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(again, MirasConfig) and again.spec == cfg.spec and again.model_type == "miras"


def test_config_takes_a_prebuilt_name():
    """MirasConfig(spec=...) names a spec as mirasc.compile does: the prebuilt name gives the file's text."""
    from pathlib import Path

    from mirasc.resources import prebuilt_path

    by_name = MirasConfig(spec="titans", **TINY)
    assert by_name.spec == Path(prebuilt_path("titans")).read_text(encoding="utf-8")
    assert by_name.spec == MirasConfig(spec="models/titans.miras", **TINY).spec
    with pytest.raises(Exception, match="not a prebuilt spec"):
        MirasConfig(spec="titan", **TINY)


def test_saved_model_is_safetensors_and_json(tmp_path):
    """What save_pretrained writes (and `mirasc train` exports to RUN/hf) holds no pickle: loading it runs no code."""
    make(spec="moneta", chunk_size=4).save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "model.safetensors" in files and all(f.endswith((".safetensors", ".json")) for f in files), files


def test_save_load_round_trip(tmp_path):
    model = make(spec="models/moneta.miras", chunk_size=4)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        ref = model(ids).logits
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is MirasForCausalLM
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert isinstance(AutoModel.from_pretrained(tmp_path), MirasModel)


def test_loss_and_backbone():
    model = make(spec="models/gated_deltanet.miras")
    ids = torch.randint(0, 64, (2, 8))
    labels = ids.clone()
    labels[0, :3] = -100
    out = model(ids, labels=labels)
    logits = model.lm_head(model.model(ids).last_hidden_state)
    want = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 64), labels[:, 1:].reshape(-1))
    assert torch.allclose(out.loss, want, atol=1e-6)
    out.loss.backward()


def _greedy_by_full_forwards(model, ids, n):
    seq = ids
    with torch.no_grad():
        for _ in range(n):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("kw", [dict(spec="models/titans.miras", chunk_size=1),
                                dict(spec="models/gated_deltanet.miras", chunk_size=1, hybrid=True, window=4),
                                dict(spec=None, mixer="attention")])
def test_generate_equals_repeated_full_forward(kw):
    model = make(**kw)
    ids = torch.randint(0, 64, (2, 6))
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.tolist() == _greedy_by_full_forwards(model, ids, 5).tolist()
    # the cached logits themselves match the full forward
    with torch.no_grad():
        full = model(out).logits
        first = model(out[:, :6], use_cache=True)
        cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)
        steps = [first.logits]
        for t in range(6, out.shape[1]):
            o = model(out[:, t:t + 1], past_key_values=cache, use_cache=True)
            steps.append(o.logits)
    stepped = torch.cat(steps, 1)
    assert ((stepped - full).pow(2).mean().sqrt() / full.pow(2).mean().sqrt()) < 1e-5


@pytest.mark.parametrize("spec", ["models/moneta.miras", "models/memora.miras"])
def test_chunked_generate_equals_greedy_full_forwards(spec):
    """chunk 4: generation reproduces the chunked forward it was trained with (gradients at the chunk-start
    memory, boundary maps at chunk ends), not the exact recurrence. In float64, so that the logits can be compared
    at 1e-10: in float32 Memora's decode (a partial chunk re-run from the chunk-start memory) and its full forward
    round differently, up to 2.1e-5 relative at one step on one machine (over 1e-5; the same code passed on another)."""
    model = make(spec=spec, chunk_size=4).double()
    ids = torch.randint(0, 64, (2, 6))
    out = model.generate(ids, max_new_tokens=7, do_sample=False)
    assert out.tolist() == _greedy_by_full_forwards(model, ids, 7).tolist()
    with torch.no_grad():  # and the logits of each step, not only the argmax
        first = model(out[:, :6], use_cache=True)
        cache = getattr(first, "cache", None) or getattr(first, "past_key_values", None)
        for t in range(6, out.shape[1]):
            step = model(out[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
            full = model(out).logits[:, t]
            assert full.dtype == torch.float64
            assert ((step - full).pow(2).mean().sqrt() / full.pow(2).mean().sqrt()) < 1e-10, t


@pytest.mark.parametrize("spec,chunk", [("models/titans.miras", 1), ("models/moneta.miras", 4)])
def test_generate_left_padded_batch(spec, chunk):
    model = make(spec=spec, chunk_size=chunk)
    a, b = torch.randint(0, 64, (1, 6)), torch.randint(0, 64, (1, 3))
    ids = torch.cat([a, torch.cat([torch.zeros(1, 3, dtype=torch.long), b], 1)])
    mask = torch.tensor([[1] * 6, [0, 0, 0, 1, 1, 1]])
    out = model.generate(ids, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert out[0].tolist() == model.generate(a, max_new_tokens=4, do_sample=False)[0].tolist()
    assert out[1, 3:].tolist() == model.generate(b, max_new_tokens=4, do_sample=False)[0].tolist()


@pytest.mark.parametrize("kw", [dict(spec="models/moneta.miras", hybrid=True, window=4),
                                dict(spec=None, mixer="attention"),
                                dict(spec=None, mixer="attention", window=4)])
def test_hybrid_and_transformerpp_build_and_run(kw):
    model = make(**kw)
    kinds = [type(b.mixer).__name__ for b in model.model.layers]
    if kw.get("hybrid"):
        assert kinds == ["MirasLayer", "CausalAttention"]
    else:
        assert kinds == ["CausalAttention", "CausalAttention"]
    ids = torch.randint(0, 64, (2, 10))
    out = model(ids, labels=ids)
    assert out.logits.shape == (2, 10, 64) and torch.isfinite(out.loss)
    out.loss.backward()
    packed = model(ids.reshape(1, 20), cu_seqlens=torch.tensor([0, 10, 20])).logits.reshape(2, 10, 64)
    assert torch.allclose(packed, model(ids).logits, atol=1e-5)


def test_spec_options_reach_the_memory_and_survive_save_load(tmp_path):
    model = make(spec="models/moneta.miras", spec_options={"normalisation": "none"}, chunk_size=16)
    assert model.model.layers[0].mixer.op.meta.map is None  # q = 2: no lq normalisation
    assert make(spec="models/moneta.miras", chunk_size=16).model.layers[0].mixer.op.meta.map.name == "lq"
    model.save_pretrained(tmp_path)
    again = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert again.config.spec_options == {"normalisation": "none"}
    ids = torch.randint(0, 64, (1, 20))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, again(ids).logits)


def test_bad_spec_option_is_a_located_error():
    from mirasc.errors import SpecError

    with pytest.raises(SpecError, match="normalisation"):
        make(spec="models/moneta.miras", spec_options={"normalisation": "l3"})
    from mirasc.train.cli import parse_spec_options
    from mirasc.train.config import TrainError

    assert parse_spec_options(["normalisation=none", "a = b"]) == {"normalisation": "none", "a": "b"}
    with pytest.raises(TrainError, match="NAME=VALUE"):
        parse_spec_options(["normalisation"])


def test_torch_compile_flag_reaches_the_op():
    model = make(spec="models/gated_deltanet.miras", torch_compile=True)
    op = model.model.layers[0].mixer.op
    assert op.module._mirasc_compiled and model.config.torch_compile
    assert not getattr(make(spec="models/gated_deltanet.miras").model.layers[0].mixer.op.module, "_mirasc_compiled",
                       False)  # the cached op of the spec stays eager
