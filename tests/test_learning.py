"""The paper's MLP memories learn: a tiny MQAR on which Titans, Yaad and Memora must pass a stated mean accuracy over
two seeds (Yaad four) after a fixed number of steps (mirasc.train with the real MirasForCausalLM, one CPU thread,
5–10 s a run).

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
# Accuracy after 150 steps, chance 0.03, seeds 0 / 1 / 2:
#   layer's init (q, k, v nn.Linear default; eta 0.5, 2 for the KL map), measured 2026-12-03 with the specs' bounded
#   inner learning rates (yaad eta in (0, 1), memora in (0, 4)):           titans 0.453 / 0.500 / 0.895,
#                                                                          yaad 0.246 / 0.441 / 0.289,
#                                                                          memora 0.352 / 0.395 / 0.418
#   memora with its LayerNorm's eps = 1 (memora.miras's default since 2026-12-04): memora 0.434 / 0.492 / 0.516
#   the same with eta unbounded (lr_gate = softplus), 2026-12-02:         yaad 0.344 / 0.703 / 0.688,
#                                                                          memora 0.383 / 0.430 / 0.402
#   before issue 10 (q, k, v normal(0, 0.02); eta 0.1, unbounded):        titans 0.293 / 0.180 / 0.559,
#                                                                          yaad 0.254 / 0.191 / 0.297,
#                                                                          memora 0.188 / 0.125 / 0.117
# Single seeds overlap (titans' old init reached 0.559 at seed 2: training amplifies rounding, which differs between
# machines), so the test takes the mean of seeds 0 and 1: 0.48 / 0.34 / 0.37 with the layer's init against 0.24 /
# 0.22 / 0.16 before; each threshold sits between the two. Yaad's bound slows its start on this tiny task (0.52
# unbounded) while it makes the main job's MQAR learn at every seed (bench/README.md, "Yaad's inner learning rate,
# bounded"); at 250 steps the tiny task no longer separates the inits (old init: titans 0.43 / 0.36, yaad 0.58 /
# 0.81), so the budget stays at 150. Yaad's runs with the bound also differ between machines where the old init's
# did not: on another machine of the same kind (2026-12-03, fourth session) seeds 0 / 1 / 2 / 3 gave 0.301 / 0.281 /
# 0.328 / 0.363 (mean of 0 and 1: 0.291, under the 0.30 this test had) against the old init's 0.254 / 0.191 / 0.297
# / 0.203, the figures above to the digit. So Yaad takes the mean of four seeds: 0.318 there (0.325 over the three
# seeds above) against 0.236 with the old init, and its threshold sits between them.
SEEDS = {"titans": (0, 1), "yaad": (0, 1, 2, 3), "memora": (0, 1)}
THRESHOLD = {"titans": 0.42, "yaad": 0.28, "memora": 0.28}


def _accuracy(spec: str, out, seed: int) -> float:
    from mirasc.train import train

    n = torch.get_num_threads()
    try:
        return train({**SETTINGS, "spec": spec, "out": str(out), "seed": seed}).eval["accuracy"]
    finally:
        torch.set_num_threads(n)  # the run sets one thread


@pytest.mark.parametrize("spec", sorted(THRESHOLD))
def test_mlp_memory_learns_tiny_mqar(spec, tmp_path):
    assert MirasLayer.qkv_init_std is None, "the layer's own init is what this test measures"
    accs = [_accuracy(spec, tmp_path / f"{spec}-{seed}", seed) for seed in SEEDS[spec]]
    mean = sum(accs) / len(accs)
    assert mean > THRESHOLD[spec], (f"{spec}: mean MQAR accuracy {mean:.3f} after {SETTINGS['steps']} steps (seeds "
                                    f"{SEEDS[spec]}: {', '.join(f'{a:.3f}' for a in accs)})")
