"""lower: the chunk program of a spec, as an IR graph over one chunk of C tokens (batched over heads).

Inputs: the chunk-start state (`w1..wL`, and the algorithm's buffer `s1..sL` with momentum), `q`, `k` (t, i),
`v` (t, o), one input per gate (`gate_<name>`: data-dependent (t) or (t, i); static () or (i)), and the memory's
outer parameters (a LayerNorm's `ln_weight`, `ln_bias`: (o)). Outputs: `out` (t, o) and the next state `new_w1..`.

The memory architecture and the learning algorithm are components (mirasc.components): the memory gives its
layers and output map (MemoryLowering), the algorithm Eq. 28's coefficients; this module names neither.

The steps follow docs/semantics.md: base weights (mirror map or lag step), the key path's forward pass and
inner gradient at those weights (back-propagated with the IR's own reverse mode), the in-chunk decay and
momentum coefficients (Eq. 28), the query path read through masked score matmuls (the TTT dual form), the
end state, and the boundary map for the chunk's last token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from . import spec as S
from .chunkform import chunk_form
from .derive import Derivation
from .ir import Graph, Value
from .lower_decay import Coefficients, DecaySplit, InChunkDecay, named
from .lower_maps import MapLowering
from .lower_memory import MemoryLowering


def state_names(spec: S.Spec) -> list[str]:
    n = spec.memory.depth
    names = [f"w{j + 1}" for j in range(n)]
    if spec.algorithm.buffer is not None:
        names += [f"{spec.algorithm.buffer}{j + 1}" for j in range(n)]
    return names


class ChunkLowering(MemoryLowering):
    """The chunk program: its inputs, the in-chunk coefficients, the reads of the queries and the end state, around
    the memory's own passes (MemoryLowering)."""

    def __init__(self, derivation: Derivation, channel_decay: str = "pairwise"):
        super().__init__(derivation)
        self.form = chunk_form(self.spec, derivation.loss)
        self.decay = InChunkDecay(self.g, self.spec, channel_decay)
        self.maps = MapLowering(self.g, self.operand, self.on_layer)

    # ---------------------------------------------------------------- inputs
    def declare_inputs(self) -> None:
        g = self.g
        self.P = [g.input(f"w{j + 1}", ax) for j, ax in enumerate(self.axes)]
        buffer = self.spec.algorithm.buffer
        self.S = None if buffer is None else [g.input(f"{buffer}{j + 1}", ax) for j, ax in enumerate(self.axes)]
        self.q = g.input("q", ("t", "i"))
        self.k = g.input("k", ("t", "i"))
        self.v = g.input("v", ("t", "o"))
        self.gates: dict[str, Value] = {}
        for gate in self.spec.gates:
            axes = (("t",) if gate.data_dependent else ()) + (("i",) if gate.kind == "channel" else ())
            self.gates[gate.name] = g.input(f"gate_{gate.name}", axes)
        self.params = {name: g.input(name, ("o",)) for name, _ in outer_params(self.spec)}

    # ---------------------------------------------------------------- the exact chunk of an affine update
    def solved_signals(self, alpha: Value | None, coef: Coefficients) -> tuple[list[Value], list[Value]]:
        """The exact chunk of an affine update (mirasc.chunkform): every token's gradient signal at its own weights.

        Token t's prediction is y_t = (a_t ⊙ W') k_t − Σ_{s<t} Γ'[t, s] (k_t · k_s) g_s (prediction_weights), and
        ∂ℓ/∂y is affine with slope h_t = ∂²ℓ/∂y², so g_t = g(ŷ_t) − h_t Σ_{s<t} Γ'[t, s] (k_t · k_s) g_s with
        ŷ_t = (a_t ⊙ W') k_t: the unit lower-triangular system (I + A) g = g(ŷ), A[t, s] = h_t Γ'[t, s] k_t · k_s
        (the UT transform of flash-linear-attention's chunk_delta_rule; channel decay enters the k·k products)."""
        g = self.g
        a_pred, gamma, split = self.decay.prediction_weights(alpha, coef, self.operand(self.spec.algorithm.lr))
        k, P = self.k, self.P[0]
        z = g.einsum(("t", "o"), k, P) if a_pred is None else g.einsum(("t", "o"), k, P, a_pred)
        y = named(self.output_map(z, k), "prediction of the decayed chunk-start weights")
        rhs = named(self.loss_grad(y, self.v, self.gates), "inner gradient signal at those weights")
        k_s = g.rename(k, t="s")
        if split is not None:
            dots = self.decay.scores(k, k_s, split, "strict")
        elif "i" in gamma.axes:
            dots = g.einsum(("t", "s"), k, gamma, k_s)
        else:
            dots = g.ew(lambda c, w: c * w, g.einsum(("t", "s"), k, k_s), gamma)
        hess = self.form.hessian
        if hess.is_number:  # kept exact (an l2 bias has h = 1), so it folds away
            system = g.ew(lambda m, c: m * hess * c, g.mask("strict"), dots)
        else:
            slope = self.sym_ew(hess, self.gate_env(self.gates))
            system = g.ew(lambda m, h, c: m * h * c, g.mask("strict"), slope, dots)
        system = named(system, "A[t, s] = h_t Γ'[t, s] k_t·k_s")
        inverse = named(g.tri_inverse(system), "(I + A)⁻¹, the UT transform")
        signals = g.einsum(("t", "o"), inverse, g.rename(rhs, t="s"))
        return [k], [named(signals, "exact gradient signals (I + A)⁻¹ g(ŷ)")]

    # ---------------------------------------------------------------- reads and end state
    def grad_term(self, x: Value, xk: Value, zbar: Value, gamma: Value | None, out_ax: str, in_ax: str,
                  split: DecaySplit | None = None) -> Value:
        """sum_s gamma[t, s] (z̄_s ⊗ xk_s) x_t, through (t, s) scores: never a per-token weight matrix.
        With `split`, the channel decay stays apart from gamma (decayed_scores, decayed_apply): no (C, C, D) tile."""
        g = self.g
        xk_s, zb_s = g.rename(xk, t="s"), g.rename(zbar, t="s")
        keep = [a for a in x.axes if a != in_ax]
        if split is not None:
            if in_ax in split.log_t.axes:  # the decay is on the axis the scores sum over
                return g.einsum(keep + [out_ax], self.decay.scores(x, xk_s, split, "causal"), zb_s)
            scores = named(g.einsum(keep + ["s"], x, xk_s), "scores x_t·x_s")
            return self.decay.apply(scores, zb_s, split, out_ax)
        if in_ax in gamma.axes:
            scores = g.einsum(keep + ["s"], x, gamma, xk_s)
            return g.einsum(keep + [out_ax], named(scores, "decayed scores x_t·x_s"), zb_s)
        scores = named(g.einsum(keep + ["s"], x, xk_s), "scores x_t·x_s")
        if out_ax in gamma.axes:
            return g.einsum(keep + [out_ax], scores, gamma, zb_s)
        return g.einsum(keep + [out_ax], g.ew(lambda a, b: a * b, scores, gamma), zb_s)

    def read_layer(self, j: int, x: Value, base: list[Value], kappa: list, coef: Coefficients, xk, zbar) -> Value:
        g = self.g
        out_ax, in_ax = self.axes[j]
        keep = [a for a in x.axes if a != in_ax] + [out_ax]
        a = self.on_layer(coef.decay, j)
        P = self.P[j]
        if kappa[j] is not False:  # a scaling map (none, lq, lag, projection): W' = kappa P'
            inner = g.einsum(keep, x, P, a) if a is not None else g.einsum(keep, x, P)
        else:  # an elementwise mirror map: W' x + (a - 1) P' x
            am1 = g.ew(lambda c: c - 1, a) if a is not None else None
            inner = g.einsum(keep, x, P, am1) if am1 is not None else None
        if coef.buffer_read is not None:
            mom = g.einsum(keep, x, self.S[j], self.on_layer(coef.buffer_read, j))
            inner = mom if inner is None else g.ew(lambda p, m: p + m, inner, mom)
        split = None if coef.split is None else coef.split.on(lambda v: self.on_layer(v, j))
        gterm = self.grad_term(x, xk[j], zbar[j], self.on_layer(coef.grad, j), out_ax, in_ax, split)
        inner = g.ew(lambda p, m: -m, gterm, gterm) if inner is None else g.ew(lambda p, m: p - m, inner, gterm)
        if kappa[j] is False:
            if self.mirror_slope[j] is not None:
                inner = g.ew(lambda c, kp: c * kp, inner, self.mirror_slope[j])
            return g.ew(lambda b, c: b + c, g.einsum(keep, x, base[j]), inner)
        if kappa[j] is None:
            return inner
        return g.ew(lambda c, kp: c * kp, inner, kappa[j])

    def read(self, x: Value, base, kappa, coef, xk, zbar) -> Value:
        h = x
        for j in range(self.depth):
            z = self.read_layer(j, h, base, kappa, coef, xk, zbar)
            if j < self.depth - 1:
                h = self.sym_ew(self.d.act, {self.d.x: z})
        return named(self.output_map(z, x), "read: M(q_t; W_t)")

    def end_state(self, j: int, coef: Coefficients, xk, zbar) -> tuple[Value, Value | None]:
        g = self.g
        out_ax, in_ax = self.axes[j]
        def last(x):
            return (None if x is None else self.on_layer(g.select(x, "last"), j))
        grads = g.einsum((out_ax, in_ax), self.on_layer(coef.grad_end, j),
                         g.rename(zbar[j], t="s"), g.rename(xk[j], t="s"))
        P = self.P[j]
        a_end = last(coef.decay)
        kept = P if a_end is None else g.ew(lambda a, p: a * p, a_end, P)
        if coef.buffer_read is not None:
            kept = g.ew(lambda p, b, s: p + b * s, kept, last(coef.buffer_read), self.S[j])
        new_P = named(g.ew(lambda p, gr: p - gr, kept, grads), f"layer {j + 1} end state")
        if coef.buffer_grad is None:
            return new_P, None
        mgrads = g.einsum((out_ax, in_ax), self.on_layer(coef.buffer_grad_end, j),
                          g.rename(zbar[j], t="s"), g.rename(xk[j], t="s"))
        new_S = g.ew(lambda c, s, gr: c * s - gr, last(coef.buffer_decay), self.S[j], mgrads)
        return new_P, new_S

    # ---------------------------------------------------------------- the whole program
    def build(self) -> Graph:
        self.declare_inputs()
        g = self.g
        spec = self.spec
        rmap = spec.retention.map
        alpha = self.operand(spec.retention.decay)
        eta = self.operand(spec.algorithm.lr)
        if "t" not in eta.axes:
            eta = g.broadcast(eta, eta.axes + ("t",))
        kind = rmap.kind if rmap is not None else None
        if kind == "lag":
            self.P = self.lag_step(alpha, eta)
            first = g.mask("first")
            if alpha is not None:
                alpha = g.ew(lambda m, a: m + (1 - m) * a, first, alpha)
            eta = g.ew(lambda m, e: (1 - m) * e, first, eta)
        # reads in a chunk: W_t = W' + slope (P_t - P'). A scaling map (literal lq) has W' = kappa P', so the read is
        # kappa P_t; an elementwise map (pnorm, sigmoid, soft-threshold ftrl) reads W' x plus the slope times the
        # linear part (kappa False), its slope in mirror_slope (None: 1).
        self.mirror_slope: list[Value | None] = [None] * self.depth
        if kind == "mirror":
            base = [rmap.lower_map(self.maps, P, j) for j, P in enumerate(self.P)]
            if rmap.reads_scaled:
                kappa = [rmap.lower_slope(self.maps, P) for P in self.P]
            else:
                kappa = [False] * self.depth
                self.mirror_slope = [rmap.lower_slope(self.maps, P) for P in self.P]
        else:
            base, kappa = list(self.P), [None] * self.depth
        algorithm = spec.algorithm
        if self.form.solves:
            coef = algorithm.lower_coefficients(self.decay, alpha, eta, self.operand)
            xk, zbar = self.solved_signals(alpha, coef)
        else:
            xk, zbar = self.inner_gradient(base, self.k, self.v, self.gates)
            coef = algorithm.lower_coefficients(self.decay, alpha, eta, self.operand)
        out = self.read(self.q, base, kappa, coef, xk, zbar)
        new_state = [self.end_state(j, coef, xk, zbar) for j in range(self.depth)]
        carried = [P for P, _ in new_state]
        if kind in ("mirror", "projection"):
            mapped = [rmap.lower_map(self.maps, P, j) for j, P in enumerate(carried)]
            _, _, last_out = self.forward(mapped, g.select(self.q, "last"))
            # only at the end of a complete chunk: the short last chunk of a sequence reads the frozen map
            # like any mid-chunk token, so a token's output never depends on how many tokens follow it
            out = g.ew(lambda m, a, b: m * a + (1 - m) * b, g.mask("end"), last_out, out)
            if kind == "projection":
                carried = mapped
        g.outputs["out"] = out
        for j, P in enumerate(carried):
            g.outputs[f"new_w{j + 1}"] = P
        for j, (_, Snew) in enumerate(new_state):
            if Snew is not None:
                g.outputs[f"new_{algorithm.buffer}{j + 1}"] = Snew
        return g


