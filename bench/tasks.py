"""Accuracy of several models on one synthetic task after the same training budget: a table, JSON and a plot.

    python -m bench.tasks --task mqar [--models moneta yaad ...] [--steps 400] [--seeds 0 1 2]
    python -m bench.tasks --task mqar --hidden-sizes 32 64 128 --seq-lens 64 128 256      # a Zoology-style grid
    python -m bench.tasks --task robust --contamination 0 0.1 0.3 0.5
    python -m bench.tasks --models moneta:p=1.5 moneta:p=2 moneta:normalisation=none     # NAME:OPTION=VALUE,...
    python -m bench.tasks --models titans yaad --chunk-sizes 1 4 16 64                    # the layer's chunk size
    python -m bench.tasks --task niah --seq-lens 256 512 1024 2048                       # single-needle S-NIAH

Every model gets the same data (per seed), size, steps, batch and learning rate. Each swept setting (seed, width,
length, contamination, chunk size) is a separate training run; the table gives per model and setting the mean
accuracy over the seeds and its spread (min–max), and the wall time of one run; each run's line (and its JSON row)
also gives the recall tasks' accuracy at each query in sequence order (mirasc.train.evaluate). `--qkv-init-std`,
`--norm-gain-init` and `--gate-init` change the layer's initialisation (the ablation of mirasc/nn/layer.py's
defaults). MQAR kv pairs default to L/16 when lengths are swept (Zoology's growth with L), else 4. The figures are
what a 2-core CPU gets in minutes, not the paper's scale.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import time
from pathlib import Path

DEFAULT_MODELS = ["moneta", "moneta:normalisation=lq", "moneta:normalisation=none", "yaad", "memora", "titans",
                  "gated_deltanet", "linear_attention", "transformer"]
SWEPT = ("seq_len", "hidden_size", "contamination", "chunk_size", "eval_len")
LABEL = {"seq_len": "sequence length L", "hidden_size": "model width", "contamination": "contamination ρ",
         "chunk_size": "chunk size C", "eval_len": "test length"}


def spec_and_options(model: str) -> tuple[str, dict]:
    """"moneta:normalisation=none" -> ("moneta", {"normalisation": "none"})."""
    from mirasc.train.cli import parse_spec_options

    spec, _, opts = model.partition(":")
    return spec, parse_spec_options([p for p in opts.split(",") if p]) or {}


def _gate_init(pairs: list[str]) -> dict[str, float]:
    """--gate-init ROLE=VALUE pairs (roles as mirasc.nn.gates.GATE_INIT names them: decay, lr, momentum, bias)."""
    from mirasc.nn.gates import GATE_INIT

    out = {}
    for p in pairs:
        role, sep, value = p.partition("=")
        if not sep or role.strip() not in GATE_INIT:
            raise SystemExit(f"--gate-init: expected ROLE=VALUE with ROLE one of {sorted(GATE_INIT)}, got {p!r}")
        out[role.strip()] = float(value)
    return out


def unreached_gate_inits(models: list[str], inits: dict[str, float]) -> list[str]:
    """One line for each gate that --gate-init's roles name but cannot reach: a gate whose spec declares its start
    with `init` keeps it (mirasc.nn.gates.gate_init_value), so the run would train from the spec's start, not the
    one asked for."""
    import mirasc
    from mirasc.train.config import TRANSFORMER_NAMES

    lines = []
    for model in models if inits else []:  # nothing to check (or compile) without --gate-init
        spec, options = spec_and_options(model)
        if spec in TRANSFORMER_NAMES:
            continue
        for g in mirasc.compile(spec, options=options, backend="torch").meta.gates:
            for role in (r for r in g.roles if r in inits and g.init is not None):
                lines.append(f"--gate-init {role}={inits[role]:g} does not reach {model}'s gate {g.name}: its spec "
                             f"starts it at {g.init:g} (`init`); a param of the spec sets that start")
    return lines


def run_config(args, model: str, seed: int, seq_len: int, hidden: int, rho: float, chunk: int | None,
               out: Path) -> dict:
    """Train one model on one setting; returns the row (accuracy, loss, wall time, the train-accuracy curve)."""
    from mirasc.train import TrainError
    from mirasc.train.evaluate import accuracy_by_query
    from mirasc.train.loop import train

    kv = args.kv_pairs if args.kv_pairs else (max(1, seq_len // 16) if len(args.seq_lens) > 1 else 4)
    name = model.replace(":", "_").replace("=", "-").replace(",", "_")
    tag = f"{name}_L{seq_len}_w{hidden}_rho{rho:g}_C{chunk or 'spec'}_s{seed}"
    heads = max(1, hidden // args.head_dim) if args.head_dim else args.heads
    cfg = {"task": args.task, "tier": "cpu", "seq_len": seq_len, "num_layers": args.layers, "hidden_size": hidden,
           "num_heads": heads, "batch_size": args.batch_size, "steps": args.steps, "lr": args.lr,
           "warmup_steps": min(15, max(1, args.steps // 10)), "log_every": max(1, args.steps // args.curve_points),
           "eval_examples": args.eval_examples, "overwrite": True, "seed": seed, "quiet": True,
           "ckpt_every": 10 ** 9, "threads": args.threads, "out": str(out / "runs" / tag)}
    if args.task in ("mqar", "robust"):
        cfg["kv_pairs"] = kv
    if args.task == "robust":
        cfg["contamination"] = rho
    if chunk is not None:
        cfg["chunk_size"] = chunk
    if args.torch_compile:
        cfg["torch_compile"] = True
    cfg["spec"], cfg["spec_options"] = spec_and_options(model)
    t0 = time.perf_counter()
    try:
        res = train(cfg)
    except TrainError as err:  # a run that diverges recalls nothing: counted as accuracy 0, and said so
        return [{"model": model, "seed": seed, "seq_len": seq_len, "kv_pairs": cfg.get("kv_pairs"),
                 "hidden_size": hidden, "contamination": rho, "chunk_size": chunk, "eval_len": n, "accuracy": 0.0,
                 "final_loss": float("nan"), "tokens_per_s": 0.0, "params": 0, "wall_s": time.perf_counter() - t0,
                 "curve": [], "diverged": str(err)} for n in (args.eval_lens or [seq_len])]
    wall = time.perf_counter() - t0
    curve = []
    for line in Path(res.metrics_path).read_text().splitlines():
        r = json.loads(line)
        if "train_acc" in r:
            curve.append((r["step"], r["train_acc"]))
    row = {"model": model, "seed": seed, "seq_len": seq_len, "kv_pairs": cfg.get("kv_pairs"), "hidden_size": hidden,
           "contamination": rho, "chunk_size": chunk, "eval_len": seq_len, "accuracy": res.eval.get("accuracy"),
           "final_loss": res.final_loss, "tokens_per_s": res.tokens_per_s, "params": res.params, "wall_s": wall,
           "curve": curve, "by_query": accuracy_by_query(res.eval)}
    if not args.eval_lens:
        return [row]
    # the trained model on longer (or shorter) test sequences: one row per test length
    from mirasc.train import evaluate_checkpoint

    rows = []
    for n in args.eval_lens:
        m = evaluate_checkpoint(res.checkpoint, task=args.task, seq_len=n, num_examples=args.eval_examples)
        rows.append({**row, "eval_len": n, "accuracy": m["accuracy"], "by_query": accuracy_by_query(m)})
    return rows


def _by_query(row: dict) -> str:
    """' (by query a / b / ...)': the accuracy at each query in sequence order, where the run measured it."""
    by_query = row.get("by_query")
    return f" (by query {' / '.join(f'{a:.2f}' for a in by_query)})" if by_query else ""


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (model, setting): mean accuracy over seeds, min, max, mean wall time."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"],) + tuple(r[k] for k in SWEPT), []).append(r)
    out = []
    for key, rs in groups.items():
        acc = [r["accuracy"] for r in rs]
        out.append({"model": key[0], **dict(zip(SWEPT, key[1:])), "kv_pairs": rs[0]["kv_pairs"],
                    "seeds": [r["seed"] for r in rs], "accuracies": acc, "mean": statistics.fmean(acc),
                    "min": min(acc), "max": max(acc), "wall_s": statistics.fmean(r["wall_s"] for r in rs),
                    "params": max(r["params"] for r in rs), "diverged": sum("diverged" in r for r in rs)})
    return out


def table(summary: list[dict], varied: list[str]) -> str:
    cols = ["model"] + varied + ["accuracy (mean over seeds)", "min–max", "seeds", "s / run", "params"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for s in summary:
        vals = [s["model"]] + [f"{s[k]:g}" if isinstance(s[k], float) else str(s[k]) for k in varied]
        seeds = str(len(s["seeds"])) + (f" ({s['diverged']} diverged: 0)" if s.get("diverged") else "")
        vals += [f"{s['mean']:.3f}", f"{s['min']:.3f}–{s['max']:.3f}", seeds, f"{s['wall_s']:.0f}",
                 f"{s['params']:,}"]
        lines.append("| " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.tasks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="mqar", choices=["mqar", "robust", "niah"])
    p.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--contamination", nargs="+", type=float, default=[0.0])
    p.add_argument("--hidden-sizes", nargs="+", type=int, default=[32])
    p.add_argument("--seq-lens", nargs="+", type=int, default=[32])
    p.add_argument("--chunk-sizes", nargs="+", type=int, default=None,
                   help="the layer's chunk size (default: each spec's own)")
    p.add_argument("--kv-pairs", type=int, default=None,
                   help="MQAR pairs (default 4, or L/16 when several lengths are swept)")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--heads", type=int, default=1)
    p.add_argument("--head-dim", type=int, default=None,
                   help="heads = width / HEAD_DIM (a width sweep at a fixed head size); default: --heads")
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--eval-examples", type=int, default=256)
    p.add_argument("--eval-lens", nargs="+", type=int, default=None,
                   help="also test each trained model at these sequence lengths (e.g. S-NIAH 256 ... 2048)")
    p.add_argument("--curve-points", type=int, default=16, help="train-accuracy points logged per run")
    p.add_argument("--qkv-init-std", type=float, default=None,
                   help="init the layer's q/k/v projections normal(0, STD) instead of nn.Linear's default")
    p.add_argument("--norm-gain-init", type=float, default=None, metavar="C",
                   help="start the memory's LayerNorm gain at C/sqrt(head_dim) instead of 1 (MLP memories)")
    p.add_argument("--gate-init", nargs="+", default=[], metavar="ROLE=VALUE",
                   help="initial gate values by role for every spec (replacing mirasc.nn.gates.GATE_INIT and "
                        "GATE_INIT_FOR_MAP), e.g. lr=1.0 for the inner learning rate; a gate the spec declares "
                        "with `init` keeps it (Moneta's eta: set its param, moneta:eta_init=0.5)")
    p.add_argument("--torch-compile", action="store_true",
                   help="run the chunk programs through torch.compile (MemoryOp.compile_chunks): same model, faster")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per run (1: on a shared CPU two OpenMP threads wait on each other)")
    p.add_argument("--out", default="bench/results/tasks")
    p.add_argument("--name", default=None, help="file stem of the JSON and PNG (default: from the task)")
    args = p.parse_args(argv)

    from mirasc.nn import gates
    from mirasc.nn.layer import MirasLayer

    if args.qkv_init_std is not None:
        MirasLayer.qkv_init_std = args.qkv_init_std
    if args.norm_gain_init is not None:
        MirasLayer.norm_gain_init = args.norm_gain_init
    inits = _gate_init(args.gate_init)
    for name, value in inits.items():  # for every spec, whatever its map
        gates.GATE_INIT[name] = value
        for per_map in gates.GATE_INIT_FOR_MAP.values():
            per_map.pop(name, None)
    for line in unreached_gate_inits(args.models, inits):
        print(f"bench.tasks: warning: {line}", file=sys.stderr)

    out = Path(args.out)
    chunks = args.chunk_sizes or [None]
    rows = []
    t_all = time.perf_counter()
    for rho, L, w, c, model, seed in itertools.product(args.contamination, args.seq_lens, args.hidden_sizes, chunks,
                                                       args.models, args.seeds):
        for r in run_config(args, model, seed, L, w, rho, c, out):
            rows.append(r)
            what = (f"diverged ({r['diverged']})" if "diverged" in r else
                    f"accuracy {r['accuracy']:.3f}{_by_query(r)}  loss {r['final_loss']:.3f}  "
                    f"{r['tokens_per_s']:,.0f} tok/s")
            print(f"{args.task} {model:>28} L={L} w={w} rho={rho:g} C={c or 'spec'} seed={seed} "
                  f"test L={r['eval_len']}: {what}  {r['wall_s']:.0f}s", flush=True)
    total = time.perf_counter() - t_all
    summary = summarise(rows)
    varied = [k for k, vals in (("seq_len", args.seq_lens), ("hidden_size", args.hidden_sizes),
                                ("contamination", args.contamination), ("chunk_size", chunks),
                                ("eval_len", args.eval_lens or [])) if len(vals) > 1]
    out.mkdir(parents=True, exist_ok=True)
    stem = args.name or args.task
    (out / f"{stem}.json").write_text(json.dumps({"config": vars(args), "total_wall_s": total, "summary": summary,
                                                  "rows": rows}, indent=2) + "\n")
    print(f"\n{len(rows)} runs, {total:.0f} s in all\n")
    print(table(summary, varied))
    _plot(summary, varied, out / f"{stem}.png", args)
    return 0


def _plot(summary: list[dict], varied: list[str], path: Path, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(s["model"] for s in summary))
    title = (f"{args.task}: {args.steps} steps of batch {args.batch_size}, {len(args.seeds)} seed(s); "
             "mean and min–max over seeds")
    if not varied:
        fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(models)), 3.5))
        for i, m in enumerate(models):
            s = next(x for x in summary if x["model"] == m)
            ax.bar(i, s["mean"], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], capsize=3)
        ax.set_xticks(range(len(models)), models, rotation=25, ha="right")
        ax.set_ylabel("accuracy")
        ax.set_title(title, fontsize=9)
    else:
        x_key = varied[-1] if varied[-1] != "seq_len" or len(varied) == 1 else varied[0]
        panel_keys = [k for k in varied if k != x_key]
        panels = sorted({tuple(s[k] for k in panel_keys) for s in summary})
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
        for ax, pv in zip(axes[0], panels):
            for m in models:
                pts = sorted((s[x_key], s["mean"], s["min"], s["max"]) for s in summary
                             if s["model"] == m and tuple(s[k] for k in panel_keys) == pv)
                xs = [p[0] for p in pts]
                ax.errorbar(xs, [p[1] for p in pts], yerr=[[p[1] - p[2] for p in pts], [p[3] - p[1] for p in pts]],
                            marker="o", capsize=3, label=m)
            if x_key in ("hidden_size", "seq_len", "chunk_size", "eval_len"):
                ax.set_xscale("log", base=2)
            ax.set_xlabel(LABEL[x_key])
            ax.set_ylabel("accuracy")
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(", ".join(f"{LABEL[k]} = {v:g}" for k, v in zip(panel_keys, pv)) or title, fontsize=9)
        axes[0][-1].legend(fontsize=7)
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
