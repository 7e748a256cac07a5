"""The trained model as a Hugging Face folder (save_pretrained plus its tokenizer), written atomically."""

from __future__ import annotations

import sys
from pathlib import Path

from .checkpoint import atomic_save_dir


def _quiet_hub() -> None:
    """No 'Writing model shards' progress bars on stderr."""
    for mod, fn in (("huggingface_hub.utils", "disable_progress_bars"),
                    ("transformers.utils.logging", "disable_progress_bar")):
        try:
            getattr(__import__(mod, fromlist=[fn]), fn)()
        except Exception:
            pass


def export_hf(model, task, path: Path) -> str | None:
    """save_pretrained (plus a byte-level tokenizer for byte tasks) into `path`, atomically; None if unsupported."""
    if not hasattr(model, "save_pretrained"):
        return None
    tok = getattr(task, "tok", None) or getattr(getattr(task, "corpus", None), "tokenizer", None)

    def write(tmp: Path):
        _quiet_hub()
        model.save_pretrained(tmp)
        if tok is not None and getattr(tok, "byte_level", False):
            try:
                tok.to_hf().save_pretrained(tmp)
            except Exception as e:  # pragma: no cover - transformers missing
                print(f"note: tokenizer not exported ({e})", file=sys.stderr)
        elif tok is not None and hasattr(tok, "path"):
            import shutil

            shutil.copy(tok.path, tmp / "tokenizer.json")

    try:
        atomic_save_dir(write, path)
    except Exception as e:
        print(f"note: HF export skipped ({str(e).splitlines()[0] if str(e) else type(e).__name__})", file=sys.stderr)
        return None
    return str(path)
