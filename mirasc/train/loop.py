"""The training loop: AdamW (β 0.9/0.95, wd 0.1 on matrices), linear warm-up then cosine decay to 10% of the peak,
gradient clipping, gradient accumulation, bf16 autocast on GPU only, DDP under torchrun (gloo on CPU, nccl on
GPU), atomic checkpoints and an exact `resume`.

Exactness. The global batch of step s is a pure function of (seed, s) (see mirasc.data); every process draws it
and takes its own rows, and each micro-batch's summed loss is divided by the number of scored positions of the
whole global batch, so the gradient does not depend on the number of processes or micro-batches (up to float
summation order). A checkpoint holds model, optimizer, scheduler, step and the torch / numpy / python (/ cuda)
RNG states; resuming on the same machine reproduces the uninterrupted loss curve bit for bit on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mirasc.data import DataError

from .checkpoint import (
    CHECKPOINT,
    FORMAT,
    atomic_save,
    atomic_save_dir,
    atomic_write_text,
    load_checkpoint,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, TrainError, dump_config, make_config
from .modeling import LossModule, build_model, count_params

# Settings that must agree between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = ("spec", "hidden_size", "num_layers", "num_heads", "vocab_size", "hybrid", "window",
                     "chunk_size", "model_kwargs", "task", "tier", "seq_len", "kv_pairs", "seed", "batch_size",
                     "niah_kind", "data", "tokenizer", "model_factory")


@dataclass
class TrainResult:
    out_dir: str
    checkpoint: str
    metrics_path: str
    plot_path: str | None
    config_path: str
    hf_dir: str | None
    steps: int
    final_loss: float
    losses: list = field(default_factory=list)      # [(step, loss)] of this process's logged steps
    eval: dict = field(default_factory=dict)
    wall_s: float = 0.0
    tokens_per_s: float = 0.0
    params: int = 0
    vocab_size: int = 0


# ---------------------------------------------------------------------------------------------------------------
def make_task(cfg: TrainConfig, task_name: str | None = None, seq_len: int | None = None):
    """The data task of a config (DataError becomes TrainError)."""
    from mirasc.data import make_task as _make

    name = task_name or cfg.task
    T = seq_len or cfg.seq_len
    try:
        if name == "mqar":
            return _make("mqar", tier=cfg.tier, seed=cfg.seed, batch_size=cfg.batch_size,
                         vocab_size=cfg.vocab_size if cfg.task in ("mqar", "robust") else None, seq_len=T,
                         kv_pairs=cfg.kv_pairs, test_examples=cfg.eval_examples)
        if name == "robust":
            return _make("robust", tier=cfg.tier, seed=cfg.seed, batch_size=cfg.batch_size,
                         vocab_size=cfg.vocab_size if cfg.task in ("mqar", "robust") else None, seq_len=T,
                         kv_pairs=cfg.kv_pairs, num_passes=cfg.num_passes, contamination=cfg.contamination,
                         mode=cfg.robust_mode, test_examples=cfg.eval_examples or 256)
        if name == "niah":
            hay = None
            if cfg.data and Path(cfg.data).is_file() and Path(cfg.data).suffix != ".bin":
                hay = Path(cfg.data).read_text(encoding="utf-8", errors="replace")
            return _make("niah", kind=cfg.niah_kind, seq_len=T or 256, seed=cfg.seed, batch_size=cfg.batch_size,
                         tokenizer=cfg.tokenizer, haystack_text=hay, test_examples=cfg.eval_examples or 64)
        if name == "lm":
            return _make("lm", data=cfg.data, tokenizer=cfg.tokenizer, seed=cfg.seed, batch_size=cfg.batch_size,
                         seq_len=T or 256, bin_dtype=cfg.bin_dtype)
    except DataError as e:
        raise TrainError(str(e)) from None
    raise TrainError(f"unknown task {name!r}")


def model_vocab(cfg: TrainConfig, task) -> int:
    v = int(cfg.vocab_size or task.vocab_size)
    if v < task.vocab_size:
        raise TrainError(f"vocab_size {v} is smaller than the task's vocabulary {task.vocab_size}")
    return v


def lr_lambda(cfg: TrainConfig):
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else min(1000, max(1, cfg.steps // 10))
    total, floor = cfg.steps, cfg.min_lr_ratio

    def f(step: int) -> float:  # step = number of optimizer steps taken so far
        if step < warm:
            return (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - warm))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * t))

    return f


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=1e-8)


def _device(cfg: TrainConfig, local_rank: int) -> torch.device:
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class _Dist:
    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialised_here = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def init(self, device: torch.device):
        if self.enabled and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.initialised_here = True

    def close(self):
        if self.initialised_here and dist.is_initialized():
            dist.destroy_process_group()


def _say(cfg: TrainConfig, rank: int, msg: str) -> None:
    if rank == 0 and not cfg.quiet:
        print(msg, flush=True)


def _read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line after a kill
    return out


def plot_metrics(metrics_path: Path, png: Path, title: str = "") -> Path | None:
    """Loss curve (and lr) from metrics.jsonl into a PNG (matplotlib, Agg); None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = _read_metrics(metrics_path)
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], lw=1.2, label="train loss")
    evals = [r for r in rows if "eval_loss" in r]
    if evals:
        ax.plot([r["step"] for r in evals], [r["eval_loss"] for r in evals], "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = png.with_name(f".{png.name}.tmp{os.getpid()}.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, png)
    return png


