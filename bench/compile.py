"""Time `mirasc.compile` of a prebuilt spec: cold (empty cache) and cached (the same cache, a new process).

    python -m bench.compile [--spec moneta] [--repeats 3] [--json [PATH]]

Each repeat makes a fresh temporary MIRASC_CACHE and runs two subprocesses with it, one after the other:
  cold    the cache is empty: parse, check, derive (sympy), lower, emit, write the module, import it
  cached  the module is on disk: read the spec, hash it, import the cached module
Inside each subprocess `import torch, mirasc, mirasc.runtime` happens first and is timed apart (mirasc loads its
runtime, and so torch, lazily on the first compile); the reported compile time is the
`mirasc.compile(spec, backend="torch")` call alone, measured with time.perf_counter inside the subprocess. What
that call imports on its own (lark, sympy, jinja2: the compiler's front end and derivation) is part of it, and the
line says which of them it loaded.
Medians over the repeats are printed, with the minimum and the import time beside them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"

CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch  # noqa: F401  (a user of mirasc has torch loaded already)
import mirasc
import mirasc.runtime  # noqa: F401  (mirasc imports it lazily, on the first compile)
t1 = time.perf_counter()
op = mirasc.compile(sys.argv[1], backend="torch")
t2 = time.perf_counter()
loaded = sorted(m for m in ("lark", "sympy", "jinja2") if m in sys.modules)
print(json.dumps({"import_s": t1 - t0, "compile_s": t2 - t1, "name": op.name, "loaded": loaded}))
"""


def resolve_spec(spec: str) -> Path:
    path = Path(spec)
    if path.exists():
        return path.resolve()
    path = ROOT / "models" / f"{spec}.miras"
    if not path.exists():
        raise SystemExit(f"bench.compile: no spec {spec!r} (neither a file nor models/{spec}.miras)")
    return path


def child(spec: Path, cache: str) -> dict:
    env = dict(os.environ, MIRASC_CACHE=cache)
    res = subprocess.run([sys.executable, "-c", CHILD, str(spec)], env=env, cwd=ROOT, capture_output=True,
                         text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"bench.compile: the subprocess failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compile", description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default="moneta", help="prebuilt spec name (models/NAME.miras) or a .miras path")
    ap.add_argument("--repeats", type=int, default=3, help="cold + cached pairs, each with a fresh cache")
    ap.add_argument("--json", nargs="?", const="", default=None, metavar="PATH",
                    help="write the results as JSON (default path bench/results/compile_<spec>.json)")
    args = ap.parse_args(argv)
    spec = resolve_spec(args.spec)

    runs = {"cold": [], "cached": []}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory(prefix="mirasc-bench-cache-") as cache:
            runs["cold"].append(child(spec, cache))
            runs["cached"].append(child(spec, cache))

    name = runs["cold"][0]["name"]
    print(f"mirasc.compile({spec.name!r}, backend='torch'), {args.repeats} fresh cache dir(s), "
          f"time of the compile call inside a new process (import torch + mirasc timed apart)")
    summary = {}
    for kind, rs in runs.items():
        comp = [r["compile_s"] * 1e3 for r in rs]
        imp = [r["import_s"] * 1e3 for r in rs]
        summary[kind] = {"compile_ms": statistics.median(comp), "compile_min_ms": min(comp), "compile_all_ms": comp,
                         "import_ms": statistics.median(imp), "loaded_by_compile": rs[-1]["loaded"]}
        s = summary[kind]
        loaded = ", ".join(s["loaded_by_compile"]) or "no"
        print(f"  {kind:6s}  compile {s['compile_ms']:9.1f} ms (min {s['compile_min_ms']:.1f})   "
              f"import torch+mirasc {s['import_ms']:.0f} ms   loaded by the call: {loaded}")

    if args.json is not None:
        path = Path(args.json) if args.json else RESULTS / f"compile_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"spec": str(spec), "python": sys.executable, "repeats": args.repeats,
                                    **summary}, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
