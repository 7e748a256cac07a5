"""The `mirasc` command line. Subcommands:

    check    parse and check specs (located errors, exit 1 on any)
    explain  the derived inner gradient, update rule and chunk form (--latex, --dump-ir)
    compile  write, or verify with --check, the generated torch and Triton modules of each spec
    aot      compile each spec's Triton kernels for a GPU without one (mirasc.aot) and report registers, spills,
             shared memory and tensor-core instructions
    train    train a model (from mirasc.train.cli, registered when mirasc.train imports)
    eval     evaluate a checkpoint (from mirasc.train.cli, likewise)

A SPEC argument is a prebuilt name (`moneta`, `yaad`, ...), a path, or spec text, resolved as `mirasc.load` does
(mirasc.sources). Bad specs print located errors and exit 1; no Python traceback reaches the user for a bad spec.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _options(pairs: list[str] | None) -> dict | None:
    """-O NAME=VALUE pairs (option choices or param overrides); values stay text, never evaluated."""
    if not pairs:
        return None
    out = {}
    for pair in pairs:
        if "=" not in pair:
            raise SystemExit(f"mirasc: error: -O expects NAME=VALUE, got {pair!r}")
        name, value = pair.split("=", 1)
        out[name.strip()] = value.strip()
    return out


def cmd_check(args) -> int:
    from .errors import SpecError
    from .loader import load

    status = 0
    for file in args.files:
        try:
            spec = load(file, options=_options(args.option))
        except SpecError as e:
            print(e, file=sys.stderr)
            status = 1
            continue
        if not args.quiet:
            gates = ", ".join(f"{g.name}:{g.kind}" for g in spec.gates) or "no gates"
            print(f"{file}: ok ({spec.name}: {spec.memory.kind} memory, {gates})")
    return status


def cmd_explain(args) -> int:
    from .derive import derive, explain
    from .errors import SpecError
    from .loader import load

    try:
        spec = load(args.file, options=_options(args.option))
    except SpecError as e:
        print(e, file=sys.stderr)
        return 1
    d = derive(spec)
    print(explain(d, latex=args.latex))
    if args.dump_ir:
        from .grad import differentiate
        from .lower import input_names, lower

        fwd = lower(d)
        print("\nchunk program (forward):")
        print(fwd.dump())
        if args.dump_ir == "all":
            print("\nchunk program (backward):")
            print(differentiate(fwd, input_names(spec)).dump())
    return 0


BACKENDS = ("torch", "triton")


def generated_path(out_dir: Path, spec_file: str, backend: str) -> Path:
    return out_dir / backend / f"{Path(spec_file).stem}.py"


def cmd_compile(args) -> int:
    from .codegen import generate, generate_triton
    from .emit_triton import CubeTileError
    from .errors import SpecError
    from .loader import load
    from .module_cache import write_atomic

    out_dir = Path(args.output) if args.output else None
    status = 0
    for file in args.files:
        try:
            spec = load(file, options=_options(args.option))
        except SpecError as e:
            print(e, file=sys.stderr)
            status = 1
            continue
        command = f"mirasc compile {Path(file).as_posix()} -o {args.output or '.'}"
        if out_dir is None:
            import mirasc

            mirasc.compile(file, backend="torch", options=_options(args.option))
            print(f"{file}: compiled (cached)")
            continue
        for backend in BACKENDS:
            make = generate if backend == "torch" else generate_triton
            try:
                text = make(spec, _options(args.option), command=command)
            except CubeTileError as e:  # no Triton form for this spec's chunk program: its torch module stands
                print(f"{file}: error: no {backend} module: {e}", file=sys.stderr)
                status = 1
                continue
            target = generated_path(out_dir, file, backend)
            if args.check:
                current = target.read_text(encoding="utf-8") if target.exists() else None
                if current != text:
                    print(f"{target}: stale (regenerate with: {command})", file=sys.stderr)
                    status = 1
                elif not args.quiet:
                    print(f"{target}: up to date")
                continue
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(target, text)
            except OSError as e:
                print(f"{target}: error: cannot write it: {e.strerror or e}", file=sys.stderr)
                return 1
            if not args.quiet:
                print(f"{file} -> {target}")
    return status


def cmd_aot(args) -> int:
    import json

    from .aot import aot_report, as_json, format_rows, format_spill_sites
    from .emit_triton import CubeTileError
    from .errors import SpecError

    status, rows = 0, []
    for spec in args.specs:
        try:
            found = aot_report(spec, arch=args.arch, chunk_size=args.chunk_size, head_dim=args.head_dim,
                               dtype=args.dtype, timeout=args.timeout, options=_options(args.option),
                               block_hidden=args.block_hidden, block_value=args.block_value,
                               warps=args.num_warps, stages=args.num_stages, only=args.only,
                               sub_chunk=args.sub_chunk, spill_guard=not args.no_spill_guard,
                               row_block=args.row_block)
        except SpecError as e:
            print(e, file=sys.stderr)
            status = 1
            continue
        except CubeTileError as e:
            print(f"{spec}: error: no Triton kernels to compile: {e}", file=sys.stderr)
            status = 1
            continue
        except ValueError as e:  # sizes or blocks the kernels do not take, a kernel the spec does not have
            print(f"mirasc aot: error: {e}", file=sys.stderr)
            return 2
        for r in found:
            if args.json:
                print(json.dumps(as_json(r)), flush=True)
            status |= 0 if r.ok else 1
        rows += found
    if not args.json and rows:
        print(format_rows(rows))
        sites = format_spill_sites(rows)
        if sites:
            print(f"\n{sites}")
    return status


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mirasc", description="Compile .miras specs of Miras test-time memories.")
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("check", help="parse and check specs; located errors, exit 1 on any")
    c.add_argument("files", nargs="+", metavar="SPEC", help="a prebuilt name (moneta, yaad, ...) or a .miras path")
    c.add_argument("-O", "--option", action="append", metavar="NAME=VALUE", help="pick an option or override a param")
    c.add_argument("-q", "--quiet", action="store_true")
    c.set_defaults(fn=cmd_check)

    e = sub.add_parser("explain", help="print the derived inner gradient, update rule and chunk form")
    e.add_argument("file", metavar="SPEC", help="a prebuilt name (moneta, yaad, ...) or a .miras path")
    e.add_argument("--latex", action="store_true", help="LaTeX instead of unicode")
    e.add_argument("--dump-ir", nargs="?", const="forward", choices=["forward", "all"],
                   help="also print the chunk IR (forward, or forward and backward)")
    e.add_argument("-O", "--option", action="append", metavar="NAME=VALUE")
    e.set_defaults(fn=cmd_explain)

    k = sub.add_parser("compile", help="write (or verify with --check) the generated module of each spec")
    k.add_argument("files", nargs="+", metavar="SPEC", help="a prebuilt name (moneta, yaad, ...) or a .miras path")
    k.add_argument("-o", "--output", help="directory for the generated modules (DIR/torch/NAME.py, DIR/triton/NAME.py)")
    k.add_argument("--check", action="store_true", help="fail if the files under -o are stale")
    k.add_argument("-O", "--option", action="append", metavar="NAME=VALUE")
    k.add_argument("-q", "--quiet", action="store_true")
    k.set_defaults(fn=cmd_compile)

    a = sub.add_parser("aot", help="compile each spec's Triton kernels for a GPU (no GPU needed) and report "
                                   "registers, spills, shared memory and tensor-core instructions")
    a.add_argument("specs", nargs="+", metavar="SPEC", help="a prebuilt name (moneta, yaad, ...) or a .miras path")
    a.add_argument("--arch", type=int, default=90, choices=[80, 90], help="90: H100/H200 (sm_90a), 80: A100")
    a.add_argument("--chunk-size", type=int, default=64)
    a.add_argument("--head-dim", type=int, default=64)
    a.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="q, k, v's dtype")
    a.add_argument("--timeout", type=float, default=300.0, help="seconds per kernel")
    a.add_argument("--block-hidden", type=int, help="BH, the hidden-axis block of an MLP memory (default: the "
                                                    "launcher's choice)")
    a.add_argument("--block-value", type=int, help="BV, the value-axis block of value-blocked kernels")
    a.add_argument("--sub-chunk", type=int, help="BC, the sub-chunk of channel-decay products and of the state "
                                                 "passes run by sub-chunks (default: the launcher's choice)")
    a.add_argument("--row-block", type=int, help="BR, the rows of a block of an MLP memory's values made token by "
                                                 "token (default: the launcher's choice)")
    a.add_argument("--num-warps", type=int, help="warps per program (default: the launcher's choice)")
    a.add_argument("--num-stages", type=int, help="software-pipelining stages of the kernels' loops (default: the "
                   "launcher's choice)")
    a.add_argument("--only", action="append", metavar="KERNEL", help="compile only this kernel (repeatable)")
    a.add_argument("--no-spill-guard", action="store_true", help="report the launcher's default configs alone, "
                   "not the first candidate without spills that a GPU launch takes where a default spills")
    a.add_argument("--json", action="store_true", help="one JSON object per kernel and line")
    a.add_argument("-O", "--option", action="append", metavar="NAME=VALUE")
    a.set_defaults(fn=cmd_aot)

    for register in _extensions():
        register(sub)
    return p


def _extensions():
    """Subcommands contributed by other parts of the package (train and eval, from mirasc.train.cli), when
    present."""
    found = []
    try:
        from .train.cli import register as train_register
    except ImportError:
        pass
    else:
        found.append(train_register)
    return found


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