def lower(derivation: Derivation, channel_decay: str = "pairwise") -> Graph:
    """The forward chunk program of a derived spec. A channel-wise decay between tokens (factorable specs) is
    `pairwise`, a (C, C, D) tile; `factored`, e^{Λ_t} e^{-Λ_s} through matrix products (the torch module uses it
    only for chunks whose decay spread is below DECAY_SPREAD_LIMIT); or `products`, ir.DecayedProduct (exact for
    any decay, no (C, C, D) tile: the Triton kernels)."""
    from .ir import prune

    return prune(ChunkLowering(derivation, channel_decay).build())


def outer_params(spec: S.Spec) -> list[tuple[str, float]]:
    """The memory's outer parameters (axis o) with the value each entry takes when the caller passes none (a
    LayerNorm's weight and bias)."""
    return spec.memory.outer_params()


@dataclass(frozen=True)
class ChunkInput:
    """An input of the chunk program: what it is, whether it runs along the sequence (sliced per chunk), and the
    value a padded token takes (past a sequence's end: gates 1, which keeps every decay and step finite; else 0)."""

    name: str
    role: Literal["state", "query", "key", "value", "gate", "param"]
    per_token: bool
    pad: float = 0.0


def chunk_inputs(spec: S.Spec) -> list[ChunkInput]:
    """The chunk program's inputs, in the order the runtime passes them."""
    return ([ChunkInput(n, "state", False) for n in state_names(spec)]
            + [ChunkInput("q", "query", True), ChunkInput("k", "key", True), ChunkInput("v", "value", True)]
            + [ChunkInput(f"gate_{g.name}", "gate", g.data_dependent, 1.0) for g in spec.gates]
            + [ChunkInput(name, "param", False) for name, _ in outer_params(spec)])


def input_names(spec: S.Spec) -> list[str]:
    return [c.name for c in chunk_inputs(spec)]


def output_names(spec: S.Spec) -> list[str]:
    return ["out"] + [f"new_{n}" for n in state_names(spec)]
