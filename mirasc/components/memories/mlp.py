"""`memory mlp(depth = 2, expansion = 4, activation = gelu, residual = true, norm = layernorm, norm_eps = 1e-5,
norm_start = identity)`: M(x) = [x +] N(W_L σ(… σ(W_1 x))), hidden size expansion·D, no biases, N a LayerNorm over
the output channels (with a weight and a bias per head and channel) or none (Titans' memory, and Moneta's, Yaad's and
Memora's).

`norm_start` is where a model layer (mirasc.nn.MirasLayer) starts the LayerNorm's weight, the gain; the op's math
does not depend on it. `identity`: 1, so the normalised branch has norm sqrt(D) beside the unit-norm key of the
residual; `unit`: 1/sqrt(D), so both have norm 1 (bench/README.md, "The LayerNorm's gain at the start")."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import sympy as sp
import torch

from mirasc.components import register
from mirasc.components.base import Argument, MemoryArchitecture
from mirasc.spec import NO_SPAN, Span

ACTIVATIONS = ("gelu", "silu", "relu", "tanh", "identity")


@register
@dataclass(frozen=True)
class MLPMemory(MemoryArchitecture):
    keyword: ClassVar[str] = "mlp"
    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("depth", "integer", default=2, low=1, high=8),
        Argument("expansion", "integer", default=4, low=1, high=16),
        Argument("activation", "word", default="gelu", choices=ACTIVATIONS),
        Argument("residual", "word", default="true", choices=("true", "false")),
        Argument("norm", "word", default="layernorm", choices=("layernorm", "none")),
        Argument("norm_eps", "number", default=1e-5),
        Argument("norm_start", "word", default="identity", choices=("identity", "unit")),
    )
    positional: ClassVar[bool] = False

    depth: int = 2
    expansion: int = 4
    activation: str = "gelu"
    residual: bool = True
    norm: Literal["layernorm", "none"] = "layernorm"
    norm_eps: float = 1e-5
    norm_start: Literal["identity", "unit"] = "identity"
    span: Span = NO_SPAN

    @classmethod
    def build(cls, values, span) -> MLPMemory:
        values = {**values, "residual": values["residual"] in (True, "true")}
        if values["depth"] == 1:  # one D×D matrix: no hidden layer, so expansion and activation have no meaning
            values.update(expansion=1, activation="identity")
        return cls(**values, span=span)

    def outer_params(self) -> list[tuple[str, float]]:
        return [("ln_weight", 1.0), ("ln_bias", 0.0)] if self.norm == "layernorm" else []

    def nonlinear_reason(self) -> str | None:
        if self.depth != 1:
            return f"the memory is a depth-{self.depth} MLP, nonlinear in its weights"
        if self.norm != "none":
            return "the memory's LayerNorm makes its prediction nonlinear in the weights"
        return None

    def explain(self, fmt, act) -> list[str]:
        head = (f"memory: M(x) = {'x + ' if self.residual else ''}{'LN(' if self.norm == 'layernorm' else '('}"
                f"W{self.depth} σ(… σ(W1 x))), depth {self.depth}, hidden {self.expansion}·D, σ = {self.activation}")
        lines = [head]
        for name, expr in zip(("σ(x)", "σ'(x)", "σ''(x)"), act):
            lines += [f"  {name} =", *("    " + line for line in fmt(expr).splitlines())]
        return lines

    # ---------------------------------------------------------------- lowering
    def lower_output(self, lw, z, x):
        g = lw.g
        y = z
        if self.norm == "layernorm":
            dsize = g.size("o")
            mu = g.ew(lambda s, n: s / n, g.sum(z, "o"), dsize)
            zc = g.ew(lambda a, b: a - b, z, mu)
            var = g.ew(lambda s, n: s / n, g.sum(g.ew(lambda a: a**2, zc), "o"), dsize)
            eps = self.norm_eps
            y = g.ew(lambda c, vr, w, b: c / sp.sqrt(vr + eps) * w + b, zc, var, lw.params["ln_weight"],
                     lw.params["ln_bias"])
        if self.residual:
            y = g.ew(lambda a, b: a + b, y, g.rename(x, i="o"))
        return y

    # ---------------------------------------------------------------- reference
    def reference_output(self, z: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        h = z
        if self.norm == "layernorm":
            mean = h.mean(-1, keepdim=True)
            var = ((h - mean) ** 2).mean(-1, keepdim=True)
            h = (h - mean) / torch.sqrt(var + self.norm_eps) * params["ln_weight"] + params["ln_bias"]
        if self.residual:
            h = x + h
        return h
