"""`kl(eps = 1e-6)`: Memora's KL / softmax retention (Eq. 27), W_t = softmax_rows(α log max(W_(t-1), eps) − η G_t).

In a chunk it is a lag map (Eqs. 30–32): the exact step at each chunk's first token, the linear accumulation of
the chunk approximation after it (docs/semantics.md, "Boundary maps").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import sympy as sp
import torch

from mirasc.components import register
from mirasc.components.base import Argument, BoundaryMap
from mirasc.ir import Value
from mirasc.lower_maps import MapLowering
from mirasc.spec import NO_SPAN, Span


@register
@dataclass(frozen=True)
class KLMap(BoundaryMap):
    keyword: ClassVar[str] = "kl"
    arguments: ClassVar[tuple[Argument, ...]] = (Argument("eps", "number", default=1e-6),)
    initial_state: ClassVar[str] = "softmax_rows"
    # The step acts in log space on rows of softmax weights of about 1/n each: η = 0.5 barely moved them
    # (measured in bench/README.md, "Initialisation"; 1 was no better over six seeds, "The inner learning rate's
    # start").
    gate_init: ClassVar[dict[str, float]] = {"lr": 2.0}
    buffer_refusal: ClassVar[str | None] = ("its lag step is an exact softmax step on the weights, which has no "
                                           "momentum buffer")

    eps: float = 1e-6
    span: Span = NO_SPAN

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "lag"

    def explain(self, update: str, decay: str, lr: str) -> str:
        return (f"  W_t = softmax_rows({decay} ⊙ log max(W_(t−1), {self.eps:g}) − {lr} ⊙ G_t)   (Eq. 27);"
                "  in a chunk: exact at the lag token, linear after it (Eqs. 30–32)")

    def lower_lag_step(self, lw: MapLowering, W: Value, grad: Value, decay: Value | None, lr: Value, layer: int,
                       in_axis: str) -> Value:
        g, eps = lw.g, self.eps
        logw = g.ew(lambda w: sp.log(sp.Max(w, eps)), W)
        if decay is not None:
            logw = g.ew(lambda a, lw_: a * lw_, lw.on_layer(decay, layer), logw)
        logits = g.ew(lambda lw_, e, gr: lw_ - e * gr, logw, lw.on_layer(lr, layer), grad)
        lse = g.logsumexp(logits, in_axis)
        return lw.named(g.ew(lambda lg, ls: sp.exp(lg - ls), logits, lse), "lag step: softmax over the input axis")

    def reference_lag_write(self, w: torch.Tensor, grad: torch.Tensor, decay, lr) -> torch.Tensor:
        return torch.softmax(decay * torch.log(torch.clamp(w, min=self.eps)) - lr * grad, dim=-1)
