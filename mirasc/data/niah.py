"""Synthetic single-needle retrieval in the spirit of RULER S-NIAH (eval-tasks.md §2), for tiny models.

Kinds:
  "pk"     pass-key: the noise haystack ("The grass is green. The sky is blue. ..."), a 7-digit number needle;
  "number" number in a text haystack (the KJV by default, or any text given), a 7-digit number needle;
  "word"   word in a text haystack: an adjective-noun value ("fluffy-table") instead of digits.

One example, at exactly `seq_len` tokens (haystack truncated to fit), with template "ruler" (RULER's wording):
  "A special magic {v} is hidden within the following text. Make sure to memorize it. ...\n"
  haystack with "One of the special magic {v}s for {key} is: {value}." inserted between sentences at a depth
  drawn from 40 evenly spaced depths, then
  "\nWhat is the special magic {v} for {key} mentioned in the provided text? The special magic {v} for {key}
  mentioned in the provided text is" + " {value}"
Template "short" (the default, for tiny models): needle " The special magic {v} for {key} is: {value}. ", and
  "\nThe special magic {v} for {key} is" + " {value}" at the end, no instruction header.
Scoring is by likelihood, so untrained-to-follow-instructions models can be measured: the example is correct when
the answer's log-likelihood beats every one of `num_distractors` random answers of the same kind; the per-token
(teacher-forced argmax) answer accuracy is reported too. For training, only the answer tokens are labelled.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .common import IGNORE_INDEX, DataError, step_rng, test_rng
from .tokenizer import get_tokenizer

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
ADJECTIVES = (
    "amber bold brave bright calm clever cosmic crisp curly dusty eager fancy fluffy gentle gleaming golden grand "
    "happy hidden humble icy jolly keen lively lucky mellow misty noble odd proud quiet rapid rusty shiny silent "
    "silver sleepy smooth spicy steady sunny swift tender tiny velvet vivid wild witty young zesty"
).split()
NOUNS = (
    "anchor apple arrow badge basket beacon bottle bridge candle canyon castle cloud comet compass crystal desert "
    "dragon engine falcon feather forest garden harbor helmet island jacket kettle ladder lantern meadow mirror "
    "needle orchard pebble pillow planet pocket river saddle shadow table thunder tiger tower valley violin wagon"
).split()
KINDS = ("pk", "number", "word")
_SENT = re.compile(r"(?<=[.!?])\s+")


def _snap(hay: bytes, cut: int) -> int:
    for sep in (b". ", b" "):
        before, after = hay.rfind(sep, 0, cut), hay.find(sep, cut)
        cands = [j + 1 for j in (before, after) if j >= 0]
        if cands:
            return min(cands, key=lambda j: abs(j - cut))
    return cut


def _word(rng) -> str:
    return f"{ADJECTIVES[rng.integers(len(ADJECTIVES))]}-{NOUNS[rng.integers(len(NOUNS))]}"


def _value(kind: str, rng, digits: int) -> str:
    if kind == "word":
        return _word(rng)
    return str(int(rng.integers(10 ** (digits - 1), 10**digits)))


@dataclass
class NIAHTask:
    kind: str = "pk"
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 16
    tokenizer: str | None = None
    haystack_text: str | None = None
    num_distractors: int = 9
    digits: int = 7
    vocab_size: int | None = None
    test_examples: int = 64
    template: str = "short"

    name = "niah"

    def __post_init__(self):
        if self.template not in ("short", "ruler"):
            raise DataError(f"unknown NIAH template {self.template!r} (expected short or ruler)")
        if self.kind not in KINDS:
            raise DataError(f"unknown NIAH kind {self.kind!r} (expected {', '.join(KINDS)})")
        self.tok = get_tokenizer(self.tokenizer)
        if self.vocab_size is None:
            self.vocab_size = self.tok.vocab_size
        if self.kind != "pk" and self.haystack_text is None:
            from .lm import kjv_text

            self.haystack_text = kjv_text("val")
        self._hay = self.haystack_text if self.kind != "pk" else None
        self.v = "word" if self.kind == "word" else "number"
        fixed = len(self._encode_parts("x" * 20, "0" * 20, "")[0]) + 10
        if self.seq_len < fixed + 16:
            raise DataError(f"NIAH seq_len {self.seq_len} is too short for the template (needs >= {fixed + 16})")

    @property
    def max_seq_len(self) -> int:
        return self.seq_len

    def _encode_parts(self, key: str, value: str, hay: str):
        v = self.v
        e = self.tok.encode
        if self.template == "short":
            head, needle = "", f" The special magic {v} for {key} is: {value}. "
            question = f"\nThe special magic {v} for {key} is"
            return e(head) + e(needle) + e(question), e(head), e(needle), e(question), e(hay)
        head = (f"A special magic {v} is hidden within the following text. Make sure to memorize it. "
                f"I will quiz you about the {v} afterwards.\n")
        needle = f" One of the special magic {v}s for {key} is: {value}. "
        question = (f"\nWhat is the special magic {v} for {key} mentioned in the provided text? "
                    f"The special magic {v} for {key} mentioned in the provided text is")
        return e(head) + e(needle) + e(question), e(head), e(needle), e(question), e(hay)

    def _haystack(self, rng, n_chars: int) -> str:
        if self._hay is None:
            reps = n_chars // (len(NOISE) + 1) + 2
            return " ".join([NOISE] * reps)
        text = self._hay
        if len(text) <= n_chars + 1:
            return (text + " ") * (n_chars // max(1, len(text)) + 2)
        start = int(rng.integers(0, len(text) - n_chars - 1))
        m = _SENT.search(text, start)
        start = m.end() if m and m.end() < len(text) - n_chars else start
        return text[start:start + n_chars + 256]

    def example(self, rng) -> dict:
        """{"input_ids": [T] prompt+answer, "answer_start": int, "answer": ids, "distractors": [ids...]}."""
        key = _word(rng)
        value = _value(self.kind, rng, self.digits)
        answer = self.tok.encode(" " + value)
        _, head, needle, question, _ = self._encode_parts(key, value, "")
        budget = self.seq_len - len(head) - len(needle) - len(question) - len(answer)
        hay_ids = self.tok.encode(self._haystack(rng, budget * 4 if not self.tok.byte_level else budget + 8))
        while len(hay_ids) < budget:
            hay_ids = hay_ids + hay_ids
        hay_ids = hay_ids[:budget]
        depth = float(np.linspace(0.0, 1.0, 40)[rng.integers(40)])
        cut = int(round(depth * budget))
        if self.tok.byte_level:  # snap to the nearest sentence boundary (else word boundary)
            cut = _snap(bytes(hay_ids), cut)
        ids = head + hay_ids[:cut] + needle + hay_ids[cut:] + question + answer
        assert len(ids) == self.seq_len, (len(ids), self.seq_len)
        distractors = []
        seen = {value}
        while len(distractors) < self.num_distractors:
            d = _value(self.kind, rng, self.digits)
            if d in seen:
                continue
            seen.add(d)
            distractors.append(self.tok.encode(" " + d))
        return {"input_ids": np.asarray(ids, dtype=np.int64), "answer_start": self.seq_len - len(answer),
                "answer": answer, "distractors": distractors, "value": value, "key": key, "depth": depth}

    def _batch(self, rng, n: int) -> dict[str, np.ndarray]:
        ids = np.zeros((n, self.seq_len), dtype=np.int64)
        labels = np.full((n, self.seq_len), IGNORE_INDEX, dtype=np.int64)
        for i in range(n):
            ex = self.example(rng)
            ids[i] = ex["input_ids"]
            a = ex["answer_start"]
            labels[i, a - 1:self.seq_len - 1] = ex["input_ids"][a:]
        return {"input_ids": ids, "labels": labels}

    def train_batch(self, step: int) -> dict[str, np.ndarray]:
        return self._batch(step_rng(self.seed, step), self.batch_size)

    def test_examples_list(self, num_examples: int | None = None, seq_len: int | None = None) -> list[dict]:
        task = self if seq_len in (None, self.seq_len) else _with_len(self, seq_len)
        rng = test_rng(self.seed, int(task.seq_len))
        return [task.example(rng) for _ in range(int(num_examples or self.test_examples))]


def _with_len(task: NIAHTask, seq_len: int) -> NIAHTask:
    return NIAHTask(kind=task.kind, seq_len=seq_len, seed=task.seed, batch_size=task.batch_size,
                    tokenizer=task.tokenizer, haystack_text=task.haystack_text, num_distractors=task.num_distractors,
                    digits=task.digits, vocab_size=task.vocab_size, test_examples=task.test_examples)
