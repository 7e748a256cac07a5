"""compile a spec to the source of its torch module: derive -> lower -> grad -> emit, rendered through
templates/torch_module.py.j2. Deterministic (no timestamps), so generated/ can be checked for staleness."""

from __future__ import annotations

import pprint
import re
from pathlib import Path

import sympy as sp

from . import spec as S
from .cachekey import __version__, spec_hash
from .derive import NCH, Derivation, R, V, derive
from .emit_torch import TorchPrinter, emit_function
from .grad import differentiate
from .lower import input_names, is_mirror, is_projection, lower, output_names, state_names
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
        "gates": [{"name": g.name, "kind": g.kind, "data_dependent": g.data_dependent,
                   "low": g.low, "high": g.high, "low_open": g.low_open, "high_open": g.high_open,
                   "activation": g.activation} for g in spec.gates],
        "params": ["ln_weight", "ln_bias"] if m.norm == "layernorm" else [],
        "chunk_size": spec.chunk_size,
    }


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
    for red in ld.reductions:
        env = {**chan, **{k: f"{v}[:, None]" for k, v in tok.items() if str(k).startswith("R")}}
        lines.append(f"{red.symbol} = ({TorchPrinter(env)(red.body)}).sum(-1)")
        tok[red.symbol] = str(red.symbol)
    lines.append(f"return {TorchPrinter({**tok})(ld.loss)}")
    return "\n".join("    " + line for line in lines)


def generate(spec: S.Spec, options: dict | None = None, command: str | None = None) -> str:
    import jinja2

    d = derive(spec)
    fwd = lower(d)
    ins, outs = input_names(spec), output_names(spec)
    bwd = differentiate(fwd, ins)
    fwd_src = emit_function(fwd, "chunk_forward", ins, outs,
                            doc="One chunk, forward: chunk-start state and chunk inputs -> (out, next state).")
    bwd_src = emit_function(bwd, "chunk_backward", ins + [f"d_{o}" for o in outs], [f"d_{n}" for n in ins],
                            doc="One chunk, backward: recomputes the forward values it needs.")
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    token = [n in ("q", "k", "v") or (n.startswith("gate_") and spec.gate(n[5:]).data_dependent) for n in ins]
    text = env.get_template("torch_module.py.j2").render(
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
        forward_fn=fwd_src,
        backward_fn=bwd_src,
    )
    return text
