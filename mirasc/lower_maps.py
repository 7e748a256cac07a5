"""Boundary maps in a chunk program (docs/semantics.md, "Boundary maps"): the map applied to an accumulator P, and
the frozen slope a chunk's reads use between chunk ends (mirasc.lower reads the weights through them).
"""

from __future__ import annotations

from collections.abc import Callable

import sympy as sp

from . import spec as S
from .ir import Graph, Value
from .lower_decay import named


def exact(x: float) -> sp.Expr:
    """A map's exponent as an exact sympy number when it is rational with a small denominator (q = 4 gives the
    integer 3 and the half 1/2, which the emitters write as products and a square root instead of exp(x log a)),
    else a float."""
    r = sp.Rational(x).limit_denominator(64)
    return r if abs(float(r) - x) < 1e-12 else sp.Float(x)


class BoundaryMapLowering:
    """The IR of one spec's boundary map. gamma(layer): the soft threshold's operand on that layer's axes."""

    def __init__(self, g: Graph, rmap: S.BoundaryMap | None, gamma: Callable[[int], Value]):
        self.g, self.map, self.gamma = g, rmap, gamma

    def kappa(self, P: Value) -> Value | None:
        """The frozen slope of an lq map at the chunk-start accumulator P (one value per matrix); None for slope 1.

        literal (Eq. 24): 1 / (||P||_q^(q-2) + eps), the map itself being P times that scale.
        pnorm: (q - 1) mean(|P|^(q-2)) / (mu_q(P)^(q-2) + eps), the mean over the matrix of the map's elementwise
        slope with its normaliser held fixed (docs/semantics.md, "Chunks of C tokens")."""
        m = self.map
        if not isinstance(m, S.LqMap):
            return None
        if m.form == "pnorm":
            q = exact(m.q)
            # mean |P|^(q-2); exactly 1 at q = 2 (sympy folds |a|^0 to the constant 1, which a sum cannot count)
            spread = self._matrix_mean(self.g.ew(lambda a: sp.Abs(a) ** (q - 2), P), P) if m.q != 2 else None
            inv = self._pnorm_inverse_normaliser(P)
            if spread is None:
                return named(self.g.ew(lambda r: (q - 1) * r, inv), "pnorm frozen slope (q-1) mean|P|^(q-2)/norm")
            return named(self.g.ew(lambda sp_, r: (q - 1) * sp_ * r, spread, inv),
                          "pnorm frozen slope (q-1) mean|P|^(q-2)/norm")
        g = self.g
        total = g.sum(g.ew(lambda a: sp.Abs(a) ** m.q, P), *P.axes)
        q, eps = sp.Float(m.q), sp.Float(m.eps)
        return named(g.ew(lambda s: 1 / (s ** ((q - 2) / q) + eps), total), "lq frozen slope 1/(||P||_q^(q-2)+eps)")

    def _matrix_mean(self, x: Value, P: Value) -> Value:
        """The mean of x over the matrix axes of P (one value per matrix and head)."""
        g = self.g
        # one elementwise op with the sizes as inlined arguments (a value made of sizes alone is a Python int,
        # which the generated backward cannot save)
        sizes = [g.size(a) for a in P.axes]
        return g.ew(lambda t, *n: t / sp.Mul(*n), g.sum(x, *P.axes), *sizes)

    def _pnorm_inverse_normaliser(self, P: Value) -> Value:
        """1 / (mu_q(P)^(q-2) + eps) with mu_q(P) = (mean |P|^q)^(1/q): the p-norm map's scale."""
        m = self.map
        q, eps = exact(m.q), sp.Float(m.eps)
        mean_q = self._matrix_mean(self.g.ew(lambda a: sp.Abs(a) ** q, P), P)
        return named(self.g.ew(lambda s: 1 / (s ** ((q - 2) / q) + eps), mean_q), "pnorm 1/(mu_q(P)^(q-2)+eps)")

    def apply_map(self, P: Value, layer: int) -> Value:
        m = self.map
        g = self.g
        if isinstance(m, S.LqMap) and m.form == "pnorm":
            q = exact(m.q)
            inv = self._pnorm_inverse_normaliser(P)
            return g.ew(lambda a, r: sp.sign(a) * sp.Abs(a) ** (q - 1) * r, P, inv)
        if isinstance(m, S.LqMap):
            return g.ew(lambda a, kp: a * kp, P, self.kappa(P))
        if isinstance(m, S.SigmoidMap):
            from .symbolic import sigmoid

            return g.ew(lambda a: sigmoid(a), P)
        if isinstance(m, S.SoftThresholdMap):
            gamma = self.gamma(layer)
            return g.ew(lambda a, c: sp.sign(a) * sp.Max(sp.Abs(a) - c, 0), P, gamma)
        return P
