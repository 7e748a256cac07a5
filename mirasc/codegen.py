"""compile a spec to the source of its torch module: derive -> lower -> grad -> emit, rendered through
templates/torch_module.py.j2. Deterministic (no timestamps), so generated/ can be checked for staleness."""

from __future__ import annotations

import pprint
import re
from pathlib import Path

import sympy as sp

from . import spec as S
from .cachekey import __version__, spec_hash
from .chunkform import chunk_form
from .derive import NCH, Derivation, R, V, derive
from .emit_torch import TorchPrinter, emit_function
from .grad import differentiate, split_saved
from .ir import AXIS_ORDER
from .lower import (
    DECAY_SPREAD_LIMIT,
    factorable,
    input_names,
    is_mirror,
    is_projection,
    lower,
    output_names,
    state_names,
)
from .resources import resource_dir

TEMPLATES = resource_dir("templates")


def _safe_comment(line: str) -> str:
    """A spec line inside a `#` comment: only printable characters, so it can never end the comment."""
    return "".join(c if c.isprintable() and c not in "\r\x0b\x0c" else "?" for c in line)


def metadata(spec: S.Spec) -> dict:
    m = spec.memory
    rmap = spec.retention.map
    return {
        "name": spec.name,
        "memory": {"kind": m.kind, "depth": m.depth, "expansion": m.expansion, "activation": m.activation,
                   "residual": m.residual, "norm": m.norm},
        "map": None if rmap is None else type(rmap).__name__,
        "map_kind": "mirror" if is_mirror(rmap) else "projection" if is_projection(rmap) else
                    "lag" if isinstance(rmap, S.KLMap) else None,
        "algorithm": spec.algorithm.kind,
        "chunk_form": chunk_form(spec).kind,
        "gates": [{"name": g.name, "kind": g.kind, "data_dependent": g.data_dependent,
                   "low": g.low, "high": g.high, "low_open": g.low_open, "high_open": g.high_open,
                   "activation": g.activation} for g in spec.gates],
        "params": ["ln_weight", "ln_bias"] if m.norm == "layernorm" else [],
        "chunk_size": spec.chunk_size,
    }


def _template(name: str):
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    return env.get_template(name)


def _render(name: str, **context) -> str:
    """Render a template; generated lines carry no trailing whitespace (a blank spec line, an empty hook)."""
    text = _template(name).render(**context)
    return "\n".join(line.rstrip() for line in text.split("\n"))


def token_inputs(spec: S.Spec, names: list[str]) -> list[bool]:
    """Which chunk-program inputs are sliced along the token axis (q, k, v, data-dependent gates)."""
    return [n in ("q", "k", "v") or (n.startswith("gate_") and spec.gate(n[5:]).data_dependent) for n in names]


def loss_source(d: Derivation) -> str:
    """The body of `loss(y, v, gates)`: the bias as torch code, reductions over the last axis."""
    ld = d.loss
    chan = {R: "(y - v)", V: "v"}
    tok: dict[sp.Symbol, str] = {}
    for name, sym in ld.gate_symbols.items():
        if name in ld.channel_gates:
            chan[sym] = f"gates[{name!r}]"
        else:
            chan[sym] = f"gates[{name!r}][:, None]"
            tok[sym] = f"gates[{name!r}]"
    chan[NCH] = tok[NCH] = "float(y.shape[-1])"
    lines = []
    for j, red in enumerate(ld.reductions):
        env = {**chan, **{r.symbol: f"{tok[r.symbol]}[:, None]" for r in ld.reductions[:j]}}
        name = f"_{red.symbol.name}"  # a local name no gate can take (gates are looked up in `gates`)
        lines.append(f"{name} = ({TorchPrinter(env)(red.body)}).sum(-1)")
        tok[red.symbol] = name
    lines.append(f"return {TorchPrinter({**tok})(ld.loss)}")
    return "\n".join("    " + line for line in lines)


def generate(spec: S.Spec, options: dict | None = None, command: str | None = None) -> str:
    d = derive(spec)
    ins, outs = input_names(spec), output_names(spec)
    variants = [("", False)] + ([("_factored", True)] if factorable(spec) else [])
    sources = []
    for suffix, factored in variants:
        fwd = lower(d, factored=factored)
        train, bwd, saved = split_saved(fwd, differentiate(fwd, ins))
        how = " (channel decay factored as e^{Λ_t} e^{-Λ_s})" if factored else ""
        fwd_doc = (f"One chunk, forward{how}: chunk-start state and inputs -> (out, next state, *values the "
                   "backward reads).")
        bwd_doc = f"One chunk, backward{how}: from the values the forward saved (it recomputes only cheap ones)."
        sources.append(emit_function(train, f"chunk_forward{suffix}", ins, outs + saved, doc=fwd_doc))
        sources.append(emit_function(bwd, f"chunk_backward{suffix}", ins + saved + [f"d_{o}" for o in outs],
                                     [f"d_{n}" for n in ins], doc=bwd_doc))
    decay = spec.retention.decay
    token = token_inputs(spec, ins)
    text = _render("torch_module.py.j2",
        version=__version__,
        spec_file=_safe_comment(Path(spec.file).name),
        spec_name=spec.name,
        command=_safe_comment(command or f"mirasc compile {Path(spec.file).name}"),
        spec_hash=spec_hash(spec.source, options, "torch"),
        spec_lines=[_safe_comment(line) for line in spec.source.splitlines()],
        metadata=re.sub(r"\binf\b", "math.inf", pprint.pformat(metadata(spec), width=110, sort_dicts=False)),
        state_fields=repr(tuple(state_names(spec))),
        inputs=repr(tuple(ins)),
        token_inputs=repr(tuple(token)),
        outputs=repr(tuple(outs)),
        loss_body=loss_source(d),
        chunk_functions="\n\n".join(sources),
        decay_input=repr(f"gate_{decay.name}" if factorable(spec) else None),
        factored=factorable(spec),
        spread_limit=repr(DECAY_SPREAD_LIMIT),
    )
    return text


