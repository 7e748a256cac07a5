"""The paper's MLP memories learn: a tiny MQAR on which Titans, Yaad and Memora must pass a stated accuracy after
a fixed number of steps (mirasc.train with the real MirasForCausalLM, one CPU thread, 5–10 s a model).

With the initialisation before issue 10 (the layer's q, k, v projections at the model's generic normal(0, 0.02),
MirasLayer.qkv_init_std = 0.02, and eta starting at 0.1) none of the three passes: the measured figures are below,
next to the thresholds, and the main job's in bench/README.md ("Initialisation").
"""

from __future__ import annotations

import importlib

import pytest
import torch

from mirasc.nn.layer import MirasLayer

pytest.importorskip("transformers", reason="MirasForCausalLM needs transformers (the hf extra)")
if not hasattr(importlib.import_module("mirasc.models"), "MirasForCausalLM"):
    pytest.skip("mirasc.models.MirasForCausalLM is not available", allow_module_level=True)

# vocabulary 64 (keys 1..31, values 32..63: chance 1/32), 16 tokens, 2 pairs; 2 layers, width 32, one head
SETTINGS = dict(task="mqar", tier="cpu", vocab_size=64, seq_len=16, kv_pairs=2, num_layers=2, hidden_size=32,
                num_heads=1, batch_size=32, steps=150, lr=1e-2, warmup_steps=10, log_every=1000, eval_examples=128,
                ckpt_every=10 ** 9, seed=0, quiet=True, overwrite=True, threads=1)
# Measured on the 2-core CPU (seeds 0 / 1), accuracy after 150 steps, chance 0.03:
#   layer's init (q, k, v nn.Linear default; eta 0.5, 2 for the KL map):  titans 0.453 / 0.500, yaad 0.570 / 0.750,
#                                                                          memora 0.355 / 0.410
#   before issue 10 (q, k, v normal(0, 0.02); eta 0.1):                    titans 0.281 / 0.195, yaad 0.320 / 0.297,
#                                                                          memora 0.125 / 0.078
# Each threshold sits between the two (seed 0 is what runs here).
THRESHOLD = {"titans": 0.38, "yaad": 0.45, "memora": 0.25}


def _accuracy(spec: str, out) -> float:
    from mirasc.train import train

    n = torch.get_num_threads()
    try:
        return train({**SETTINGS, "spec": spec, "out": str(out)}).eval["accuracy"]
    finally:
        torch.set_num_threads(n)  # the run sets one thread


@pytest.mark.parametrize("spec", sorted(THRESHOLD))
def test_mlp_memory_learns_tiny_mqar(spec, tmp_path):
    assert MirasLayer.qkv_init_std is None, "the layer's own init is what this test measures"
    acc = _accuracy(spec, tmp_path / spec)
    assert acc > THRESHOLD[spec], f"{spec}: MQAR accuracy {acc:.3f} after {SETTINGS['steps']} steps"
