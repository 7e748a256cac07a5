"""The training loop: AdamW (β 0.9/0.95, wd 0.1 on matrices), linear warm-up then cosine decay to 10% of the peak,
gradient clipping, gradient accumulation, bf16 autocast on GPU only, DDP under torchrun (gloo on CPU, nccl on
GPU) or, with `fsdp` (`--fsdp`), FSDP2 under torchrun, atomic checkpoints and an exact `resume`.

Exactness. The global batch of step s is a pure function of (seed, s) (see mirasc.data); every process draws it
and takes its own rows, and each micro-batch's summed loss is divided by the number of scored positions of the
whole global batch, so the gradient does not depend on the number of processes or micro-batches (up to float
summation order). A checkpoint holds model, optimizer, scheduler, step and the torch / numpy / python (/ cuda)
RNG states, as tensors and plain data only (read back with weights_only=True: opening a shared checkpoint runs no
code); resuming on the same machine reproduces the uninterrupted loss curve bit for bit on CPU.

FSDP (`fsdp = true` / `--fsdp`, torchrun only). Instead of DDP, the model is sharded with PyTorch FSDP2
(`torch.distributed.fsdp.fully_shard`, torch >= 2.6): each block (the model's `_no_split_modules`, else
`.model.layers`) is its own group, then the root (the loss module: embeddings, final norm, tied LM head). Parameters
and optimizer state stay fp32 (bf16 autocast on GPU as without FSDP); gradients are reduce-scattered and averaged
like DDP's all-reduce, so the loss curve matches a single process with the same global batch. It works on CPU
(gloo) as well as GPU (nccl). Checkpoints stay full and unsharded: the model and optimizer state are gathered to
rank 0 (`get_model_state_dict` / `get_optimizer_state_dict`, full_state_dict, cpu_offload) and the optimizer state
is written in the ordinary `optimizer.state_dict()` layout, so one file serves a single-process run, DDP, FSDP
with any number of processes, and `mirasc eval`. Resuming under FSDP loads the full weights before sharding and
the optimizer state with `set_optimizer_state_dict`. Without torchrun (one process) `--fsdp` is an error, not a
silent no-op: there is nothing to shard over, and a run that asked for sharding but got none usually means the
torchrun launcher was forgotten (the fix is to launch with torchrun or drop the flag; `--no-fsdp` overrides a
config file's `fsdp = true`).
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
    plain,
    remove_stale_temporaries,
    rng_state,
    set_rng_state,
)
from .config import TrainConfig, TrainError, dump_config, make_config
from .modeling import LossModule, build_model, count_params

# Settings that must agree between a checkpoint and the run that resumes it.
RESUME_MUST_MATCH = ("spec", "spec_options", "hidden_size", "num_layers", "num_heads", "vocab_size", "hybrid", "window",
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
    old, new = ck.get("config", {}), plain(cfg.to_dict())   # both as JSON values, as the checkpoint keeps them
    for k in RESUME_MUST_MATCH:
        if k in old and old[k] != new[k]:
            raise TrainError(f"incompatible checkpoint {path}: {k} is {old[k]!r} there, {new[k]!r} here")


# ---------------------------------------------------------------------------------------------------------------
def train(config=None, **overrides) -> TrainResult:
    """Train a model; see the module docstring. `config`: a TrainConfig, a dict, a TOML path or None; keyword
    overrides replace its fields (None values ignored). Returns a TrainResult (paths, losses, eval metrics).

    Raises TrainError (one-line message) on bad input before anything in the run directory is written."""
    cfg = make_config(config, **overrides)
    dd = _Dist()
    if cfg.fsdp:
        _fsdp_check(dd)
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
    n_params = count_params(model)
    if ck is not None:
        try:
            model.load_state_dict(ck["model"])   # under FSDP: the full weights, before they are sharded
        except (RuntimeError, KeyError, ValueError) as e:
            raise TrainError(f"incompatible checkpoint {ckpt_path}: {str(e).splitlines()[0][:160]}") from None
    lossm = LossModule(model)
    if cfg.fsdp:
        dd.init(device)
        _fsdp_shard(lossm, device, dd.world)   # the optimizer must see the sharded (DTensor) parameters
    opt = make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    start = 0
    if ck is not None:
        try:
            if cfg.fsdp:
                _fsdp_load_optimizer(model, opt, ck["optimizer"])
            else:
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
        remove_stale_temporaries(out)   # left by a run killed mid-write; the files they were for are intact
        dump_config(cfg, config_path)
        kept = [r for r in _read_metrics(metrics_path) if r.get("step", 0) <= start] if ck is not None else []
        atomic_write_text(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    wrapped = lossm
    if dd.enabled and not cfg.fsdp:
        from torch.nn.parallel import DistributedDataParallel as DDP

        wrapped = DDP(lossm, device_ids=[device.index] if device.type == "cuda" else None)
    use_amp = device.type == "cuda" and cfg.amp
    par = f" x{dd.world} {'FSDP' if cfg.fsdp else 'DDP'}" if dd.enabled else ""
    _say(cfg, dd.rank, f"mirasc train: {cfg.spec} on {cfg.task} | {n_params:,} parameters | vocab {vocab} | "
                       f"device {device}{par} | steps {start}->{cfg.steps} | out {out}")

    losses: list = []
    t0 = time.perf_counter()
    t_log, tok_log, tok_total = t0, 0, 0
    last_loss = float("nan")
    micro_rows = cfg.batch_size // (dd.world * cfg.grad_accum)
    metrics_f = open(metrics_path, "a", encoding="utf-8") if rank0 else None
    full_sd = None   # FSDP: the gathered full model state of the last checkpoint (rank 0)
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
                ctx = contextlib.nullcontext()
                if cfg.fsdp and cfg.grad_accum > 1:
                    wrapped.set_requires_gradient_sync(sync)   # FSDP2: accumulate unsharded, reduce-scatter once
                elif dd.enabled and not cfg.fsdp and not sync:
                    ctx = wrapped.no_sync()
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
                full_sd = _save(cfg, dd, model, opt, sched, done, ckpt_path, vocab)
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
    final = model
    if cfg.fsdp:   # export and evaluate a plain (unsharded) copy on rank 0; gathering is collective
        if full_sd is None:
            full_sd = _fsdp_full_state(model)[0]
        final = _fsdp_plain_model(cfg, vocab, full_sd, device) if rank0 else None
    if rank0:
        result.hf_dir = export_hf(final, task, out / "hf")
        if cfg.eval_at_end:
            from .evaluate import evaluate

            result.eval = evaluate(final, cfg, task, device, cfg.eval_examples)
            atomic_write_text(out / "eval.json", json.dumps({"task": cfg.task, **result.eval}, indent=2) + "\n")
            _say(cfg, dd.rank, "eval: " + ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                                   for k, v in result.eval.items()))
    if dd.enabled:
        dist.barrier()
    dd.close()
    return result


def _save(cfg, dd: _Dist, model, opt, sched, step: int, path: Path, vocab: int) -> dict | None:
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
        full, osd = _fsdp_full_state(model, opt)
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


# ---------------------------------------------------------------------------------------------------------------
# FSDP2 (torch.distributed.fsdp.fully_shard) under torchrun; checkpoints stay full and unsharded.
def _fsdp_check(dd: _Dist) -> None:
    """One-line TrainError unless FSDP can run here: a torchrun launch with >= 2 processes and torch's FSDP2."""
    if not dd.enabled:
        raise TrainError("--fsdp shards the model over the processes of a torchrun launch, and this is a single "
                         "process (WORLD_SIZE 1): launch with `python -m torch.distributed.run --nproc_per_node N "
                         "-m mirasc train ... --fsdp` (N >= 2) or drop --fsdp")
    try:
        from torch.distributed.checkpoint.state_dict import get_model_state_dict  # noqa: F401
        from torch.distributed.fsdp import fully_shard  # noqa: F401
    except ImportError:
        raise TrainError(f"--fsdp needs PyTorch FSDP2 (torch.distributed.fsdp.fully_shard, torch >= 2.6); this is "
                         f"torch {torch.__version__}") from None


