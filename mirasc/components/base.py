"""What a boundary map of the retention is to mirasc: the contract every module of mirasc.components.maps keeps.

A boundary map is one frozen dataclass (the typed record a spec's `retention` statement produces) whose class
also carries everything each pipeline stage needs from it, so that no stage names a map:

- the DSL signature (`keyword`, `arguments`), which drives the checker's binding and its errors, plus `validate`
  for checks across arguments;
- what the chunk program does with it (`kind`: a mirror map, a projection at chunk ends, or a lag step), the state
  it starts from (`initial_state`), the learning-rate start it wants (`gate_init`), whether momentum is defined;
- its `explain` text;
- its lowering into the chunk IR (`lower_map`, `lower_slope`, `lower_lag_step`);
- its per-token reference step for the oracle (`reference_map`, `reference_slope`, `reference_lag_write`),
  written in plain torch apart from the lowering, so that the oracle stays an independent yardstick.

docs/compiler.md ("Adding a component") walks through a new one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import torch

    from mirasc.ir import Value
    from mirasc.lower_maps import MapLowering

REQUIRED = object()  # an Argument's default when the spec must give it

MapKind = Literal["mirror", "projection", "lag"]
InitialState = Literal["scaled", "logits", "softmax_rows"]


@dataclass(frozen=True)
class Argument:
    """One argument of a component in a spec, as the checker binds and checks it.

    kind "number": a constant (numbers and params), > 0 unless `positive` is False, ≥ `at_least` when given.
    kind "word": one of `choices`. kind "operand": a gate, a param or a number inside [low, high]; `static`
    refuses a data-dependent gate (a map acts at chunk ends, where no token's gate applies)."""

    name: str
    kind: Literal["number", "word", "operand"]
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    at_least: float | None = None
    positive: bool = True
    low: float = 0.0
    high: float = math.inf
    static: bool = False

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


class BoundaryMap:
    """Base of the boundary-map records (subclasses are frozen dataclasses with a `span` field last)."""

    keyword: ClassVar[str]  # its name in a spec
    arguments: ClassVar[tuple[Argument, ...]] = ()
    initial_state: ClassVar[InitialState] = "scaled"  # N(0, 1/fan_in) entries (mirasc.op_inputs.default_state)
    gate_init: ClassVar[dict[str, float]] = {}  # by gate role: initial values replacing mirasc.nn.gates.GATE_INIT
    momentum_refusal: ClassVar[str | None] = None  # why `momentum` is refused with this map; None: allowed
    reads_scaled: ClassVar[bool] = False  # W = slope(P) * P: a chunk's reads are slope(P') * P_t

    @classmethod
    def signature(cls) -> str:
        """How a spec writes the map, from `arguments`: e.g. `lq(q, eps = 1e-06, form = literal | pnorm)`, the
        default word first (docs/language.md's table of boundary maps is made of these)."""
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

    @property
    def kind(self) -> MapKind:
        """mirror: W = map(P) of an accumulator P; projection: the state itself is projected after each write;
        lag: an exact step of the map's own at each chunk's first token (and every token of the recurrence)."""
        return "mirror"

    @classmethod
    def validate(cls, values: dict[str, Any], error) -> None:
        """Checks across the bound arguments; error(argument name, message) reports one at that argument."""

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


__all__ = ["REQUIRED", "Argument", "BoundaryMap", "InitialState", "MapKind"]
