"""Llama-style building blocks around the Miras token mixer.

RMSNorm, SwiGLU MLP, causal softmax attention (RoPE from `primitives`, re-exported here) with an
optional sliding window and a KV cache, the pre-norm block (RMSNorm -> mixer -> +x -> RMSNorm -> SwiGLU -> +x),
and `build_mixer`, which picks a Miras layer or attention for block i of a pure, hybrid (Samba-style: Miras
and sliding-window attention alternating) or Transformer++ stack.

Every mixer takes `forward(x, attention_mask=None, cu_seqlens=None, cache=None, use_cache=False)` and returns
`(y, cache)`; `attention_mask` is [B, T] (or [B, T_past + T] while decoding: the last T columns are the new
tokens), 1 for real tokens, 0 for padding; `cu_seqlens` (B = 1) packs sequences as flash-linear-attention does.
Padding positions produce zeros and never influence real tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .layer import MirasLayer
from .primitives import RotaryEmbedding, apply_rotary, new_token_mask, positions_from_cu_seqlens

__all__ = [
    "AttentionCache",
    "CausalAttention",
    "MirasBlock",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "build_mixer",
    "default_intermediate_size",
    "positions_from_cu_seqlens",
]


class RMSNorm(nn.Module):
    """y = x / rms(x) * weight over the last axis (computed in fp32, returned in x's dtype)."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def _reset_own_parameters(self) -> None:
        with torch.no_grad():
            self.weight.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (y * self.weight.float()).to(x.dtype)


def default_intermediate_size(hidden_size: int) -> int:
    """Llama's 8/3 * hidden, rounded up to a multiple of 32."""
    return 32 * math.ceil(8 * hidden_size / 3 / 32)


class SwiGLU(nn.Module):
    def __init__(self, hidden_size: int, intermediate_size: int | None = None):
        super().__init__()
        inter = intermediate_size or default_intermediate_size(hidden_size)
        self.gate_proj = nn.Linear(hidden_size, inter, bias=False)
        self.up_proj = nn.Linear(hidden_size, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class AttentionCache:
    """KV cache of one attention layer: keys and values after RoPE [B, H, S, D], which columns are real tokens
    [B, S], their positions [B, S], and how many real tokens each row has seen [B]."""

    k: torch.Tensor | None = None
    v: torch.Tensor | None = None
    key_mask: torch.Tensor | None = None
    key_pos: torch.Tensor | None = None
    seen: torch.Tensor | None = None

    def reorder(self, index: torch.Tensor) -> None:
        for name in ("k", "v", "key_mask", "key_pos", "seen"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index.to(t.device)))


class CausalAttention(nn.Module):
    """Multi-head causal softmax attention with RoPE, an optional sliding window and a KV cache.

    window=W lets token i attend to the real tokens j with pos_i - pos_j < W (itself included).
    Uses torch.nn.functional.scaled_dot_product_attention with an explicit boolean mask.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, window: int | None = None,
                 use_rope: bool = True, rope_base: float = 10000.0):
        super().__init__()
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.head_dim = head_dim or hidden_size // num_heads
        self.window = window
        inner = num_heads * self.head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self.rotary = RotaryEmbedding(self.head_dim, rope_base) if use_rope else None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, cache: AttentionCache | None = None, use_cache: bool = False):
        B, T, _ = x.shape
        H, D = self.num_heads, self.head_dim
        m = new_token_mask(None if cu_seqlens is not None else attention_mask, B, T, x.device)
        past = cache is not None and cache.k is not None
        seg = None
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError(f"cu_seqlens needs batch size 1 (packed sequences), got {B}")
            if past:
                raise ValueError("cu_seqlens cannot be combined with a filled cache")
            pos, seg = positions_from_cu_seqlens(cu_seqlens.to(x.device), T)
            pos = pos[None]
        else:
            seen = cache.seen if past else torch.zeros(B, dtype=torch.long, device=x.device)
            pos = seen[:, None] + m.long().cumsum(1) - 1
            pos = pos.clamp(min=0)
        q = self.q_proj(x).view(B, T, H, D)
        k = self.k_proj(x).view(B, T, H, D)
        v = self.v_proj(x).view(B, T, H, D)
        if self.rotary is not None:
            cos, sin = self.rotary.cos_sin(pos)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [B, H, T, D]
        if past:
            k_all = torch.cat([cache.k, k], dim=2)
            v_all = torch.cat([cache.v, v], dim=2)
            kmask = torch.cat([cache.key_mask, m], dim=1)
            kpos = torch.cat([cache.key_pos, pos], dim=1)
        else:
            k_all, v_all, kmask, kpos = k, v, m, pos.expand(B, T)
        S = k_all.shape[2]
        qcol = torch.arange(S - T, S, device=x.device)
        kcol = torch.arange(S, device=x.device)
        allowed = (kcol[None, :] <= qcol[:, None])[None] & kmask[:, None, :]  # [B, T, S]
        if self.window is not None:
            allowed = allowed & ((pos.expand(B, T)[:, :, None] - kpos[:, None, :]) < self.window)
        if seg is not None:
            allowed = allowed & (seg[:, None] == seg[None, :])[None]
        allowed = allowed | (kcol[None, :] == qcol[:, None])[None]  # a query always sees itself: no empty rows
        o = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=allowed[:, None])
        o = o.transpose(1, 2).reshape(B, T, H * D) * m[..., None].to(x.dtype)
        y = self.o_proj(o)
        new_cache = None
        if use_cache:
            seen0 = cache.seen if past else torch.zeros(B, dtype=torch.long, device=x.device)
            if cu_seqlens is not None:
                raise ValueError("use_cache with cu_seqlens is not supported for attention layers")
            if self.window is not None and S > self.window:
                # the real tokens of each row are contiguous at the end while decoding (left padding), so the last
                # `window` columns hold every key a later query can still see
                k_all, v_all = k_all[:, :, -self.window:], v_all[:, :, -self.window:]
                kmask, kpos = kmask[:, -self.window:], kpos[:, -self.window:]
            new_cache = cache if cache is not None else AttentionCache()
            new_cache.k, new_cache.v, new_cache.key_mask, new_cache.key_pos = k_all, v_all, kmask, kpos
            new_cache.seen = seen0 + m.long().sum(1)
        return y, new_cache


class MirasBlock(nn.Module):
    """Pre-norm block: x + mixer(RMSNorm(x)), then + SwiGLU(RMSNorm(.))."""

    def __init__(self, hidden_size: int, mixer: nn.Module, intermediate_size: int | None = None,
                 norm_eps: float = 1e-6):
        super().__init__()
        self.mixer_norm = RMSNorm(hidden_size, norm_eps)
        self.mixer = mixer
        self.mlp_norm = RMSNorm(hidden_size, norm_eps)
        self.mlp = SwiGLU(hidden_size, intermediate_size)

    def forward(self, x: torch.Tensor, attention_mask=None, cu_seqlens=None, cache=None, use_cache: bool = False):
        h, cache = self.mixer(self.mixer_norm(x), attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                              cache=cache, use_cache=use_cache)
        x = x + h
        x = x + self.mlp(self.mlp_norm(x))
        return x, cache


def build_mixer(layer_idx: int, hidden_size: int, num_heads: int, *, spec=None, mixer: str = "miras",
                hybrid: bool = False, window: int | None = None, head_dim: int | None = None, conv_size: int = 4,
                gate_rank: int | None = None, use_rope: bool = False, chunk_size: int | None = None,
                backend: str = "auto", rope_base: float = 10000.0) -> nn.Module:
    """The token mixer of block `layer_idx`.

    mixer="attention": Transformer++ (RoPE attention; sliding if `window`). mixer="miras": a MirasLayer in every
    block, or with hybrid=True Miras in even blocks and sliding-window attention (RoPE, `window`) in odd ones
    (Samba's [Miras, MLP, SWA, MLP] unit).
    """
    if mixer == "attention":
        return CausalAttention(hidden_size, num_heads, head_dim, window=window, rope_base=rope_base)
    if mixer != "miras":
        raise ValueError(f"mixer must be 'miras' or 'attention', got {mixer!r}")
    if spec is None:
        raise ValueError("mixer='miras' needs a spec")
    if hybrid and layer_idx % 2 == 1:
        return CausalAttention(hidden_size, num_heads, head_dim, window=window, rope_base=rope_base)
    return MirasLayer(spec, hidden_size, num_heads, head_dim=head_dim, conv_size=conv_size, gate_rank=gate_rank,
                      use_rope=use_rope, chunk_size=chunk_size, backend=backend, rope_base=rope_base)
