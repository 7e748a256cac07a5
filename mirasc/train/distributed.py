"""Distribution for the training loop: the torchrun environment, the device, DDP and FSDP2.

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
import os
import time

import torch
import torch.distributed as dist

from .config import TrainConfig, TrainError
from .modeling import LossModule, build_model


def pick_device(cfg: TrainConfig, local_rank: int) -> torch.device:
    """The device of this process: its local GPU when CUDA is asked for (or `auto` finds it), else the CPU."""
    if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise TrainError("--device cuda requested but CUDA is not available")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


class Dist:
    """This process's place in a torchrun launch (WORLD_SIZE / RANK / LOCAL_RANK; one process without torchrun)
    and the process group, which is closed only by the run that opened it."""

    def __init__(self) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.initialised_here = False

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def init(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(device)
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
            self.initialised_here = True

    def close(self) -> None:
        if self.initialised_here and dist.is_initialized():
            # Gloo's worker threads free each finished collective themselves, and freeing one that holds tensors
            # seen from Python (all_gather_object's) needs the GIL. The group's last reference (the DDP reducer's,
            # freed when train returns) joins those threads while holding the GIL, so a worker still freeing the
            # final barrier deadlocks with it: a rank of the torchrun test hung so in CI (native stacks: the main
            # thread in ~ProcessGroupGloo's join under the reducer's dealloc, a worker in ~AsyncBarrierWork waiting
            # for the GIL). Sleeping releases the GIL, so the workers finish first.
            time.sleep(0.2)
            dist.destroy_process_group()


def wrap_ddp(lossm: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The loss module under DistributedDataParallel (multi-process runs without FSDP)."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(lossm, device_ids=[device.index] if device.type == "cuda" else None)


def grad_sync(cfg: TrainConfig, dd: Dist, wrapped: torch.nn.Module, sync: bool) -> contextlib.AbstractContextManager:
    """The context for one micro-batch's backward: gradients are reduced across processes only on the last
    micro-batch of a step (`sync`), so accumulation costs one reduction per step, not one per micro-batch."""
    if cfg.fsdp and cfg.grad_accum > 1:
        wrapped.set_requires_gradient_sync(sync)   # FSDP2: accumulate unsharded, reduce-scatter once
    elif dd.enabled and not cfg.fsdp and not sync:
        return wrapped.no_sync()
    return contextlib.nullcontext()


def all_reduce_sum(dd: Dist, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Scalars summed over every process (one collective for all of them); unchanged in a single process."""
    if not dd.enabled:
        return values
    red = torch.stack(list(values))
    dist.all_reduce(red)
    return tuple(red[i] for i in range(len(values)))


# FSDP2 (torch.distributed.fsdp.fully_shard) under torchrun; checkpoints stay full and unsharded.
def fsdp_check(dd: Dist) -> None:
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


def fsdp_blocks(model: torch.nn.Module) -> list:
    """The modules that get their own FSDP group: the model's `_no_split_modules` (MirasBlock), else the
    entries of `.model.layers` / `.layers`; none for other models (then only the root is sharded)."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    blocks = [m for m in model.modules() if names and type(m).__name__ in names]
    if not blocks:
        layers = getattr(getattr(model, "model", model), "layers", None)
        if isinstance(layers, torch.nn.ModuleList):
            blocks = list(layers)
    return blocks


def fsdp_shard(lossm: LossModule, device: torch.device, world: int) -> None:
    """fully_shard each block, then the root: the loss module (its forward is what training calls), whose own
    group holds the embeddings, the final norm and the (tied) LM head."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (world,))
    for block in fsdp_blocks(lossm.model):
        fully_shard(block, mesh=mesh)
    fully_shard(lossm, mesh=mesh)


def fsdp_full_state(model: torch.nn.Module, opt: torch.optim.Optimizer | None = None) -> tuple[dict, dict | None]:
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
    osd = osd_names_to_ids(get_optimizer_state_dict(model, opt, options=o))
    if osd:   # hyperparameters as Optimizer.state_dict() has them (the gathered copy turns tuples into lists)
        local = opt.state_dict()["param_groups"]
        assert [g["params"] for g in local] == [g["params"] for g in osd["param_groups"]]
        osd["param_groups"] = local
    return msd, osd


def osd_names_to_ids(osd: dict) -> dict:
    """A name-keyed optimizer state dict (torch.distributed.checkpoint) -> the id-keyed layout of
    Optimizer.state_dict(): ids number the parameters group after group, as Optimizer.state_dict() does."""
    if not osd:
        return osd
    ids = {name: i for i, name in enumerate(n for g in osd["param_groups"] for n in g["params"])}
    return {"state": {ids[n]: v for n, v in osd["state"].items()},
            "param_groups": [{**g, "params": [ids[n] for n in g["params"]]} for g in osd["param_groups"]]}


def fsdp_load_optimizer(model: torch.nn.Module, opt: torch.optim.Optimizer, sd: dict) -> None:
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


def fsdp_plain_model(cfg: TrainConfig, vocab: int, full_sd: dict, device: torch.device) -> torch.nn.Module:
    """An unsharded copy of the trained model (for HF export and the final eval on rank 0)."""
    with torch.random.fork_rng(devices=[]):   # building initialises weights; leave the RNG streams alone
        plain = build_model(cfg, vocab)
    plain.load_state_dict(full_sd)
    return plain.to(device)
