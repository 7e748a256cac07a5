"""The checked specification: typed, frozen dataclasses produced by `mirasc.check`.

Everything downstream (derive, lower, the oracle, the runtime) reads only these types; the parse tree and
the raw text stay behind in the front end. Every node that came from the source keeps its `Span` so later
stages can still point at the line that caused a problem.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from mirasc.components.base import BoundaryMap, LearningAlgorithm, MemoryArchitecture


@dataclass(frozen=True)
class Span:
    """A location in a spec: 1-based line and column of the first character, and of the end."""

    file: str
    line: int
    col: int
    end_line: int = 0
    end_col: int = 0


NO_SPAN = Span("<builtin>", 0, 0)

MAX_SPEC_BYTES = 65536  # a larger spec is refused before parsing


# ---------------------------------------------------------------------------------------------------------
# Loss expressions (the attentional bias), after every `def`, `let` and `param` has been inlined.
# Only builtin functions remain. Names left are the prediction `y`, the value `v`, the residual `r = y - v`
# and gate names.
# ---------------------------------------------------------------------------------------------------------

ELEMENTWISE_FUNCTIONS = ("abs", "sign", "sqrt", "exp", "log", "tanh", "sigmoid", "softplus", "pow", "min", "max")
REDUCTIONS = ("sum", "norm2")
COMPARISONS = ("<", "<=", ">", ">=", "==", "!=")


@dataclass(frozen=True)
class Num:
    value: float
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Var:
    """`y`, `v`, `r` or a gate name (role says which)."""

    name: str
    role: Literal["y", "v", "r", "gate"]
    span: Span = NO_SPAN


@dataclass(frozen=True)
class BinOp:
    op: Literal["+", "-", "*", "/", "^"]
    lhs: Expr
    rhs: Expr
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Neg:
    arg: Expr
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Call:
    """A builtin elementwise function, one of ELEMENTWISE_FUNCTIONS."""

    fn: str
    args: tuple[Expr, ...]
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Compare:
    op: str  # one of COMPARISONS
    lhs: Expr
    rhs: Expr
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Where:
    """where(cond, then, otherwise): elementwise piecewise choice. `cond` is never differentiated."""

    cond: Compare
    then: Expr
    otherwise: Expr
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Reduce:
    """sum(x) or norm2(x) over the channel axis: turns a per-channel expression into a per-token scalar."""

    fn: Literal["sum", "norm2"]
    arg: Expr
    span: Span = NO_SPAN


Expr = Num | Var | BinOp | Neg | Call | Compare | Where | Reduce


# ---------------------------------------------------------------------------------------------------------
# The four Miras choices and the gates.
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Gate:
    """A per-token (data-dependent) or per-head (static) input of the op, passed in its natural units.

    Shapes the op expects: data-dependent scalar [B, T, H], channel [B, T, H, D];
    static scalar [H], channel [H, D]. `activation` is what a layer applies to produce it (issue 4).
    """

    name: str
    kind: Literal["scalar", "channel"]
    low: float
    high: float
    low_open: bool
    high_open: bool
    activation: str | None
    data_dependent: bool
    # what the gate is to the memory, in the order the spec uses it: the argument it fills (`decay`, `lr`,
    # `momentum`, `gamma`) or `bias` (read by the attentional bias); a layer initialises a gate by its role
    roles: tuple[str, ...] = ()
    span: Span = NO_SPAN
    init: float | None = None  # the value a layer starts it at (`init` in the spec); None: by its role

    def contains(self, low: float, high: float) -> bool:
        """Whether this gate's range lies inside [low, high]."""
        return self.low >= low and self.high <= high


@dataclass(frozen=True)
class GateRef:
    name: str
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Const:
    value: float
    span: Span = NO_SPAN


Operand = GateRef | Const


@dataclass(frozen=True)
class Retention:
    decay: Operand | None = None  # W <- decay * W (a gate in (0, 1] or a constant)
    map: BoundaryMap | None = None  # a record of mirasc.components.maps (the registry's)
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Surrogates:
    """Smooth stand-ins applied to the loss in value positions (never inside `where` conditions).

    abs: 'exact' | 'sqrt' (sqrt(x^2 + eps)) | 'logcosh' (log(cosh(s x)) / s, whose derivative is tanh(s x)).
    sign: 'exact' | 'tanh' (tanh(s x)).
    """

    abs: Literal["exact", "sqrt", "logcosh"] = "exact"
    abs_eps: float = 1e-6
    abs_sharpness: float = 10.0
    sign: Literal["exact", "tanh"] = "exact"
    sign_sharpness: float = 10.0


@dataclass(frozen=True)
class Bias:
    """The attentional bias: a per-token loss. `expr` is per-channel (then summed over channels) or scalar."""

    expr: Expr
    text: str  # how the spec wrote it, for messages and `mirasc explain`
    span: Span = NO_SPAN


@dataclass(frozen=True)
class Spec:
    name: str
    file: str
    source: str
    memory: MemoryArchitecture  # a record of mirasc.components.memories
    gates: tuple[Gate, ...]
    bias: Bias
    retention: Retention
    algorithm: LearningAlgorithm  # a record of mirasc.components.algorithms
    chunk_size: int = 64
    surrogates: Surrogates = field(default_factory=Surrogates)
    options: tuple[tuple[str, str], ...] = ()  # resolved option values, in declaration order
    params: tuple[tuple[str, float], ...] = ()  # resolved `param` constants, in declaration order

    def gate(self, name: str) -> Gate:
        for g in self.gates:
            if g.name == name:
                return g
        raise KeyError(name)
