"""The Miras choices of a spec, each checked against what mirasc supports: gates, the memory architecture, the
retention terms and boundary map, the learning algorithm, the chunk size and the surrogates of abs and sign.

Each reader takes the checker's Context (declared names, located errors) and one statement, and returns the
typed record of mirasc.spec it describes.
"""

from __future__ import annotations

import math

from mirasc import ast as A
from mirasc.components import boundary_maps, learning_algorithms, memory_architectures
from mirasc.components.base import Argument, BoundaryMap, Component, LearningAlgorithm, MemoryArchitecture
from mirasc.spec import (
    Bias,
    Const,
    Gate,
    GateRef,
    Operand,
    Retention,
    Span,
    Spec,
    Surrogates,
)

from .context import (
    GATE_ACTIVATIONS,
    GATE_FLAGS,
    GATE_KINDS,
    SURROGATE_FORMS,
    Context,
    Range,
    fmt_num,
    fmt_range,
    quote_list,
    retention_terms,
    suggest,
)


def read_gate(ctx: Context, st: A.GateStmt) -> Gate:
    kind = st.kind.value
    if kind not in GATE_KINDS:
        ctx.err(
            st.kind.span, f"unknown gate kind `{kind}` (use `scalar` or `channel`)" + suggest(kind, GATE_KINDS)
        )
    rng = Range(-math.inf, math.inf, True, True)
    activation: str | None = None
    static: bool | None = None
    init: A.AExpr | None = None
    seen: dict[str, Span] = {}
    for at in st.attrs:
        key = at.key
        if key == "flag":
            flag = at.value.value  # type: ignore[union-attr]
            if flag not in GATE_FLAGS:
                known = (*GATE_FLAGS, "range", "activation", "init")
                ctx.err(at.span, f"unknown gate attribute `{flag}`" + suggest(flag, known))
            key = "static/data_dependent"
        if key in seen:
            first = seen[key]
            ctx.err(at.span, f"duplicate gate attribute `{key}` (first given at {first.line}:{first.col})")
        seen[key] = at.span
        if at.key == "range":
            rng = ctx.interval(at.value)  # type: ignore[arg-type]
        elif at.key == "activation":
            act = at.value.value  # type: ignore[union-attr]
            if act not in GATE_ACTIVATIONS:
                ctx.err(
                    at.value.span,  # type: ignore[union-attr]
                    f"unknown gate activation `{act}` (one of {quote_list(GATE_ACTIVATIONS)})"
                    + suggest(act, GATE_ACTIVATIONS),
                )
            activation = act
        elif at.key == "init":
            init = at.value  # type: ignore[assignment]
        else:
            static = at.value.value == "static"  # type: ignore[union-attr]
    return Gate(
        name=st.name.value,
        kind=kind,  # type: ignore[arg-type]
        low=rng.low,
        high=rng.high,
        low_open=rng.low_open,
        high_open=rng.high_open,
        activation=activation,
        data_dependent=not static,
        span=st.name.span,
        init=None if init is None else _gate_init(ctx, init, rng),
    )


def _gate_init(ctx: Context, e: A.AExpr, rng: Range) -> float:
    """A gate's declared initial value: a constant inside its range."""
    x = ctx.const(e, "a gate's init")
    inside = (x > rng.low if rng.low_open else x >= rng.low) and (x < rng.high if rng.high_open else x <= rng.high)
    if not inside:
        ctx.err(e.span, f"init {fmt_num(x)} is outside the gate's range "
                        f"{fmt_range(rng.low, rng.high, rng.low_open, rng.high_open)}")
    return x


def read_memory(ctx: Context, st: A.MemoryStmt) -> MemoryArchitecture:
    """The memory architecture's record (mirasc.components.memories), its arguments bound by its signature."""
    kind = st.kind.value
    known = memory_architectures()
    if kind not in known:
        ctx.err(st.kind.span, f"unknown memory `{kind}` (use {_either(known)})" + suggest(kind, tuple(known)))
    cls = known[kind]
    if not cls.arguments and st.args is not None:
        ctx.err(st.kind.span, f"`memory {kind}` takes no arguments")
    return read_component(ctx, cls, st.args, st.kind.span, st.span)  # type: ignore[return-value]


