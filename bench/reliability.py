"""Reliability under bad and hostile input: what each untrusted entry point does with it.

    python -m bench.reliability [--mutants 200] [--compile-sample 2] [--kills 5] [--concurrent-rounds 3]
                                [--seed 0] [--timeout 20] [--json [PATH]] [--only SECTION ...]

Sections (each prints its rows; the table at the end is what bench/README.md quotes):
  specs        --mutants mutants of every prebuilt spec (deleted, inserted, swapped and truncated text,
               extreme numbers, keywords, Python payloads that would create a canary file if evaluated, deep
               nesting, oversize and invalid UTF-8) through mirasc.load in worker processes, each under
               --timeout seconds: crashes (an exception other than SpecError), hangs, unlocated errors
               (a SpecError whose line/col is not in the text) and code executed (the canary file, or an audit
               event: a process spawned, or Python source compiled from the payload). Up to --compile-sample
               mutants per spec that load are also compiled and run (T = 5).
  checkpoints  crafted checkpoints whose unpickling would create a canary file, through load_checkpoint,
               `mirasc eval` and `mirasc train --resume` (fresh processes): refused, canary absent, run folder
               unchanged.
  cache        cached modules altered in each way an attacker or an accident could (code appended, signature
               edited, truncated, another spec's signed module, planted unsigned, key replaced, one byte
               flipped): regenerated, never executed, same output.
  concurrent   --concurrent-rounds rounds of 4 processes compiling the same new spec at once: one module, a
               valid signature, no error, equal outputs.
  resume       --kills runs of `mirasc train` SIGKILLed at a random step and resumed: the loss curve equals the
               uninterrupted run's, bit for bit.
  inputs       NaN, +inf, -inf, below- and above-range gates, T = 0 and T = 1 through the op of every prebuilt
               spec; and `mirasc train` on 1-token sequences, too short MQAR sequences, an empty and a 1-byte
               corpus, and a diverging learning rate: clear one-line errors, and nothing written half (every
               file left parses, no temporary files).
"""

from __future__ import annotations

import argparse
import builtins
import json
import math
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from multiprocessing.connection import wait
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SPECS = sorted(p for p in (ROOT / "models").glob("*.miras"))
MARK = "MIRASC_CANARY"


# ---------------------------------------------------------------------------------------------------- mutants
NUMBERS = ["0", "-0", "1e308", "-1e308", "1e-320", "nan", "inf", "-inf", "99999999999999999999999", "0.0", "1e",
           ".", "-", "3/0", "0x10", "1_0", "-1", "2147483648", "1e400"]
WORDS = ["model", "memory", "gate", "bias", "retention", "algorithm", "chunk", "option", "when", "let", "def", "param",
         "surrogate", "range", "activation", "static", "data_dependent", "inf", "mlp", "linear", "gd", "momentum",
         "lp", "l2", "decay", "lq", "sum", "norm2", "where", "y", "v", "r", "pow", "exp", "log", "abs", "sign",
         "softmax", "channel", "scalar", "true", "false", "none"]
CHARS = list("(){}[]=:,|+-*/^#.<>!&%$@~`'\"\\;?0123456789eE_ \t\n") + ["\r", "\x00", "\x0b", "\u202e", "\u00e9",
                                                                        "\U0001d52a", "\ufeff", "\u2028"]


def payloads(canary: str) -> list[str]:
    """Text that would create `canary` if any of it were evaluated as Python, a shell command or a template."""
    return [f'__import__("os").system("touch {canary}")', f"eval('open(\"{canary}\", \"w\")')",
            f'open("{canary}", "w")', f"exec('open(\"{canary}\",\"w\")')", "lambda: 0",
            f"{{{{ cycler.__init__.__globals__.os.system('touch {canary}') }}}}", f"$(touch {canary})",
            f"`touch {canary}`", f"{MARK}()", f"__import__('{MARK}')"]


