"""Reload a training checkpoint and evaluate it on a task (what `mirasc eval` runs)."""

from __future__ import annotations

import torch

from .checkpoint import find_checkpoint, load_checkpoint
from .config import TrainConfig, TrainError, make_config
from .distributed import pick_device
from .loop import make_task, model_vocab
from .modeling import build_model


def load_model(checkpoint, device: str = "cpu"):
    """(model, config, checkpoint dict) from a run directory or checkpoint file."""
    path = find_checkpoint(checkpoint)
    ck = load_checkpoint(path)
    try:
        cfg = make_config(ck["config"], resume=False)
    except TrainError as e:
        raise TrainError(f"incompatible checkpoint {path}: {e}") from None
    vocab = int(ck.get("vocab_size") or cfg.vocab_size)
    model = build_model(cfg, vocab)
    try:
        model.load_state_dict(ck["model"])
    except (RuntimeError, KeyError) as e:
        raise TrainError(f"incompatible checkpoint {path}: {str(e).splitlines()[0][:160]}") from None
    return model.to(torch.device(device)), cfg, ck


def evaluate_checkpoint(checkpoint, task: str | None = None, num_examples: int | None = None,
                        data: str | None = None, seq_len: int | None = None, device: str = "auto",
                        niah_kind: str | None = None) -> dict:
    """Metrics of a checkpoint on `task` (default: its training task): mqar/robust accuracy, niah accuracy,
    lm loss/perplexity (+ bits_per_byte for byte-level text)."""
    ck_cfg = load_checkpoint(find_checkpoint(checkpoint))["config"]
    base = make_config(ck_cfg, resume=False)
    dev = pick_device(base.replace(device=device), 0)
    model, cfg, ck = load_model(checkpoint, str(dev))
    name = task or cfg.task
    over = {}
    if data is not None:
        over["data"] = data
    if niah_kind is not None:
        over["niah_kind"] = niah_kind
    ecfg: TrainConfig = cfg.replace(**over) if over else cfg
    if name != cfg.task and name in ("niah", "lm") and cfg.task in ("mqar", "robust"):
        ecfg = ecfg.replace(vocab_size=None)
    t = make_task(ecfg, name, seq_len=seq_len)
    vocab = int(ck.get("vocab_size") or 0)
    if t.vocab_size > vocab:
        raise TrainError(f"task {name} needs vocabulary {t.vocab_size}, the checkpoint's model has {vocab}")
    model_vocab(ecfg.replace(vocab_size=vocab), t)
    from .evaluate import evaluate

    return evaluate(model, ecfg, t, dev, num_examples)
