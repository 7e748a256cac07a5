"""Options: a spec's `option` declarations, the values asked for, and the `when` blocks they select.

This runs before anything else is checked: the statements of the `when` blocks not chosen are dropped unseen, so
the rest of the checker sees one flat list of statements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mirasc import ast as A

from .context import Context, quote_list, suggest


@dataclass(frozen=True)
class Options:
    """The spec's statements with its options applied, each option's declaration and its chosen value."""

    statements: list[A.Stmt]
    declared: dict[str, A.OptionStmt]
    chosen: dict[str, str]


def resolve_options(ctx: Context, program: A.Program) -> Options:
    """Check the `option` declarations, pick each one's value (the asked-for one, else its first), and keep the
    statements of the `when` blocks that value selects."""
    declared: dict[str, A.OptionStmt] = {}
    for st in program.stmts:
        if isinstance(st, A.OptionStmt):
            name = st.name.value
            if name in declared:
                first = declared[name].name.span
                ctx.err(st.name.span, f"duplicate option `{name}` (first declared at {first.line}:{first.col})")
            seen: set[str] = set()
            for v in st.values:
                if v.value in seen:
                    ctx.err(v.span, f"option `{name}` lists `{v.value}` twice")
                seen.add(v.value)
            declared[name] = st
    chosen: dict[str, str] = {}
    for name, st in declared.items():
        allowed = [v.value for v in st.values]
        if name in ctx.user_options:
            value = ctx.user_options[name]
            if not isinstance(value, str) or value not in allowed:
                ctx.err(st.name.span, f"option `{name}` cannot be {value!r}; its values are {quote_list(allowed)}")
            chosen[name] = value
        else:
            chosen[name] = allowed[0]
    flat: list[A.Stmt] = []
    _flatten(ctx, declared, chosen, program.stmts, flat, top=True)
    return Options(flat, declared, chosen)


def _flatten(ctx: Context, declared: dict[str, A.OptionStmt], chosen: dict[str, str], stmts: Iterable[A.Stmt],
             out: list[A.Stmt], top: bool) -> None:
    for st in stmts:
        if isinstance(st, A.OptionStmt):
            if not top:
                ctx.err(st.span, "`option` must be declared at the top level, not inside `when`")
            continue
        if isinstance(st, A.WhenStmt):
            name = st.option.value
            if name not in declared:
                ctx.err(st.option.span, f"unknown option `{name}`" + suggest(name, declared))
            allowed = [v.value for v in declared[name].values]
            if st.value.value not in allowed:
                ctx.err(
                    st.value.span,
                    f"option `{name}` has no value `{st.value.value}` (its values are {quote_list(allowed)})"
                    + suggest(st.value.value, allowed),
                )
            if chosen[name] == st.value.value:
                _flatten(ctx, declared, chosen, st.body, out, top=False)
            continue
        out.append(st)
