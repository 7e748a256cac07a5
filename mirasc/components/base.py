"""What a Miras component is to mirasc: the contracts every module of mirasc.components keeps.

A component is one frozen dataclass (the typed record a spec's statement produces) whose class also carries
everything each pipeline stage needs from it, so that no stage names a component. Three kinds:

- a boundary map of the retention (`BoundaryMap`, mirasc.components.maps): `lq`, `kl`, `softthreshold`, ...;
- a memory architecture (`MemoryArchitecture`, mirasc.components.memories): `linear`, `mlp`;
- a learning algorithm (`LearningAlgorithm`, mirasc.components.algorithms): `gd`, `momentum`.

Each declares its DSL signature (`keyword`, `arguments`), which drives the checker's binding and its errors, plus
`validate` for checks across arguments; its state and how it starts; its `explain` text; its lowering into the
chunk IR; and its per-token reference step for the oracle, written in plain torch apart from the lowering, so that
the oracle stays an independent yardstick. docs/compiler.md ("Adding a component") walks through a new one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import sympy as sp
    import torch

    from mirasc.ir import Value
    from mirasc.lower_decay import Coefficients, InChunkDecay
    from mirasc.lower_maps import MapLowering
    from mirasc.lower_memory import MemoryLowering
    from mirasc.spec import Operand

REQUIRED = object()  # an Argument's default when the spec must give it

MapKind = Literal["mirror", "projection", "lag"]
InitialState = Literal["scaled", "logits", "softmax_rows"]


@dataclass(frozen=True)
class Argument:
    """One argument of a component in a spec, as the checker binds and checks it.

    kind "number": a constant (numbers and params), > 0 unless `positive` is False, ≥ `at_least` when given.
    kind "integer": a whole number inside [low, high]. kind "word": one of `choices`. kind "operand": a gate, a
    param or a number inside [low, high]; `static` refuses a data-dependent gate (a map acts at chunk ends, where
    no token's gate applies); `on_weights` says that it scales the weight matrices (a channel gate then needs a
    D-sized axis on every matrix)."""

    name: str
    kind: Literal["number", "integer", "word", "operand"]
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    at_least: float | None = None
    positive: bool = True
    low: float = 0.0
    high: float = math.inf
    static: bool = False
    on_weights: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class Component:
    """Base of every component record (subclasses are frozen dataclasses with a `span` field last)."""

    keyword: ClassVar[str]  # its name in a spec
    arguments: ClassVar[tuple[Argument, ...]] = ()
    positional: ClassVar[bool] = True  # whether a spec may pass the arguments by position

    @classmethod
    def signature(cls) -> str:
        """How a spec writes the component, from `arguments`: e.g. `lq(q, eps = 1e-06, form = literal | pnorm)`,
        the default word first (docs/language.md's tables are made of these)."""
        parts = []
        for a in cls.arguments:
            if a.kind == "word":
                words = [a.default] + [w for w in a.choices if w != a.default]
                parts.append(f"{a.name} = {' | '.join(words)}")
            elif a.required:
                parts.append(a.name)
            else:
                parts.append(f"{a.name} = {a.default:g}")
        return f"{cls.keyword}({', '.join(parts)})" if parts else cls.keyword

    @classmethod
    def validate(cls, values: dict[str, Any], error) -> None:
        """Checks across the bound arguments; error(argument name, message) reports one at that argument."""

    @classmethod
    def build(cls, values: dict[str, Any], span) -> Component:
        """The record of the bound arguments (a component may normalise them first)."""
        return cls(**values, span=span)


class BoundaryMap(Component):
    """Base of the boundary-map records."""

    initial_state: ClassVar[InitialState] = "scaled"  # N(0, 1/fan_in) entries (mirasc.op_inputs.default_state)
    gate_init: ClassVar[dict[str, float]] = {}  # by gate role: initial values replacing mirasc.nn.gates.GATE_INIT
    buffer_refusal: ClassVar[str | None] = None  # why an algorithm with a buffer (momentum) is refused; None: allowed
    reads_scaled: ClassVar[bool] = False  # W = slope(P) * P: a chunk's reads are slope(P') * P_t

    @property
    def kind(self) -> MapKind:
        """mirror: W = map(P) of an accumulator P; projection: the state itself is projected after each write;
        lag: an exact step of the map's own at each chunk's first token (and every token of the recurrence)."""
        return "mirror"

    def explain(self, update: str, decay: str, lr: str) -> str:
        """The `mirasc explain` line of the update: `update` is the accumulator's (P_t = ...)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the chunk program (mirasc.lower)
    def lower_map(self, lw: MapLowering, P: Value, layer: int) -> Value:
        """W = map(P) (mirror) or the projected state (projection) on one layer's accumulator."""
        raise NotImplementedError

    def lower_slope(self, lw: MapLowering, P: Value) -> Value | None:
        """The map's slope frozen at the chunk start, one value per matrix; None for slope 1."""
        return None

    def lower_lag_step(self, lw: MapLowering, W: Value, grad: Value, decay: Value | None, lr: Value, layer: int,
                       in_axis: str) -> Value:
        """A lag map's exact step from layer `layer`'s weights W with gradient grad (decay and lr: the first
        token's, not yet on the layer's axes: lw.on_layer)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the reference (mirasc.oracle)
    def reference_map(self, p: torch.Tensor, operand) -> torch.Tensor:
        """lower_map in plain torch on [N, out, in]; operand(x) gives an Operand's value on this matrix."""
        raise NotImplementedError

    def reference_slope(self, p: torch.Tensor) -> torch.Tensor | float:
        """lower_slope in plain torch ([N, 1, 1] or 1.0)."""
        return 1.0

    def reference_lag_write(self, w: torch.Tensor, grad: torch.Tensor, decay, lr) -> torch.Tensor:
        """lower_lag_step in plain torch (decay and lr already shaped on the matrix)."""
        raise NotImplementedError



# --------------------------------------------------------------------------------------------------------------
# Memory architectures
# --------------------------------------------------------------------------------------------------------------

MemoryStart = Literal["zero", "scaled"]


class MemoryArchitecture(Component):
    """Base of the memory-architecture records: M(x; W) as the chunk program, the kernels and the oracle see it.

    The shape every stage shares: `depth` weight matrices per head, D → hidden → … → D with hidden = expansion·D,
    an elementwise `activation` between them (a name of mirasc.derive.activation), and an output map of the last
    pre-activation z and the input x (a normalisation with outer parameters, a residual). What a memory adds is
    its arguments, that output map and its parameters, how its weights start, and when its prediction is affine
    in the weights (so that chunks can be exact)."""

    depth: int
    expansion: int
    activation: str
    initial_state: ClassVar[MemoryStart] = "scaled"  # weights at zero (linear attention), or N(0, 1/fan_in)

    @property
    def kind(self) -> str:
        return self.keyword

    def outer_params(self) -> list[tuple[str, float]]:
        """The output map's parameters ([H, D] each, axis o in the chunk program) and the value each entry takes
        when the caller passes none."""
        return []

    def nonlinear_reason(self) -> str | None:
        """Why the memory's prediction is not affine in its weights (so chunks are approximate), or None."""
        return None

    def metadata(self) -> dict[str, Any]:
        """The arguments a generated module records (METADATA["memory"]["arguments"])."""
        return {a.name: getattr(self, a.name) for a in self.arguments}

    def explain(self, fmt: Callable[[sp.Expr], str], act: tuple[sp.Expr, sp.Expr, sp.Expr]) -> list[str]:
        """The `mirasc explain` lines of M(x); fmt prints an expression, act is (σ, σ', σ'')."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the chunk program (mirasc.lower)
    def lower_output(self, lw: MemoryLowering, z: Value, x: Value) -> Value:
        """The output map of the last layer's pre-activation z (t, o) for input x (t, i); lw.params holds the
        outer parameters by name."""
        return z

    # ---------------------------------------------------------------- the reference (mirasc.oracle)
    def reference_output(self, z: torch.Tensor, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """lower_output in plain torch on [N, D] rows (params by name, [N, D])."""
        return z


# --------------------------------------------------------------------------------------------------------------
# Learning algorithms
# --------------------------------------------------------------------------------------------------------------


class LearningAlgorithm(Component):
    """Base of the learning-algorithm records: how a token's gradient G_t changes the state.

    The chunk program's contract (Eq. 28): the update is linear in the gradients, with the retention's decay α on
    the accumulator P and at most one buffer S of the same shapes (`buffer`, its state field's letter):
    P_t = a_t ⊙ P' + b_t ⊙ S' − Σ_s Γ[t, s] ⊙ G_s, S_t = c_t ⊙ S' − Σ_s Γ_S[t, s] ⊙ G_s, whose coefficients
    `lower_coefficients` builds (mirasc.lower_decay.Coefficients). Every algorithm has a step size `lr` (a lag map
    takes its exact step with it) and says where the gradient is taken (`gradient_at`)."""

    lr: Operand
    buffer: ClassVar[str | None] = None  # the buffer's state-field letter (`s`: s1..sL after w1..wL); None: none
    gate_init: ClassVar[dict[str, float]] = {}  # by gate role: initial values mirasc.nn.gates.GATE_INIT adds

    @property
    def kind(self) -> str:
        return self.keyword

    @property
    def gradient_at(self) -> Literal["previous", "decayed"]:
        """previous (Eq. 9): G_t at W_(t−1); decayed (the Gated DeltaNet paper): at α_t ⊙ W_(t−1)."""
        return "previous"

    def exact_refusal(self) -> str | None:
        """Why chunks of this algorithm are not derived exactly where the memory and loss would allow it, or None.
        The exact chunk form (mirasc.chunkform) is derived for updates without a buffer."""
        if self.buffer is None:
            return None
        return f"the `{self.keyword}` algorithm (exact chunking is derived for plain gd)"

    def explain(self, decay: str, operand: Callable[[Operand | None], str]) -> str:
        """The `mirasc explain` line of the update of P (decay: the retention's text; operand(x): a gate's name or
        a number)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the chunk program (mirasc.lower)
    def lower_coefficients(self, decay: InChunkDecay, alpha: Value | None, lr: Value,
                           operand: Callable[[Operand | None], Value | None]) -> Coefficients:
        """Eq. 28's in-chunk coefficients, from the retention's decay alpha, the step lr (per token) and the
        algorithm's other operands (operand(x) gives a gate, param or number as a value)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- the reference (mirasc.oracle)
    def reference_write(self, kept: list[torch.Tensor], step: list[torch.Tensor], buffers: list[torch.Tensor],
                        scale: Callable[[Operand | None, list[torch.Tensor]], list[torch.Tensor]]
                        ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """One token's write in plain torch: kept = α ⊙ P and step = η ⊙ G per layer, buffers the buffer's
        matrices (empty without one); scale(x, ms) is operand x ⊙ each matrix. Returns (P, buffers)."""
        raise NotImplementedError


__all__ = ["REQUIRED", "Argument", "BoundaryMap", "Component", "InitialState", "LearningAlgorithm", "MapKind",
           "MemoryArchitecture", "MemoryStart"]
