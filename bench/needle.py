"""One needle in a repetitive haystack, at the op alone: what a memory keeps of it with its gates at their starts.

    python -m bench.needle [--models titans ttt_mlp moneta:normalisation=none ...] [--chunk-sizes 1 16 64]
                           [--haystack 90] [--no-norm | --norm-eps X] [--lr X] [--decay X] [--trials 8]

No training: the keys are given, not learned. Every key is a unit vector in D = 32: the haystack cycles through
--haystack distinct keys (S-NIAH's haystack repeats its few sentences, so a model's keys repeat with it), each
with its own value; the needle, a new key with its own value, is written at token 100 of 256; the last token
queries the needle's key. The gates hold the values a model starts from (mirasc.nn.gates.gate_init_value; --lr and
--decay replace those of the roles `lr` and `decay`), the outer parameters their defaults.

Scored on the change the needle makes to the last readout (the same sequence without the needle subtracted):
its cosine with the needle's value, and whether that value is the nearest of 10 candidates (the other 9 random),
averaged over --trials draws; a draw whose readout is not finite (the memory diverged) is counted as a miss and
left out of the mean cosine. `--no-norm` drops the LayerNorm of an MLP memory (`norm = none` in a copy of the
spec's text), the ablation of bench/README.md's S-NIAH section; `--norm-eps X` sets its eps instead (as
bench.step_gain does), and `NAME:option=value` picks a spec option (as bench.tasks does).
"""

from __future__ import annotations

import argparse

import torch

import mirasc
from mirasc.nn.gates import gate_init_value

from . import step_gain
from .tasks import spec_and_options

D, T, NEEDLE_AT, CANDIDATES = 32, 256, 100, 10


def spec_text(name: str, no_norm: bool, norm_eps: float | None = None) -> str:
    text = step_gain.spec_text(name, None if no_norm else norm_eps)
    if no_norm:  # an ablation of the memory's normalisation, not a spec option
        if "norm = layernorm" not in text:
            raise SystemExit(f"{name}: its memory has no LayerNorm to drop")
        text = text.replace("norm = layernorm", "norm = none")
    return text


def gate_values(op, overrides: dict[str, float]) -> dict[str, torch.Tensor]:
    meta, out = op.meta, {}
    shapes = op.gate_shapes(1, T, 1, D)
    for g in meta.gates:
        value = gate_init_value(g, meta.map.name if meta.map else None)
        value = next((overrides[r] for r in g.roles if r in overrides), value)
        out[g.name] = torch.full(shapes[g.name], value)
    return out


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def trial(op, gates: dict, chunk: int, haystack: int, seed: int) -> tuple[float, bool]:
    """(cosine of the needle's change to the readout with its value, whether that value is the nearest candidate)."""
    gen = torch.Generator().manual_seed(seed)
    hay_k, hay_v = unit(torch.randn(haystack, D, generator=gen)), torch.randn(haystack, D, generator=gen) / D**0.5
    needle_k, needle_v = unit(torch.randn(D, generator=gen)), torch.randn(D, generator=gen) / D**0.5
    others = torch.randn(CANDIDATES - 1, D, generator=gen) / D**0.5
    k, v = hay_k[torch.arange(T) % haystack], hay_v[torch.arange(T) % haystack]
    q = k.clone()
    q[-1] = needle_k
    with_k, with_v = k.clone(), v.clone()
    with_k[NEEDLE_AT], with_v[NEEDLE_AT] = needle_k, needle_v
    last = []
    for kk, vv in ((k, v), (with_k, with_v)):
        out, _ = op(q[None, :, None], kk[None, :, None], vv[None, :, None], gates=gates, chunk_size=chunk)
        last.append(out[0, -1, 0])
    change = last[1] - last[0]
    if not change.isfinite().all():  # the memory diverged: scored as a miss
        return float("nan"), False
    cos = torch.nn.functional.cosine_similarity(change[None], torch.cat([needle_v[None], others]), dim=-1)
    return cos[0].item(), bool(cos.argmax() == 0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["gated_deltanet", "ttt_linear", "ttt_mlp", "titans", "yaad",
                                                    "moneta", "memora"])
    ap.add_argument("--chunk-sizes", nargs="+", type=int, default=[1, 16, 64])
    ap.add_argument("--haystack", type=int, default=90, help="distinct haystack keys (default 90)")
    ap.add_argument("--no-norm", action="store_true", help="drop an MLP memory's LayerNorm")
    ap.add_argument("--lr", type=float, help="the inner learning rate's value (role `lr`)")
    ap.add_argument("--decay", type=float, help="the retention's value (role `decay`)")
    ap.add_argument("--norm-eps", type=float, help="the memory LayerNorm's eps (a copy of the spec)")
    ap.add_argument("--trials", type=int, default=8)
    args = ap.parse_args(argv)
    overrides = {r: x for r, x in (("lr", args.lr), ("decay", args.decay)) if x is not None}
    print("| model | chunk | cosine with the needle's value | needle's value nearest of 10 |")
    print("|---|---|---|---|")
    for model in args.models:
        name, options = spec_and_options(model)
        op = mirasc.compile(spec_text(name, args.no_norm, args.norm_eps), backend="torch", options=options)
        gates = gate_values(op, overrides)
        for chunk in args.chunk_sizes:
            runs = [trial(op, gates, chunk, args.haystack, seed) for seed in range(args.trials)]
            finite = [c for c, _ in runs if c == c]
            cos = f"{sum(finite) / len(finite):+.3f}" if finite else "–"
            if len(finite) < len(runs):
                cos += f" ({len(runs) - len(finite)} of {len(runs)} diverged)"
            print(f"| {model} | {chunk} | {cos} | {sum(h for _, h in runs) / len(runs):.2f} |", flush=True)


if __name__ == "__main__":
    main()