# --------------------------------------------------------------------------------------------------- Triton
def _triton_parts(spec: S.Spec, fwd, bwd) -> dict:
    """The lines the Triton template splices in: argument lists, loads, bodies, stores, carries."""
    from . import emit_triton as et

    states = state_names(spec)
    ins = input_names(spec)
    rest = [n for n in ins if n not in states]
    token = dict(zip(rest, token_inputs(spec, rest)))
    axes = {n: fwd.inputs[n].axes for n in ins}
    other = {n: (1.0 if n.startswith("gate_") else 0.0) for n in rest}

    def state_at(ptr: str, s: str) -> str:
        size = et.row_size(axes[s], False)
        return f"{ptr} + (n * N_CHUNKS + c) * {size} + {et.offsets(axes[s], False)}"

    offs = [f"offs_{a} = tl.arange(0, {et.SIZE[a]})" for a in AXIS_ORDER]
    fwd_args = [f"{n}_ptr" for n in ins] + ["out_ptr"] + [f"final_{s}_ptr" for s in states] + [
        f"starts_{s}_ptr" for s in states]
    fwd_pro = [f"{s} = {et.load(f'{s}_ptr', fwd.inputs[s], False)}" for s in states]
    fwd_pro += [f"{n} = {et.load(f'{n}_ptr', fwd.inputs[n], False)}" for n in rest if not token[n]]
    fwd_loop = [f"tl.store({state_at(f'starts_{s}_ptr', s)}, {s})" for s in states]
    fwd_loop += [f"{n} = {et.load(f'{n}_ptr', fwd.inputs[n], True, other[n])}" for n in rest if token[n]]
    fwd_loop += et.body(fwd)
    fwd_loop.append(et.store("out_ptr", fwd.outputs["out"].axes, True, et.name(fwd.outputs["out"])))
    fwd_loop += [f"{s} = {et.name(fwd.outputs['new_' + s])}" for s in states]
    fwd_epi = [et.store(f"final_{s}_ptr", axes[s], False, s) for s in states]

    bwd_args = [f"starts_{s}_ptr" for s in states] + [f"{n}_ptr" for n in rest] + ["d_out_ptr"] + [
        f"d_final_{s}_ptr" for s in states] + [f"d_init_{s}_ptr" for s in states] + [f"grad_{n}_ptr" for n in rest]
    bwd_pro = [f"carry_{s} = {et.load(f'd_final_{s}_ptr', fwd.inputs[s], False)}" for s in states]
    bwd_pro += [f"{n} = {et.load(f'{n}_ptr', fwd.inputs[n], False)}" for n in rest if not token[n]]
    bwd_pro += [f"acc_{n} = tl.zeros({et._shape(axes[n])}, DTYPE)" for n in rest if not token[n]]
    bwd_loop = [f"{s} = tl.load({state_at(f'starts_{s}_ptr', s)})" for s in states]
    bwd_loop += [f"{n} = {et.load(f'{n}_ptr', fwd.inputs[n], True, other[n])}" for n in rest if token[n]]
    bwd_loop.append(f"d_out = {et.load('d_out_ptr', bwd.inputs['d_out'], True)}")
    bwd_loop += [f"d_new_{s} = carry_{s}" for s in states]
    bwd_loop += et.body(bwd)
    for n in rest:
        g = et.name(bwd.outputs[f"d_{n}"])
        if token[n]:
            bwd_loop.append(et.store(f"grad_{n}_ptr", axes[n], True, g))
        else:
            bwd_loop.append(f"acc_{n} += {g}")
    bwd_loop += [f"carry_{s} = {et.name(bwd.outputs['d_' + s])}" for s in states]
    bwd_epi = [et.store(f"d_init_{s}_ptr", axes[s], False, f"carry_{s}") for s in states]
    bwd_epi += [et.store(f"grad_{n}_ptr", axes[n], False, f"acc_{n}") for n in rest if not token[n]]
    return {
        "fwd_args": ", ".join(fwd_args), "bwd_args": ", ".join(bwd_args), "offsets": offs,
        "fwd_prologue": fwd_pro, "fwd_loop": fwd_loop, "fwd_epilogue": fwd_epi,
        "bwd_prologue": bwd_pro, "bwd_loop": bwd_loop, "bwd_epilogue": bwd_epi,
    }


def generate_triton(spec: S.Spec, options: dict | None = None, command: str | None = None) -> str:
    """The source of the spec's Triton module (templates/triton_module.py.j2)."""
    d = derive(spec)
    fwd = lower(d)
    ins = input_names(spec)
    bwd = differentiate(fwd, ins)
    token = token_inputs(spec, ins)
    return _render("triton_module.py.j2",
        version=__version__,
        spec_file=_safe_comment(Path(spec.file).name),
        spec_name=spec.name,
        command=_safe_comment(command or f"mirasc compile {Path(spec.file).name}"),
        spec_hash=spec_hash(spec.source, options, "triton"),
        state_fields=repr(tuple(state_names(spec))),
        inputs=repr(tuple(ins)),
        token_inputs=repr(tuple(token)),
        **_triton_parts(spec, fwd, bwd),
    )