def read_operand(ctx: Context, a: A.Arg, role: str, lo: float, hi: float, weights: bool = True) -> Operand:
    e = a.value
    if isinstance(e, A.EName):
        n = e.name
        if n in ctx.gates:
            g = ctx.gates[n]
            if not g.contains(lo, hi):
                gr = fmt_range(g.low, g.high, g.low_open, g.high_open)
                ctx.err(
                    e.span,
                    f"gate `{n}` has range {gr}; `{role}` needs a range inside {_closed(lo, hi)}",
                )
            if weights and g.kind == "channel" and ctx.memory is not None and ctx.memory.depth >= 3:
                ctx.err(
                    e.span,
                    "channel-wise gates act on the D-sized axis of each weight matrix; "
                    f"depth {ctx.memory.depth} has an h×h middle matrix (use a scalar gate or depth ≤ 2)",
                )
            ctx.use_gate(n, role)
            return GateRef(n, e.span)
        if n in ctx.params:
            x = ctx.params[n]
        else:
            ctx.err(e.span, f"unknown gate or param `{n}`" + suggest(n, set(ctx.gates) | set(ctx.params)))
    elif isinstance(e, A.ENum) or (isinstance(e, A.ENeg) and isinstance(e.arg, A.ENum)):
        x = ctx.const(e, role)
    else:
        ctx.err(e.span, f"`{role}` must be a gate name, a param name or a number")
    if not lo <= x <= hi:
        ctx.err(e.span, f"{role} must be in {_closed(lo, hi)}, got {fmt_num(x)}")
    return Const(x, e.span)


def read_retention(ctx: Context, st: A.RetentionStmt | None) -> Retention:
    if st is None:
        return Retention()
    decay: Operand | None = None
    decay_span: Span | None = None
    bmap = None
    map_term: A.RetentionTerm | None = None
    for term in st.terms:
        name = term.name.value
        terms = retention_terms()
        if name not in terms:
            ctx.err(term.name.span, f"unknown retention term `{name}`" + suggest(name, terms))
        if name == "none":
            if len(st.terms) > 1 or term.args is not None:
                ctx.err(term.name.span, "`none` must be the only retention term")
            return Retention(span=st.span)
        if name == "decay":
            if decay_span is not None:
                ctx.err(term.span, f"duplicate `decay` (first declared at {decay_span.line}:{decay_span.col})")
            b = ctx.bind(term.args, ("value",), ("value",), "decay", term.name.span)
            decay = read_operand(ctx, b["value"], "decay", 0.0, 1.0)
            decay_span = term.span
            continue
        if map_term is not None:
            fs = map_term.span
            ctx.err(
                term.span,
                f"at most one boundary map: `{map_term.name.value}` was given at {fs.line}:{fs.col}",
            )
        map_term = term
        bmap = read_map(ctx, term)
    return Retention(decay=decay, map=bmap, span=st.span)


def read_map(ctx: Context, term: A.RetentionTerm) -> BoundaryMap:
    """A boundary map's record, its arguments bound and checked by the signature its registry class declares."""
    name = term.name.value
    cls = boundary_maps()[name]
    if not cls.arguments and term.args:
        ctx.err(term.args[0].span, f"`{name}` takes no arguments")
    return read_component(ctx, cls, term.args, term.name.span, term.span)  # type: ignore[return-value]


def read_component(ctx: Context, cls: type[Component], args: tuple[A.Arg, ...] | None, name_span: Span,
                   span: Span, spans: dict[str, Span] | None = None) -> Component:
    """A component's record: the statement's arguments bound by the signature cls declares (mirasc.components),
    each checked, then checked together (cls.validate). spans, when given, receives where each argument was
    written."""
    arguments = cls.arguments
    b = ctx.bind(args, tuple(a.name for a in arguments), tuple(a.name for a in arguments if a.required),
                 cls.keyword, name_span, positional=cls.positional)
    values = {a.name: _read_argument(ctx, a, b[a.name]) if a.name in b else a.default for a in arguments}
    if spans is not None:
        spans.update({n: arg.value.span for n, arg in b.items()})

    def error(arg: str, message: str) -> None:
        ctx.err(b[arg].value.span if arg in b else span, message)

    cls.validate(values, error)
    return cls.build(values, span)


