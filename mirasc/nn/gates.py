"""The gates of a MirasLayer: how a gate's pre-activation maps onto its declared range, its initial value (by the role
the spec gives it, mirasc.opmeta.GateInfo.roles) and the low-rank data-dependent projection that produces it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..components import boundary_maps, learning_algorithms
from ..opmeta import GateInfo

__all__ = ["GATE_INIT", "GATE_INIT_FOR_MAP", "GateProjection", "clamp_to_range", "gate_activation", "gate_init_value",
           "inverse_activation"]

# Initial value of a gate, by its role (what the spec uses it as: mirasc.opmeta.GateInfo.roles), in natural units.
# A gate with no role here, or whose range excludes the value, starts at the midpoint of its range; a half-open
# range [lo, inf) at lo + 1, an unbounded one at 0 (see gate_init_value).
GATE_INIT = {
    "decay": 0.99,  # retention: keep almost everything
    "lr": 0.5,  # inner learning rate (the midpoint of a sigmoid step): 0.1 left DeltaNet, TTT-Linear and Moneta slow
    "bias": 1.0,  # read by the attentional bias: a threshold such as Huber's δ
    # and each learning algorithm's own operands (mirasc.components.algorithms: momentum's θ starts at 0.5)
    **{role: value for cls in learning_algorithms().values() for role, value in cls.gate_init.items()},
}
# By boundary map (op.meta.map.name), values that replace GATE_INIT's: each map's own `gate_init`
# (mirasc.components.maps; Memora's KL map steps in log space and starts at η = 2). A table, so that an ablation
# (bench.tasks --gate-init) can edit it in place.
GATE_INIT_FOR_MAP = {key: dict(cls.gate_init) for key, cls in boundary_maps().items() if cls.gate_init}
GATE_MARGIN = 1e-6  # how far inside an open bound a gate is clamped


def _default_activation(g: GateInfo) -> str:
    lo, hi = g.low, g.high
    if math.isfinite(lo) and math.isfinite(hi):
        return "sigmoid"
    if math.isfinite(lo):
        return "softplus"
    return "identity"


def gate_activation(g: GateInfo):
    """The map R -> the gate's range for a gate of op.meta.gates (without the final clamp).

    sigmoid / tanh: scaled onto [lo, hi] when both bounds are finite, else used as is.
    softplus: lo + softplus(z) when lo is finite.  exp: hi * exp(-softplus(z)) when hi is finite (so a (0, 1]
    range is exp(-softplus(z)), the Mamba2 / Gated DeltaNet decay), else lo + exp(z).  identity: z.
    A gate with no declared activation gets sigmoid (finite range), softplus ([lo, inf)) or identity.
    """
    act = g.activation or _default_activation(g)
    lo, hi = float(g.low), float(g.high)
    both = math.isfinite(lo) and math.isfinite(hi)
    if act == "sigmoid":
        return (lambda z: lo + (hi - lo) * torch.sigmoid(z)) if both else torch.sigmoid
    if act == "tanh":
        return (lambda z: lo + (hi - lo) * 0.5 * (torch.tanh(z) + 1.0)) if both else torch.tanh
    if act == "softplus":
        return (lambda z: lo + F.softplus(z)) if math.isfinite(lo) else F.softplus
    if act == "exp":
        if math.isfinite(hi):
            return lambda z: hi * torch.exp(-F.softplus(z))
        return (lambda z: lo + torch.exp(z)) if math.isfinite(lo) else torch.exp
    if act == "identity":
        return lambda z: z
    raise ValueError(f"gate {g.name!r}: unknown activation {act!r}")


def clamp_to_range(x: torch.Tensor, g: GateInfo) -> torch.Tensor:
    lo, hi = float(g.low), float(g.high)
    lo_c = (lo + GATE_MARGIN * max(1.0, abs(lo))) if g.low_open else lo
    hi_c = (hi - GATE_MARGIN * max(1.0, abs(hi))) if g.high_open else hi
    return x.clamp(min=lo_c if math.isfinite(lo) else None, max=hi_c if math.isfinite(hi) else None)


def gate_init_value(g: GateInfo, map_name: str | None = None) -> float:
    """The target initial value of a gate: the spec's own (`init`), else by its first role that
    GATE_INIT_FOR_MAP[map_name] or GATE_INIT names with a value inside the gate's range, else the range midpoint
    (documented fallback). map_name is the op's boundary map, op.meta.map.name (e.g. "kl")."""
    if g.init is not None:
        return float(g.init)
    lo, hi = float(g.low), float(g.high)
    table = {**GATE_INIT, **GATE_INIT_FOR_MAP.get(map_name or "", {})}
    inside = [table[r] for r in g.roles if r in table and _in_range(table[r], g)]
    if inside:
        t = inside[0]
    elif math.isfinite(lo) and math.isfinite(hi):
        t = 0.5 * (lo + hi)
    elif math.isfinite(lo):
        t = lo + 1.0
    elif math.isfinite(hi):
        t = hi - 1.0
    else:
        t = 0.0
    return t


def _in_range(x: float, g: GateInfo) -> bool:
    return (x > g.low if g.low_open else x >= g.low) and (x < g.high if g.high_open else x <= g.high)


def inverse_activation(g: GateInfo, target: float) -> float:
    """The pre-activation z with activation(z) ≈ target (bisection on the monotone map, in float64)."""
    f = gate_activation(g)

    def ev(z: float) -> float:
        return float(f(torch.tensor(z, dtype=torch.float64, device="cpu")))

    a, b = -30.0, 30.0
    fa, fb = ev(a), ev(b)
    lo_v, hi_v = min(fa, fb), max(fa, fb)
    span = hi_v - lo_v
    t = min(max(target, lo_v + 1e-9 * max(span, 1.0)), hi_v - 1e-9 * max(span, 1.0))
    increasing = fb >= fa
    for _ in range(200):
        mid = 0.5 * (a + b)
        fm = ev(mid)
        if (fm < t) == increasing:
            a = mid
        else:
            b = mid
    return 0.5 * (a + b)


class GateProjection(nn.Module):
    """Low-rank data-dependent gate: x [.., hidden] -> z = up(down(x)) + bias [.., H(, D)] -> activation -> clamp.

    The bias starts at the inverse activation of the gate's initial value and `up` is small (std 0.1/sqrt(rank)),
    so at initialisation the gate sits near its target with a small data-dependent spread.
    """

    def __init__(self, gate: GateInfo, hidden_size: int, num_heads: int, head_dim: int, rank: int,
                 map_name: str | None = None):
        super().__init__()
        self.gate = gate
        self.map_name = map_name
        self.out_shape = (num_heads, head_dim) if gate.kind == "channel" else (num_heads,)
        out = math.prod(self.out_shape)
        self.down = nn.Parameter(torch.empty(rank, hidden_size))
        self.up = nn.Parameter(torch.empty(out, rank))
        self.bias = nn.Parameter(torch.empty(out))
        self._act = gate_activation(gate)
        self._reset_own_parameters()

    def _reset_own_parameters(self) -> None:
        with torch.no_grad():
            self.down.normal_(0.0, self.down.shape[1] ** -0.5)
            self.up.normal_(0.0, 0.1 * self.up.shape[1] ** -0.5)
            self.bias.fill_(inverse_activation(self.gate, gate_init_value(self.gate, self.map_name)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.linear(F.linear(x, self.down), self.up, self.bias).float()
        return clamp_to_range(self._act(z), self.gate).view(*x.shape[:-1], *self.out_shape)
