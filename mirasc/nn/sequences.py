"""How rows reach a MirasLayer's mixer: padded batches (`attention_mask`), packed sequences (`cu_seqlens`) and the
decoding cache (mirasc.nn.layer's docstring, "Sequences" and "Decoding", says what each guarantees).

RowsAndCache is MirasLayer's base: it calls the layer's `_mix` (the mixer on rows that start at their first token
or continue from a cache), `chunk()` and `initial_memory(batch)`, and owns `forward`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .primitives import new_token_mask

__all__ = ["MirasLayerCache", "RowsAndCache"]


@dataclass
class MirasLayerCache:
    """Decoding cache of one MirasLayer (mirasc.nn.layer's docstring, "Decoding"): state (the op's State of
    [B, H, ...] fp32 tensors at the start of the current chunk), conv [B, K-1, 3·H·D] (the conv_size-1 projected
    q|k|v inputs before that chunk, zeros before the first token), seen [B] (real tokens so far), pending
    [B, C, hidden] (the layer inputs of the current chunk; row i holds seen[i] % C of them)."""

    state: tuple | None = None
    conv: torch.Tensor | None = None
    seen: torch.Tensor | None = None
    pending: torch.Tensor | None = None

    def reorder(self, index: torch.Tensor) -> None:
        if self.state is not None:
            self.state = type(self.state)(*(s.index_select(0, index.to(s.device)) for s in self.state))
        for name in ("conv", "seen", "pending"):
            t = getattr(self, name)
            if t is not None:
                setattr(self, name, t.index_select(0, index.to(t.device)))


class RowsAndCache(nn.Module):
    """Rows, masks, packed sequences and the decoding cache around a subclass's `_mix`."""

    def _mix_cached(self, x: torch.Tensor, want_cache: bool):
        """_mix on rows that start at their first token; with want_cache also the decoding cache parts: the
        state and conv tail at the last chunk boundary, and the inputs after it padded to [B, C, hidden]. The
        rows are run in two calls split at that boundary, which the chunkwise op computes identically."""
        B, T, _ = x.shape
        if not want_cache:
            return self._mix(x)[0], None
        C = self.chunk()
        a = T - T % C
        state, conv, ys = None, None, []
        if a:
            y, state, conv = self._mix(x[:, :a], want_state=True)
            ys.append(y)
        if a < T:
            pos0 = torch.full((B,), a, dtype=torch.long, device=x.device)
            ys.append(self._mix(x[:, a:], state=state, conv=conv, pos0=pos0)[0])
        if state is None:
            state = self.initial_memory(B)
            conv = x.new_zeros(B, self.conv_size - 1, 3 * self.num_heads * self.head_dim)
        pending = F.pad(x[:, a:], (0, 0, 0, C - (T - a)))
        y = torch.cat(ys, dim=1) if ys else x.new_zeros(B, 0, self.hidden_size)
        return y, (state, conv, pending)

    def _run_rows(self, xc: torch.Tensor, lengths: list[int], want_cache: bool):
        """xc [N, L, hidden] with row i's real tokens at [:lengths[i]]; one op call per distinct length.
        Returns y [N, L, hidden] (zeros past each row's length) and the cache parts as _mix_cached."""
        N, L, _ = xc.shape
        groups: dict[int, list[int]] = {}
        for i, n in enumerate(lengths):
            groups.setdefault(int(n), []).append(i)
        if len(groups) == 1 and next(iter(groups)) == L:
            return self._mix_cached(xc, want_cache)
        ys, parts, perm = [], [], []
        for n, rows in groups.items():
            perm += rows
            idx = torch.tensor(rows, device=xc.device)
            if n == 0:
                ys.append(xc.new_zeros(len(rows), L, self.hidden_size))
                if want_cache:
                    parts.append(self._mix_cached(xc.new_zeros(len(rows), 0, self.hidden_size), True)[1])
                continue
            y, part = self._mix_cached(xc.index_select(0, idx)[:, :n], want_cache)
            ys.append(F.pad(y, (0, 0, 0, L - n)))
            parts.append(part)
        inv = torch.argsort(torch.tensor(perm, device=xc.device))
        y = torch.cat(ys).index_select(0, inv)
        if not want_cache:
            return y, None
        states, convs, pendings = zip(*parts)
        state = self.op.State(*(torch.cat([s[j] for s in states]).index_select(0, inv)
                                for j in range(len(states[0]))))
        return y, (state, torch.cat(convs).index_select(0, inv), torch.cat(pendings).index_select(0, inv))

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None = None,
                cu_seqlens: torch.Tensor | None = None, cache: MirasLayerCache | None = None,
                use_cache: bool = False):
        B, T, _ = x.shape
        if cache is not None and cache.state is not None:
            if cu_seqlens is not None:
                raise ValueError("cu_seqlens cannot be combined with a filled cache")
            return self._decode(x, new_token_mask(attention_mask, B, T, x.device), cache)
        want = bool(use_cache)
        if cu_seqlens is not None:
            if B != 1:
                raise ValueError(f"cu_seqlens needs batch size 1 (packed sequences), got {B}")
            bounds = [int(b) for b in cu_seqlens.tolist()]
            lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
            if bounds[0] != 0 or bounds[-1] != T or min(lengths, default=0) < 0:
                raise ValueError(f"cu_seqlens must rise from 0 to T={T}, got {bounds}")
            segs = [x[0, a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            xc = nn.utils.rnn.pad_sequence(segs, batch_first=True)
            yc, parts = self._run_rows(xc, lengths, want)
            y = torch.cat([yc[i, :n] for i, n in enumerate(lengths)])[None]
            seen = torch.tensor(lengths, device=x.device)
        elif attention_mask is not None and not bool(new_token_mask(attention_mask, B, T, x.device).all()):
            m = new_token_mask(attention_mask, B, T, x.device)
            ar = torch.arange(T, device=x.device)
            order = torch.argsort(torch.where(m, ar, ar + T), dim=1)  # real tokens first, in order
            idx = order[..., None].expand(B, T, x.shape[-1])
            lengths = m.sum(1)
            yc, parts = self._run_rows(x.gather(1, idx), lengths.tolist(), want)
            y = torch.zeros_like(yc).scatter(1, idx, yc)
            seen = lengths
        else:
            y, parts = self._mix_cached(x, want)
            seen = torch.full((B,), T, dtype=torch.long, device=x.device)
        if not want:
            return y, None
        cache = cache if cache is not None else MirasLayerCache()
        cache.state, cache.conv, cache.pending = parts
        cache.seen = seen.to(torch.long)
        return y, cache

    def _decode(self, x: torch.Tensor, m: torch.Tensor, cache: MirasLayerCache):
        """Tokens after a filled cache, one at a time (mirasc.nn.layer's docstring): each real token joins its row's
        current chunk, the layer re-runs that chunk from the chunk-start memory, and the output is the last
        position's. Rows whose token is masked keep their cache and output zeros."""
        C = self.chunk()
        ys = []
        for t in range(x.shape[1]):
            y = x.new_zeros(x.shape[0], 1, self.hidden_size)
            live = m[:, t].nonzero().flatten()
            n_before = cache.seen % C  # tokens of the current chunk already in the cache
            cache.pending[live, n_before[live]] = x[live, t].to(cache.pending.dtype)
            for n in sorted({int(n) + 1 for n in n_before[live].tolist()}):
                rows = live[n_before[live] + 1 == n]
                done = n == C
                yr, st, conv = self._mix(cache.pending[rows, :n], state=self.op.State(*(s[rows] for s in cache.state)),
                                         conv=cache.conv[rows], pos0=cache.seen[rows] - (n - 1), chunk_size=C,
                                         want_state=done)
                y[rows] = yr[:, -1:].to(y.dtype)
                if done:  # the chunk is complete: its end is the next chunk's start
                    cache.state = self.op.State(*(s.index_copy(0, rows, ns.to(s.dtype))
                                                  for s, ns in zip(cache.state, st)))
                    cache.conv = cache.conv.index_copy(0, rows, conv.to(cache.conv.dtype))
            cache.seen = cache.seen + m[:, t].long()
            ys.append(y)
        return torch.cat(ys, dim=1), cache
