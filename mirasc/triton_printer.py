"""sympy -> Triton source, one method per sympy node (as sympy's CodePrinter); a node without a method is an error.

Only core `tl` functions are used (no libdevice, no inline asm: the interpreter rejects them), with stable forms
for sigmoid, softplus and log cosh. A float that fp32 cannot hold exactly is printed as a tile of the kernel's
compute dtype (`tl.full((), x, DTYPE)`): Triton types a bare Python float as fp32, which would cost an fp64
kernel its precision (log 2 in log cosh, a LayerNorm eps).
"""

from __future__ import annotations

import struct

import sympy as sp

from .symbolic import logcosh, sigmoid, softplus


def _fp32_exact(x: float) -> bool:
    try:
        return struct.unpack("f", struct.pack("f", x))[0] == x
    except OverflowError:
        return False


class TritonPrinter:
    """Prints an expression; `env` maps symbols (and any subexpression) to source strings."""

    def __init__(self, env: dict[sp.Basic, str]):
        self.env = env

    def __call__(self, e: sp.Basic) -> str:
        return self.p(e)

    def p(self, e: sp.Basic) -> str:
        if e in self.env:
            return self.env[e]
        if e.is_number and not isinstance(e, sp.logic.boolalg.BooleanAtom):
            return self.number(e)
        for cls in type(e).__mro__:  # sympy's function classes (exp, erf, ...) are named by their class
            method = getattr(self, f"_print_{cls.__name__}", None)
            if method is not None:
                return method(e)
            if cls is sp.Basic:
                break
        raise NotImplementedError(f"the Triton printer has no rule for {type(e).__name__}: {e}")

    # -- numbers
    def number(self, e: sp.Expr) -> str:
        if e in (sp.oo, sp.S.Infinity):
            return "float('inf')"
        if e in (-sp.oo, sp.S.NegativeInfinity):
            return "(-float('inf'))"
        x = float(e)
        text = repr(x) if x >= 0 else f"({x!r})"
        return text if _fp32_exact(x) else f"tl.full((), {x!r}, DTYPE)"

    # -- arithmetic
    def _print_Add(self, e: sp.Add) -> str:
        out = ""
        for a in e.args:
            coeff, _ = a.as_coeff_Mul()
            if coeff.is_Number and coeff < 0 and out:
                out += " - " + self.p(-a)
            else:
                out += (" + " if out else "") + self.p(a)
        return f"({out})"

    def _print_Mul(self, e: sp.Mul) -> str:
        num, den = [], []
        for f in e.args:
            if isinstance(f, sp.Pow) and f.exp.is_Number and f.exp < 0:
                den.append(self.p(f.base) if f.exp == -1 else self.p(sp.Pow(f.base, -f.exp)))
            else:
                num.append(self.p(f))
        s = " * ".join(num) if num else "1.0"
        return f"({s} / ({' * '.join(den)}))" if den else f"({s})"

    def _print_Pow(self, e: sp.Pow) -> str:
        b, x = e.base, e.exp
        if b == sp.E:
            return f"tl.exp({self.p(x)})"
        if x.is_Number and float(2 * x).is_integer() and 0 < abs(float(x)) <= 4:
            # whole and half powers (2, 2.0, 1.5, -0.5: LayerNorm's variance^-1.5, norms' squares) as products and
            # one square root: as exact as the torch backend's pow, where exp(x log b) would lose digits
            base = self.p(b)
            whole, half = divmod(abs(float(x)), 1.0)
            factors = [base] * int(whole) + ([f"tl.sqrt({base})"] if half else [])
            product = "(" + " * ".join(factors) + ")"
            return product if float(x) > 0 else f"(1.0 / {product})"
        # any other power the IR builds has a positive base (norms, |x| + eps, variances)
        return f"tl.exp({self.p(x)} * tl.log({self.p(b)}))"

    # -- functions
    def _print_exp(self, e: sp.exp) -> str:
        return f"tl.exp({self.p(e.args[0])})"

    def _print_log(self, e: sp.log) -> str:
        return f"tl.log({self.p(e.args[0])})"

    def _print_Abs(self, e: sp.Abs) -> str:
        return f"tl.abs({self.p(e.args[0])})"

    def _print_erf(self, e: sp.erf) -> str:
        return f"tl.math.erf({self.p(e.args[0])})"

    def _print_sigmoid(self, e: sigmoid) -> str:
        return f"tl.sigmoid({self.p(e.args[0])})"

    def _print_tanh(self, e: sp.tanh) -> str:  # tanh(x) = 2 sigmoid(2x) - 1, no overflow
        return f"(2.0 * tl.sigmoid(2.0 * {self.p(e.args[0])}) - 1.0)"

    def _print_cosh(self, e: sp.cosh) -> str:
        x = self.p(e.args[0])
        return f"(0.5 * (tl.exp({x}) + tl.exp(-{x})))"

    def _print_sinh(self, e: sp.sinh) -> str:
        x = self.p(e.args[0])
        return f"(0.5 * (tl.exp({x}) - tl.exp(-{x})))"

    def _print_sign(self, e: sp.sign) -> str:
        x = self.p(e.args[0])
        return f"tl.where({x} > 0, 1.0, tl.where({x} < 0, -1.0, 0.0))"

    def _print_softplus(self, e: softplus) -> str:
        x = self.p(e.args[0])
        return f"tl.where({x} > 20.0, {x}, tl.log(1.0 + tl.exp(tl.minimum({x}, 20.0))))"

    def _print_logcosh(self, e: logcosh) -> str:  # |x| + log(1 + e^{-2|x|}) - log 2
        x = self.p(e.args[0])
        return f"(tl.abs({x}) + tl.log(1.0 + tl.exp(-2.0 * tl.abs({x}))) - {self.number(sp.log(2))})"

    def _print_Heaviside(self, e: sp.Heaviside) -> str:
        return f"tl.where({self.p(e.args[0])} > 0, 1.0, 0.0)"

    def _print_Max(self, e: sp.Max) -> str:
        out = self.p(e.args[0])
        for a in e.args[1:]:
            out = f"tl.maximum({out}, {self.p(a)})"
        return out

    def _print_Min(self, e: sp.Min) -> str:
        out = self.p(e.args[0])
        for a in e.args[1:]:
            out = f"tl.minimum({out}, {self.p(a)})"
        return out

    # -- choices and conditions
    def _print_Piecewise(self, e: sp.Piecewise) -> str:
        return self._pieces(list(e.args))

    def _pieces(self, pieces: list) -> str:
        (val, cond), rest = pieces[0], pieces[1:]
        if cond is sp.true or not rest:
            return self.p(val)
        return f"tl.where({self.p(cond)}, {self.p(val)}, {self._pieces(rest)})"

    def _print_Relational(self, e: sp.core.relational.Relational) -> str:
        return f"({self.p(e.lhs)} {e.rel_op} {self.p(e.rhs)})"

    def _print_And(self, e: sp.And) -> str:
        return "(" + " & ".join(self.p(a) for a in e.args) + ")"

    def _print_Or(self, e: sp.Or) -> str:
        return "(" + " | ".join(self.p(a) for a in e.args) + ")"

    def _print_BooleanTrue(self, e) -> str:
        return "True"

    def _print_BooleanFalse(self, e) -> str:
        return "False"


__all__ = ["TritonPrinter"]
