"""Semantic analysis: `mirasc.ast.Program` -> `mirasc.spec.Spec`.

In order: options are resolved (`options`: the `when` blocks chosen), declarations are collected and each name
checked once, then every Miras choice is read into its typed record (`components`), and `param`, `let` and `def`
(the spec's own and the standard library's) are inlined into a pure `Expr` over builtins with each value's shape
(per-channel or per-token scalar) typed (`elaborate`). Every problem is a `SpecError` at the offending token
(`context`). Nothing in a spec is ever evaluated as code.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from mirasc import ast as A
from mirasc.errors import SpecError
from mirasc.spec import Span, Spec

from . import components as C
from .context import RESERVED, Context, fmt_num, fmt_range, stdlib_defs, suggest
from .elaborate import Elaborator
from .options import Options, resolve_options

KEYWORD = {
    A.ModelStmt: "model",
    A.MemoryStmt: "memory",
    A.GateStmt: "gate",
    A.ParamStmt: "param",
    A.OptionStmt: "option",
    A.WhenStmt: "when",
    A.LetStmt: "let",
    A.DefStmt: "def",
    A.BiasStmt: "bias",
    A.RetentionStmt: "retention",
    A.AlgorithmStmt: "algorithm",
    A.ChunkStmt: "chunk",
    A.SurrogateStmt: "surrogate",
}


@dataclass
class _Declarations:
    """The statements of a spec by kind: the named ones in order, the others (at most one each) by keyword."""

    singles: dict[str, A.Stmt] = field(default_factory=dict)
    params: list[A.ParamStmt] = field(default_factory=list)
    gates: list[A.GateStmt] = field(default_factory=list)


def _collect(ctx: Context, options: Options) -> _Declarations:
    """Sort the statements, refusing reserved and duplicate names and repeated single statements; `let`s and
    `def`s go straight into the context."""
    found = _Declarations()
    names: dict[str, tuple[str, Span]] = {n: ("option", d.name.span) for n, d in options.declared.items()}
    for st in options.statements:
        if isinstance(st, (A.GateStmt, A.ParamStmt, A.LetStmt, A.DefStmt)):
            kw = KEYWORD[type(st)]
            n = st.name
            if n.value in RESERVED:
                ctx.err(n.span, f"`{n.value}` is a reserved name and cannot be declared")
            if n.value in names:
                kind, first = names[n.value]
                what = "duplicate" if kind == kw else f"`{n.value}` is already declared as a {kind};"
                ctx.err(n.span, f"{what} {kw} `{n.value}` (first declared at {first.line}:{first.col})")
            names[n.value] = (kw, n.span)
            if isinstance(st, A.GateStmt):
                found.gates.append(st)
            elif isinstance(st, A.ParamStmt):
                found.params.append(st)
            elif isinstance(st, A.LetStmt):
                ctx.lets[n.value] = st
            else:
                ctx.defs[n.value] = st
            continue
        key = KEYWORD[type(st)]
        if isinstance(st, A.SurrogateStmt):
            key = f"surrogate {st.target.value}"
        if key in found.singles:
            first = found.singles[key].span
            ctx.err(st.span, f"duplicate `{key}` (first declared at {first.line}:{first.col})")
        found.singles[key] = st
    return found


def _check_program(ctx: Context, program: A.Program) -> Spec:
    options = resolve_options(ctx, program)
    found = _collect(ctx, options)
    singles = found.singles

    ctx.read_params(found.params)  # with overrides from options=
    known_keys = set(options.declared) | set(ctx.params)
    for key in ctx.user_options:
        if key not in known_keys:
            ctx.err(Span(ctx.file, 1, 1), f"unknown option `{key}`" + suggest(key, known_keys))

    for st in found.gates:
        ctx.gates[st.name.value] = C.read_gate(ctx, st)
    ctx.require(singles, "memory")
    ctx.memory = C.read_memory(ctx, singles["memory"])  # type: ignore[arg-type]

    elaborator = Elaborator(ctx)
    for d in ctx.defs.values():  # names in every let/def body resolve (even unused ones)
        elaborator.resolve_names(d.expr, {p.name.value for p in d.params})
        for p in d.params:
            if p.interval is not None:
                ctx.interval(p.interval)
    for lt in ctx.lets.values():
        elaborator.resolve_names(lt.expr, set())

    ctx.require(singles, "bias")
    bias = elaborator.bias(singles["bias"])  # type: ignore[arg-type]
    retention = C.read_retention(ctx, singles.get("retention"))  # type: ignore[arg-type]
    ctx.require(singles, "algorithm")
    algorithm = C.read_algorithm(ctx, singles["algorithm"])  # type: ignore[arg-type]
    rmap = retention.map
    if rmap is not None and rmap.buffer_refusal and algorithm.buffer is not None:
        ctx.err(rmap.span, f"`{rmap.keyword}` retention cannot be combined with `{algorithm.keyword}`: "
                           f"{rmap.buffer_refusal}")
    chunk = C.read_chunk(ctx, singles.get("chunk"))  # type: ignore[arg-type]
    surrogates = C.read_surrogates(ctx, singles.get("surrogate abs"), singles.get("surrogate sign"))  # type: ignore[arg-type]
    C.check_gradient_at(ctx, algorithm, retention, bias, surrogates)

    for st in found.gates:
        if st.name.value not in ctx.gate_roles:
            ctx.err(st.name.span, f"gate `{st.name.value}` is declared but never used")

    gate_names = [st.name.value for st in found.gates]
    model = singles.get("model")
    if model is not None:
        name = model.name.value  # type: ignore[union-attr]
    else:
        name = "spec" if ctx.file.startswith("<") else (Path(ctx.file).stem or "spec")
    return Spec(
        name=name,
        file=ctx.file,
        source=ctx.text,
        memory=ctx.memory,
        gates=tuple(replace(ctx.gates[n], roles=tuple(ctx.gate_roles[n])) for n in gate_names),
        bias=bias,
        retention=retention,
        algorithm=algorithm,
        chunk_size=chunk,
        surrogates=surrogates,
        options=tuple((n, options.chosen[n]) for n in options.declared),
        params=tuple(ctx.params.items()),
    )


def check(
    ast: A.Program, text: str | None = None, file: str | None = None, options: Mapping[str, str | float] | None = None
) -> Spec:
    """Check a parsed spec and build its `Spec`. `options` picks `option` values and overrides `param`s."""
    text = ast.text if text is None else text
    file = ast.file if file is None else file
    try:
        return _check_program(Context(text, file, options), ast)
    except RecursionError:
        raise SpecError.at(file, text, 1, 1, "the spec's expressions are too large or nested too deeply") from None


__all__ = ["check", "fmt_num", "fmt_range", "stdlib_defs"]