def _fsdp_blocks(model: torch.nn.Module) -> list:
    """The modules that get their own FSDP group: the model's `_no_split_modules` (MirasBlock), else the
    entries of `.model.layers` / `.layers`; none for other models (then only the root is sharded)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if names and type(m).__name__ in names]
    if not blocks:
        layers = getattr(getattr(model, "model", model), "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            blocks = list(layers)
    return blocks


def _fsdp_shard(lossm: LossModule, device: torch.device, world: int) -> None:
    """fully_shard each block, then the root: the loss module (its forward is what training calls), whose own
    group holds the embeddings, the final norm and the (tied) LM head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for block in _fsdp_blocks(lossm.model):
        fully_shard(block, mesh=mesh)
    fully_shard(lossm, mesh=mesh)


def _fsdp_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
    """(model state, optimizer state) gathered in full onto rank 0's CPU ({} on the other ranks); collective.
    The optimizer state comes back in `optimizer.state_dict()` layout (parameter ids, not names)."""
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=o)
    if opt is None:
        return msd, None
    osd = _osd_names_to_ids(get_optimizer_state_dict(model, opt, options=o))
    if osd:   # hyperparameters as Optimizer.state_dict() has them (the gathered copy turns tuples into lists)
        local = opt.state_dict()["param_groups"]
        assert [g["params"] for g in local] == [g["params"] for g in osd["param_groups"]]
        osd["param_groups"] = local
    return msd, osd


def _osd_names_to_ids(osd: dict) -> dict:
    """A name-keyed optimizer state dict (torch.distributed.checkpoint) -> the id-keyed layout of
    Optimizer.state_dict(): ids number the parameters group after group, as Optimizer.state_dict() does."""
    if not osd:
        return osd
    ids = {name: i for i, name in enumerate(n for g in osd["param_groups"] for n in g["params"])}
    return {"state": {ids[n]: v for n, v in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]}


def _fsdp_load_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
    """Load an id-keyed full optimizer state dict (any checkpoint of this loop) into the sharded optimizer."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    names = {id(p): n for n, p in model.named_parameters()}
    order = [names[id(p)] for g in opt.param_groups for p in g["params"]]
    groups = sd["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in opt.param_groups]:
        raise ValueError("the optimizer's parameter groups do not match the model")
    named = {"state": {order[i]: v for i, v in sd["state"].items()},
             "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in groups]}
    set_optimizer_state_dict(model, opt, named, options=StateDictOptions(full_state_dict=True))
    for g, saved in zip(opt.param_groups, groups):   # hyperparameters verbatim (the loader turns tuples into lists)
        g.update({k: v for k, v in saved.items() if k != "params"})


def _fsdp_plain_model(cfg: TrainConfig, vocab: int, full_sd: dict, device: torch.device) -> torch.nn.Module:
    """An unsharded copy of the trained model (for HF export and the final eval on rank 0)."""
    with torch.random.fork_rng(devices=[]):   # building initialises weights; leave the RNG streams alone
        plain = build_model(cfg, vocab)
    plain.load_state_dict(full_sd)
    return plain.to(device)


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