def _read_argument(ctx: Context, spec: Argument, a: A.Arg):
    if spec.kind == "number":
        return ctx.const_arg(a, spec.name, positive=spec.positive, at_least=spec.at_least)
    if spec.kind == "integer":
        return ctx.int_arg(a, int(spec.low), int(spec.high), spec.name)
    if spec.kind == "word":
        return ctx.word(a, spec.choices, spec.name)
    e = a.value
    if spec.static and isinstance(e, A.EName) and e.name in ctx.gates and ctx.gates[e.name].data_dependent:
        ctx.err(e.span, f"boundary maps act at chunk ends where no token's gate applies; declare `{e.name}` static")
    return read_operand(ctx, a, spec.name, spec.low, spec.high, weights=spec.on_weights)


def read_algorithm(ctx: Context, st: A.AlgorithmStmt) -> LearningAlgorithm:
    """The learning algorithm's record (mirasc.components.algorithms), its arguments bound by its signature."""
    kind = st.kind.value
    known = learning_algorithms()
    if kind not in known:
        ctx.err(st.kind.span, f"unknown algorithm `{kind}` (use {_either(known)})" + suggest(kind, tuple(known)))
    return read_component(ctx, known[kind], st.args, st.kind.span, st.span,  # type: ignore[return-value]
                          spans=ctx.algorithm_spans)


def _either(known: dict) -> str:
    names = [f"`{k}`" for k in known]
    return " or ".join(names) if len(names) <= 2 else ", ".join(names[:-1]) + " or " + names[-1]


def check_gradient_at(ctx: Context, algorithm: LearningAlgorithm, retention: Retention, bias: Bias,
                       surrogates: Surrogates) -> None:
    """`gradient_at = decayed` is defined where chunks are exact (the per-token step is then the chunk's
    semantics at every chunk size); elsewhere the chunk approximation takes every gradient at W'."""
    if algorithm.gradient_at == "previous" or ctx.memory is None:
        return
    from mirasc.chunkform import chunk_form

    probe = Spec(name="", file=ctx.file, source=ctx.text, memory=ctx.memory, gates=tuple(ctx.gates.values()),
                 bias=bias, retention=retention, algorithm=algorithm, surrogates=surrogates)
    form = chunk_form(probe)
    if not form.exact:
        ctx.err(ctx.algorithm_spans.get("gradient_at", algorithm.span),
                 f"`gradient_at = decayed` needs an exactly chunked update; this spec gets the {form.describe()}")


def read_chunk(ctx: Context, st: A.ChunkStmt | None) -> int:
    if st is None:
        return 64
    x = ctx.const(st.value, "the chunk size")
    ok = x == 1 or (x == int(x) and 16 <= x <= 1024 and (int(x) & (int(x) - 1)) == 0)
    if not ok:
        ctx.err(st.value.span, f"chunk size must be 1 or a power of two from 16 to 1024, got {fmt_num(x)}")
    return int(x)


def read_surrogates(ctx: Context, sa: A.SurrogateStmt | None, ss: A.SurrogateStmt | None) -> Surrogates:
    kw: dict[str, object] = {}
    for st in (sa, ss):
        if st is None:
            continue
        target = st.target.value
        if target not in SURROGATE_FORMS:
            ctx.err(
                st.target.span,
                f"unknown surrogate target `{target}` (use `abs` or `sign`)" + suggest(target, SURROGATE_FORMS),
            )
        forms = SURROGATE_FORMS[target]
        form = st.form.value
        if form not in forms:
            ctx.err(
                st.form.span,
                f"`surrogate {target}` must be one of {quote_list(forms)}, not `{form}`" + suggest(form, forms),
            )
        kw[target] = form
        if form == "exact":
            ctx.bind(st.args, (), (), "exact", st.form.span)
        elif form == "sqrt":
            b = ctx.bind(st.args, ("eps",), (), "sqrt", st.form.span)
            if "eps" in b:
                kw["abs_eps"] = ctx.const_arg(b["eps"], "eps")
        else:
            b = ctx.bind(st.args, ("sharpness",), (), form, st.form.span)
            if "sharpness" in b:
                kw[f"{target}_sharpness"] = ctx.const_arg(b["sharpness"], "sharpness")
    return Surrogates(**kw)  # type: ignore[arg-type]


def _closed(lo: float, hi: float) -> str:
    return fmt_range(lo, hi, math.isinf(lo), math.isinf(hi))
