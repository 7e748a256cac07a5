"""`lq(q, eps = 1e-6, form = literal | pnorm)`: Moneta's lq normalisation, a mirror map on an accumulator P.

form=literal: Eq. 24 as printed, W = P / (||P||_q^(q-2) + eps) (homogeneous of degree -1 for q = 4).
form=pnorm: the p-norm algorithms' mirror map (the form Section 5.2's Variant 4 points to),
  W = sign(P) |P|^(q-1) / (mu_q(P)^(q-2) + eps), mu_q(P) = (mean |P|^q)^(1/q) (degree 1; needs q = 2 or q >= 3).
The norms run entry-wise over each weight matrix; docs/semantics.md ("Boundary maps") has the derivation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import sympy as sp
import torch

from mirasc.check.context import fmt_num
from mirasc.components import register
from mirasc.components.base import Argument, BoundaryMap
from mirasc.ir import Value
from mirasc.lower_maps import MapLowering, exact
from mirasc.spec import NO_SPAN, Span


@register
@dataclass(frozen=True)
class LqMap(BoundaryMap):
    keyword: ClassVar[str] = "lq"
    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("q", "number", at_least=1.0),
        Argument("eps", "number", default=1e-6),
        Argument("form", "word", default="literal", choices=("literal", "pnorm")),
    )

    q: float
    eps: float = 1e-6
    form: Literal["literal", "pnorm"] = "literal"
    span: Span = NO_SPAN

    @property
    def reads_scaled(self) -> bool:  # type: ignore[override]
        return self.form == "literal"

    @classmethod
    def validate(cls, values, error) -> None:
        # the p-norm map and its frozen chunk slope hold |A|^(q-1) and |A|^(q-2): below q = 2 the slope is
        # infinite at a zero entry, and for 2 < q < 3 the slope's own derivative is (0 * inf at a zero entry)
        q = values["q"]
        if values.get("form") == "pnorm" and not (q == 2 or q >= 3):
            error("q", f"lq(form = pnorm) needs q = 2 or q ≥ 3 (the map and its slope are differentiable at zero "
                       f"entries only there), got {fmt_num(q)}")

    def explain(self, update: str, decay: str, lr: str) -> str:
        if self.form == "pnorm":
            return (update + f";  W_t = sign(P_t) ⊙ |P_t|^{self.q - 1:g} / (μ_{self.q:g}(P_t)^{self.q - 2:g} + "
                    f"{self.eps:g}),  μ_q(P) = (mean |P|^q)^(1/q)   (the p-norm mirror map; Variant 4)")
        return update + f";  W_t = P_t / (‖P_t‖_{self.q:g}^{self.q - 2:g} + {self.eps:g})   (Eq. 24 as printed)"

    # ---------------------------------------------------------------- lowering
    def lower_map(self, lw: MapLowering, P: Value, layer: int) -> Value:
        g = lw.g
        if self.form == "pnorm":
            q = exact(self.q)
            inv = self._inverse_normaliser(lw, P)
            return g.ew(lambda a, r: sp.sign(a) * sp.Abs(a) ** (q - 1) * r, P, inv)
        return g.ew(lambda a, kp: a * kp, P, self.lower_slope(lw, P))

    def lower_slope(self, lw: MapLowering, P: Value) -> Value:
        """literal: 1 / (||P||_q^(q-2) + eps), the map being P times that scale. pnorm: (q - 1) mean(|P|^(q-2)) /
        (mu_q(P)^(q-2) + eps), the mean over the matrix of the map's elementwise slope with its normaliser held
        fixed (docs/semantics.md, "Chunks of C tokens")."""
        g = lw.g
        if self.form == "pnorm":
            q = exact(self.q)
            # mean |P|^(q-2); exactly 1 at q = 2 (sympy folds |a|^0 to the constant 1, which a sum cannot count)
            spread = lw.matrix_mean(g.ew(lambda a: sp.Abs(a) ** (q - 2), P), P) if self.q != 2 else None
            inv = self._inverse_normaliser(lw, P)
            if spread is None:
                return lw.named(g.ew(lambda r: (q - 1) * r, inv), "pnorm frozen slope (q-1) mean|P|^(q-2)/norm")
            return lw.named(g.ew(lambda sp_, r: (q - 1) * sp_ * r, spread, inv),
                            "pnorm frozen slope (q-1) mean|P|^(q-2)/norm")
        total = g.sum(g.ew(lambda a: sp.Abs(a) ** self.q, P), *P.axes)
        q, eps = sp.Float(self.q), sp.Float(self.eps)
        return lw.named(g.ew(lambda s: 1 / (s ** ((q - 2) / q) + eps), total), "lq frozen slope 1/(||P||_q^(q-2)+eps)")

    def _inverse_normaliser(self, lw: MapLowering, P: Value) -> Value:
        """1 / (mu_q(P)^(q-2) + eps) with mu_q(P) = (mean |P|^q)^(1/q): the p-norm map's scale."""
        q, eps = exact(self.q), sp.Float(self.eps)
        mean_q = lw.matrix_mean(lw.g.ew(lambda a: sp.Abs(a) ** q, P), P)
        return lw.named(lw.g.ew(lambda s: 1 / (s ** ((q - 2) / q) + eps), mean_q), "pnorm 1/(mu_q(P)^(q-2)+eps)")

    # ---------------------------------------------------------------- reference
    def reference_map(self, p: torch.Tensor, operand) -> torch.Tensor:
        if self.form == "pnorm":
            return torch.sign(p) * p.abs() ** (self.q - 1) * self._reference_scale(p, mean=True)
        return p * self._reference_scale(p, mean=False)

    def reference_slope(self, p: torch.Tensor) -> torch.Tensor:
        if self.form == "literal":
            return self._reference_scale(p, mean=False)
        spread = (p.abs() ** (self.q - 2)).mean(dim=(-2, -1), keepdim=True) if self.q != 2 else 1.0
        return (self.q - 1) * spread * self._reference_scale(p, mean=True)

    def _reference_scale(self, p: torch.Tensor, mean: bool) -> torch.Tensor:
        """1 / (||P||_q^(q-2) + eps) (mean False) or 1 / (mu_q(P)^(q-2) + eps) (mean True), entry-wise over each
        [out, in] matrix: shape [N, 1, 1]. At P = 0 (a zero initial state) the value is torch's 0^e, and the outer
        gradient is taken as 0 instead of pow's 0 * inf = nan (exact for q >= 3, a subgradient below)."""
        powers = p.abs() ** self.q
        total = powers.mean(dim=(-2, -1), keepdim=True) if mean else powers.sum(dim=(-2, -1), keepdim=True)
        e = (self.q - 2.0) / self.q
        nonzero = total > 0
        norm_pow = torch.where(nonzero, torch.where(nonzero, total, 1.0) ** e, torch.zeros_like(total) ** e)
        return 1.0 / (norm_pow + self.eps)
