"""Building the model of a TrainConfig, and the loss module that training wraps (in DDP when distributed)."""

from __future__ import annotations

import importlib

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig, TrainError, resolve_spec


def _factory(path: str):
    mod_name, _, fn = path.partition(":")
    try:
        return getattr(importlib.import_module(mod_name), fn or "make_model")
    except (ImportError, AttributeError) as e:
        raise TrainError(f"model factory {path!r} cannot be imported ({e})") from None


def model_config_kwargs(cfg: TrainConfig, vocab_size: int) -> dict:
    spec = resolve_spec(cfg.spec)
    kw = dict(spec=spec, vocab_size=int(vocab_size), hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_layers,
              num_heads=cfg.num_heads, mixer="attention" if spec is None else "miras", hybrid=cfg.hybrid,
              window=cfg.window, chunk_size=cfg.chunk_size, spec_options=dict(cfg.spec_options) or None,
              **({"torch_compile": True} if cfg.torch_compile else {}))
    kw.update(cfg.model_kwargs or {})
    return kw


def build_model(cfg: TrainConfig, vocab_size: int) -> nn.Module:
    """MirasForCausalLM(MirasConfig(...)) for cfg, or cfg.model_factory(cfg, vocab_size) when set."""
    if cfg.model_factory:
        return _factory(cfg.model_factory)(cfg, vocab_size)
    try:
        from mirasc.models import MirasConfig, MirasForCausalLM
    except ImportError as e:
        raise TrainError(f"mirasc.models is not available ({e}); install transformers or pass a model factory") \
            from None
    try:
        mcfg = MirasConfig(**model_config_kwargs(cfg, vocab_size))
        return MirasForCausalLM(mcfg)
    except TrainError:
        raise
    except (ValueError, TypeError, KeyError) as e:
        raise TrainError(f"model config does not fit: {str(e).splitlines()[0] if str(e) else type(e).__name__}") \
            from None
    except Exception as e:  # SpecError and friends: keep one line
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise TrainError(f"cannot build the model: {first}") from None


class LossModule(nn.Module):
    """Sum of cross-entropy over scored positions (labels != -100) and the number of correct argmaxes there.

    The LM head is applied only at scored positions when the model exposes `.model` (returning
    last_hidden_state) and `.lm_head` (MirasForCausalLM does); otherwise the full logits are used."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor):
        m = self.model
        mask = labels != -100
        if hasattr(m, "lm_head") and hasattr(m, "model"):
            h = m.model(input_ids=input_ids).last_hidden_state
            logits = m.lm_head(h[mask])
        else:
            logits = m(input_ids=input_ids).logits[mask]
        target = labels[mask]
        loss = F.cross_entropy(logits.float(), target, reduction="sum")
        correct = (logits.argmax(-1) == target).sum()
        return loss, correct


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
