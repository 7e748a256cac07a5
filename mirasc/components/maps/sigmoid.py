"""`sigmoid`: the sigmoid Bregman map (Section 5.2, Variant 5), W = sigmoid(U), a mirror map on logits U."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mirasc.components import register
from mirasc.components.base import BoundaryMap
from mirasc.ir import Value
from mirasc.lower_maps import MapLowering
from mirasc.spec import NO_SPAN, Span
from mirasc.symbolic import sigmoid


@register
@dataclass(frozen=True)
class SigmoidMap(BoundaryMap):
    keyword: ClassVar[str] = "sigmoid"
    initial_state: ClassVar[str] = "logits"  # N(0, 1) logits

    span: Span = NO_SPAN

    def explain(self, update: str, decay: str, lr: str) -> str:
        return update + ";  W_t = sigmoid(P_t)   (Bregman, Variant 5)"

    def lower_map(self, lw: MapLowering, P: Value, layer: int) -> Value:
        return lw.g.ew(lambda a: sigmoid(a), P)

    def reference_map(self, p: torch.Tensor, operand) -> torch.Tensor:
        return torch.sigmoid(p)