def _check_resume(ck: dict, cfg: TrainConfig, path: Path) -> None:
    old = ck.get("config", {})
    for k in RESUME_MUST_MATCH:
        if k in old and old[k] != getattr(cfg, k):
            raise TrainError(f"incompatible checkpoint {path}: {k} is {old[k]!r} there, {getattr(cfg, k)!r} here")


# ---------------------------------------------------------------------------------------------------------------
def train(config=None, **overrides) -> TrainResult:
    """Train a model; see the module docstring. `config`: a TrainConfig, a dict, a TOML path or None; keyword
    overrides replace its fields (None values ignored). Returns a TrainResult (paths, losses, eval metrics).

    Raises TrainError (one-line message) on bad input before anything in the run directory is written."""
    cfg = make_config(config, **overrides)
    dd = _Dist()
    device = _device(cfg, dd.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % (dd.world * cfg.grad_accum):
        raise TrainError(f"batch size {cfg.batch_size} is not divisible by {dd.world} processes x "
                         f"{cfg.grad_accum} accumulation steps")
    out = Path(cfg.out)
    ckpt_path = out / CHECKPOINT
    ck = None
    if ckpt_path.exists():
        if cfg.resume:
            ck = load_checkpoint(ckpt_path)
            _check_resume(ck, cfg, ckpt_path)
        elif not cfg.overwrite:
            raise TrainError(f"run directory {out} already holds a checkpoint; pass --resume to continue or "
                             f"--overwrite to start over")
    elif out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a directory")

    task = make_task(cfg)
    vocab = model_vocab(cfg, task)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model = build_model(cfg, vocab).to(device)
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    start = 0
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            sched.load_state_dict(ck["scheduler"])
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainError(f"incompatible checkpoint {ckpt_path}: {str(e).splitlines()[0][:160]}") from None
        start = int(ck["step"])
        if ck.get("world_size", 1) != dd.world:
            _say(cfg, dd.rank, f"note: checkpoint written by {ck.get('world_size')} process(es), resuming on "
                               f"{dd.world}")
        set_rng_state(ck["rng"][dd.rank] if dd.rank < len(ck["rng"]) else ck["rng"][0])

    dd.init(device)
    rank0 = dd.rank == 0
    metrics_path = out / "metrics.jsonl"
    config_path = out / "config.json"
    png = out / "loss_curve.png"
    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, config_path)
        kept = [r for r in _read_metrics(metrics_path) if r.get("step", 0) <= start] if ck is not None else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    lossm = LossModule(model)
    wrapped = lossm
    if dd.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(lossm, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = device.type == "cuda" and cfg.amp
    n_params = count_params(model)
    _say(cfg, dd.rank, f"mirasc train: {cfg.spec} on {cfg.task} | {n_params:,} parameters | vocab {vocab} | "
                       f"device {device}{f' x{dd.world}' if dd.enabled else ''} | steps {start}->{cfg.steps} | "
                       f"out {out}")

    losses: list = []
    t0 = time.perf_counter()
    t_log, tok_log, tok_total = t0, 0, 0
    last_loss = float("nan")
    micro_rows = cfg.batch_size // (dd.world * cfg.grad_accum)
    metrics_f = open(metrics_path, "a", encoding="utf-8") if rank0 else None
    try:
        model.train()
        for step in range(start, cfg.steps):
            batch = task.train_batch(step)
            ids_all, lab_all = batch["input_ids"], batch["labels"]
            n_scored = int((lab_all != -100).sum())
            base = dd.rank * cfg.grad_accum * micro_rows
            loss_acc = torch.zeros((), dtype=torch.float64, device=device)
            corr_acc = torch.zeros((), dtype=torch.float64, device=device)
            for m in range(cfg.grad_accum):
                lo = base + m * micro_rows
                x = torch.from_numpy(ids_all[lo:lo + micro_rows]).to(device)
                y = torch.from_numpy(lab_all[lo:lo + micro_rows]).to(device)
                sync = m == cfg.grad_accum - 1
                ctx = wrapped.no_sync() if (dd.enabled and not sync) else contextlib.nullcontext()
                with ctx:
                    with torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext():
                        loss_sum, correct = wrapped(x, y)
                    (loss_sum * (dd.world / max(1, n_scored))).backward()
                loss_acc += loss_sum.detach().double()
                corr_acc += correct.detach().double()
            if dd.enabled:
                red = torch.stack([loss_acc, corr_acc])
                dist.all_reduce(red)
                loss_acc, corr_acc = red[0], red[1]
            loss = float(loss_acc) / max(1, n_scored)
            if cfg.grad_clip and cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            lr = opt.param_groups[0]["lr"]
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if not math.isfinite(loss):
                raise TrainError(f"loss became {loss} at step {step + 1}; lower the learning rate")
            done = step + 1
            tok = int(ids_all.size)
            tok_log += tok
            tok_total += tok
            last_loss = loss
            if done % cfg.log_every == 0 or done == cfg.steps or done == start + 1:
                now = time.perf_counter()
                tps = tok_log / max(now - t_log, 1e-9)
                t_log, tok_log = now, 0
                rec = {"step": done, "loss": loss, "lr": lr, "train_acc": float(corr_acc) / max(1, n_scored),
                       "tokens": tok_total, "tokens_per_s": tps, "elapsed_s": now - t0}
                losses.append((done, loss))
                if rank0:
                    metrics_f.write(json.dumps(rec) + "\n")
                    metrics_f.flush()
                _say(cfg, dd.rank, f"step {done:>6}/{cfg.steps} | loss {loss:.4f} | lr {lr:.3e} | "
                                   f"{tps:,.0f} tok/s | {now - t0:.1f}s")
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                _save(cfg, dd, model, opt, sched, done, ckpt_path, vocab)
                if rank0:
                    plot_metrics(metrics_path, png, f"{cfg.spec} on {cfg.task}")
    finally:
        if metrics_f is not None:
            metrics_f.close()
    wall = time.perf_counter() - t0
    result = TrainResult(out_dir=str(out), checkpoint=str(ckpt_path), metrics_path=str(metrics_path),
                         plot_path=str(png) if png.exists() else None, config_path=str(config_path), hf_dir=None,
                         steps=cfg.steps, final_loss=last_loss, losses=losses, wall_s=wall,
                         tokens_per_s=tok_total / max(wall, 1e-9), params=n_params, vocab_size=vocab)
    if rank0:
        result.hf_dir = export_hf(model, task, out / "hf")
        if cfg.eval_at_end:
            from .evaluate import evaluate

            result.eval = evaluate(model, cfg, task, device, cfg.eval_examples)
            atomic_write_text(out / "eval.json", json.dumps({"task": cfg.task, **result.eval}, indent=2) + "\n")
            _say(cfg, dd.rank, "eval: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in result.eval.items()))
    if dd.enabled:
        dist.barrier()
    dd.close()
    return result


def _save(cfg, dd: _Dist, model, opt, sched, step: int, path: Path, vocab: int) -> None:
    """Gather every rank's RNG state and write the checkpoint atomically from rank 0."""
    st = rng_state()
    if dd.enabled:
        states = [None] * dd.world
        dist.all_gather_object(states, st)
    else:
        states = [st]
    if dd.rank == 0:
        payload = {"format": FORMAT, "step": step, "config": cfg.to_dict(), "vocab_size": vocab,
                   "model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                   "rng": states, "world_size": dd.world, "torch": torch.__version__}
        atomic_save(payload, path)
    if dd.enabled:
        dist.barrier()


def _quiet_hub() -> None:
    """No 'Writing model shards' progress bars on stderr."""
    for mod, fn in (("huggingface_hub.utils", "disable_progress_bars"),
                    ("transformers.utils.logging", "disable_progress_bar")):
        try:
            getattr(__import__(mod, fromlist=[fn]), fn)()
        except Exception:
            pass


def export_hf(model, task, path: Path) -> str | None:
    """save_pretrained (plus a byte-level tokenizer for byte tasks) into `path`, atomically; None if unsupported."""
    if not hasattr(model, "save_pretrained"):
        return None
    tok = getattr(task, "tok", None) or getattr(getattr(task, "corpus", None), "tokenizer", None)

    def write(tmp: Path):
        _quiet_hub()
        model.save_pretrained(tmp)
        if tok is not None and getattr(tok, "byte_level", False):
            try:
                tok.to_hf().save_pretrained(tmp)
            except Exception as e:  # pragma: no cover - transformers missing
                print(f"note: tokenizer not exported ({e})", file=sys.stderr)
        elif tok is not None and hasattr(tok, "path"):
            import shutil

            shutil.copy(tok.path, tmp / "tokenizer.json")

    try:
        atomic_save_dir(write, path)
    except Exception as e:
        print(f"note: HF export skipped ({str(e).splitlines()[0] if str(e) else type(e).__name__})", file=sys.stderr)
        return None
    return str(path)
