"""The Miras choices of a spec, each checked against what mirasc supports: gates, the memory architecture, the
retention terms and boundary map, the learning algorithm, the chunk size and the surrogates of abs and sign.

Each reader takes the checker's Context (declared names, located errors) and one statement, and returns the
typed record of mirasc.spec it describes.
"""

from __future__ import annotations

import math

from mirasc import ast as A
from mirasc.components import boundary_maps
from mirasc.components.base import Argument, BoundaryMap
from mirasc.spec import (
    Algorithm,
    Bias,
    Const,
    Gate,
    GateRef,
    Memory,
    Operand,
    Retention,
    Span,
    Spec,
    Surrogates,
)

from .context import (
    ALGORITHMS,
    GATE_ACTIVATIONS,
    GATE_FLAGS,
    GATE_KINDS,
    GRADIENT_AT,
    MEMORY_KINDS,
    MLP_ACTIVATIONS,
    MLP_NORMS,
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
    seen: dict[str, Span] = {}
    for at in st.attrs:
        key = at.key
        if key == "flag":
            flag = at.value.value  # type: ignore[union-attr]
            if flag not in GATE_FLAGS:
                known = (*GATE_FLAGS, "range", "activation")
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
    )


def read_memory(ctx: Context, st: A.MemoryStmt) -> Memory:
    kind = st.kind.value
    if kind not in MEMORY_KINDS:
        ctx.err(st.kind.span, f"unknown memory `{kind}` (use `linear` or `mlp`)" + suggest(kind, MEMORY_KINDS))
    if kind == "linear":
        if st.args is not None:
            ctx.err(st.kind.span, "`memory linear` takes no arguments")
        return Memory(
            kind="linear", depth=1, expansion=1, activation="identity", residual=False, norm="none", span=st.span
        )
    names = ("depth", "expansion", "activation", "residual", "norm", "norm_eps")
    b = ctx.bind(st.args, names, (), "mlp", st.kind.span, positional=False)
    depth = ctx.int_arg(b["depth"], 1, 8, "depth") if "depth" in b else 2
    expansion = ctx.int_arg(b["expansion"], 1, 16, "expansion") if "expansion" in b else 4
    activation = ctx.word(b["activation"], MLP_ACTIVATIONS, "activation") if "activation" in b else "gelu"
    residual = ctx.word(b["residual"], ("true", "false"), "residual") == "true" if "residual" in b else True
    norm = ctx.word(b["norm"], MLP_NORMS, "norm") if "norm" in b else "layernorm"
    eps = 1e-5
    if "norm_eps" in b:
        eps = ctx.const(b["norm_eps"].value, "norm_eps")
        if not eps > 0:
            ctx.err(b["norm_eps"].value.span, f"norm_eps must be > 0, got {fmt_num(eps)}")
    if depth == 1:  # one D x D matrix: no hidden layer, so expansion and activation have no meaning
        expansion, activation = 1, "identity"
    return Memory(
        kind="mlp",
        depth=depth,
        expansion=expansion,
        activation=activation,
        residual=residual,
        norm=norm,
        norm_eps=eps,
        span=st.span,
    )  # type: ignore[arg-type]


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
    names = tuple(a.name for a in cls.arguments)
    b = ctx.bind(term.args, names, tuple(a.name for a in cls.arguments if a.required), name, term.name.span)
    values = {a.name: _read_argument(ctx, a, b[a.name]) if a.name in b else a.default for a in cls.arguments}

    def error(arg: str, message: str) -> None:
        ctx.err(b[arg].value.span if arg in b else term.span, message)

    cls.validate(values, error)
    return cls(**values, span=term.span)


def _read_argument(ctx: Context, spec: Argument, a: A.Arg):
    if spec.kind == "number":
        return ctx.const_arg(a, spec.name, positive=spec.positive, at_least=spec.at_least)
    if spec.kind == "word":
        return ctx.word(a, spec.choices, spec.name)
    e = a.value
    if spec.static and isinstance(e, A.EName) and e.name in ctx.gates and ctx.gates[e.name].data_dependent:
        ctx.err(e.span, f"boundary maps act at chunk ends where no token's gate applies; declare `{e.name}` static")
    return read_operand(ctx, a, spec.name, spec.low, spec.high, weights=False)


def read_algorithm(ctx: Context, st: A.AlgorithmStmt) -> Algorithm:
    kind = st.kind.value
    if kind not in ALGORITHMS:
        ctx.err(st.kind.span, f"unknown algorithm `{kind}` (use `gd` or `momentum`)" + suggest(kind, ALGORITHMS))
    if kind == "gd":
        b = ctx.bind(st.args, ("lr", "gradient_at"), ("lr",), "gd", st.kind.span)
        at = ctx.word(b["gradient_at"], GRADIENT_AT, "gradient_at") if "gradient_at" in b else "previous"
        ctx.gradient_at_span = b["gradient_at"].value.span if "gradient_at" in b else None
        return Algorithm("gd", read_operand(ctx, b["lr"], "lr", 0.0, math.inf), gradient_at=at,  # type: ignore[arg-type]
                         span=st.span)
    b = ctx.bind(st.args, ("lr", "momentum"), ("lr", "momentum"), "momentum", st.kind.span)
    lr = read_operand(ctx, b["lr"], "lr", 0.0, math.inf)
    mom = read_operand(ctx, b["momentum"], "momentum", 0.0, 1.0)
    return Algorithm("momentum", lr, mom, span=st.span)


def check_gradient_at(ctx: Context, algorithm: Algorithm, retention: Retention, bias: Bias,
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
        ctx.err(ctx.gradient_at_span or algorithm.span,
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
