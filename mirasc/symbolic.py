"""sympy building blocks shared by the derivation and the IR: smooth functions with stable derivatives,
activation functions, and cleanup of distributional derivatives.

Every function here is built from sympy objects directly; no spec text ever reaches sympy's parser.
"""

from __future__ import annotations

import sympy as sp


class sigmoid(sp.Function):  # noqa: N801 - sympy convention: functions are lower case
    """1 / (1 + exp(-x)), printed as torch.sigmoid so it never overflows."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        s = sigmoid(self.args[0])
        return s * (1 - s)


class softplus(sp.Function):  # noqa: N801
    """log(1 + exp(x)), printed with torch's stable softplus."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sigmoid(self.args[0])


class logcosh(sp.Function):  # noqa: N801
    """log(cosh(x)), printed as |x| + softplus(-2|x|) - log 2 so it never overflows; derivative tanh."""

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.tanh(self.args[0])


def activation(name: str, x: sp.Expr) -> sp.Expr:
    """The memory's hidden activation as a sympy expression (GELU in its exact erf form)."""
    if name == "gelu":
        return x / 2 * (1 + sp.erf(x / sp.sqrt(2)))
    if name == "silu":
        return x * sigmoid(x)
    if name == "relu":
        return sp.Max(0, x)
    if name == "tanh":
        return sp.tanh(x)
    if name == "identity":
        return x
    raise ValueError(f"unknown activation {name!r}")


def clean(expr: sp.Expr) -> sp.Expr:
    """Drop distributional terms: the derivative of sign or of a step is 0 almost everywhere."""
    if expr.has(sp.DiracDelta):
        expr = expr.replace(sp.DiracDelta, lambda *args: sp.Integer(0))
    return expr


def diff(expr: sp.Expr, sym: sp.Symbol) -> sp.Expr:
    return clean(sp.diff(expr, sym))
