"""Evaluation of a trained model on a task: MQAR / robust accuracy, S-NIAH likelihood accuracy, LM perplexity."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from .modeling import LossModule


def _autocast(device: torch.device, amp: bool):
    if device.type == "cuda" and amp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def recall_accuracy(model, test_sets, device, batch_size: int = 64, amp: bool = True) -> dict:
    """Zoology's metric: per example (correct scored positions / scored positions), averaged per slice;
    "accuracy" is the mean over slices (slices weigh equally). Where a slice gives its query positions ("query_pos",
    [N, kv]), `queries_NAME` is the accuracy at the first, second, ... query of each example in sequence order. A
    later query comes after more tokens written into the memory since the pairs (fillers, earlier queries): accuracy
    that falls from the first query to the last shows a memory losing pairs to those writes, a flat row one that
    holds every pair alike."""
    lossm = LossModule(model)
    model.eval()
    out, by_query = {}, {}
    for name, data in test_sets:
        ids, labels = torch.from_numpy(data["input_ids"]), torch.from_numpy(data["labels"])
        accs, hits = [], []
        for i in range(0, len(ids), batch_size):
            x, y = ids[i:i + batch_size].to(device), labels[i:i + batch_size].to(device)
            with _autocast(device, amp):
                m = lossm.model
                mask = y != -100
                if hasattr(m, "lm_head") and hasattr(m, "model"):
                    logits = m.lm_head(m.model(input_ids=x).last_hidden_state[mask])
                else:
                    logits = m(input_ids=x).logits[mask]
            hit = torch.zeros_like(y, dtype=torch.float32)
            hit[mask] = (logits.argmax(-1) == y[mask]).float()
            accs.append((hit.sum(1) / mask.sum(1).clamp_min(1)).cpu())
            hits.append(hit.cpu())
        out[name] = float(torch.cat(accs).mean())
        if "query_pos" in data:
            in_order = torch.from_numpy(np.sort(data["query_pos"], axis=1)).long()
            by_query[name] = [round(float(a), 4) for a in torch.cat(hits).gather(1, in_order).mean(0)]
    model.train()
    metrics = {"accuracy": float(np.mean(list(out.values())))}
    metrics.update({f"acc_{k}": v for k, v in out.items()})
    metrics.update({f"queries_{k}": v for k, v in by_query.items()})
    return metrics


def accuracy_by_query(metrics: dict) -> list[float] | None:
    """recall_accuracy's accuracy at each query in sequence order (its first slice's), or None where not measured."""
    return next((v for k, v in metrics.items() if k.startswith("queries_")), None)


@torch.no_grad()
def niah_accuracy(model, task, device, num_examples: int | None = None, lengths=None, amp: bool = True) -> dict:
    """Per length: "accuracy" (the needle answer's log-likelihood beats every distractor's) and "token_accuracy"
    (teacher-forced argmax over the answer tokens). The headline "accuracy" averages the lengths."""
    model.eval()
    lengths = list(lengths or [task.seq_len])
    metrics = {}
    for L in lengths:
        exs = task.test_examples_list(num_examples, seq_len=L)
        wins, tok_acc = 0, []
        for ex in exs:
            prompt = ex["input_ids"][: ex["answer_start"]]
            cands = [ex["answer"]] + ex["distractors"]
            n = max(len(c) for c in cands)
            seqs = np.zeros((len(cands), len(prompt) + n), dtype=np.int64)
            for j, c in enumerate(cands):
                seqs[j, : len(prompt)] = prompt
                seqs[j, len(prompt): len(prompt) + len(c)] = c
            x = torch.from_numpy(seqs).to(device)
            with _autocast(device, amp):
                logits = model(input_ids=x).logits
            logp = F.log_softmax(logits.float(), -1)
            lls = []
            for j, c in enumerate(cands):
                pos = torch.arange(len(prompt) - 1, len(prompt) - 1 + len(c), device=device)
                tgt = torch.as_tensor(c, device=device)
                lls.append(float(logp[j, pos, tgt].sum()))
                if j == 0:
                    tok_acc.append(float((logits[0, pos].argmax(-1) == tgt).float().mean()))
            wins += int(lls[0] > max(lls[1:])) if len(lls) > 1 else 1
        metrics[f"accuracy_{L}"] = wins / max(1, len(exs))
        metrics[f"token_accuracy_{L}"] = float(np.mean(tok_acc)) if tok_acc else 0.0
    model.train()
    metrics["accuracy"] = float(np.mean([metrics[f"accuracy_{L}"] for L in lengths]))
    metrics["token_accuracy"] = float(np.mean([metrics[f"token_accuracy_{L}"] for L in lengths]))
    metrics["chance"] = 1.0 / (1 + task.num_distractors)
    return metrics


@torch.no_grad()
def lm_perplexity(model, task, device, max_windows: int | None = None, amp: bool = True) -> dict:
    """Validation loss (nats/token), perplexity, and bits per byte for a byte-level corpus."""
    lossm = LossModule(model)
    model.eval()
    total, count = 0.0, 0
    for w in task.eval_windows(max_windows):
        x, y = torch.from_numpy(w["input_ids"]).to(device), torch.from_numpy(w["labels"]).to(device)
        with _autocast(device, amp):
            loss, _ = lossm(x, y)
        total += float(loss)
        count += int(y.numel())
    model.train()
    nats = total / max(1, count)
    out = {"loss": nats, "perplexity": math.exp(min(nats, 700.0)), "tokens": count}
    if task.corpus.byte_level:
        out["bits_per_byte"] = nats / math.log(2)
    return out


def evaluate(model, cfg, task, device, num_examples: int | None = None) -> dict:
    name = task.name
    if name in ("mqar", "robust"):
        return recall_accuracy(model, task.test_sets(num_examples), device, cfg.eval_batch_size, cfg.amp)
    if name == "niah":
        return niah_accuracy(model, task, device, num_examples, amp=cfg.amp)
    if name == "lm":
        return lm_perplexity(model, task, device, num_examples, amp=cfg.amp)
    raise ValueError(name)
