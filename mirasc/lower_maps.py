"""What a boundary map's lowering (mirasc.components.maps) gets from the chunk program: the graph, the operands of
its arguments on a layer's axes, and the IR helpers the maps share (docs/semantics.md, "Boundary maps").
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


class MapLowering:
    """The chunk program's side of a boundary map. operand(x): a gate, param or number as a value; on_layer(x, j):
    a channel quantity (axis i) relabelled onto layer j's D-sized axis (scalars unchanged)."""

    def __init__(self, g: Graph, operand: Callable[[S.Operand], Value],
                 on_layer: Callable[[Value | None, int], Value | None]):
        self.g, self.operand, self.on_layer = g, operand, on_layer

    def matrix_mean(self, x: Value, P: Value) -> Value:
        """The mean of x over the matrix axes of P (one value per matrix and head)."""
        g = self.g
        # one elementwise op with the sizes as inlined arguments (a value made of sizes alone is a Python int,
        # which the generated backward cannot save)
        sizes = [g.size(a) for a in P.axes]
        return g.ew(lambda t, *n: t / sp.Mul(*n), g.sum(x, *P.axes), *sizes)

    named = staticmethod(named)


__all__ = ["MapLowering", "exact"]
