"""How far one write moves a memory's readout at its own key, per unit of inner learning rate, at a layer's start.

    python -m bench.step_gain [--models ttt_linear ttt_mlp ...] [--norm-eps X] [--keys 16]

One step of gradient descent on the l2 bias at key k moves the memory's readout at k by η · J Jᵀ · (v − M(k)), J the
Jacobian of the readout M(k) with respect to the fast weights. The printed gain is trace(J Jᵀ) / D, averaged over
random unit keys: a plain linear memory (DeltaNet's) has gain 1, so η · gain is the step a delta rule would take,
and above 2 a delta rule overshoots its own key. J is taken at the initial memory and the LayerNorm gain a model
layer starts from (mirasc.nn.MirasLayer), with D = 32 and the spec's own activation, residual and LayerNorm.

A LayerNorm divides the branch by its spread σ, so its Jacobian carries 1/σ and the gain 1/σ² at the start, when
the branch is small; `--norm-eps X` (a copy of the spec with `norm_eps = X`) measures the same memory with another
eps. bench/README.md, S-NIAH, "The LayerNorm's eps and the inner step", gives the figures and what they explain.
"""

from __future__ import annotations

import argparse
import re

import torch

import mirasc
from mirasc.nn.layer import MirasLayer
from mirasc.resources import prebuilt_path

D = 32


def spec_text(name: str, norm_eps: float | None) -> str:
    path = prebuilt_path(name)
    if path is None:
        raise SystemExit(f"{name}: not a prebuilt spec (one of {', '.join(mirasc.prebuilt_names())})")
    text = path.read_text()
    return text if norm_eps is None else with_norm_eps(name, text, norm_eps)


def with_norm_eps(name: str, text: str, norm_eps: float) -> str:
    """The spec's text with its memory LayerNorm's eps set (an ablation through the spec's own argument)."""
    if "norm = layernorm" not in text:
        raise SystemExit(f"{name}: its memory has no LayerNorm")
    # every memory statement of the spec (one per option where an option picks the eps) gets this eps
    return re.sub(r"norm = layernorm(, norm_eps = [^,)]+)?", f"norm = layernorm, norm_eps = {norm_eps!r}", text)


def step_gain(layer: MirasLayer, keys: int, seed: int = 0) -> float:
    """trace(J Jᵀ)/D of the readout at unit keys with respect to the initial memory, J at the layer's start."""
    op = layer.op
    gen = torch.Generator().manual_seed(seed)
    params = {n: p.detach() for n, p in layer.memory_params.items()}
    w0 = tuple(p.detach()[None].clone() for p in layer.initial_state)
    gates = gates_off(op)
    total = 0.0
    for _ in range(keys):
        k = torch.randn(D, generator=gen)
        k = (k / k.norm()).reshape(1, 1, 1, D)

        def readout(*state, key=k):
            out, _ = op(key, key, torch.zeros_like(key), gates=gates, initial_state=op.State(*state), params=params)
            return out.reshape(D)

        jac = torch.autograd.functional.jacobian(readout, w0)
        total += sum(float((j.reshape(D, -1) ** 2).sum()) for j in jac) / D
    return total / keys


def gates_off(op) -> dict[str, torch.Tensor]:
    """A retention (role `decay`) at 1 and every other gate at the low end of its range (the step at 0, or just
    above where 0 is excluded): the read at token 1 sees the initial memory as it is, and the token's own write,
    of size about 1e-6 at most, does not count."""
    shapes = op.gate_shapes(1, 1, 1, D)
    out = {}
    for g in op.meta.gates:
        value = 1.0 if "decay" in g.roles else float(g.low) + (1e-6 if g.low_open else 0.0)
        out[g.name] = torch.full(shapes[g.name], value)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["ttt_linear", "ttt_mlp", "titans", "yaad", "moneta", "memora"])
    ap.add_argument("--norm-eps", type=float, help="the memory LayerNorm's eps (a copy of the spec)")
    ap.add_argument("--keys", type=int, default=16)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    print("| model | LayerNorm eps | step gain trace(J Jᵀ)/D |")
    print("|---|---|---|")
    for name in args.models:
        op = mirasc.compile(spec_text(name, args.norm_eps), backend="torch")
        layer = MirasLayer(op, hidden_size=D, num_heads=1)
        eps = op.meta.memory.arguments.get("norm_eps", "–")
        print(f"| {name} | {eps} | {step_gain(layer, args.keys):.2f} |", flush=True)


if __name__ == "__main__":
    main()
