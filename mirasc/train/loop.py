"""The training loop: AdamW (β 0.9/0.95, wd 0.1 on matrices), linear warm-up then cosine decay to 10% of the peak,
gradient clipping, gradient accumulation, bf16 autocast on GPU only, DDP under torchrun (gloo on CPU, nccl on
GPU) or, with `fsdp` (`--fsdp`), FSDP2 under torchrun, atomic checkpoints and an exact `resume`.

Exactness. The global batch of step s is a pure function of (seed, s) (see mirasc.data); every process draws it
and takes its own rows, and each micro-batch's summed loss is divided by the number of scored positions of the
whole global batch, so the gradient does not depend on the number of processes or micro-batches (up to float
summation order). A checkpoint holds model, optimizer, scheduler, step and the torch / numpy / python (/ cuda)
RNG states, as tensors and plain data only (read back with weights_only=True: opening a shared checkpoint runs no
code); resuming on the same machine reproduces the uninterrupted loss curve bit for bit on CPU.

Units: setup and restore (`_setup`; which checkpoint to resume and restoring it: `run_state`), one optimizer step
(`_train_step`), logging and metrics (`metrics`), checkpointing (`run_state`), distribution, DDP and FSDP2
(`distributed`, whose docstring describes FSDP), and the end of a run (`_finish`: HF export, final eval).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from mirasc.data import DataError

from .checkpoint import CHECKPOINT, atomic_write_text, remove_stale_temporaries
from .config import TrainConfig, TrainError, dump_config, make_config
from .distributed import (
    Dist,
    all_reduce_sum,
    fsdp_check,
    fsdp_full_state,
    fsdp_plain_model,
    fsdp_shard,
    grad_sync,
    pick_device,
    wrap_ddp,
)
from .export import export_hf
from .metrics import StepLog, plot_metrics, say, start_metrics
from .modeling import LossModule, build_model, count_params
from .run_state import checkpoint_to_resume, load_model_weights, restore_training_state, save_checkpoint

__all__ = ["TrainResult", "export_hf", "lr_lambda", "make_optimizer", "make_task", "model_vocab", "plot_metrics",
           "train"]

# The files of a run directory besides the checkpoint.
METRICS, CONFIG, PLOT = "metrics.jsonl", "config.json", "loss_curve.png"


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


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What a run's steps and its end need, built by `_setup`."""

    cfg: TrainConfig
    dd: Dist
    device: torch.device
    out: Path
    task: object
    vocab: int
    model: torch.nn.Module
    wrapped: torch.nn.Module   # what a micro-batch calls: the loss module, under DDP or sharded by FSDP
    opt: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    start: int
    n_params: int
    use_amp: bool

    @property
    def rank0(self) -> bool:
        return self.dd.rank == 0


def _setup(cfg: TrainConfig) -> _Run:
    """Check the config against the launch, build (or restore) model, optimizer and scheduler, open the process
    group and the run directory. Every TrainError for bad input is raised before the run directory is written."""
    dd = Dist()
    if cfg.fsdp:
        fsdp_check(dd)
    device = pick_device(cfg, dd.local_rank)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.batch_size % (dd.world * cfg.grad_accum):
        raise TrainError(f"batch size {cfg.batch_size} is not divisible by {dd.world} processes x "
                         f"{cfg.grad_accum} accumulation steps")
    out = Path(cfg.out)
    ck = checkpoint_to_resume(cfg, out)

    task = make_task(cfg)
    vocab = model_vocab(cfg, task)

    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    random.seed(cfg.seed)
    model = build_model(cfg, vocab).to(device)
    n_params = count_params(model)
    if ck is not None:
        load_model_weights(model, ck, out / CHECKPOINT)
    lossm = LossModule(model)
    if cfg.fsdp:
        dd.init(device)
        fsdp_shard(lossm, device, dd.world)   # the optimizer must see the sharded (DTensor) parameters
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    start = 0
    if ck is not None:
        start = restore_training_state(cfg, dd, model, opt, sched, ck, out / CHECKPOINT)

    dd.init(device)
    if dd.rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)   # left by a run killed mid-write; the files they were for are intact
        dump_config(cfg, out / CONFIG)
        start_metrics(out / METRICS, start if ck is not None else None)

    wrapped = wrap_ddp(lossm, device) if dd.enabled and not cfg.fsdp else lossm
    par = f" x{dd.world} {'FSDP' if cfg.fsdp else 'DDP'}" if dd.enabled else ""
    say(cfg, dd.rank, f"mirasc train: {cfg.spec} on {cfg.task} | {n_params:,} parameters | vocab {vocab} | "
                      f"device {device}{par} | steps {start}->{cfg.steps} | out {out}")
    return _Run(cfg=cfg, dd=dd, device=device, out=out, task=task, vocab=vocab, model=model, wrapped=wrapped,
                opt=opt, sched=sched, start=start, n_params=n_params, use_amp=device.type == "cuda" and cfg.amp)


@dataclass
class _StepStats:
    loss: float             # mean loss per scored position of the global batch (every process agrees)
    lr: float               # the learning rate the step used
    correct: torch.Tensor   # scored positions predicted right, summed over the processes (float64 scalar)
    n_scored: int
    tokens: int             # tokens of the global batch


