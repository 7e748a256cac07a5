"""mirasc.train.lm_eval_adapter on a tiny local lm_eval task (tests/data/lm_eval_task: no download, no network).

A Transformer++ trained for 2 steps on a byte-level LM task is exported to HF format and evaluated through
lm_eval.simple_evaluate; every score lm_eval reports is recomputed from the model's own forward pass."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import torch
from test_train import HAVE_MODELS, base

from mirasc.train import train

REPO = Path(__file__).resolve().parent.parent
TASK_DIR = REPO / "tests" / "data" / "lm_eval_task"
TASK = "mirasc_bytes_mc"


def _no_network(self, address, *a, **k):
    raise OSError(f"network access during an offline lm_eval test: {address!r}")


def _greedy_logprobs(model, ctx: list[int], cont: list[int]) -> tuple[float, bool]:
    """Sum of log p(cont | ctx) from one forward pass over ctx + cont[:-1], and whether cont is the greedy path."""
    ids = torch.tensor([ctx + cont[:-1]])
    with torch.no_grad():
        logp = model(input_ids=ids).logits[0].float().log_softmax(-1)[len(ctx) - 1:]
    tgt = torch.tensor(cont)
    return float(logp.gather(1, tgt[:, None]).sum()), bool((logp.argmax(-1) == tgt).all())


def _rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-6)


def test_lm_eval_local_task(tmp_path, monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_datasets"))
    lm_eval = pytest.importorskip("lm_eval", reason="lm_eval (lm-evaluation-harness) is not installed")
    if not HAVE_MODELS:
        pytest.skip("needs mirasc.models (transformers)")
    import datasets.config
    from lm_eval.api.instance import Instance
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM

    from mirasc.train.lm_eval_adapter import hflm

    # datasets reads these at import time, which may have happened before this test
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_datasets")

    f = tmp_path / "c.txt"
    f.write_text("hello there. " * 300)
    res = train(base(tmp_path, "lm", task="lm", data=str(f), seq_len=32, kv_pairs=None, steps=2, eval_examples=2))
    assert res.hf_dir and (Path(res.hf_dir) / "tokenizer.json").is_file()

    monkeypatch.setattr(socket.socket, "connect", _no_network)
    monkeypatch.chdir(REPO)  # the task's data_files path is relative to the repository root
    lm = hflm(res.hf_dir, device="cpu", batch_size=4)
    tok = lm.tokenizer
    assert tok.encode("ab\n", add_special_tokens=False) == [97, 98, 10]  # byte-level: id = byte
    assert lm.prefix_token_id == 10 and tok.pad_token_id == 0 and len(tok) == 256  # no token beyond the vocabulary
    assert lm.logits_cache is False

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False)
    out = lm_eval.simple_evaluate(model=lm, tasks=[TASK], task_manager=tm, log_samples=True, bootstrap_iters=0)
    acc = out["results"][TASK]["acc,none"]
    samples = sorted(out["samples"][TASK], key=lambda s: s["doc_id"])
    docs = [json.loads(x) for x in (TASK_DIR / "bytes_mc.jsonl").read_text().splitlines() if x.strip()]
    assert 8 <= len(docs) == len(samples)
    assert 0.0 <= acc <= 1.0

    # the same log-likelihoods from the model's forward pass on the bytes of prefix + choice. Docs 0 and 7 feed the
    # same bytes split differently ("hello th"+"ere.", "hello"+" there."): lm_eval's logits_cache scores one wrongly.
    model = AutoModelForCausalLM.from_pretrained(res.hf_dir).eval()
    hits = 0
    for doc, s in zip(docs, samples):
        assert [tuple(a) for a in s["arguments"]] == [(doc["prefix"], c) for c in doc["choices"]]
        # lm_eval moves trailing whitespace of the context to the front of the continuation ("there. " + "hello"
        # is scored as log p(" hello" | "there."))
        prefix = doc["prefix"].rstrip()
        moved = doc["prefix"][len(prefix):]
        ctx = list(prefix.encode())
        mine = [_greedy_logprobs(model, ctx, list((moved + c).encode())) for c in doc["choices"]]
        theirs = [tuple(r) for r in s["filtered_resps"]]
        for (ll, greedy), (ll_e, greedy_e) in zip(mine, theirs):
            assert _rel(ll_e, ll) < 1e-4, (doc, ll_e, ll)
            assert greedy_e == greedy, doc
        lls = [ll for ll, _ in mine]
        hits += lls.index(max(lls)) == doc["gold"]
        assert s["acc"] == float(lls.index(max(lls)) == doc["gold"]), (doc, lls)
    assert acc == pytest.approx(hits / len(docs), abs=1e-12)

    # empty context (loglikelihood_rolling) is conditioned on "\n", the token that has to stand in for BOS
    (roll,) = lm.loglikelihood_rolling([Instance("loglikelihood_rolling", {}, ("hello",), 0)], disable_tqdm=True)
    ll, _ = _greedy_logprobs(model, [10], list(b"hello"))
    assert _rel(roll, ll) < 1e-4

    # generate_until: a left-padded batch (pad id 0, masked) gives each context's own greedy continuation
    kw = {"until": ["."], "max_gen_toks": 6, "do_sample": False}
    ctxs = ["hello there. hel", "he"]
    gens = lm.generate_until([Instance("generate_until", {}, (c, dict(kw)), 0) for c in ctxs], disable_tqdm=True)
    for c, g in zip(ctxs, gens):
        ids = torch.tensor([list(c.encode())])
        with torch.no_grad():
            ref = model.generate(input_ids=ids, max_new_tokens=6, do_sample=False, pad_token_id=0)[0, ids.shape[1]:]
        assert g == bytes(ref.tolist()).decode("utf-8", errors="replace").split(".")[0], (c, g)
