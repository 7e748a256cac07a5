"""lm-evaluation-harness adapter (needs `pip install lm-eval accelerate`; not a mirasc dependency).

A training run writes a Hugging Face export to RUN/hf (save_pretrained plus, for byte-level tasks, a
tokenizer.json whose ids equal the bytes). lm_eval's `hf` backend loads it through AutoModelForCausalLM, which
knows the "miras" model type once `mirasc.models` has been imported. So run lm_eval through this module:

    python -m mirasc.train.lm_eval_adapter --model hf --model_args pretrained=runs/lm/hf,dtype=float32 \
        --tasks my_local_task --include_path tasks/ --device cpu --batch_size 8

(any lm_eval CLI arguments; this only registers the model classes first). From Python:

    from mirasc.train.lm_eval_adapter import hflm
    import lm_eval
    lm = hflm("runs/lm/hf", device="cpu", batch_size=8)
    lm_eval.simple_evaluate(model=lm, tasks=["my_local_task"], task_manager=lm_eval.tasks.TaskManager(...))

Offline use: only local-data tasks work (stock tasks fetch from the hub); set HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1. Loglikelihood tasks need only forward(); generate_until uses MirasForCausalLM.generate.
"""

from __future__ import annotations

import sys


def _register() -> None:
    import mirasc.models  # noqa: F401  (registers AutoConfig / AutoModelForCausalLM for model_type "miras")


def hflm(pretrained: str, device: str = "cpu", batch_size: int = 8, max_length: int | None = None):
    """An lm_eval HFLM around a mirasc HF export (model and tokenizer loaded from `pretrained`)."""
    _register()
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pretrained)
    tok = AutoTokenizer.from_pretrained(pretrained)
    kw = {"max_length": max_length} if max_length else {}
    return HFLM(pretrained=model, tokenizer=tok, device=device, batch_size=batch_size, **kw)


def main(argv=None) -> int:
    _register()
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        print(f"lm_eval_adapter: error: lm-evaluation-harness is not installed ({e}); pip install lm-eval accelerate",
              file=sys.stderr)
        return 2
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
