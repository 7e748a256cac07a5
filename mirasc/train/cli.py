"""`mirasc train` and `mirasc eval` (registered into mirasc/cli.py through `register(subparsers)`).

    mirasc train SPEC --task mqar|niah|robust|lm [--data PATH] [--config NAME|PATH.toml] --steps N
                 --batch-size B --lr LR --hidden-size D --layers L --heads H --seq-len T --kv-pairs K --vocab V
                 --seed S --out DIR [--resume] [--device cpu|cuda] [--baseline transformer] [--fsdp]
    mirasc eval CHECKPOINT --task mqar|niah|robust|lm [--json]

SPEC is a .miras path, a prebuilt name (moneta, yaad, ...), or `transformer` for the Transformer++ baseline
(--baseline transformer does the same). --config NAME is a packaged config (tiny, 170m, 340m, 780m: models/configs/
in a checkout). Flags override the config file. Bad input: one line on stderr, exit 2. A checkpoint holds only
tensors and plain data and is read with torch.load(weights_only=True): one naming any other object is refused.
Under torchrun (`python -m torch.distributed.run --nproc_per_node 2 -m mirasc train ...`) it trains with DDP,
or with --fsdp with FSDP2 (parameters, gradients and optimizer state sharded over the processes; CPU/gloo or
GPU/nccl). --fsdp without torchrun is an error (one process has nothing to shard). Checkpoints are always full
(unsharded): a run saved under FSDP resumes in one process, under DDP or under FSDP, and `mirasc eval` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys

from .config import TASKS, TrainError, config_path


def register(sub) -> None:
    t = sub.add_parser("train", help="train a model (Miras spec or Transformer++) on mqar, niah, robust or lm",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("spec", help="a .miras path, a prebuilt name (moneta, yaad, memora, ...) or 'transformer'")
    t.add_argument("--task", choices=TASKS)
    t.add_argument("--data", help="text file or folder, nanoGPT .bin, or folder with train.bin/val.bin (lm, niah)")
    t.add_argument("--tokenizer", help="a local tokenizer.json (default: byte-level)")
    t.add_argument("--bin-dtype", dest="bin_dtype", choices=("uint16", "uint32"))
    t.add_argument("--config", help="a .toml path, or the name of a packaged config (tiny, 170m, 340m, 780m)")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", dest="batch_size", type=int, help="global batch size")
    t.add_argument("--grad-accum", dest="grad_accum", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--warmup-steps", dest="warmup_steps", type=int)
    t.add_argument("--hidden-size", dest="hidden_size", type=int)
    t.add_argument("--layers", dest="num_layers", type=int)
    t.add_argument("--heads", dest="num_heads", type=int)
    t.add_argument("--seq-len", dest="seq_len", type=int)
    t.add_argument("--kv-pairs", dest="kv_pairs", type=int)
    t.add_argument("--vocab", dest="vocab_size", type=int)
    t.add_argument("--tier", choices=("cpu", "paper"), help="MQAR tier (V=512 CPU mix, or V=8192 Based mix)")
    t.add_argument("--niah-kind", dest="niah_kind", choices=("pk", "number", "word"))
    t.add_argument("--contamination", type=float, help="robust task: corruption probability")
    t.add_argument("--chunk-size", dest="chunk_size", type=int)
    t.add_argument("--torch-compile", dest="torch_compile", action="store_true", default=None,
                   help="run the memory's chunk programs through torch.compile (faster on CPU after a one-off compile)")
    t.add_argument("--spec-option", dest="spec_option", action="append", metavar="NAME=VALUE",
                   help="choose one of the spec's `option` values (repeatable), e.g. normalisation=none for moneta")
    t.add_argument("--hybrid", action="store_true", default=None)
    t.add_argument("--window", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--out", help="run directory (checkpoint, config.json, metrics.jsonl, loss_curve.png)")
    t.add_argument("--resume", action="store_true", default=None, help="continue from OUT/checkpoint.pt")
    t.add_argument("--overwrite", action="store_true", default=None, help="start over in an existing run dir")
    t.add_argument("--device", choices=("auto", "cpu", "cuda"))
    t.add_argument("--baseline", choices=("transformer",), help="train the Transformer++ baseline instead of SPEC")
    t.add_argument("--fsdp", action=argparse.BooleanOptionalAction, default=None,
                   help="under torchrun: shard the model with FSDP2 (fully_shard per block, then the root) instead "
                        "of DDP; checkpoints stay full (loadable by one process and `mirasc eval`); an error "
                        "without torchrun. --no-fsdp overrides a config file's fsdp = true")
    t.add_argument("--log-every", dest="log_every", type=int)
    t.add_argument("--ckpt-every", dest="ckpt_every", type=int)
    t.add_argument("--eval-examples", dest="eval_examples", type=int)
    t.add_argument("--threads", type=int)
    t.add_argument("--quiet", action="store_true", default=None)
    t.set_defaults(fn=cmd_train)

    e = sub.add_parser("eval", help="evaluate a checkpoint: MQAR/robust accuracy, NIAH accuracy, LM perplexity")
    e.add_argument("checkpoint", help="a run directory or its checkpoint.pt")
    e.add_argument("--task", choices=TASKS, help="default: the task it was trained on")
    e.add_argument("--data", help="lm/niah: a text file, folder or .bin (default: the training data)")
    e.add_argument("--seq-len", dest="seq_len", type=int)
    e.add_argument("--niah-kind", dest="niah_kind", choices=("pk", "number", "word"))
    e.add_argument("--num-examples", dest="num_examples", type=int,
                   help="examples per test slice (mqar, robust, niah) or windows (lm)")
    e.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    e.add_argument("--json", action="store_true", help="print one JSON object on the last line")
    e.set_defaults(fn=cmd_eval)


def _fail(cmd: str, msg: str) -> int:
    print(f"mirasc {cmd}: error: {msg}", file=sys.stderr)
    return 2


def parse_spec_options(pairs: list[str] | None) -> dict | None:
    """["normalisation=none", ...] -> {"normalisation": "none", ...} (None for none); TrainError when malformed."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise TrainError(f"--spec-option expects NAME=VALUE, got {pair!r}")
        out[name.strip()] = value.strip()
    return out


