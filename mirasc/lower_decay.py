"""The in-chunk coefficients of a chunk program (Eq. 28): how a retention gate decays, within a chunk, the state
and the gradients written before each token, and how a channel gate's decay between tokens enters a product
without a (C, C, D) tile (mirasc.lower builds the rest of the program around them).

Products of a factor over tokens are built from cumulative sums of its log: a_t = e^{Λ_t}, Λ_t = Σ_{j≤t} log α_j,
and the decay from token s to token t, e^{Λ_t − Λ_s}, is a (t, s) tile for a scalar gate. For a channel gate it
would be a (t, s, i) tile; `InChunkDecay` keeps it apart instead (DecaySplit), in one of three forms
(CHANNEL_DECAY_FORMS): `pairwise` makes the tile, `factored` writes e^{Λ_t} e^{−Λ_s} through matrix products (safe
while the decay across a chunk stays below DECAY_SPREAD_LIMIT in log space), `products` uses ir.DecayedProduct
(safe always).
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp

from . import spec as S
from .ir import Graph, Value


def named(v: Value, hint: str) -> Value:
    """Label a value for the IR dump and the generated code (the first label a shared value gets wins)."""
    if not v.hint:
        v.hint = hint
    return v


@dataclass
class Coefficients:
    """In-chunk coefficients with channel gates on axis i (renamed per layer)."""

    decay: Value | None  # a_t = prod_{j<=t} alpha_j  (t[, i]); None = 1
    grad: Value  # Gamma[t, s] (t, s[, i]): weight of token s's gradient in P_t (sign included: P -= ...)
    buffer_read: Value | None = None  # b_t: weight of the buffer S' in P_t (momentum)
    buffer_decay: Value | None = None  # c_t: S_t = c_t S' - ... (momentum: theta's cumulative product)
    buffer_grad: Value | None = None  # weight of token s's gradient in S_t
    grad_end: Value | None = None  # Gamma[last, s]: weight of token s's gradient in the end state
    split: DecaySplit | None = None  # channel decay kept apart from Gamma (the factored or the products program)
    buffer_grad_end: Value | None = None  # weight of token s's gradient in the end buffer


@dataclass
class DecaySplit:
    """Channel decay between tokens as Γ[t, s, i] = causal[t, s] e^{log_t[t, i] − log_s[s, i]} weight[s(, i)], kept
    apart so that no (t, s, i) tile is made: written e^{log_t} · e^{−log_s} (`factored`: matrix products, safe while
    the decay across a chunk stays below the runtime's guard) or as ir.DecayedProduct (`products`: safe always)."""

    log_t: Value  # (t, i): cumulative log-decay at the token that reads
    log_s: Value  # (s, i): cumulative log-decay at the token that wrote
    weight: Value  # (s[, i]): the writer's step size
    # (t, s): the decay between tokens, masked, when it is the same on every channel (a scalar or no decay gate, with
    # a channel step size): the products are then matrix products times this tile, with no exponential per channel
    pairwise: Value | None = None

    def on(self, rename) -> DecaySplit:
        return DecaySplit(rename(self.log_t), rename(self.log_s), rename(self.weight), self.pairwise)


CHANNEL_DECAY_FORMS = ("pairwise", "factored", "products")


def masked_decay(g: Graph, mask: Value, log_t: Value, log_s: Value) -> Value:
    """e^{log_t − log_s} where the mask holds, 0 elsewhere: a (t, s) decay tile whose exponent is ≤ 0 wherever it
    is kept (the masked-out entries take e^0, never an overflowing exponential)."""
    return g.ew(lambda m, a, b: sp.exp(m * (a - b)) * m, mask, log_t, log_s)


# In-chunk products of a factor (retention alpha, momentum theta) are built from cumulative sums of
# log(max(a, ZERO_FLOOR)): a factor of exactly 0, which a range like theta in [0, 1) admits, then contributes
# e^{-69} where log(0) = -inf would make the differences of cumulative sums NaN. Below the floor the factor's
# own gradient is 0 (log-space products cannot give it: 1/a times terms that cancel).
ZERO_FLOOR = 1e-30


class InChunkDecay:
    """The coefficients of one chunk program (its graph, spec and channel-decay form)."""

    def __init__(self, g: Graph, spec: S.Spec, channel_decay: str):
        if channel_decay not in CHANNEL_DECAY_FORMS:
            raise ValueError(f"channel_decay: expected one of {CHANNEL_DECAY_FORMS}, got {channel_decay!r}")
        self.g, self.spec, self.channel_decay = g, spec, channel_decay
        self.log_cum: Value | None = None  # Λ (t[, i]) of the retention gate, once tiles() has made it (None: no decay)

    def tiles(self, gate: Value | None):
        """(cumulative decay a_t, pairwise decay D[t, s] = prod_{s<j<=t} gate_j masked to t >= s, and the
        last row D[last, s] built from the small cumulative sums, so the end state never touches D)."""
        g = self.g
        causal = g.mask("causal")
        valid = g.select(causal, "last")  # s <= last: 1 on the chunk's real tokens
        if gate is None:
            return None, causal, valid
        logs = g.ew(lambda a: sp.log(sp.Max(a, ZERO_FLOOR)), gate)
        if "t" not in logs.axes:
            logs = g.broadcast(logs, logs.axes + ("t",))
        cum = g.cumsum(logs, "t")
        self.log_cum = cum
        pair = masked_decay(g, causal, cum, g.rename(cum, t="s"))
        last_row = g.ew(lambda m, a, b: sp.exp(a - b) * m, valid, g.select(cum, "last"), g.rename(cum, t="s"))
        cumulative = g.ew(lambda c: sp.exp(c), cum)
        return (named(cumulative, "cumulative decay in the chunk"), named(pair, "pairwise decay D[t,s]"),
                named(last_row, "decay from token s to the chunk's end"))

    def coefficients(self, alpha: Value | None, eta: Value) -> Coefficients:
        """Eq. 28 for plain gd: P_t = a_t P' − Σ_s D[t, s] η_s G_s (an algorithm with a buffer builds its own from
        tiles(): mirasc.components.algorithms)."""
        g = self.g
        a_cum, a_pair, a_end = self.tiles(alpha)
        eta_s = g.rename(eta, t="s")
        split = None
        if self.channel_decay == "products" and "i" in a_pair.axes + eta_s.axes:
            # Γ has a channel axis (a channel decay, static or per token, or a channel step size): kept apart
            # as products, with Λ on the channel axis (0 without decay, a scalar gate's Λ broadcast); a decay
            # without a channel axis stays the (t, s) tile it is
            split = DecaySplit(self.on_channels(self.log_cum), self.on_channels(self.log_cum, "s"), eta_s,
                               None if "i" in a_pair.axes else a_pair)
        elif self.channel_decay == "factored" and a_cum is not None and "i" in a_cum.axes:
            split = DecaySplit(self.log_cum, g.rename(self.log_cum, t="s"), eta_s)
        return Coefficients(a_cum, g.ew(lambda p, e: p * e, a_pair, eta_s),
                            grad_end=g.ew(lambda p, e: p * e, a_end, eta_s), split=split)

    def on_channels(self, log: Value | None, token: str = "t") -> Value:
        """A cumulative log-decay on (token, i): 0 without decay, a scalar gate's broadcast over the channels."""
        g = self.g
        log = g.const(0.0) if log is None else log
        log = g.broadcast(log, ("t", "i")) if set(log.axes) != {"t", "i"} else log
        return log if token == "t" else g.rename(log, t=token)

    def prediction_weights(self, alpha: Value | None, coef: Coefficients, lr: Value):
        """Where token t takes its gradient, as (a_t, Γ', split): the weights a_t ⊙ W' − Σ_{s<t} Γ'[t, s] G_s.

        gradient_at = previous (Eq. 9): W_{t-1}, so a and Γ' stop at token t − 1 (exclusive cumulative decay);
        gradient_at = decayed (the Gated DeltaNet paper): α_t W_{t-1}, the inclusive coefficients of the write.
        Without decay the two coincide. Γ' is masked to s < t by the caller."""
        g = self.g
        if alpha is None or self.spec.algorithm.gradient_at == "decayed":
            return coef.decay, coef.grad, coef.split
        logs = g.ew(lambda a: sp.log(sp.Max(a, ZERO_FLOOR)), alpha)
        if "t" not in logs.axes:
            logs = g.broadcast(logs, logs.axes + ("t",))
        cum = g.cumsum(logs, "t")
        before = named(g.ew(lambda c, l: c - l, cum, logs), "cumulative log-decay before token t")
        a_prev = g.ew(lambda c: sp.exp(c), before)
        eta_s = g.rename(lr, t="s")
        strict = g.mask("strict")
        if coef.split is not None:  # Γ'[t, s] = e^{Λ_{t-1} − Λ_s} η_s for s < t
            pairwise = None
            if coef.split.pairwise is not None:  # the same on every channel: the (t, s) tile, strictly below
                pairwise = masked_decay(g, strict, before, g.rename(cum, t="s"))
            return a_prev, None, DecaySplit(self.on_channels(before), coef.split.log_s, coef.split.weight, pairwise)
        pair = g.ew(lambda m, a, b, e: sp.exp(m * (a - b)) * m * e, strict, before, g.rename(cum, t="s"), eta_s)
        return a_prev, named(pair, "decay from token s to token t - 1, times eta_s"), None

    def scores(self, x: Value, y_s: Value, split: DecaySplit, mask: str) -> Value:
        """Σ_i x[t, i] y[s, i] Γ[t, s, i] (t, s) with Γ from `split` (on axis i, as this layer names it), masked."""
        g = self.g
        m = g.mask(mask)
        if split.pairwise is not None:
            dots = g.einsum(("t", "s"), x, g.ew(lambda u, w: u * w, y_s, split.weight))
            return named(g.ew(lambda c, p, k: c * p * k, dots, split.pairwise, m), "decayed scores")
        if self.channel_decay == "products":
            y_s = g.ew(lambda u, w: u * w, y_s, split.weight)
            return named(g.decayed_product(("t", "s"), x, y_s, split.log_t, split.log_s, m), "decayed scores")
        a_t, b_s = self.factors(split)
        scores = g.einsum(("t", "s"), g.ew(lambda u, w: u * w, x, a_t), g.ew(lambda u, w: u * w, y_s, b_s))
        return named(g.ew(lambda c, k: c * k, scores, m), "decayed scores (factored)")

    def factors(self, split: DecaySplit) -> tuple[Value, Value]:
        """(e^{log_t}, e^{-log_s} weight): the factored program's two sides of Γ (safe under the runtime's guard)."""
        g = self.g
        a_t = g.ew(lambda c: sp.exp(c), split.log_t)
        return a_t, named(g.ew(lambda c, w: sp.exp(-c) * w, split.log_s, split.weight),
                           "inverse cumulative decay times eta (factored)")

    def apply(self, scores: Value, z_s: Value, split: DecaySplit, out_ax: str) -> Value:
        """Σ_s scores[t, s] z[s, o] Γ[t, s, o] (t, o) with Γ from `split` (on the layer's output axis o)."""
        g = self.g
        causal = g.mask("causal")
        if split.pairwise is not None:
            weighted = g.ew(lambda c, p, k: c * p * k, scores, split.pairwise, causal)
            return g.einsum(("t", out_ax), weighted, g.ew(lambda u, w: u * w, z_s, split.weight))
        if self.channel_decay == "products":
            z_s = g.ew(lambda u, w: u * w, z_s, split.weight)
            return g.decayed_product(("t", out_ax), scores, z_s, split.log_t, split.log_s, causal)
        a_t, b_s = self.factors(split)
        applied = g.einsum(("t", out_ax), g.ew(lambda c, k: c * k, scores, causal), g.ew(lambda u, w: u * w, z_s, b_s))
        return g.ew(lambda u, w: u * w, a_t, applied)


# Largest decay spread (max over heads and channels of -sum(log alpha) across a chunk) the factored program is
# used for: e^{±40} and their products with O(1e-6) activations stay normal fp32 numbers (overflow is at e^88,
# subnormals below e^-87). Measured on Moneta, fp32 against a float64 reference: the factored program's outputs
# and gradients are as accurate as the (C, C, D) program's up to spread 80 (relative RMS ~1e-6 for both).
DECAY_SPREAD_LIMIT = 40.0



def factorable(spec: S.Spec) -> bool:
    """Whether a factored program exists: a channel-wise decay gate and an algorithm without a buffer."""
    d = spec.retention.decay
    return (isinstance(d, S.GateRef) and spec.gate(d.name).kind == "channel"
            and spec.gate(d.name).data_dependent and spec.algorithm.buffer is None)
