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
from .lower import (
    chunk_inputs,
    input_names,
    lower,
    outer_params,
    output_names,
    state_names,
)
from .lower_decay import DECAY_SPREAD_LIMIT, factorable
from .resources import resource_dir
from .triton_kernels import KernelIO, kernels, stored_values

TEMPLATES = resource_dir("templates")


def _safe_comment(line: str) -> str:
    """A spec line inside a `#` comment: only printable characters, so it can never end the comment."""
    return "".join(c if c.isprintable() and c not in "\r\x0b\x0c" else "?" for c in line)


def metadata(spec: S.Spec) -> dict:
    """The METADATA literal of a generated module (mirasc.opmeta.OpMeta reads it back as records)."""
    m = spec.memory
    return {
        "name": spec.name,
        "memory": {"kind": m.kind, "depth": m.depth, "expansion": m.expansion, "activation": m.activation,
                   "initial_state": m.initial_state, "arguments": m.metadata()},
        "map": _map_metadata(spec.retention.map),
        "algorithm": {"name": spec.algorithm.keyword, "buffer": spec.algorithm.buffer},
        "chunk_form": chunk_form(spec).kind,
        "gates": [{"name": g.name, "kind": g.kind, "data_dependent": g.data_dependent,
                   "low": g.low, "high": g.high, "low_open": g.low_open, "high_open": g.high_open,
                   "activation": g.activation, "roles": list(g.roles), "init": g.init} for g in spec.gates],
        "params": [{"name": name, "default": default} for name, default in outer_params(spec)],
        "chunk_size": spec.chunk_size,
    }


def _map_metadata(rmap: S.BoundaryMap | None) -> dict | None:
    if rmap is None:
        return None
    return {"name": rmap.keyword, "kind": rmap.kind, "initial_state": rmap.initial_state}


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
    """Which of the named chunk-program inputs are sliced along the token axis (q, k, v, data-dependent gates)."""
    per_token = {c.name: c.per_token for c in chunk_inputs(spec)}
    return [per_token[n] for n in names]


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
        fwd = lower(d, channel_decay="factored" if factored else "pairwise")
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
def _kernel_io(spec: S.Spec, fwd) -> KernelIO:
    inputs = chunk_inputs(spec)
    states = [c.name for c in inputs if c.role == "state"]
    rest = [c for c in inputs if c.role != "state"]
    return KernelIO(states, [c.name for c in rest], {c.name: c.per_token for c in rest},
                    {n: fwd.inputs[n].axes for n in states + [c.name for c in rest]}, {c.name: c.pad for c in rest})


def generate_triton(spec: S.Spec, options: dict | None = None, command: str | None = None) -> str:
    """The source of the spec's Triton module (templates/triton_module.py.j2): kernels and their DESCRIPTION.

    Wherever the weight of a token's gradient in another's has a channel axis (a channel decay gate, static or per
    token, or a channel step size), the program writes it as ir.DecayedProduct: exact for any decay, with no (C, C, D)
    tile and nothing read back on the host."""
    d = derive(spec)
    ins = input_names(spec)
    fwd = lower(d, channel_decay="products")
    io = _kernel_io(spec, fwd)
    stored = [[f"stored_{j}", list(v.axes)] for j, v in enumerate(stored_values(fwd))]
    found, jobs = [], {}
    for k in kernels(io, fwd, differentiate(fwd, ins)):
        job = k.name.removeprefix("chunk_").removesuffix("_kernel")
        jobs[job] = {"grid": "chunks" if k.mode == "chunk" else "sequences",
                     "scratch": [list(axes) for axes in k.scratch], "value_blocks": k.value_blocks,
                     "tiles": round(k.tiles, 2), "sub_chunks": k.sub_chunked,
                     "row_blocks": k.row_blocked, "channel_blocks": k.channel_blocked,
                     "swappable": k.swappable, "rereads": k.rereads,
                     "holds_params": k.holds_params}
        found.append(k)
    description = {
        "spec": spec.name,
        "states": {n: list(io.axes[n]) for n in io.states},
        "inputs": [[n, list(io.axes[n]), io.token[n]] for n in io.rest],
        "hidden": spec.memory.expansion if spec.memory.depth > 1 else 1,
        # kernels by job: their grid (one program per chunk or per sequence), the axes of
        # each value they keep in scratch memory, per program, and how they run by blocks of BV value columns
        # ("columns", "partial": each block writes its share of a sum to its own copy, "none": one block), and the
        # most register tiles (64 x 64 fp32) live at once, which sets the launcher's warps; whether it takes the
        # sub-chunk BC (channel-decay products, a state pass by sub-chunks), the row block BR (a stretch of values
        # made token by token between hidden-block loops), products written both ways
        # (SWAP_PRODUCTS), input tiles it can load again after its loops (REREAD_INPUTS) and per-row parameters it can
        # load once before its chunk loop (PARAMS_ONCE), which its configs vary
        "kernels": jobs,
        # values stored per chunk for the other kernels: made by the stored_fwd kernel where no state reaches them,
        # else by the state pass
        "stored": stored,
        # values the backward state pass reads, made per chunk before it by its local_bwd kernel
        "local": [[n, list(axes)] for k in found for n, axes in k.makes],
    }
    return _render("triton_module.py.j2",
        version=__version__,
        spec_file=_safe_comment(Path(spec.file).name),
        spec_name=spec.name,
        command=_safe_comment(command or f"mirasc compile {Path(spec.file).name}"),
        spec_hash=spec_hash(spec.source, options, "triton"),
        description=pprint.pformat(description, width=110, sort_dicts=False),
        kernels=found,
        private_index=any("private_index(" in line for k in found for line in k.chunk_offsets + k.loop + k.epilogue),
    )