def cmd_train(args) -> int:
    from .loop import train

    over = {k: getattr(args, k) for k in (
        "task", "data", "tokenizer", "bin_dtype", "steps", "batch_size", "grad_accum", "lr", "warmup_steps",
        "hidden_size", "num_layers", "num_heads", "seq_len", "kv_pairs", "vocab_size", "tier", "niah_kind",
        "contamination", "chunk_size", "hybrid", "window", "seed", "out", "resume", "overwrite", "device",
        "log_every", "ckpt_every", "eval_examples", "threads", "quiet", "fsdp", "torch_compile")}
    over["spec"] = "transformer" if args.baseline else args.spec
    try:
        over["spec_options"] = parse_spec_options(args.spec_option)
        cfg_file = str(config_path(args.config)) if args.config else None
        res = train(cfg_file, **over)
    except TrainError as e:
        return _fail("train", str(e))
    except KeyboardInterrupt:
        return _fail("train", "interrupted (the last checkpoint is intact; continue with --resume)")
    print(f"checkpoint: {res.checkpoint}")
    print(f"metrics:    {res.metrics_path}")
    if res.plot_path:
        print(f"loss curve: {res.plot_path}")
    if res.hf_dir:
        print(f"HF model:   {res.hf_dir}")
    return 0


def cmd_eval(args) -> int:
    from .run_eval import evaluate_checkpoint

    try:
        metrics = evaluate_checkpoint(args.checkpoint, task=args.task, num_examples=args.num_examples,
                                      data=args.data, seq_len=args.seq_len, device=args.device,
                                      niah_kind=args.niah_kind)
    except TrainError as e:
        return _fail("eval", str(e))
    from .checkpoint import find_checkpoint, load_checkpoint

    task = args.task or load_checkpoint(find_checkpoint(args.checkpoint))["config"]["task"]
    head = {"mqar": "accuracy", "robust": "accuracy", "niah": "accuracy", "lm": "perplexity"}[task]
    print(f"{task} {head}: {metrics[head]:.4f}")
    for k, v in metrics.items():
        if k != head:
            print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    if args.json:
        print(json.dumps({"task": task, "checkpoint": str(args.checkpoint), "metrics": metrics}))
    return 0
