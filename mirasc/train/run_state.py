"""Checkpointing of a training run: which checkpoint a run resumes, restoring its state, and writing it.

What a checkpoint holds: model, optimizer, scheduler, step, every rank's RNG state, the config and the
world size, as tensors and plain data; the file itself is written and read by `checkpoint` (atomic, safe).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist

from .checkpoint import CHECKPOINT, FORMAT, atomic_save, load_checkpoint, plain, rng_state, set_rng_state
from .config import TrainConfig, TrainError
from .distributed import Dist, fsdp_full_state, fsdp_load_optimizer
from .metrics import say

# Settings that must agree between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = ("spec", "spec_options", "hidden_size", "num_layers", "num_heads", "vocab_size", "hybrid", "window",
                     "chunk_size", "model_kwargs", "task", "tier", "seq_len", "kv_pairs", "seed", "batch_size",
                     "niah_kind", "data", "tokenizer", "model_factory")


def check_resume(ck: dict, cfg: TrainConfig, path: Path) -> None:
    """TrainError unless the checkpoint was written by a run with the same RESUME_MUST_MATCH settings."""
    old, new = ck.get("config", {}), plain(cfg.to_dict())   # both as JSON values, as the checkpoint keeps them
    for k in RESUME_MUST_MATCH:
        if k in old and old[k] != new[k]:
            raise TrainError(f"incompatible checkpoint {path}: {k} is {old[k]!r} there, {new[k]!r} here")


def checkpoint_to_resume(cfg: TrainConfig, out: Path) -> dict | None:
    """The checkpoint in run directory `out` when the run resumes it, else None. Raises TrainError, before anything
    is written, when `out` holds a checkpoint that neither --resume nor --overwrite says what to do with."""
    ckpt_path = out / CHECKPOINT
    if ckpt_path.exists():
        if cfg.resume:
            ck = load_checkpoint(ckpt_path)
            check_resume(ck, cfg, ckpt_path)
            return ck
        if not cfg.overwrite:
            raise TrainError(f"run directory {out} already holds a checkpoint; pass --resume to continue or "
                             f"--overwrite to start over")
    elif out.exists() and not out.is_dir():
        raise TrainError(f"--out {out} exists and is not a directory")
    return None


def _incompatible(path: Path, e: Exception) -> TrainError:
    return TrainError(f"incompatible checkpoint {path}: {str(e).splitlines()[0][:160]}")


def load_model_weights(model: torch.nn.Module, ck: dict, path: Path) -> None:
    """The checkpoint's weights into the model (under FSDP: the full weights, before they are sharded)."""
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise _incompatible(path, e) from None


def restore_training_state(cfg: TrainConfig, dd: Dist, model: torch.nn.Module, opt: torch.optim.Optimizer,
                           sched: torch.optim.lr_scheduler.LRScheduler, ck: dict, path: Path) -> int:
    """Optimizer, scheduler and this rank's RNG state from the checkpoint; returns the step it was taken at."""
    try:
        if cfg.fsdp:
            fsdp_load_optimizer(model, opt, ck["optimizer"])
        else:
            opt.load_state_dict(ck["optimizer"])
        sched.load_state_dict(ck["scheduler"])
    except (RuntimeError, KeyError, ValueError) as e:
        raise _incompatible(path, e) from None
    start = int(ck["step"])
    if ck.get("world_size", 1) != dd.world:
        say(cfg, dd.rank, f"note: checkpoint written by {ck.get('world_size')} process(es), resuming on "
                          f"{dd.world}")
    set_rng_state(ck["rng"][dd.rank] if dd.rank < len(ck["rng"]) else ck["rng"][0])
    return start


def save_checkpoint(cfg: TrainConfig, dd: Dist, model: torch.nn.Module, opt: torch.optim.Optimizer,
                    sched: torch.optim.lr_scheduler.LRScheduler, step: int, path: Path, vocab: int) -> dict | None:
    """Gather every rank's RNG state (and under FSDP the full model and optimizer state) and write the checkpoint
    atomically from rank 0. Returns the gathered full model state under FSDP (rank 0; {} elsewhere), else None."""
    st = rng_state()
    if dd.enabled:
        states = [None] * dd.world
        dist.all_gather_object(states, st)
    else:
        states = [st]
    full = None
    if cfg.fsdp:
        full, osd = fsdp_full_state(model, opt)
        msd = full
    elif dd.rank == 0:
        msd, osd = model.state_dict(), opt.state_dict()
    if dd.rank == 0:
        # tensors and plain data only: load_checkpoint reads it with weights_only=True (see checkpoint.py)
        payload = {"format": FORMAT, "step": step, "config": plain(cfg.to_dict()), "vocab_size": vocab,
                   "model": msd, "optimizer": osd, "scheduler": sched.state_dict(),
                   "rng": states, "world_size": dd.world, "torch": str(torch.__version__)}
        atomic_save(payload, path)
    if dd.enabled:
        dist.barrier()
    return full
