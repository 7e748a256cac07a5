"""lm-evaluation-harness adapter (needs `pip install lm-eval accelerate`: the `test` extra; not a dependency).

A training run writes a Hugging Face export to RUN/hf (save_pretrained plus, for byte-level tasks, a
tokenizer.json whose ids equal the bytes). lm_eval's `hf` backend (HFLM) loads it through AutoModelForCausalLM,
which knows the "miras" model type once `mirasc.models` has been imported. The byte-level tokenizer has no BOS, EOS
or pad token, which the stock `hf` backend needs (lm_eval 0.4.13 fails on every loglikelihood request with
"'None' is not an instance of 'Sequence'"), so this module registers a `miras` model: HFLM with
  - prefix_token_id = the id of "\\n" when the tokenizer has neither BOS nor EOS (the token before a text;
    training files are joined by blank lines). It conditions empty contexts (loglikelihood_rolling);
  - pad = id 0 when the tokenizer has no pad token (lm_eval would add a token 256 the embedding lacks);
    left padding in generate_until is masked through attention_mask;
  - no EOS stop sequence in generate_until when there is no EOS token (stops at `until` or max_gen_toks);
  - logits_cache=False by default: lm_eval's context grouping (seen in lm_eval 0.4.13) scores a continuation
    at the wrong positions when another request has the same context+continuation[:-1] split at a different point
    (e.g. "hello th"+"ere." after "hello"+" there."). Pass logits_cache=True to get lm_eval's default back.
With a tokenizer that has BOS/EOS/pad tokens and logits_cache=True it behaves exactly as `hf`. Run lm_eval
through this module, from the directory that a task's relative `data_files` are resolved against:

    python -m mirasc.train.lm_eval_adapter --model miras --model_args pretrained=runs/lm/hf,dtype=float32 \\
        --tasks mirasc_bytes_mc --include_path tests/data/lm_eval_task --device cpu --batch_size 8

(any lm_eval CLI arguments; this only registers the model classes first). From Python:

    import lm_eval
    from lm_eval.tasks import TaskManager
    from mirasc.train.lm_eval_adapter import hflm
    lm = hflm("runs/lm/hf", device="cpu", batch_size=8)
    tm = TaskManager(include_path="tests/data/lm_eval_task", include_defaults=False)  # skip indexing stock tasks
    out = lm_eval.simple_evaluate(model=lm, tasks=["mirasc_bytes_mc"], task_manager=tm)
    out["results"]["mirasc_bytes_mc"]["acc,none"]

Offline use: only local-data tasks work (stock tasks fetch from the hub); set HF_HUB_OFFLINE=1,
HF_DATASETS_OFFLINE=1. A local task is a YAML with `dataset_path: json` and `dataset_kwargs: {data_files: ...}`;
tests/data/lm_eval_task is one (tests/test_lm_eval.py checks its scores against the model's own log-probs).
Loglikelihood tasks need only forward(); generate_until uses MirasForCausalLM.generate.
"""

from __future__ import annotations

import sys

_CLASS = None


def _register() -> None:
    import mirasc.models  # noqa: F401  (registers AutoConfig / AutoModelForCausalLM for model_type "miras")


def _prepare_tokenizer(tok):
    """Give a tokenizer without pad token one that is in the vocabulary (id 0); return the prefix id to use."""
    if tok.pad_token_id is None:
        tok.pad_token_id = 0
    if tok.bos_token_id is None and tok.eos_token_id is None:
        nl = tok.encode("\n", add_special_tokens=False)
        if len(nl) == 1:
            return nl[0]
    return None


def lm_class():
    """The `miras` lm_eval model class (an HFLM subclass), registered with lm_eval's model registry."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    _register()
    import lm_eval.models  # noqa: F401  (fills the registry first: lm_eval only does that while it is empty)
    from lm_eval.api.registry import register_model
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoTokenizer

    class MirasLM(HFLM):
        """HFLM for mirasc HF exports: `pretrained` is a directory (or a loaded model with `tokenizer` given)."""

        def __init__(self, pretrained, tokenizer=None, prefix_token_id=None, backend="causal", logits_cache=False,
                     **kwargs):
            if tokenizer is None or isinstance(tokenizer, str):
                src = tokenizer or pretrained
                if not isinstance(src, str):
                    raise ValueError("MirasLM: pass `tokenizer` with an already-loaded model")
                tokenizer = AutoTokenizer.from_pretrained(src)
            nl = _prepare_tokenizer(tokenizer)
            if prefix_token_id is None:
                prefix_token_id = nl
            super().__init__(pretrained=pretrained, tokenizer=tokenizer, prefix_token_id=prefix_token_id,
                             backend=backend, logits_cache=logits_cache, **kwargs)

        def tok_decode(self, tokens, skip_special_tokens: bool = True):
            if tokens is None:  # eot_token_id of a tokenizer without EOS: no EOS stop sequence
                return None
            return super().tok_decode(tokens, skip_special_tokens=skip_special_tokens)

    register_model("miras")(MirasLM)
    _CLASS = MirasLM
    return MirasLM


def hflm(pretrained: str, device: str = "cpu", batch_size: int = 8, max_length: int | None = None, **kwargs):
    """The `miras` lm_eval model (HFLM subclass) around a mirasc HF export (model and tokenizer from `pretrained`).

    Extra keyword arguments go to HFLM (e.g. prefix_token_id, logits_cache, add_bos_token)."""
    cls = lm_class()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(pretrained)
    tok = AutoTokenizer.from_pretrained(pretrained)
    if max_length:
        kwargs["max_length"] = max_length
    return cls(pretrained=model, tokenizer=tok, device=device, batch_size=batch_size, **kwargs)


def main(argv=None) -> int:
    try:
        lm_class()
        from lm_eval.__main__ import cli_evaluate
    except ImportError as e:
        print(f"lm_eval_adapter: error: cannot import lm-evaluation-harness ({e}); pip install lm-eval accelerate",
              file=sys.stderr)
        return 2
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