def mutate(text: str, rng: random.Random, canary: str) -> str | bytes:
    """One to three random edits of `text` (or, now and then, an oversized text or invalid UTF-8 bytes)."""
    roll = rng.random()
    if roll < 0.01:
        return text * (1 + (1 << 20) // max(1, len(text)))          # over the size limit
    if roll < 0.03:
        data = bytearray(text.encode())
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.choice([0x80, 0xff, 0xc3, 0xed, 0x00])
        return bytes(data)
    for _ in range(rng.randint(1, 3)):
        text = _edit(text, rng, canary)
    return text


def _edit(text: str, rng: random.Random, canary: str) -> str:
    op = rng.randrange(11)
    n = len(text)
    lines = text.split("\n")
    if op == 0 and n:                                                     # delete a span
        i = rng.randrange(n)
        return text[:i] + text[i + rng.randint(1, 8):]
    if op == 1:                                                           # insert characters
        i = rng.randrange(n + 1)
        return text[:i] + "".join(rng.choice(CHARS) for _ in range(rng.randint(1, 3))) + text[i:]
    if op == 2:                                                           # replace a number
        nums = list(re.finditer(r"\d+(\.\d+)?(e-?\d+)?", text))
        if nums:
            m = rng.choice(nums)
            return text[:m.start()] + rng.choice(NUMBERS) + text[m.end():]
    if op == 3:                                                           # replace a word
        words = list(re.finditer(r"[A-Za-z_][A-Za-z0-9_]*", text))
        if words:
            m = rng.choice(words)
            repl = rng.choice(WORDS + [w.group() for w in words[:50]])
            return text[:m.start()] + repl + text[m.end():]
    if op == 4:                                                           # a payload for a word or an argument
        words = list(re.finditer(r"[A-Za-z_][A-Za-z0-9_]*|\d+(\.\d+)?", text))
        if words:
            m = rng.choice(words)
            return text[:m.start()] + rng.choice(payloads(canary)) + text[m.end():]
    if op == 5 and len(lines) > 1:                                        # duplicate a line
        i = rng.randrange(len(lines))
        lines.insert(i, lines[i])
        return "\n".join(lines)
    if op == 6 and len(lines) > 1:                                        # drop a line
        del lines[rng.randrange(len(lines))]
        return "\n".join(lines)
    if op == 7 and len(lines) > 1:                                        # swap two lines
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines[i], lines[j] = lines[j], lines[i]
        return "\n".join(lines)
    if op == 8 and n:                                                     # truncate
        return text[:rng.randrange(n)]
    if op == 9:                                                           # deep nesting
        depth = rng.choice([10, 70, 500, 5000])
        i = rng.randrange(n + 1)
        return text[:i] + "(" * depth + "y" + ")" * rng.choice([0, depth]) + text[i:]
    if op == 10:                                                          # a statement of payloads
        return text + "\n" + rng.choice(["bias ", "let x = ", "def f(y) = ", "retention ", "gate "]) + \
            rng.choice(payloads(canary)) + "\n"
    return text + rng.choice(CHARS)


# ---------------------------------------------------------------------------------------------------- workers
_AUDIT: list[str] = []
_COMPILED: list[str] = []
_PAYLOAD_NAMES = {MARK, "__import__", "eval", "exec", "system", "open", "cycler"}


def _audit(event: str, args) -> None:
    if event in ("os.system", "subprocess.Popen", "os.posix_spawn", "os.exec", "os.spawn", "os.fork"):
        _AUDIT.append(event)
    elif event == "compile" and args and isinstance(args[0], (str, bytes)):
        src = args[0] if isinstance(args[0], str) else args[0].decode("utf-8", "replace")
        if MARK in src or "touch " in src:
            _COMPILED.append(src)


def _payload_in_code(src: str) -> bool:
    """Whether Python source names what a payload calls, outside comments and string literals (a generated
    module quotes its spec's lines in `#` comments, payloads included)."""
    import io
    import tokenize

    try:
        toks = list(tokenize.generate_tokens(io.StringIO(src).readline))
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return True
    return any(t.type == tokenize.NAME and t.string in _PAYLOAD_NAMES for t in toks)


def _serve(conn, cache: str) -> None:
    """A worker: receives (kind, text_or_bytes, canary, n_lines), answers with an outcome dict."""
    os.environ["MIRASC_CACHE"] = cache
    import torch

    import mirasc
    from mirasc.sample import random_inputs

    torch.set_num_threads(1)
    sys.addaudithook(_audit)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        kind, arg, canary = job
        _AUDIT.clear()
        _COMPILED.clear()
        out = {"outcome": None}
        try:
            if kind == "control":   # the detector's own check: a payload really evaluated must be caught
                exec(builtins.compile(arg, "<control>", "exec"), {})
                out["outcome"] = "ok"
            elif kind == "load":
                mirasc.load(arg)
                out["outcome"] = "ok"
            else:
                op = mirasc.compile(arg, backend="torch")
                q, k, v, gates, params = random_inputs(op, 1, 5, 2, 4, torch.float64,
                                                       generator=torch.Generator().manual_seed(0))
                o, _ = op(q, k, v, gates=gates, params=params)
                out["outcome"] = "ok" if bool(torch.isfinite(o).all()) else "ok (non-finite output)"
        except mirasc.SpecError as e:
            text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else arg
            n_lines = text.count("\n") + 1
            located = (e.file == "<string>" and 1 <= e.line <= n_lines + 1 and e.col >= 1 and e.message.strip()
                       and str(e).startswith(f"<string>:{e.line}:{e.col}: error: "))
            out["outcome"] = "located" if located else "unlocated"
            out["detail"] = str(e).splitlines()[0][:200]
        except Exception as e:  # anything else is a crash
            out["outcome"] = "crash"
            out["detail"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
        # The front end compiles no Python at all, so payload text in any compile is execution; the back end
        # compiles the generated module, where the payload may only stand in comments.
        _AUDIT.extend("compile of payload text" for src in _COMPILED if kind == "load" or _payload_in_code(src))
        if _AUDIT or os.path.exists(canary):
            out["executed"] = list(_AUDIT) + (["canary file"] if os.path.exists(canary) else [])
            if os.path.exists(canary):
                os.unlink(canary)
        conn.send(out)


class _Pool:
    """Worker processes answering one job at a time; a job over `timeout` seconds is a hang: its worker is
    killed and replaced."""

    def __init__(self, n: int, timeout: float, cache: str):
        self.ctx = mp.get_context("fork" if hasattr(os, "fork") else "spawn")
        self.n, self.timeout, self.cache = n, timeout, cache
        self.workers = [self._start() for _ in range(n)]

    def _start(self):
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_serve, args=(child, self.cache), daemon=True)
        proc.start()
        return {"proc": proc, "conn": parent, "job": None, "t0": 0.0}

    def run(self, jobs: list) -> list:
        results: list = [None] * len(jobs)
        todo = list(enumerate(jobs))
        busy = 0
        while todo or busy:
            for w in self.workers:
                if w["job"] is None and todo:
                    i, job = todo.pop(0)
                    w["job"], w["t0"] = (i, job), time.monotonic()
                    w["conn"].send(job)
                    busy += 1
            ready = wait([w["conn"] for w in self.workers if w["job"] is not None], timeout=0.5)
            for w in list(self.workers):
                if w["job"] is None:
                    continue
                i, job = w["job"]
                if w["conn"] in ready:
                    try:
                        results[i] = w["conn"].recv()
                    except EOFError:  # the worker died (a crash of the interpreter itself)
                        results[i] = {"outcome": "crash", "detail": "worker process died"}
                        self._replace(w)
                    w["job"] = None
                    busy -= 1
                elif time.monotonic() - w["t0"] > self.timeout:
                    results[i] = {"outcome": "hang", "detail": f"over {self.timeout:g} s"}
                    self._replace(w)
                    w["job"] = None
                    busy -= 1
        return results

    def _replace(self, w) -> None:
        w["proc"].kill()
        w["proc"].join()
        w.update(self._start())

    def close(self) -> None:
        for w in self.workers:
            w["conn"].close()
            w["proc"].kill()
            w["proc"].join()


def section_specs(args, tmp: Path) -> dict:
    rng = random.Random(args.seed)
    canary = str(tmp / MARK)
    jobs, owners = [], []
    for path in SPECS:
        text = path.read_text()
        for _ in range(args.mutants):
            jobs.append(("load", mutate(text, rng, canary), canary))
            owners.append(path.stem)
    pool = _Pool(2, args.timeout, str(tmp / "cache-load"))
    t0 = time.perf_counter()
    try:
        control = pool.run([("control", p, canary) for p in payloads(canary)[:4]])
        if not all(r.get("executed") for r in control):
            raise RuntimeError(f"the code-execution detector missed an evaluated payload: {control}")
        res = pool.run(jobs)
        load_s = time.perf_counter() - t0
        # compile and run a sample of the mutants that load (the spec passed the front end: now the back end)
        sample, seen = [], {}
        for job, owner, r in zip(jobs, owners, res):
            if r["outcome"] == "ok" and seen.get(owner, 0) < args.compile_sample:
                seen[owner] = seen.get(owner, 0) + 1
                sample.append(("compile", job[1], canary))
        pool.timeout = max(args.timeout, 180)
        cres = pool.run(sample)
    finally:
        pool.close()
    count = {k: sum(r["outcome"] == k for r in res) for k in ("ok", "located", "unlocated", "crash", "hang")}
    executed = sum(bool(r.get("executed")) for r in res + cres)
    bad = [(o, r) for o, r in zip(owners, res) if r["outcome"] in ("unlocated", "crash", "hang")]
    ccount = {k: sum(r["outcome"].startswith(k) for r in cres) for k in ("ok", "located", "unlocated", "crash", "hang")}
    out = {"mutants": len(jobs), "specs": len(SPECS), **count, "code_executed": executed, "load_s": load_s,
           "examples": [f"{o}: {r['outcome']}: {r.get('detail', '')}" for o, r in bad[:10]],
           "executed_detail": [r["executed"] for r in res + cres if r.get("executed")][:10],
           "compiled": len(cres), "compile": ccount,
           "compile_examples": [r.get("detail", "") for r in cres
                                if r["outcome"] in ("crash", "hang", "unlocated")][:10]}
    print(f"specs: {len(jobs)} mutants of {len(SPECS)} specs through mirasc.load in {load_s:.1f} s: "
          f"{count['ok']} load, {count['located']} located SpecErrors, {count['unlocated']} unlocated, "
          f"{count['crash']} crashes, {count['hang']} hangs; code executed {executed}")
    print(f"specs: {len(cres)} of the mutants that load, compiled and run: {ccount}")
    for line in out["examples"] + out["compile_examples"]:
        print(f"  {line}")
    return out


# ---------------------------------------------------------------------------------------------------- subprocesses
def _env(cache: Path) -> dict:
    env = dict(os.environ)
    env["MIRASC_CACHE"] = str(cache)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _mirasc(argv: list[str], cwd: Path, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mirasc", *argv], cwd=cwd, env=_env(cache), capture_output=True,
                          text=True, timeout=timeout)


def _python(code: str, cwd: Path, cache: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=_env(cache), capture_output=True, text=True,
                          timeout=timeout)


class _Opens:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


class _Exec:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (exec, (f"open({self.path!r}, 'w').write('ran')",))


def _crafted(kind: str, canary: Path, dest: Path) -> None:
    import pickle

    import torch

    from mirasc.train.checkpoint import FORMAT

    payload = {"format": FORMAT, "step": 1, "config": {"task": "mqar"}, "model": {}, "optimizer": {},
               "scheduler": {}, "rng": [], "world_size": 1}
    if kind == "open() in config":
        payload["config"] = {"task": _Opens(canary)}
    elif kind == "os.system in model":
        payload["model"] = {"w": _System(canary)}
    elif kind == "exec in rng":
        payload["rng"] = [_Exec(canary)]
    elif kind == "raw pickle (protocol 2)":
        dest.write_bytes(pickle.dumps({**payload, "x": _Opens(canary)}, protocol=2))
        return
    elif kind == "raw pickle (protocol 5)":
        dest.write_bytes(pickle.dumps({**payload, "x": _System(canary)}, protocol=5))
        return
    torch.save(payload, dest)


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def section_checkpoints(args, tmp: Path) -> dict:
    kinds = ["open() in config", "os.system in model", "exec in rng", "raw pickle (protocol 2)",
             "raw pickle (protocol 5)"]
    from mirasc.train import TrainError
    from mirasc.train.checkpoint import load_checkpoint

    rows = []
    for kind in kinds:
        for entry in ("load_checkpoint", "mirasc eval", "mirasc train --resume"):
            work = tmp / f"ck-{len(rows)}"
            run = work / "run"
            run.mkdir(parents=True)
            canary = work / "CANARY"
            _crafted(kind, canary, run / "checkpoint.pt")
            before = _tree(run)
            if entry == "load_checkpoint":
                try:
                    load_checkpoint(run)
                    refused, msg = False, "loaded"
                except TrainError as e:
                    refused, msg = True, str(e)
            else:
                argv = (["eval", "run"] if entry == "mirasc eval" else
                        ["train", "transformer", "--task", "mqar", "--seq-len", "32", "--kv-pairs", "2", "--steps", "2",
                         "--batch-size", "4", "--hidden-size", "16", "--heads", "2", "--layers", "1", "--out", "run",
                         "--resume", "--quiet"])
                res = _mirasc(argv, work, work / "cache")
                msg = res.stderr.strip()
                refused = res.returncode == 2 and len(msg.splitlines()) == 1 and "Traceback" not in msg
            ok = refused and not canary.exists() and _tree(run) == before
            rows.append({"kind": kind, "entry": entry, "refused": refused, "canary": canary.exists(),
                         "unchanged": _tree(run) == before, "ok": ok, "message": msg[:160]})
    n_ok = sum(r["ok"] for r in rows)
    print(f"checkpoints: {len(rows)} crafted-checkpoint openings ({len(kinds)} kinds x 3 entry points): {n_ok} refused "
          f"with one line, run folder unchanged; canary created {sum(r['canary'] for r in rows)} times")
    for r in rows:
        if not r["ok"]:
            print(f"  NOT OK: {r}")
    return {"openings": len(rows), "kinds": len(kinds), "refused_clean": n_ok,
            "canary_created": sum(r["canary"] for r in rows), "rows": rows}


_CACHE_SPEC = "model reliability_cache\nmemory linear\ngate eta : scalar, range [0, inf)\nbias l2()\n" \
              "retention none\nalgorithm gd(lr = eta)\n"


def _cache_code(spec: str) -> str:
    return ("import warnings, torch, mirasc\nwarnings.simplefilter('always')\n"
            f"op = mirasc.compile({spec!r}, backend='torch')\n"
            "x = torch.linspace(-1, 1, 24, dtype=torch.float64).reshape(1, 6, 1, 4)\n"
            "o, _ = op(x, x.flip(1), x, gates={'eta': torch.full((1, 6, 1), 0.3, dtype=torch.float64)})\n"
            "print(repr(float(o.sum())))\n")


def section_cache(args, tmp: Path) -> dict:
    kinds = ["code appended", "signature edited (and code appended)", "truncated", "another spec's signed module",
             "planted unsigned", "key replaced (and code planted)", "one byte flipped"]
    rows = []
    for kind in kinds:
        work = tmp / f"cache-{len(rows)}"
        work.mkdir()
        cache, canary = work / "cache", work / "CANARY"
        first = _python(_cache_code(_CACHE_SPEC), work, cache)
        module = next(cache.glob("mirasc_torch_*.py"))
        original = module.read_bytes()
        evil = f"\nopen({str(canary)!r}, 'w').write('ran')\n"
        if kind == "code appended":
            module.write_bytes(original + evil.encode())
        elif kind.startswith("signature edited"):
            module.with_suffix(".sig").write_text("0" * 64 + "\n")
            module.write_bytes(original + evil.encode())
        elif kind == "truncated":
            module.write_bytes(original[: len(original) // 3])
        elif kind == "another spec's signed module":
            _python(_cache_code(_CACHE_SPEC.replace("reliability_cache", "other")), work, cache)
            other = next(p for p in cache.glob("mirasc_torch_*.py") if p != module)
            module.write_bytes(other.read_bytes() + evil.encode())
            module.with_suffix(".sig").write_bytes(other.with_suffix(".sig").read_bytes())
        elif kind == "planted unsigned":
            module.with_suffix(".sig").unlink()
            module.write_bytes(evil.encode())
        elif kind.startswith("key replaced"):
            (cache / "key").write_text("00" * 32 + "\n")
            module.write_bytes(original + evil.encode())
        else:
            data = bytearray(original)
            data[len(data) // 2] ^= 0x01
            module.write_bytes(bytes(data))
        second = _python(_cache_code(_CACHE_SPEC), work, cache)
        ok = (second.returncode == 0 and second.stdout == first.stdout and not canary.exists()
              and module.read_bytes() == original)
        rows.append({"kind": kind, "ok": ok, "canary": canary.exists(), "same_output": second.stdout == first.stdout,
                     "regenerated": module.read_bytes() == original,
                     "warned": "does not match its signature" in second.stderr})
    n_ok = sum(r["ok"] for r in rows)
    print(f"cache: {len(rows)} tampered cache modules: {n_ok} regenerated with the same output; executed "
          f"{sum(r['canary'] for r in rows)} times")
    for r in rows:
        if not r["ok"]:
            print(f"  NOT OK: {r}")
    return {"tampered": len(rows), "regenerated": n_ok, "executed": sum(r["canary"] for r in rows), "rows": rows}


def section_concurrent(args, tmp: Path) -> dict:
    rows = []
    for rnd in range(args.concurrent_rounds):
        work = tmp / f"conc-{rnd}"
        work.mkdir()
        cache = work / "cache"
        spec = _CACHE_SPEC.replace("reliability_cache", f"concurrent_{rnd}").replace("l2()", f"lp({2 + rnd * 0.5})")
        procs = [subprocess.Popen([sys.executable, "-c", _cache_code(spec)], cwd=work, env=_env(cache),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(4)]
        outs = [p.communicate(timeout=600) for p in procs]
        modules = list(cache.glob("mirasc_torch_*.py"))
        ok = (all(p.returncode == 0 for p in procs) and len({o for o, _ in outs}) == 1 and len(modules) == 1
              and not list(cache.glob("*.tmp")))
        if ok:   # the module left behind verifies and is used as it is by a fifth process
            after = _python(_cache_code(spec), work, cache)
            ok = after.returncode == 0 and after.stdout == outs[0][0] and "signature" not in after.stderr
        rows.append({"round": rnd, "ok": ok, "errors": [e[-300:] for (_, e), p in zip(outs, procs) if p.returncode]})
    n_ok = sum(r["ok"] for r in rows)
    print(f"concurrent: {len(rows)} rounds of 4 processes compiling one new spec: {n_ok} with one valid module, no "
          f"error, equal outputs")
    return {"rounds": len(rows), "processes": 4, "ok": n_ok, "rows": rows}


_TRAIN = ["train", "moneta", "--task", "mqar", "--seq-len", "32", "--kv-pairs", "2", "--batch-size", "8",
          "--hidden-size", "16", "--heads", "2", "--layers", "1", "--steps", "16", "--log-every", "1",
          "--ckpt-every", "2", "--warmup-steps", "2", "--eval-examples", "8", "--threads", "1", "--quiet"]


def _curve(run: Path) -> list:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [(r["step"], r["loss"]) for r in rows]


def section_resume(args, tmp: Path) -> dict:
    rng = random.Random(args.seed + 1)
    work = tmp / "resume"
    work.mkdir()
    cache = work / "cache"
    ref = _mirasc([*_TRAIN, "--out", "ref"], work, cache)
    assert ref.returncode == 0, ref.stderr
    want = _curve(work / "ref")
    rows = []
    for i in range(args.kills):
        kill_at = rng.randint(2, 15)
        out = f"run{i}"
        p = subprocess.Popen([sys.executable, "-m", "mirasc", *_TRAIN, "--out", out], cwd=work, env=_env(cache),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metrics = work / out / "metrics.jsonl"
        t0 = time.monotonic()
        while p.poll() is None and time.monotonic() - t0 < 300:
            if metrics.exists() and metrics.read_text().count("\n") >= kill_at:
                break
            time.sleep(0.005)
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait()
        stray = [x.name for x in (work / out).iterdir() if ".tmp" in x.name]
        res = _mirasc([*_TRAIN, "--out", out, "--resume"], work, cache)
        got = _curve(work / out) if res.returncode == 0 else []
        problems = _complete(work / out)
        rows.append({"kill_after_step": kill_at, "killed": killed, "resumed": res.returncode == 0,
                     "equal": got == want, "tmp_files_after_kill": stray, "problems_after_resume": problems,
                     "ok": killed and got == want and not problems, "error": res.stderr.strip()[-300:]})
    n_eq = sum(r["ok"] for r in rows)
    n_stray = sum(bool(r["tmp_files_after_kill"]) for r in rows)
    print(f"resume: {len(rows)} runs SIGKILLed at random steps ({sorted(r['kill_after_step'] for r in rows)}) and "
          f"resumed: {n_eq} loss curves equal to the uninterrupted run ({len(want)} steps), bit for bit, with every "
          f"file whole; {n_stray} kills landed in a checkpoint write (temporary file left, removed on resume)")
    for r in rows:
        if not r["ok"]:
            print(f"  NOT OK: {r}")
    return {"kills": len(rows), "equal": n_eq, "steps": len(want), "killed_mid_write": n_stray, "rows": rows}


def _complete(folder: Path) -> list[str]:
    """What in a run folder is not whole: unparsable JSON, a torn metrics line, an unreadable checkpoint, a
    temporary file."""
    problems = []
    if not folder.exists():
        return problems
    from mirasc.train.checkpoint import load_checkpoint

    for p in folder.rglob("*"):
        if ".tmp" in p.name:
            problems.append(f"temporary file {p.name}")
        elif p.suffix == ".json":
            try:
                json.loads(p.read_text())
            except ValueError:
                problems.append(f"{p.name} does not parse")
        elif p.name == "metrics.jsonl":
            for line in p.read_text().splitlines():
                try:
                    json.loads(line)
                except ValueError:
                    problems.append("a torn metrics line")
        elif p.name == "checkpoint.pt":
            try:
                load_checkpoint(p)
            except Exception as e:
                problems.append(f"checkpoint unreadable: {e}")
    return problems


def section_inputs(args, tmp: Path) -> dict:
    import torch

    import mirasc
    from mirasc.sample import random_inputs

    op_rows = []
    for path in SPECS:
        op = mirasc.compile(str(path), backend="torch")
        gen = torch.Generator().manual_seed(0)
        q, k, v, gates, params = random_inputs(op, 1, 6, 2, 4, torch.float64, generator=gen)
        meta = {g.name: g for g in op.meta.gates}
        cases = []
        for name, g in meta.items():
            for label, value in (("NaN", math.nan), ("+inf", math.inf), ("-inf", -math.inf),
                                 ("below range", g.low - 1 if math.isfinite(g.low) else None),
                                 ("above range", g.high + 1 if math.isfinite(g.high) else None)):
                if value is None:
                    continue
                bad = {**gates, name: gates[name].clone()}
                bad[name].view(-1)[0] = value
                cases.append((f"gate {name} {label}", (q, k, v, bad), name))
        empty = {n: (x[:, :0] if meta[n].data_dependent else x) for n, x in gates.items()}
        cases.append(("T = 0", (q[:, :0], k[:, :0], v[:, :0], empty), "T = 0"))
        for label, args_, needle in cases:
            try:
                op(*args_[:3], gates=args_[3], params=params)
                op_rows.append({"spec": path.stem, "case": label, "ok": False, "message": "accepted"})
            except ValueError as e:
                op_rows.append({"spec": path.stem, "case": label, "ok": needle in str(e) and "\n" not in str(e),
                                "message": str(e)[:160]})
            except Exception as e:
                op_rows.append({"spec": path.stem, "case": label, "ok": False, "message": f"{type(e).__name__}: {e}"})
        o, _ = op(q[:, :1], k[:, :1], v[:, :1],
                  gates={n: (x[:, :1] if meta[n].data_dependent else x) for n, x in gates.items()}, params=params)
        op_rows.append({"spec": path.stem, "case": "T = 1", "ok": bool(torch.isfinite(o).all()), "message": ""})
    n_op = sum(r["ok"] for r in op_rows)
    print(f"inputs: {len(op_rows)} bad or edge inputs through the ops of {len(SPECS)} specs: {n_op} handled "
          f"(a one-line ValueError naming the argument, or for T = 1 a finite output)")
    for r in op_rows:
        if not r["ok"]:
            print(f"  NOT OK: {r}")

    work = tmp / "train-inputs"
    work.mkdir()
    (work / "empty.txt").write_text("")
    (work / "one.txt").write_text("a")
    (work / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 200)
    small = ["--hidden-size", "16", "--heads", "2", "--layers", "1", "--batch-size", "4", "--steps", "3",
             "--eval-examples", "4", "--threads", "1", "--quiet"]
    cases = [
        ("1-token sequences (lm, seq-len 1)", ["--task", "lm", "--data", "corpus.txt", "--seq-len", "1"], 0),
        ("2-token sequences (lm, seq-len 2)", ["--task", "lm", "--data", "corpus.txt", "--seq-len", "2"], 0),
        ("MQAR too short (seq-len 2)", ["--task", "mqar", "--seq-len", "2", "--kv-pairs", "1"], 2),
        ("empty corpus", ["--task", "lm", "--data", "empty.txt"], 2),
        ("1-byte corpus", ["--task", "lm", "--data", "one.txt", "--seq-len", "8"], 2),
        ("diverging learning rate (NaN loss)", ["--task", "mqar", "--seq-len", "32", "--kv-pairs", "2", "--lr", "1e12",
                                               "--warmup-steps", "1", "--ckpt-every", "1"], 2),
        ("sequence zero long (seq-len 0)", ["--task", "lm", "--data", "corpus.txt", "--seq-len", "0"], 2),
    ]
    train_rows = []
    for i, (label, argv, want_rc) in enumerate(cases):
        out = work / f"out{i}"
        res = _mirasc(["train", "moneta", *argv, *small, "--out", str(out)], work, work / "cache")
        err = res.stderr.strip()
        clear = want_rc == 0 or (len(err.splitlines()) == 1 and err.startswith("mirasc train: error:"))
        problems = _complete(out)
        left = sorted(p.name for p in out.iterdir()) if out.exists() else []
        ok = res.returncode == want_rc and clear and not problems
        train_rows.append({"case": label, "rc": res.returncode, "ok": ok, "message": err[-200:], "left": left,
                           "problems": problems})
    n_train = sum(r["ok"] for r in train_rows)
    print(f"inputs: {len(train_rows)} edge cases through `mirasc train`: {n_train} as expected (runs, or one clear "
          f"line and exit 2), nothing written half")
    for r in train_rows:
        print(f"  {r['case']}: rc {r['rc']} {r['message'][:110]!r} left {r['left']}"
              + ("" if r["ok"] else f"  NOT OK {r['problems']}"))
    return {"op_cases": len(op_rows), "op_ok": n_op, "train_cases": len(train_rows), "train_ok": n_train,
            "op_rows": op_rows, "train_rows": train_rows}


SECTIONS = {"specs": section_specs, "checkpoints": section_checkpoints, "cache": section_cache,
            "concurrent": section_concurrent, "resume": section_resume, "inputs": section_inputs}


def table(res: dict) -> str:
    rows = ["| what | count | result |", "| --- | --- | --- |"]
    if "specs" in res:
        s = res["specs"]
        rows.append(f"| mutants of the {s['specs']} prebuilt specs through `mirasc.load` | {s['mutants']} | "
                    f"{s['ok']} load, {s['located']} located `SpecError`s; {s['crash']} crashes, {s['hang']} hangs, "
                    f"{s['unlocated']} unlocated errors, {s['code_executed']} code executed |")
        c = s["compile"]
        rows.append(f"| of those that load, compiled and run (T = 5) | {s['compiled']} | {c['ok']} run, "
                    f"{c['located']} located `SpecError`s; {c['crash']} crashes, {c['hang']} hangs |")
    if "checkpoints" in res:
        c = res["checkpoints"]
        rows.append(f"| crafted checkpoints ({c['kinds']} kinds) opened by `load_checkpoint`, `mirasc eval`, "
                    f"`mirasc train --resume` | {c['openings']} | {c['refused_clean']} refused with one line, run "
                    f"folder unchanged; canary created {c['canary_created']} times |")
    if "cache" in res:
        c = res["cache"]
        rows.append(f"| tampered cached modules | {c['tampered']} | {c['regenerated']} regenerated, same output; "
                    f"executed {c['executed']} times |")
    if "concurrent" in res:
        c = res["concurrent"]
        rows.append(f"| concurrent compiles of one new spec ({c['processes']} processes) | {c['rounds']} rounds | "
                    f"{c['ok']} with one valid module, no error, equal outputs |")
    if "resume" in res:
        r = res["resume"]
        rows.append(f"| `mirasc train` SIGKILLed at a random step, then `--resume` | {r['kills']} | {r['equal']} loss "
                    f"curves equal to the uninterrupted run's ({r['steps']} steps), bit for bit; "
                    f"{r['killed_mid_write']} kills hit a checkpoint write, its temporary file removed on resume |")
    if "inputs" in res:
        i = res["inputs"]
        rows.append(f"| NaN / ±inf / out-of-range gates, T = 0 and T = 1 through every prebuilt op | {i['op_cases']} | "
                    f"{i['op_ok']} one-line `ValueError`s naming the argument (T = 1: finite output) |")
        rows.append(f"| 1- and 2-token sequences, too-short MQAR, empty and 1-byte corpus, NaN loss, seq-len 0 "
                    f"through `mirasc train` | {i['train_cases']} | {i['train_ok']} as expected (run, or one line and "
                    f"exit 2), nothing written half |")
    return "\n".join(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mutants", type=int, default=200, help="mutants per prebuilt spec")
    p.add_argument("--compile-sample", type=int, default=2, help="loadable mutants per spec also compiled and run")
    p.add_argument("--kills", type=int, default=5)
    p.add_argument("--concurrent-rounds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds before a mutant's load counts as a hang")
    p.add_argument("--only", nargs="+", choices=sorted(SECTIONS))
    p.add_argument("--json", nargs="?", const=str(RESULTS / "reliability.json"))
    args = p.parse_args(argv)
    res = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mirasc-reliability-") as d:
        tmp = Path(d)
        os.chmod(tmp, 0o700)
        for name, fn in SECTIONS.items():
            if args.only and name not in args.only:
                continue
            t = time.perf_counter()
            res[name] = fn(args, tmp)
            res[name]["wall_s"] = time.perf_counter() - t
    print(f"\n{table(res)}\n\nwall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"args": vars(args), **res}, indent=2, default=str) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