def _train_step(run: _Run, step: int) -> _StepStats:
    """One optimizer step on global batch `step` (0-based): this process's rows, in `grad_accum` micro-batches."""
    cfg, dd, device, wrapped = run.cfg, run.dd, run.device, run.wrapped
    micro_rows = cfg.batch_size // (dd.world * cfg.grad_accum)
    batch = run.task.train_batch(step)
    ids_all, lab_all = batch["input_ids"], batch["labels"]
    n_scored = int((lab_all != -100).sum())
    base = dd.rank * cfg.grad_accum * micro_rows
    loss_acc = torch.zeros((), dtype=torch.float64, device=device)
    corr_acc = torch.zeros((), dtype=torch.float64, device=device)
    for m in range(cfg.grad_accum):
        lo = base + m * micro_rows
        x = torch.from_numpy(ids_all[lo:lo + micro_rows]).to(device)
        y = torch.from_numpy(lab_all[lo:lo + micro_rows]).to(device)
        with grad_sync(cfg, dd, wrapped, sync=m == cfg.grad_accum - 1):
            with torch.autocast("cuda", dtype=torch.bfloat16) if run.use_amp else contextlib.nullcontext():
                loss_sum, correct = wrapped(x, y)
            (loss_sum * (dd.world / max(1, n_scored))).backward()
        loss_acc += loss_sum.detach().double()
        corr_acc += correct.detach().double()
    # the gradients' check rides on the loss's collective and host read: no extra synchronisation per step
    loss_acc, corr_acc, bad = all_reduce_sum(dd, loss_acc, corr_acc, _non_finite_gradients(run, loss_acc.device))
    loss = float(loss_acc) / max(1, n_scored)
    if not math.isfinite(loss):
        raise TrainError(f"loss became {loss} at step {step + 1}; lower the learning rate")
    # checked before the step, so that a non-finite gradient never reaches the weights (the run stops with the last
    # checkpoint intact, instead of failing a step later inside the model on NaN gate values)
    if bool(bad > 0):
        raise TrainError(f"gradients became non-finite at step {step + 1} (loss {loss:.4g}); lower the learning rate")
    if cfg.grad_clip and cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    lr = run.opt.param_groups[0]["lr"]
    run.opt.step()
    run.sched.step()
    run.opt.zero_grad(set_to_none=True)
    return _StepStats(loss=loss, lr=lr, correct=corr_acc, n_scored=n_scored, tokens=int(ids_all.size))


def _non_finite_gradients(run: _Run, device) -> torch.Tensor:
    """1.0 (a float64 scalar on `device`) when this process holds a non-finite gradient entry, else 0.0; summed over
    the processes with the loss, so that every process stops at the same step."""
    grads = [p.grad for p in run.model.parameters() if p.grad is not None]
    grads = [g.to_local() if hasattr(g, "to_local") else g for g in grads]  # FSDP2: this process's shard
    if not grads:
        return torch.zeros((), dtype=torch.float64, device=device)
    return (~torch.stack([torch.isfinite(g).all() for g in grads]).all()).to(device=device, dtype=torch.float64)


def _run_steps(run: _Run, log: StepLog) -> dict | None:
    """Steps start..cfg.steps with their logging and checkpoints. Returns the full model state the last checkpoint
    gathered under FSDP (rank 0; {} elsewhere), else None."""
    cfg = run.cfg
    full_sd = None
    try:
        run.model.train()
        for step in range(run.start, cfg.steps):
            st = _train_step(run, step)
            done = step + 1
            log.record(done, st.loss, st.lr, st.correct, st.n_scored, st.tokens)
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                full_sd = save_checkpoint(cfg, run.dd, run.model, run.opt, run.sched, done, run.out / CHECKPOINT,
                                          run.vocab)
                if run.rank0:
                    plot_metrics(run.out / METRICS, run.out / PLOT, f"{cfg.spec} on {cfg.task}")
    finally:
        log.close()
    return full_sd


def _finish(run: _Run, log: StepLog, full_sd: dict | None) -> TrainResult:
    """The result; on rank 0 the HF export and the final eval. Every process ends at a barrier."""
    cfg, dd, out = run.cfg, run.dd, run.out
    wall = time.perf_counter() - log.t0
    png = out / PLOT
    result = TrainResult(out_dir=str(out), checkpoint=str(out / CHECKPOINT), metrics_path=str(out / METRICS),
                         plot_path=str(png) if png.exists() else None, config_path=str(out / CONFIG), hf_dir=None,
                         steps=cfg.steps, final_loss=log.last_loss, losses=log.losses, wall_s=wall,
                         tokens_per_s=log.tok_total / max(wall, 1e-9), params=run.n_params, vocab_size=run.vocab)
    final = run.model
    if cfg.fsdp:   # export and evaluate a plain (unsharded) copy on rank 0; gathering is collective
        if full_sd is None:
            full_sd = fsdp_full_state(run.model)[0]
        final = fsdp_plain_model(cfg, run.vocab, full_sd, run.device) if run.rank0 else None
    if run.rank0:
        result.hf_dir = export_hf(final, run.task, out / "hf")
        if cfg.eval_at_end:
            from .evaluate import evaluate

            result.eval = evaluate(final, cfg, run.task, run.device, cfg.eval_examples)
            atomic_write_text(out / "eval.json", json.dumps({"task": cfg.task, **result.eval}, indent=2) + "\n")
            say(cfg, dd.rank, "eval: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                  for k, v in result.eval.items()))
    if dd.enabled:
        dist.barrier()
    dd.close()
    return result


def train(config=None, **overrides) -> TrainResult:
    """Train a model; see the module docstring. `config`: a TrainConfig, a dict, a TOML path or None; keyword
    overrides replace its fields (None values ignored). Returns a TrainResult (paths, losses, eval metrics).

    Raises TrainError (one-line message) on bad input before anything in the run directory is written."""
    cfg = make_config(config, **overrides)
    run = _setup(cfg)
    log = StepLog(cfg, run.dd.rank, run.out / METRICS, run.start)
    full_sd = _run_steps(run, log)
    return _finish(run, log, full_sd)
