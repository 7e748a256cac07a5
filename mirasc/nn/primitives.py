"""Position and mask helpers shared by both token mixers (the Miras layer and causal attention).

Kept apart from `blocks` (which builds Miras layers) so that `layer` can use them without importing `blocks`:
the dependency runs primitives <- layer <- blocks, never back.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["RotaryEmbedding", "apply_rotary", "new_token_mask", "positions_from_cu_seqlens"]


class RotaryEmbedding(nn.Module):
    """RoPE (rotate-half form) over the last axis of [B, T, H, D] tensors; positions [B, T] or [T].

    Frequencies are computed on the fly (no buffers), so the module has no state to save or initialise.
    """

    def __init__(self, dim: int, base: float = 10000.0):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary embedding needs an even head dimension, got {dim}")
        self.dim, self.base = dim, float(base)

    def cos_sin(self, positions: torch.Tensor, dtype=torch.float32):
        inv = self.base ** (-torch.arange(0, self.dim, 2, device=positions.device, dtype=torch.float32) / self.dim)
        ang = positions.float()[..., None] * inv  # [..., T, D/2]
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos().to(dtype), ang.sin().to(dtype)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        cos, sin = self.cos_sin(positions)
        return apply_rotary(x, cos, sin)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos, sin [B, T, D] or [T, D]."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    x1, x2 = x.float().chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rot * sin).to(x.dtype)


def positions_from_cu_seqlens(cu_seqlens: torch.Tensor, total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(position within its segment, segment id), both [total], for packed sequences."""
    cu = cu_seqlens.to(torch.long)
    idx = torch.arange(total, device=cu.device)
    seg = torch.searchsorted(cu[1:], idx, right=True)
    return idx - cu[seg], seg


def new_token_mask(attention_mask: torch.Tensor | None, B: int, T: int, device) -> torch.Tensor:
    """The [B, T] boolean mask of the T new tokens (the last T columns of a 2-D attention mask)."""
    if attention_mask is None:
        return torch.ones(B, T, dtype=torch.bool, device=device)
    if attention_mask.dim() != 2 or attention_mask.shape[0] != B or attention_mask.shape[1] < T:
        raise ValueError(f"attention_mask: expected [B, >= T] = [{B}, >= {T}], got {list(attention_mask.shape)}")
    return attention_mask[:, -T:].to(device=device).bool()
