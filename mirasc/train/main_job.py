"""The main job: train a small Moneta on MQAR (CPU tier, V = 512), as specified (literal Eq. 24 lq normalisation)
and with its q = 2 switch, next to Gated DeltaNet (another Miras instance) and a Transformer++ baseline, on CPU.

    python -m mirasc.train.main_job [--out runs/main_job] [--moneta-steps N] [--baseline-steps N] [--quick]

Prints each model's MQAR accuracy (chance ≈ 1/256) and where its checkpoint, metrics and loss curve were
written, plus the whole job's wall time. The embedded defaults are sized for a 2-core CPU (about 3–4 minutes).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import TrainError

# Sized for a 2-core CPU: Moneta's chunked MLP memory costs ~10x a Transformer++ step here.
# (L=32, 4 pairs, V=512): the CPU tier's vocabulary at half its shortest slice, so Moneta gets enough steps.
COMMON = {"task": "mqar", "tier": "cpu", "seq_len": 32, "kv_pairs": 4, "num_layers": 2, "warmup_steps": 15,
          "log_every": 25, "eval_examples": 256, "overwrite": True, "seed": 0}
RUNS = {
    "moneta": {"spec": "moneta", "hidden_size": 32, "num_heads": 1, "batch_size": 64, "steps": 400, "lr": 1e-2},
    # the same with moneta.miras's q = 2 switch (no lq normalisation): the literal Eq. 24 map (degree -1) is what
    # keeps the default from learning the task at this size
    "moneta_q2": {"spec": "moneta", "spec_options": {"normalisation": "none"}, "hidden_size": 32, "num_heads": 1,
                  "batch_size": 64, "steps": 400, "lr": 1e-2},
    # a second Miras instance (linear memory, delta rule with decay): shows the layer and loop learn the task
    "gated_deltanet": {"spec": "gated_deltanet", "hidden_size": 32, "num_heads": 1, "batch_size": 64, "steps": 400,
                       "lr": 1e-2},
    "transformer": {"spec": "transformer", "hidden_size": 32, "num_heads": 1, "batch_size": 64, "steps": 400,
                    "lr": 1e-2},
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m mirasc.train.main_job", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/main_job")
    p.add_argument("--moneta-steps", type=int)
    p.add_argument("--baseline-steps", type=int)
    p.add_argument("--quick", action="store_true", help="a few steps of each (a smoke test)")
    args = p.parse_args(argv)
    from .loop import train

    t0 = time.perf_counter()
    summary = {}
    for name, run in RUNS.items():
        cfg = {**COMMON, **run, "out": str(Path(args.out) / name)}
        if args.quick:
            cfg.update(steps=4, eval_examples=32, log_every=2)
        elif name.startswith("moneta") and args.moneta_steps:
            cfg["steps"] = args.moneta_steps
        elif not name.startswith("moneta") and args.baseline_steps:  # the baselines
            cfg["steps"] = args.baseline_steps
        opts = "".join(f" ({k} = {v})" for k, v in cfg.get("spec_options", {}).items())
        print(f"== {name}{opts}: {cfg['hidden_size']}-wide, {cfg['num_layers']} layers, {cfg['steps']} steps of batch "
              f"{cfg['batch_size']} on MQAR (L={cfg['seq_len']}, {cfg['kv_pairs']} pairs, V=512)", flush=True)
        try:
            res = train(cfg)
        except TrainError as e:
            print(f"main_job: error: {e}", file=sys.stderr)
            return 2
        summary[name] = {"accuracy": res.eval.get("accuracy"), "final_loss": res.final_loss, "wall_s": res.wall_s,
                         "tokens_per_s": res.tokens_per_s, "params": res.params, "checkpoint": res.checkpoint,
                         "metrics": res.metrics_path, "plot": res.plot_path}
    wall = time.perf_counter() - t0
    print("\n== MQAR accuracy (CPU tier, chance ~ 0.004)")
    for name, s in summary.items():
        print(f"{name:>12}: accuracy {s['accuracy']:.3f} | final loss {s['final_loss']:.3f} | {s['params']:,} params "
              f"| {s['wall_s']:.0f}s | {s['tokens_per_s']:,.0f} tok/s")
        print(f"{'':>12}  checkpoint {s['checkpoint']}\n{'':>12}  metrics    {s['metrics']}\n"
              f"{'':>12}  loss curve {s['plot']}")
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps({"wall_s": wall, **summary}, indent=2) + "\n")
    print(f"main job wall time {wall:.0f}s; summary {Path(args.out) / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
