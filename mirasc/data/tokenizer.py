"""Tokenizers: byte-level by default (id = byte value, vocabulary 256), or a local `tokenizer.json` through the
`tokenizers` library. Both expose encode(str) -> list[int], decode(ids) -> str, vocab_size and byte_level."""

from __future__ import annotations

from pathlib import Path

from .common import DataError


class ByteTokenizer:
    """UTF-8 bytes as token ids 0..255: no files, fully reversible, bits per byte = nats per token / ln 2."""

    vocab_size = 256
    byte_level = True
    name = "bytes"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")

    def to_hf(self):
        """A transformers PreTrainedTokenizerFast whose ids equal these byte ids (for save_pretrained / lm_eval)."""
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
        from transformers import PreTrainedTokenizerFast

        table = pre_tokenizers.ByteLevel.alphabet()  # the 256 printable stand-ins of GPT-2's byte map
        byte_map = _bytes_to_unicode()
        vocab = {byte_map[b]: b for b in range(256)}
        assert set(vocab) == set(table)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
        tok.decoder = decoders.ByteLevel()
        return PreTrainedTokenizerFast(tokenizer_object=tok)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (what the ByteLevel pre-tokenizer uses)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


class HFTokenizer:
    """A local tokenizer.json (HF `tokenizers`)."""

    byte_level = False

    def __init__(self, path: str | Path):
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise DataError(f"tokenizer file not found: {path}")
        try:
            from tokenizers import Tokenizer
        except ImportError as e:  # pragma: no cover - tokenizers ships with transformers
            raise DataError(f"a tokenizer.json needs the `tokenizers` package ({e})") from None
        try:
            self.tok = Tokenizer.from_file(str(path))
        except Exception as e:
            raise DataError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None
        self.path = str(path)
        self.name = str(path)
        self.vocab_size = int(self.tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids) -> str:
        return self.tok.decode([int(i) for i in ids])


def get_tokenizer(path: str | Path | None = None):
    return ByteTokenizer() if path is None else HFTokenizer(path)
