"""The parse tree of a `.miras` spec as frozen dataclasses (produced by `mirasc.parse`).

This is the surface syntax, before any name is resolved; `mirasc.check` turns it into `mirasc.spec`.
Every node keeps the `Span` of its first token.
"""

from __future__ import annotations

from dataclasses import dataclass

from mirasc.spec import Span


@dataclass(frozen=True)
class Name:
    value: str
    span: Span


# --- expressions -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ENum:
    value: float  # may be inf for out-of-range literals; the checker refuses those
    text: str
    span: Span


@dataclass(frozen=True)
class EName:
    name: str
    span: Span


@dataclass(frozen=True)
class EBin:
    op: str  # + - * / ^
    lhs: AExpr
    rhs: AExpr
    span: Span


@dataclass(frozen=True)
class ENeg:
    arg: AExpr
    span: Span


@dataclass(frozen=True)
class ECompare:
    op: str
    lhs: AExpr
    rhs: AExpr
    span: Span


@dataclass(frozen=True)
class Arg:
    """A call argument: positional (key is None) or `key = value`."""

    key: Name | None
    value: AExpr
    span: Span


@dataclass(frozen=True)
class ECall:
    fn: Name
    args: tuple[Arg, ...]
    span: Span


AExpr = ENum | EName | EBin | ENeg | ECompare | ECall


# --- intervals ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """`3`, `-0.5`, `inf`, `-inf` (a name bound is anything else the user wrote; the checker refuses it)."""

    text: str  # as written, without the sign
    negative: bool
    is_name: bool
    span: Span


@dataclass(frozen=True)
class Interval:
    low: Bound
    high: Bound
    low_open: bool
    high_open: bool
    span: Span


# --- statements ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelStmt:
    name: Name
    span: Span


@dataclass(frozen=True)
class MemoryStmt:
    kind: Name
    args: tuple[Arg, ...] | None  # None: no parentheses
    span: Span


@dataclass(frozen=True)
class GateAttr:
    key: str  # 'range' | 'activation' | 'init' | 'flag'
    value: Interval | Name | AExpr
    span: Span


@dataclass(frozen=True)
class GateStmt:
    name: Name
    kind: Name
    attrs: tuple[GateAttr, ...]
    span: Span


@dataclass(frozen=True)
class ParamStmt:
    name: Name
    value: AExpr
    span: Span


@dataclass(frozen=True)
class OptionStmt:
    name: Name
    values: tuple[Name, ...]
    span: Span


@dataclass(frozen=True)
class WhenStmt:
    option: Name
    value: Name
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True)
class LetStmt:
    name: Name
    expr: AExpr
    span: Span


@dataclass(frozen=True)
class DefParam:
    name: Name
    interval: Interval | None
    span: Span


@dataclass(frozen=True)
class DefStmt:
    name: Name
    params: tuple[DefParam, ...]
    expr: AExpr
    span: Span


@dataclass(frozen=True)
class BiasStmt:
    expr: AExpr
    text: str  # the expression as written
    span: Span


@dataclass(frozen=True)
class RetentionTerm:
    name: Name
    args: tuple[Arg, ...] | None  # None: no parentheses
    span: Span


@dataclass(frozen=True)
class RetentionStmt:
    terms: tuple[RetentionTerm, ...]
    span: Span


@dataclass(frozen=True)
class AlgorithmStmt:
    kind: Name
    args: tuple[Arg, ...] | None
    span: Span


@dataclass(frozen=True)
class ChunkStmt:
    value: AExpr
    span: Span


@dataclass(frozen=True)
class SurrogateStmt:
    target: Name
    form: Name
    args: tuple[Arg, ...] | None
    span: Span


Stmt = (
    ModelStmt
    | MemoryStmt
    | GateStmt
    | ParamStmt
    | OptionStmt
    | WhenStmt
    | LetStmt
    | DefStmt
    | BiasStmt
    | RetentionStmt
    | AlgorithmStmt
    | ChunkStmt
    | SurrogateStmt
)


@dataclass(frozen=True)
class Program:
    stmts: tuple[Stmt, ...]
    file: str
    text: str
