"""Accuracy of several models on one synthetic task after the same training budget: a table, JSON and a plot.

    python -m bench.tasks --task mqar [--models moneta yaad ...] [--steps 300] [--out bench/results/tasks]
    python -m bench.tasks --task robust --contamination 0.0 0.3
    python -m bench.tasks --models moneta moneta:normalisation=none   # NAME:OPTION=VALUE[,OPTION=VALUE] picks options

Every model gets the same data (seed), size, steps, batch and learning rate; the figures are what a
2-core CPU gets in minutes, not the paper's scale.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

DEFAULT_MODELS = ["moneta", "moneta:normalisation=none", "yaad", "memora", "titans", "gated_deltanet",
                  "linear_attention", "transformer"]


def spec_and_options(model: str) -> tuple[str, dict]:
    """"moneta:normalisation=none" -> ("moneta", {"normalisation": "none"})."""
    from mirasc.train.cli import parse_spec_options

    spec, _, opts = model.partition(":")
    return spec, parse_spec_options([p for p in opts.split(",") if p]) or {}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mqar", choices=["mqar", "robust"])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--contamination", nargs="+", type=float, default=[0.0])
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--hidden-size", type=int, default=32)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--kv-pairs", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--out", default="bench/results/tasks")
    args = p.parse_args(argv)

    from mirasc.train.loop import train

    out = Path(args.out)
    rows = []
    for rho in args.contamination:
        for name in args.models:
            cfg = {"task": args.task, "tier": "cpu", "seq_len": args.seq_len, "kv_pairs": args.kv_pairs,
                   "num_layers": args.layers, "hidden_size": args.hidden_size, "num_heads": args.heads,
                   "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr, "warmup_steps": 15,
                   "log_every": max(1, args.steps // 4), "eval_examples": 256, "overwrite": True, "seed": 0,
                   "quiet": True, "out": str(out / f"{args.task}_{rho:g}" / name.replace(":", "_").replace("=", "-"))}
            cfg["spec"], cfg["spec_options"] = spec_and_options(name)
            if args.task == "robust":
                cfg["contamination"] = rho
            t0 = time.perf_counter()
            res = train(cfg)
            rows.append({"model": name, "task": args.task, "contamination": rho,
                         "accuracy": res.eval.get("accuracy"), "final_loss": res.final_loss,
                         "tokens_per_s": res.tokens_per_s, "params": res.params,
                         "wall_s": time.perf_counter() - t0})
            print(f"{args.task} rho={rho:g} {name:>18}: accuracy {rows[-1]['accuracy']:.3f}  "
                  f"loss {res.final_loss:.3f}  {res.tokens_per_s:,.0f} tok/s  {rows[-1]['wall_s']:.0f}s", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{args.task}_" + "_".join(f"{r:g}" for r in args.contamination)
    (out / f"{stem}.json").write_text(json.dumps({"config": vars(args), "rows": rows}, indent=2) + "\n")
    print("\n| model | contamination | accuracy | final loss | tok/s | params |\n|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['contamination']:g} | {r['accuracy']:.3f} | {r['final_loss']:.3f} | "
              f"{r['tokens_per_s']:,.0f} | {r['params']:,} |")
    _plot(rows, out / f"{stem}.png", args)
    return 0


def _plot(rows, path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rhos = sorted({r["contamination"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    fig, ax = plt.subplots(figsize=(8, 3.5))
    width = 0.8 / len(rhos)
    for j, rho in enumerate(rhos):
        acc = [next(r["accuracy"] for r in rows if r["model"] == m and r["contamination"] == rho) for m in models]
        ax.bar([i + j * width for i in range(len(models))], acc, width, label=f"contamination {rho:g}")
    ax.set_xticks([i + width * (len(rhos) - 1) / 2 for i in range(len(models))], models, rotation=20)
    ax.set_ylabel("accuracy")
    ax.set_title(f"{args.task}: {args.steps} steps, hidden {args.hidden_size}, L={args.seq_len}, "
                 f"{args.kv_pairs} pairs")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
