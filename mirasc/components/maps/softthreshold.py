"""`softthreshold(gamma, form = retaining | ftrl)`: elastic-net soft thresholding S_γ(P) = sign(P) max(|P| − γ, 0).

form=retaining (Eq. 22) projects the state after each write (at chunk ends in a chunk); form=ftrl (Eq. 23) is a
mirror map on an accumulator. γ is a constant or a static gate (a map acts at chunk ends, where no token's gate
applies).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import sympy as sp
import torch

from mirasc.components import register
from mirasc.components.base import Argument, BoundaryMap
from mirasc.ir import Value
from mirasc.lower_maps import MapLowering
from mirasc.spec import NO_SPAN, GateRef, Operand, Span


@register
@dataclass(frozen=True)
class SoftThresholdMap(BoundaryMap):
    keyword: ClassVar[str] = "softthreshold"
    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("gamma", "operand", static=True),
        Argument("form", "word", default="retaining", choices=("retaining", "ftrl")),
    )

    gamma: Operand
    form: Literal["retaining", "ftrl"] = "retaining"
    span: Span = NO_SPAN

    @property
    def kind(self) -> str:  # type: ignore[override]
        return "mirror" if self.form == "ftrl" else "projection"

    def explain(self, update: str, decay: str, lr: str) -> str:
        g = self.gamma.name if isinstance(self.gamma, GateRef) else f"{self.gamma.value:g}"
        if self.form == "ftrl":
            return update + f";  W_t = S_{g}(P_t)   (Eq. 23)"
        return update + f";  W_t = P_t ← S_{g}(P_t)   (Eq. 22)"

    def lower_map(self, lw: MapLowering, P: Value, layer: int) -> Value:
        return lw.g.ew(lambda a, c: sp.sign(a) * sp.Max(sp.Abs(a) - c, 0), P,
                       lw.on_layer(lw.operand(self.gamma), layer))

    def reference_map(self, p: torch.Tensor, operand) -> torch.Tensor:
        return torch.sign(p) * torch.relu(p.abs() - operand(self.gamma))
