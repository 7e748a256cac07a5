"""`algorithm momentum(lr, momentum)`: S_t = θ_t ⊙ S_(t−1) − η_t ⊙ G_t; P_t = α_t ⊙ P_(t−1) + S_t (Titans, Eq. 10).

In a chunk (Eq. 28) the buffer's coefficients are cumulative products of θ, and P_t collects every S_u, u ≤ t,
through the retention's decay from u to t: Γ[t, s] = Σ_{s≤u≤t} D_α[t, u] D_θ[u, s] η_s (docs/semantics.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from mirasc.components import register
from mirasc.components.base import Argument, LearningAlgorithm
from mirasc.lower_decay import Coefficients, DecaySplit
from mirasc.spec import NO_SPAN, Operand, Span


@register
@dataclass(frozen=True)
class Momentum(LearningAlgorithm):
    keyword: ClassVar[str] = "momentum"
    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("lr", "operand", low=0.0, high=math.inf, on_weights=True),
        Argument("momentum", "operand", low=0.0, high=1.0, on_weights=True),
    )
    buffer: ClassVar[str | None] = "s"
    gate_init: ClassVar[dict[str, float]] = {"momentum": 0.5}

    lr: Operand
    momentum: Operand
    span: Span = NO_SPAN

    def explain(self, decay, operand) -> str:
        return (f"  S_t = {operand(self.momentum)} ⊙ S_(t−1) − {operand(self.lr)} ⊙ G_t;  "
                f"P_t = {decay} ⊙ P_(t−1) + S_t")

    def lower_coefficients(self, decay, alpha, lr, operand) -> Coefficients:
        g = decay.g
        a_cum, a_pair, a_end = decay.tiles(alpha)
        eta_s = g.rename(lr, t="s")
        th_cum, th_pair, th_end = decay.tiles(operand(self.momentum))
        a_tu = g.rename(a_pair, s="u")
        grad_s = g.ew(lambda p, e: p * e, th_pair, eta_s)  # weight of G_s in S_t

        def chan(*xs):  # the channel axis of a product: where one of its factors has one
            return ("i",) if any("i" in x.axes for x in xs) else ()

        split = None
        if decay.channel_decay == "products" and "i" in eta_s.axes and not chan(a_pair, th_pair):
            # only the step has a channel axis: Γ[t, s, i] = Γ0[t, s] η_s[i] with Γ0 = Σ_u D_α[t, u] D_θ[u, s], the
            # scalar gates' (t, s) tile times the writer's step (DecaySplit.pairwise, as gd's): no (C, C, D) tile
            th_us = g.rename(th_pair, t="u")
            carried = g.einsum(("t", "s"), a_tu, th_us)
            split = DecaySplit(decay.on_channels(None), decay.on_channels(None, "s"), eta_s, carried)
            total = g.ew(lambda c, e: c * e, carried, eta_s)
        else:
            total = g.einsum(("t", "s") + chan(a_tu, grad_s), a_tu, g.rename(grad_s, t="u"))
        read = g.einsum(("t",) + chan(a_tu, th_cum), a_tu, g.rename(th_cum, t="u"))
        a_end_u = g.rename(a_end, s="u")
        if split is not None:
            total_end = g.ew(lambda c, e: c * e, g.einsum(("s",), a_end_u, th_us), eta_s)
        else:
            total_end = g.einsum(("s",) + chan(a_end, grad_s), a_end_u, g.rename(grad_s, t="u"))
        return Coefficients(a_cum, total, read, th_cum, grad_s, grad_end=total_end, split=split,
                            buffer_grad_end=g.ew(lambda p, e: p * e, th_end, eta_s))

    def reference_write(self, kept, step, buffers, scale):
        buffers = [a - s for a, s in zip(scale(self.momentum, buffers), step)]
        return [a + s for a, s in zip(kept, buffers)], buffers
