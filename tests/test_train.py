"""mirasc.train: loss decreases, exact resume, atomic checkpoints, torchrun/DDP parity, CLI, bad input.

Uses the real MirasForCausalLM when `mirasc.models` imports (Transformer++ for speed, Moneta for the learning
test); otherwise a small stand-in nn.Module defined here (the same .model / .lm_head interface)."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mirasc.cli import main as cli_main
from mirasc.train import TrainError, evaluate_checkpoint, train
from mirasc.train import checkpoint as ckpt_mod
from mirasc.train import loop as loop_mod


def _models_ok() -> bool:
    try:
        importlib.import_module("mirasc.models")
        return True
    except Exception:
        return False


HAVE_MODELS = _models_ok()
TESTS = str(Path(__file__).resolve().parent)


class _Body(nn.Module):
    def __init__(self, vocab, d, max_len=512):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(max_len, d)
        self.layer = nn.TransformerEncoderLayer(d, 2, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.norm = nn.LayerNorm(d)

    def forward(self, input_ids, attention_mask=None):
        T = input_ids.shape[1]
        h = self.embed(input_ids) + self.pos(torch.arange(T))
        mask = nn.Transformer.generate_square_subsequent_mask(T)
        return SimpleNamespace(last_hidden_state=self.norm(self.layer(h, src_mask=mask, is_causal=True)))


class StandIn(nn.Module):
    """Stand-in for MirasForCausalLM: .model(input_ids=...).last_hidden_state, .lm_head, forward -> .logits."""

    def __init__(self, vocab, d):
        super().__init__()
        self.model = _Body(vocab, d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, input_ids, attention_mask=None, labels=None):
        return SimpleNamespace(logits=self.lm_head(self.model(input_ids=input_ids).last_hidden_state), loss=None)


def make_standin(cfg, vocab):
    return StandIn(vocab, cfg.hidden_size)


def base(tmp_path, name="run", **kw):
    cfg = dict(spec="transformer", task="mqar", seq_len=64, kv_pairs=4, hidden_size=32, num_heads=2, num_layers=1,
               batch_size=16, steps=12, lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=4, eval_examples=16,
               out=str(tmp_path / name), quiet=True, threads=1)
    if not HAVE_MODELS:
        cfg["model_factory"] = "test_train:make_standin"
    cfg.update(kw)
    return cfg


def losses(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"]) for r in rows]


def test_loss_decreases_on_mqar(tmp_path):
    spec = "moneta" if HAVE_MODELS else "transformer"
    cfg = base(tmp_path, spec=spec, seq_len=32, kv_pairs=4, hidden_size=16, num_heads=1, num_layers=1,
               batch_size=16, steps=80, lr=1e-2, warmup_steps=5, ckpt_every=80, log_every=1)
    res = train(cfg)
    ls = [x for _, x in losses(res.out_dir)]
    assert len(ls) == 80
    assert sum(ls[-5:]) / 5 < ls[0] - 0.3, ls
    out = Path(res.out_dir)
    for f in ("checkpoint.pt", "config.json", "metrics.jsonl", "loss_curve.png", "eval.json"):
        assert (out / f).is_file(), f
    assert 0.0 <= res.eval["accuracy"] <= 1.0


def test_resume_reproduces_uninterrupted_run(tmp_path, monkeypatch):
    full = train(base(tmp_path, "full"))
    cfg = base(tmp_path, "cut")
    real = loop_mod.make_task

    def interrupted(*a, **k):
        task = real(*a, **k)
        orig = task.train_batch

        def tb(step):
            if step == 6:  # killed after logging step 6; the last checkpoint is step 4
                raise KeyboardInterrupt
            return orig(step)

        task.train_batch = tb
        return task

    monkeypatch.setattr(loop_mod, "make_task", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.setattr(loop_mod, "make_task", real)
    assert [s for s, _ in losses(cfg["out"])] == [1, 2, 3, 4, 5, 6]
    train({**cfg, "resume": True})
    assert losses(cfg["out"]) == losses(full.out_dir)   # bit for bit
    a = torch.load(Path(full.checkpoint), weights_only=True)["model"]
    b = torch.load(Path(cfg["out"]) / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_failed_checkpoint_write_keeps_last_good(tmp_path, monkeypatch):
    cfg = base(tmp_path, steps=8, ckpt_every=4)
    real = os.replace
    calls = {"n": 0}

    def flaky(src, dst):
        if str(dst).endswith("checkpoint.pt"):
            calls["n"] += 1
            if calls["n"] == 2:
                raise OSError("simulated kill during checkpoint write")
        return real(src, dst)

    monkeypatch.setattr(ckpt_mod.os, "replace", flaky)
    with pytest.raises(OSError, match="simulated"):
        train(cfg)
    ck = torch.load(Path(cfg["out"]) / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4
    assert not [p for p in Path(cfg["out"]).iterdir() if ".tmp" in p.name]
    monkeypatch.setattr(ckpt_mod.os, "replace", real)
    res = train({**cfg, "resume": True})   # and the good checkpoint resumes
    assert losses(res.out_dir)[-1][0] == 8


def test_killed_subprocess_mid_write_keeps_last_good(tmp_path):
    """A real SIGKILL while torch.save writes the temporary file: the old checkpoint survives intact."""
    path = tmp_path / "checkpoint.pt"
    ckpt_mod.atomic_save({"step": 1}, path)
    code = (
        "import sys, os, time, torch\n"
        "from mirasc.train import checkpoint as c\n"
        "real = torch.save\n"
        "def slow(obj, f):\n"
        "    f.write(b'partial'); f.flush(); print('writing', flush=True); time.sleep(60)\n"
        "torch.save = slow\n"
        f"c.atomic_save({{'step': 2}}, {str(path)!r})\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "writing"
    p.kill()
    p.wait()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [x.name for x in tmp_path.iterdir() if ".tmp" in x.name], "the kill left no temporary file to clean"


def test_resume_removes_what_a_kill_left(tmp_path):
    """Temporary files of writes a kill interrupted are removed when the run continues; other files stay."""
    cfg = base(tmp_path, steps=4, ckpt_every=2)
    train({**cfg, "steps": 2})
    out = Path(cfg["out"])
    stale = [".checkpoint.pt.tmp4242", ".metrics.jsonl.tmp17", ".loss_curve.png.tmp99.png"]
    for name in stale:
        (out / name).write_bytes(b"partial")
    (out / ".hf.tmp4242").mkdir()
    (out / "notes.tmp1").write_text("mine")   # not a name the loop writes: left alone
    train({**cfg, "resume": True})
    left = sorted(p.name for p in out.iterdir())
    assert not set(stale + [".hf.tmp4242"]) & set(left), left
    assert "notes.tmp1" in left and "checkpoint.pt" in left


def test_torchrun_ddp_matches_single_process(tmp_path):
    single = train(base(tmp_path, "single", steps=6, batch_size=16))
    env = {**os.environ, "PYTHONPATH": TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cfg = base(tmp_path, "ddp", steps=6, batch_size=16)
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mirasc",
            "train", "transformer", "--task", "mqar", "--seq-len", "64", "--kv-pairs", "4", "--hidden-size", "32",
            "--heads", "2", "--layers", "1", "--batch-size", "16", "--steps", "6", "--lr", "3e-3", "--warmup-steps",
            "2", "--log-every", "1", "--ckpt-every", "4", "--eval-examples", "16", "--out", cfg["out"], "--quiet",
            "--threads", "1"]
    if not HAVE_MODELS:
        pytest.skip("the torchrun CLI path needs mirasc.models (the stand-in is not reachable from the CLI)")
    r = subprocess.run(args, env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-2000:]
    a, b = losses(single.out_dir), losses(cfg["out"])
    assert [s for s, _ in a] == [s for s, _ in b]
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4 * max(1.0, abs(x)), (a, b)


def test_grad_accum_matches_full_batch(tmp_path):
    a = losses(train(base(tmp_path, "ga1", steps=4)).out_dir)
    b = losses(train(base(tmp_path, "ga2", steps=4, grad_accum=2)).out_dir)
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4


def _cli(argv, capsys):
    rc = cli_main(argv)
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_cli_train_and_eval_json(tmp_path, capsys):
    if not HAVE_MODELS:
        pytest.skip("the CLI builds MirasForCausalLM (mirasc.models not importable yet)")
    out = tmp_path / "cli"
    rc, o, e = _cli(["train", "transformer", "--task", "mqar", "--config", "tiny", "--seq-len", "64", "--kv-pairs",
                     "4", "--steps", "3", "--batch-size", "8", "--hidden-size", "32", "--heads", "2", "--out",
                     str(out), "--eval-examples", "8", "--quiet"], capsys)
    assert rc == 0, e
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["hidden_size"] == 32 and cfg["lr"] == 3e-3 and cfg["steps"] == 3   # flags override tiny.toml
    rc, o, e = _cli(["eval", str(out), "--task", "mqar", "--json", "--num-examples", "8"], capsys)
    assert rc == 0, e
    last = json.loads(o.strip().splitlines()[-1])
    assert last["task"] == "mqar" and 0 <= last["metrics"]["accuracy"] <= 1


def test_lm_and_niah_eval(tmp_path):
    f = tmp_path / "corpus.txt"
    f.write_text("In the beginning was the word. " * 400)
    res = train(base(tmp_path, "lm", task="lm", data=str(f), seq_len=64, kv_pairs=None, steps=3, eval_examples=4))
    assert res.eval["perplexity"] > 1 and "bits_per_byte" in res.eval
    m = evaluate_checkpoint(res.out_dir, task="niah", num_examples=3, seq_len=192)
    assert 0 <= m["accuracy"] <= 1 and m["chance"] == 0.1


@pytest.mark.parametrize("argv,needle", [
    (["--task", "lm", "--data", "MISSING"], "data path not found"),
    (["--task", "lm", "--data", "EMPTY"], "empty corpus"),
    (["--hidden-size", "30", "--heads", "4"], "not divisible by 4 heads"),
    (["--seq-len", "31", "--kv-pairs", "4"], "even"),
    (["--config", "nope_no_such_config"], "config file not found"),
])
def test_cli_bad_input_one_line(tmp_path, capsys, argv, needle):
    (tmp_path / "EMPTY").write_text("")
    argv = [a if a not in ("MISSING", "EMPTY") else str(tmp_path / a) for a in argv]
    out = tmp_path / "out"
    rc, o, e = _cli(["train", "moneta", *argv, "--out", str(out), "--steps", "1"], capsys)
    assert rc == 2 and len(e.strip().splitlines()) == 1 and needle in e and "Traceback" not in e, e
    assert not out.exists()


def test_incompatible_checkpoint_not_overwritten(tmp_path, capsys):
    res = train(base(tmp_path, steps=2, ckpt_every=2))
    before = Path(res.checkpoint).read_bytes()
    with pytest.raises(TrainError, match="hidden_size"):
        train(base(tmp_path, steps=4, hidden_size=64, resume=True))
    with pytest.raises(TrainError, match="already holds a checkpoint"):
        train(base(tmp_path, steps=4))
    assert Path(res.checkpoint).read_bytes() == before
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    capsys.readouterr()
    rc, o, e = _cli(["eval", str(bad)], capsys)
    assert rc == 2 and "incompatible checkpoint" in e and len(e.strip().splitlines()) == 1



def test_non_finite_gradients_stop_the_run_before_the_step(tmp_path, monkeypatch):
    """A finite loss whose gradient overflows stops the run at that step with a one-line TrainError, before the
    optimizer writes it into the weights: the last checkpoint stays finite and resumes."""
    cfg = base(tmp_path, steps=8, ckpt_every=2)
    real = loop_mod._train_step

    def overflowing(run, step):
        if step == 4:  # step 5: one gradient overflows after the backward pass
            for p in run.model.parameters():
                p.register_hook(lambda g: g * float("inf"))
                break
        return real(run, step)

    monkeypatch.setattr(loop_mod, "_train_step", overflowing)
    with pytest.raises(TrainError, match="gradients became non-finite at step 5"):
        train(cfg)
    ck = torch.load(Path(cfg["out"]) / "checkpoint.pt", weights_only=True)
    assert ck["step"] == 4
    assert all(bool(torch.isfinite(t).all()) for t in ck["model"].values() if t.is_floating_point())
    monkeypatch.setattr(loop_mod, "_train_step", real)
    assert losses(train({**cfg, "resume": True}).out_dir)[-1][0] == 8
