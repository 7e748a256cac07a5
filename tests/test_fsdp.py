"""mirasc.train with --fsdp: FSDP2 under torchrun on CPU (gloo) matches one process, its checkpoints are full
(one process resumes and evaluates them), resume under FSDP continues from the checkpoint, and --fsdp without
torchrun is a one-line error.

The 2-process part launches this file under torchrun (see `_driver` at the bottom): one FSDP run through the CLI
that is interrupted after step 6 (last checkpoint: step 4), then `--resume` under FSDP to step 8."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mirasc.cli import main as cli_main
from mirasc.train import TrainError, evaluate_checkpoint, train
from mirasc.train import distributed as dist_mod
from mirasc.train import loop as loop_mod

ROOT = Path(__file__).resolve().parents[1]
STEPS, CUT, CKPT_EVERY = 8, 6, 4
ARGS = ["train", "transformer", "--task", "mqar", "--seq-len", "64", "--kv-pairs", "4", "--hidden-size", "32",
        "--heads", "2", "--layers", "2", "--batch-size", "16", "--steps", str(STEPS), "--lr", "3e-3",
        "--warmup-steps", "2", "--log-every", "1", "--ckpt-every", str(CKPT_EVERY), "--eval-examples", "16",
        "--quiet", "--threads", "1"]


def _models_ok() -> bool:
    try:
        importlib.import_module("mirasc.models")
        return True
    except Exception:
        return False


def _fsdp2_ok() -> str | None:
    """None when this torch has FSDP2 and the full-state-dict API, else what is missing."""
    try:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError as e:
        return f"torch {torch.__version__} lacks FSDP2: {e}"
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        return f"torch {torch.__version__} has no gloo backend"
    return None


def base(tmp_path, name, **kw):
    """The in-process twin of ARGS (same model, data, schedule and global batch)."""
    cfg = dict(spec="transformer", task="mqar", seq_len=64, kv_pairs=4, hidden_size=32, num_heads=2, num_layers=2,
               batch_size=16, steps=STEPS, lr=3e-3, warmup_steps=2, log_every=1, ckpt_every=CKPT_EVERY,
               eval_examples=16, out=str(tmp_path / name), quiet=True, threads=1)
    cfg.update(kw)
    return cfg


def losses(run_dir) -> list[tuple[int, float]]:
    rows = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"]) for r in rows]


def close(a, b):
    assert [s for s, _ in a] == [s for s, _ in b], (a, b)
    for (_, x), (_, y) in zip(a, b):
        assert abs(x - y) < 1e-4 * max(1.0, abs(x)), (a, b)


# ---------------------------------------------------------------------------------------------------------------
def test_fsdp_without_torchrun_is_a_one_line_error(tmp_path, capsys):
    out = tmp_path / "single"
    with pytest.raises(TrainError, match="torchrun"):
        train(base(tmp_path, "single", fsdp=True))
    assert not out.exists()   # nothing written
    rc = cli_main(ARGS + ["--out", str(out), "--fsdp"])
    err = capsys.readouterr().err
    assert rc == 2 and "--fsdp" in err and "torchrun" in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    with pytest.raises(TrainError, match="fsdp must be true or false"):
        train(base(tmp_path, "single", fsdp="yes"))


def test_fsdp_blocks_and_optimizer_layout():
    if not _models_ok():
        pytest.skip("needs mirasc.models")
    from mirasc.train.config import make_config
    from mirasc.train.modeling import build_model

    model = build_model(make_config(dict(spec="transformer", hidden_size=32, num_heads=2, num_layers=3)), 64)
    blocks = dist_mod.fsdp_blocks(model)
    assert len(blocks) == 3 and all(type(b).__name__ == "MirasBlock" for b in blocks)
    # names -> ids numbers parameters group after group, like Optimizer.state_dict()
    named = {"state": {"b": {"step": 1}, "c": {"step": 2}},
             "param_groups": [{"lr": 1.0, "params": ["a", "b"]}, {"lr": 2.0, "params": ["c"]}]}
    assert dist_mod.osd_names_to_ids(named) == {
        "state": {1: {"step": 1}, 2: {"step": 2}},
        "param_groups": [{"lr": 1.0, "params": [0, 1]}, {"lr": 2.0, "params": [2]}]}


def test_torchrun_fsdp_matches_single_process_and_checkpoint_is_full(tmp_path):
    missing = _fsdp2_ok()
    if missing:
        pytest.skip(missing)
    if not _models_ok():
        pytest.skip("the torchrun CLI path needs mirasc.models")
    single = train(base(tmp_path, "single"))
    out = tmp_path / "fsdp"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        __file__, str(out)], env=env, capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])

    # the FSDP curve (steps 1-4 before the cut, 5-8 after the FSDP resume) is the single-process curve
    close(losses(single.out_dir), losses(out))
    mid = torch.load(tmp_path / "fsdp_step4.pt", weights_only=False)
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    assert (mid["step"], mid["world_size"], ck["step"], ck["world_size"]) == (CKPT_EVERY, 2, STEPS, 2)
    assert ck["config"]["fsdp"] is True

    # full and unsharded, in the same layout as a single-process checkpoint
    ref = torch.load(Path(single.checkpoint), weights_only=False)
    assert list(ck["model"]) == list(ref["model"])
    for k, v in ref["model"].items():
        w = ck["model"][k]
        assert type(w) is torch.Tensor and w.shape == v.shape and w.dtype == v.dtype, k
        assert (w - v).abs().max() < 1e-5, k
    assert ck["optimizer"]["param_groups"] == ref["optimizer"]["param_groups"]
    assert list(ck["optimizer"]["state"]) == list(ref["optimizer"]["state"])
    for i, st in ref["optimizer"]["state"].items():
        for name, v in st.items():
            w = ck["optimizer"]["state"][i][name]
            assert type(w) is torch.Tensor and w.shape == v.shape, (i, name)
            assert torch.allclose(w, v, rtol=1e-3, atol=1e-6), (i, name)
    assert ck["scheduler"] == ref["scheduler"]

    # one process evaluates it (the same numbers as the FSDP run's own final eval) ...
    m = evaluate_checkpoint(out, num_examples=16)
    assert {"task": "mqar", **m} == json.loads((out / "eval.json").read_text())
    assert (out / "hf" / "config.json").is_file()

    # ... and resumes the FSDP step-4 checkpoint onto the single-process curve
    res_dir = tmp_path / "resumed"
    res_dir.mkdir()
    shutil.copy(tmp_path / "fsdp_step4.pt", res_dir / "checkpoint.pt")
    train(base(tmp_path, "resumed", resume=True))
    close([x for x in losses(single.out_dir) if x[0] > CKPT_EVERY], losses(res_dir))


# ---------------------------------------------------------------------------------------------------------------
def _driver(out: str) -> int:
    """Under torchrun: an FSDP run through the CLI, interrupted after step CUT (a killed job), then --resume."""
    import torch.distributed as dist

    real = loop_mod.make_task

    def interrupted(*a, **k):
        task = real(*a, **k)
        orig = task.train_batch

        def tb(step):
            if step == CUT:   # every rank stops here, outside any collective
                raise KeyboardInterrupt
            return orig(step)

        task.train_batch = tb
        return task

    loop_mod.make_task = interrupted
    rc = cli_main(ARGS + ["--fsdp", "--grad-accum", "2", "--out", out])
    loop_mod.make_task = real
    if rc != 2:
        print(f"interrupted run: rc {rc}, expected 2", file=sys.stderr)
        return 1
    if int(os.environ["RANK"]) == 0:
        shutil.copy(Path(out) / "checkpoint.pt", Path(out).parent / "fsdp_step4.pt")
        steps = [s for s, _ in losses(out)]
        if steps != list(range(1, CUT + 1)):
            print(f"interrupted run logged steps {steps}", file=sys.stderr)
            return 1
    dist.barrier()
    rc = cli_main(ARGS + ["--fsdp", "--grad-accum", "2", "--out", out, "--resume"])
    if dist.is_initialized():
        dist.destroy_process_group()
    return rc


if __name__ == "__main__":
    raise SystemExit(_driver(sys.argv[1]))
