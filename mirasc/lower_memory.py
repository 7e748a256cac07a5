"""The memory's own passes in a chunk program: M(x; W) over its layers, the inner gradient at given weights by the
IR's reverse mode, and a lag map's exact step at one token (mirasc.lower builds the chunk around them).
"""

from __future__ import annotations

import sympy as sp

from . import spec as S
from .derive import NCH, Derivation, R, V
from .grad import backprop
from .ir import Graph, Value
from .lower_decay import named


def layer_axes(depth: int) -> list[tuple[str, str]]:
    """(output axis, input axis) of each weight matrix, in application order."""
    if depth == 1:
        return [("o", "i")]
    hidden = ["h" if n % 2 == 0 else "g" for n in range(depth - 1)]
    ins = ["i"] + hidden
    outs = hidden + ["o"]
    return list(zip(outs, ins))


def channel_axis(depth: int, layer: int) -> str | None:
    """The D-sized axis a channel gate scales on this layer (input columns first, output rows last)."""
    if layer == 0:
        return "i"
    if layer == depth - 1:
        return "o"
    return None


class MemoryLowering:
    """The graph, the spec's memory and its layers' axes; the inputs (self.P, self.k, self.v, self.gates, and the
    memory's outer parameters by name, self.params) are declared by the chunk program that derives from it."""

    def __init__(self, derivation: Derivation):
        self.d = derivation
        self.spec = derivation.spec
        self.mem = self.spec.memory
        self.depth = self.mem.depth
        self.axes = layer_axes(self.depth)
        self.g = Graph()

    def operand(self, o: S.Operand | None) -> Value | None:
        if o is None:
            return None
        if isinstance(o, S.Const):
            return self.g.const(o.value)
        return self.gates[o.name]

    def on_layer(self, x: Value | None, layer: int) -> Value | None:
        """Relabel a channel quantity (axis i) onto this layer's D-sized axis."""
        if x is None or "i" not in x.axes:
            return x
        return self.g.rename(x, i=channel_axis(self.depth, layer))

    # ---------------------------------------------------------------- the memory
    def sym_ew(self, expr: sp.Expr, env: dict[sp.Symbol, Value]) -> Value:
        syms = sorted(expr.free_symbols, key=lambda x: (str(x), type(x).__name__))  # a gate `_r` vs Dummy r
        args = [env[s] if s is not NCH else self.g.size("o") for s in syms]
        return self.g.ew(lambda *a: expr.xreplace(dict(zip(syms, a))), *args)

    def output_map(self, z: Value, x: Value) -> Value:
        """The memory's output map of the last pre-activation z for input x (its component's lowering)."""
        return self.mem.lower_output(self, z, x)

    def forward(self, W: list[Value], x: Value):
        """M(x; W) for fixed weights: returns (layer inputs, pre-activations, output)."""
        g = self.g
        xs, zs = [], []
        h = x
        for j, (out_ax, in_ax) in enumerate(self.axes):
            z = g.einsum([a for a in h.axes if a != in_ax] + [out_ax], h, W[j])
            xs.append(h)
            zs.append(z)
            if j < self.depth - 1:
                h = self.sym_ew(self.d.act, {self.d.x: z})
        return xs, zs, named(self.output_map(zs[-1], x), "memory output M(x)")

    def gate_env(self, gates: dict[str, Value]) -> dict[sp.Symbol, Value]:
        """The loss's gate symbols as IR values (channel gates on the output axis o, where the loss lives)."""
        return {sym: self.g.rename(gates[name], i="o") for name, sym in self.d.loss.gate_symbols.items()
                if name in gates}

    def loss_grad(self, y: Value, v: Value, gates: dict[str, Value]) -> Value:
        """g = dl/dy from the derivation, evaluated on IR values (channel quantities on axis o)."""
        g = self.g
        ld = self.d.loss
        env: dict[sp.Symbol, Value] = {R: g.ew(lambda a, b: a - b, y, v), V: v, **self.gate_env(gates)}
        for red in ld.reductions:
            env[red.symbol] = g.sum(self.sym_ew(red.body, env), "o")
        for sym, expr in ld.adjoints:
            env[sym] = self.sym_ew(expr, env)
        return named(self.sym_ew(ld.grad, env), "inner gradient signal g = dl/dy")

    def inner_gradient(self, W: list[Value], x: Value, v: Value, gates: dict[str, Value]):
        """Per-token gradient factors at W: (layer inputs x_l, pre-activation adjoints z̄_l); G_l = z̄_l ⊗ x_l."""
        xs, zs, y = self.forward(W, x)
        gy = self.loss_grad(y, v, gates)
        adj = backprop(self.g, {y.id: (y, gy)}, zs)
        zbars = [named(adj[z.id], f"layer {j + 1} pre-activation adjoint (G = adj ⊗ input)") for j, z in enumerate(zs)]
        if any(zb is None for zb in zbars):
            raise ValueError("the loss does not reach every layer of the memory")
        return xs, zbars

    # ---------------------------------------------------------------- the lag step (KL map)
    def lag_step(self, alpha: Value | None, eta: Value) -> list[Value]:
        """A lag map's exact step at the chunk's first token, from W' with that token's gradient (Memora's:
        W1 = softmax_in(alpha0 log max(W', eps) - eta0 G0))."""
        g = self.g
        first = {n: (g.select(x, "first") if "t" in x.axes else x) for n, x in self.gates.items()}
        xs, zbars = self.inner_gradient(self.P, g.select(self.k, "first"), g.select(self.v, "first"), first)
        a0 = None if alpha is None else (g.select(alpha, "first") if "t" in alpha.axes else alpha)
        e0 = g.select(eta, "first") if "t" in eta.axes else eta
        out = []
        for j, (_out_ax, in_ax) in enumerate(self.axes):
            grad0 = g.ew(lambda zb, x: zb * x, zbars[j], xs[j])
            out.append(self.spec.retention.map.lower_lag_step(self.maps, self.P[j], grad0, a0, e0, j, in_ax))
        return out
