"""The Triton kernels' form, checked without a GPU: contractions in dot form (no three-axis tile in any kernel),
a printer that refuses what it cannot map, and ahead-of-time compiles for an H100 (mirasc aot)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import sympy as sp
from helpers import PREBUILT, model_path

import mirasc
from mirasc import ir
from mirasc.codegen import _kernel_io
from mirasc.derive import derive
from mirasc.dotform import is_dot, product_tile_axes, to_dot_form
from mirasc.emit_triton import CubeTileError
from mirasc.grad import differentiate
from mirasc.lower import input_names, lower
from mirasc.triton_kernels import _Assembler, _only, carry_free, kernels
from mirasc.triton_printer import TritonPrinter


@pytest.mark.parametrize("stem", PREBUILT)
def test_every_contraction_is_a_dot_or_a_two_axis_product(stem):
    """The programs the kernels are made from (channel decay as ir.DecayedProduct where there is one) have no tile
    with three axes after the dot-form pass, in the forward and in the backward; every matrix-shaped contraction is
    a dot."""
    spec = mirasc.load(model_path(stem))
    fwd = lower(derive(spec), channel_decay="products")  # as mirasc.codegen.generate_triton lowers every spec
    for graph in (fwd, differentiate(fwd, input_names(spec))):
        dot_form = to_dot_form(graph)
        for v in dot_form.values:
            assert len(v.axes) <= 2, (stem, v)
            if isinstance(v.op, ir.Einsum):
                assert is_dot(v) or len(product_tile_axes(v)) <= 2, (stem, v)
        assert any(is_dot(v) for v in dot_form.values), stem


def test_dot_form_moves_elementwise_factors_into_operands():
    g = ir.Graph()
    x, w, a = g.input("x", ("t", "i")), g.input("w", ("o", "i")), g.input("a", ("t",))
    g.outputs["y"] = g.einsum(("t", "o"), x, w, a)  # Σ_i x[t,i] a[t] w[o,i] = (a ⊙ x) wᵀ
    out = to_dot_form(g).outputs["y"]
    assert is_dot(out)
    assert {tuple(arg.axes) for arg in out.args} == {("t", "i"), ("o", "i")}


def test_kernels_refuse_a_three_axis_tile():
    """Channel decay as a pairwise tile needs (C, C, D) decay tiles: the emitter names the value."""
    spec = mirasc.load(model_path("moneta"))
    fwd = lower(derive(spec), channel_decay="pairwise")
    with pytest.raises(CubeTileError, match="pairwise decay"):
        kernels(_kernel_io(spec, fwd), fwd, differentiate(fwd, input_names(spec)))


def test_printer_refuses_what_it_cannot_map():
    x = sp.Symbol("x")
    assert TritonPrinter({x: "x"})(sp.exp(x)) == "tl.exp(x)"
    with pytest.raises(NotImplementedError, match="no rule for besselj"):
        TritonPrinter({x: "x"})(sp.besselj(0, x))
    with pytest.raises(NotImplementedError, match="Symbol"):
        TritonPrinter({})(x)  # an unbound symbol is never printed as its name


def test_constants_keep_their_precision():
    """A float fp32 cannot hold is a DTYPE tile, so an fp64 kernel keeps it exact; one fp32 holds stays a literal."""
    p = TritonPrinter({})
    assert p(sp.Float(0.5)) == "0.5"
    assert p(sp.log(2)) == f"tl.full((), {float(sp.log(2))!r}, DTYPE)"


def test_aot_compiles_for_an_h100():
    """`mirasc aot --json`: every kernel compiles for sm_90a with no spills and tensor cores for its dots (small
    sizes keep the test fast; bench/README.md has the full table)."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    command = [sys.executable, "-m", "mirasc", "aot", "linear_attention", "--head-dim", "16", "--chunk-size", "16",
               "--json", "--timeout", "120"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    kernels = {r["kernel"] for r in rows}
    assert {"chunk_state_fwd_kernel", "chunk_out_fwd_kernel", "chunk_state_bwd_kernel"} <= kernels
    for x in "qkv":  # each input's gradient: one kernel per summand
        assert f"chunk_grad_{x}_0_bwd_kernel" in kernels
    for r in rows:
        for key in ("spec", "kernel", "head_dim", "ok", "compile_s", "regs", "stack", "shared", "mma", "dots"):
            assert key in r, key
        assert r["ok"] and r["spec"] == "linear_attention" and r["head_dim"] == 16, r
        assert r["stack"] == 0 and r["dots"] > 0 and r["mma"] > 0, r


def test_aot_takes_the_kernels_warps_and_blocks_it_is_given():
    """--only, --num-warps and --num-stages (with --block-value, how per-target configs are explored) reach the
    compiler: one row, compiled with the warps and pipelining stages asked for."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    command = [sys.executable, "-m", "mirasc", "aot", "gated_deltanet", "--head-dim", "32", "--chunk-size", "16",
               "--only", "chunk_state_fwd_kernel", "--num-warps", "2",
               "--num-stages", "1", "--block-value", "16", "--json"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    (row,) = [json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")]
    assert row["kernel"] == "chunk_state_fwd_kernel" and row["num_warps"] == 2 and row["ok"], row
    assert row["num_stages"] == 1, row


def test_one_warp_group_where_eight_warps_would_repeat_the_products():
    """At C = 64 with 8 warps, Triton lays a product that feeds another product with all warps on its 64 rows, so
    two warp groups compute the same entries (mirasc aot's `replicated`, read from the TritonGPU IR). A term of
    linear attention's query gradient keeps few tiles live: the launcher gives it 4 warps, which repeat nothing and
    do not spill."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report

    only = ["chunk_grad_q_0_bwd_kernel"]
    (eight,) = aot_report("linear_attention", chunk_size=64, head_dim=64, warps=8, only=only, timeout=240)
    (chosen,) = aot_report("linear_attention", chunk_size=64, head_dim=64, only=only, timeout=240)
    assert eight.ok and eight.num_warps == 8 and eight.replicated > 0, (eight.replicated, eight.error)
    assert chosen.ok and chosen.num_warps == 4 and chosen.replicated == 0 and chosen.stack == 0, chosen


def test_warps_follow_the_live_tiles():
    """8 warps only where a 64 x 64 chunk tile meets a kernel keeping more than FOUR_WARP_TILES tiles live."""
    from mirasc.backends.triton import FOUR_WARP_TILES, num_warps

    assert num_warps(64, 64, 64, FOUR_WARP_TILES) == 4
    assert num_warps(64, 64, 64, FOUR_WARP_TILES + 1) == 8
    assert num_warps(64, 128, 512, 20.0) == 8
    assert num_warps(16, 32, 32, 20.0) == 4  # (16, 32) tiles: 4 registers a thread at 4 warps
    # a kernel that does not run by value blocks holds its (C, D) tiles D wide: at D = 128 each counts twice
    assert num_warps(64, 128, 128, FOUR_WARP_TILES) == 4
    assert num_warps(64, 128, 128, FOUR_WARP_TILES, value_blocked=False) == 8
    assert num_warps(64, 64, 64, FOUR_WARP_TILES, value_blocked=False) == 4


def test_replicated_products_are_read_from_the_layouts():
    """replicated_dots counts a product whose warps cover more rows or columns than its tile, and no other."""
    from mirasc.aot import replicated_dots

    layout = "#ttg.nvidia_mma<{{versionMajor = 3, versionMinor = 0, warpsPerCTA = [{}], instrShape = [16, 32, 16]}}>"
    dot = "ttng.warp_group_dot %a, %b, %c : !ttg.memdesc<{0}x64xbf16> * !ttg.memdesc<64x64xbf16> -> " \
          "tensor<{0}x64xf32, {1}>"
    ir = "\n".join([f"#mma = {layout.format('8, 1')}", f"#mma1 = {layout.format('4, 2')}",
                    "%1 = " + dot.format(64, "#mma"),  # two warp groups on 64 rows
                    "%2 = " + dot.format(64, "#mma1"),
                    "%3 = " + dot.format(128, "#mma")])
    assert replicated_dots(ir) == 1


def test_a_transposed_product_is_written_both_ways_and_counted_once():
    """A product whose result's rows are its right operand's is written transposed and, under SWAP_PRODUCTS, as the
    product of the operands in swapped order (no transpose of the result); `mirasc aot` counts it as one product."""
    from mirasc.aot import _products
    from mirasc.emit_triton import dot_expr

    both = dot_expr("a", ("o", "h"), "b", ("t", "o"), ("t", "h"))
    assert both.startswith("(tl.dot(b.to(DOT_DTYPE), a.to(DOT_DTYPE),") and " if SWAP_PRODUCTS else tl.trans(" in both
    assert both.count("tl.dot(") == 2 and _products(both) == 1
    one = dot_expr("a", ("t", "o"), "b", ("o", "h"), ("t", "h"))
    assert "SWAP_PRODUCTS" not in one and _products(one) == 1


def test_aot_finds_every_kernel_in_the_description():
    """mirasc aot reads each kernel's value blocks from DESCRIPTION: every kernel of a channel-decay spec's module has
    its entry there, and no kernel is a fallback for strongly decaying chunks (the decay is exact in every kernel)."""
    from mirasc.aot import generated_description, job_of, kernel_names
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    text = generate_triton(load(Path(__file__).resolve().parents[1] / "bench" / "specs" / "gla.miras"))
    jobs = generated_description(text)["kernels"]
    names = kernel_names(text)
    assert not any(n.endswith("_cube") for n in names), names
    assert "DecayedProduct" not in text and "pairs in one sub-chunk" in text  # the decay is made by sub-chunks
    assert sorted(job_of(n) for n in names) == sorted(jobs)
    # the kernels that make products, and only those, take their sub-chunk from the launcher
    assert {job for job, info in jobs.items() if info["sub_chunks"]} == {
        job_of(n) for n in names if "pairs in one sub-chunk" in text.split(f"def {n}(")[1].split("@triton.jit")[0]}
    assert any(info["sub_chunks"] for info in jobs.values()) and not all(info["sub_chunks"] for info in jobs.values())


@pytest.mark.parametrize("args, said", [
    (["--head-dim", "48"], "head dim D: the Triton backend needs a power of two, got 48"),
    (["--chunk-size", "0"], "chunk_size: the Triton backend needs a power of two, got 0"),
    (["--chunk-size", "8"], "need chunk_size and D of at least 16"),
    (["--block-value", "8"], "block_value: expected a power of two from 16 to 64, got 8"),
    (["--sub-chunk", "128"], "sub_chunk: expected a power of two from 1 to the chunk size 64, got 128"),
    (["--only", "chunk_nope_kernel"], "titans has no kernel chunk_nope_kernel; its kernels: chunk_state_fwd_kernel"),
])
def test_aot_refuses_sizes_and_kernels_before_compiling(args, said, capsys):
    """Sizes the kernels do not take and kernels the spec does not have are one line and exit 2, before anything is
    compiled (they were one failed compile per kernel, or no output and exit 0)."""
    from mirasc.cli import main

    assert main(["aot", "titans", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mirasc aot: error: ") and said in err and len(err.strip().splitlines()) == 1


def test_compile_reports_a_folder_it_cannot_write(tmp_path, capsys):
    from mirasc.cli import main

    (tmp_path / "file").write_text("")
    assert main(["compile", "titans", "-o", str(tmp_path / "file" / "out")]) == 1
    err = capsys.readouterr().err
    assert "error: cannot write it" in err and len(err.strip().splitlines()) == 1


def test_mlp_memory_kernels_compile_for_an_h100():
    """Kernels with loops over the hidden blocks compile for a GPU, which checks what the interpreter does not: a
    variable a loop assigns keeps its type (two values' temporaries once shared a name, and Moneta's backward
    kernels did not compile)."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report

    rows = aot_report("moneta", chunk_size=16, head_dim=16, timeout=240, spill_guard=False,
                      only=["chunk_state_bwd_kernel", "chunk_grad_v_0_bwd_kernel"])
    assert len(rows) == 2
    for r in rows:
        assert r.ok and r.mma > 0, (r.kernel, r.error)


def test_aot_names_the_lines_that_spill():
    """A kernel that spills gets its spill sites: the lines of its module whose SASS stores registers to local
    memory or loads them back, most first, each with its code. One warp holding linear attention's (64, 64) output
    tiles spills for sure; its default config does not, and gets none."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report, format_spill_sites
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    only = ["chunk_out_fwd_kernel"]
    (tight,) = aot_report("linear_attention", chunk_size=64, head_dim=64, warps=1, only=only, timeout=240,
                          spill_guard=False)
    (roomy,) = aot_report("linear_attention", chunk_size=64, head_dim=64, only=only, timeout=240, spill_guard=False)
    assert tight.ok and tight.stack > 0 and tight.spill_sites, (tight.stack, tight.error)
    assert roomy.ok and roomy.stack == 0 and roomy.spill_sites == [], roomy
    counts = [s["stores"] + s["loads"] for s in tight.spill_sites]
    assert counts == sorted(counts, reverse=True) and counts[-1] > 0, tight.spill_sites
    module = generate_triton(load("linear_attention")).splitlines()
    for site in tight.spill_sites:
        if isinstance(site["line"], int):  # a line of the generated module: its code, as the module has it
            assert module[site["line"] - 1].strip() == site["code"] != "", site
        else:  # a line of Triton's library: file, line and function
            assert re.fullmatch(r"\w+\.py:\d+( \(\w+\))?", site["line"]), site
    assert any(isinstance(s["line"], int) for s in tight.spill_sites), tight.spill_sites
    printed = format_spill_sites([tight, roomy])
    assert "linear_attention chunk_out_fwd_kernel" in printed and tight.spill_sites[0]["code"][:60] in printed
    assert printed.count("spill stores / loads") == 1


def test_ttt_linear_state_passes_run_by_sub_chunks_without_spills():
    """TTT-Linear's state passes hold the whole (D, D) state (its LayerNorm sums over the value axis, so the value
    axis is not split among programs) and made the chunk's (C, D) tiles whole: at sm_90a, D = 64 the backward pass
    spilled 224 B a thread with its default config (32 with the spill guard's best). Made a sub-chunk of BC tokens
    at a time (mirasc.token_blocks), both passes compile without spills with their default configs, on tensor cores.
    So do its gradient terms whose work is per token (the third key-gradient term at D = 128: 80 B whole with the
    guard's best); the outputs and local_bwd kernels, which mix the chunk's tokens, keep whole chunks."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report, generated_description
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    source = generate_triton(load(model_path("ttt_linear")))
    jobs = generated_description(source)["kernels"]
    by_sub_chunks = {job for job, info in jobs.items() if info["sub_chunks"]}
    assert {"state_fwd", "state_bwd", "grad_k_2_bwd"} <= by_sub_chunks and not {"out_fwd", "local_bwd"} & by_sub_chunks
    for job in by_sub_chunks:
        body = source[source.index(f"def chunk_{job}_kernel("):].split("@triton.jit")[0]
        assert body.count("for tb in range(0, C, BC):") == 1, body
    for job in ("state_fwd", "state_bwd"):
        assert "acc_0 " in source[source.index(f"def chunk_{job}_kernel("):].split("@triton.jit")[0]
    rows = aot_report("ttt_linear", chunk_size=64, head_dim=64, timeout=240, spill_guard=False,
                      only=["chunk_state_fwd_kernel", "chunk_state_bwd_kernel"])
    rows += aot_report("ttt_linear", chunk_size=64, head_dim=128, timeout=240, spill_guard=False,
                       only=["chunk_grad_k_2_bwd_kernel"])
    for row in rows:
        assert row.ok and row.sub_chunk == 16 and row.stack == 0 and row.mma > 0, (row.kernel, row.stack, row.error)


def test_mlp_backward_state_passes_keep_per_token_vectors_out_of_the_registers():
    """The MLP memories' backward state passes held per-token vectors (a LayerNorm's row statistics, a gate's
    cumulative decay, the step sizes' end coefficients) in registers through the hidden-block loops between their
    readers: at sm_90a, D = 64, with their default configs, TTT-MLP's spilled 144 B a thread and titans' 472. Made
    where they are read, or parked (mirasc.kernel_body._made_where_read, _per_token_vector), they spill 16 and 192
    (bench/README.md, "Per-token vectors out of the registers"); the bounds here were about half the old figures.
    Since their LayerNorms run by row blocks of 16 (mirasc.kernel_body, row blocks) the defaults spill 72 and 272 (the
    spill guard's choices 0 and 112, "Row blocks"): titans' bound is now 300."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    source = generate_triton(load(model_path("titans")))
    state_bwd = source[source.index("def chunk_state_bwd_kernel("):].split("@triton.jit")[0]
    assert re.search(r"tl\.store\(scratch \+ [^,]* \+ offs_[tsu], v\d+\)  # park", state_bwd), state_bwd
    for spec, bound in (("ttt_mlp", 72), ("titans", 300)):
        [row] = aot_report(spec, chunk_size=64, head_dim=64, timeout=240, spill_guard=False,
                           only=["chunk_state_bwd_kernel"])
        assert row.ok and row.stack <= bound and row.mma > 0, (spec, row.stack, row.error)


def test_mlp_memories_load_per_row_parameters_where_they_are_read():
    """A per-row parameter (a LayerNorm's weight and bias) was loaded once in an MLP memory's kernel prologue and
    held through every hidden-block loop: at sm_90a, D = 64, with its default config, Moneta's output kernel spilled
    224 B a thread. Loaded where read, and again after loops that do not read it (mirasc.triton_kernels._Assembler,
    kernel_body._parked), it spills 72 (bench/README.md, "Per-row parameters loaded where read"); the bound is half
    the old figure. A linear memory's kernels load theirs once, before the chunk loop. (A state pass's other form,
    the parameters loaded once before its chunk loop where PARAMS_ONCE is set, a spill guard candidate, is left
    out: test_triton_params_once_match_torch runs it.)"""
    from mirasc.aot import aot_report, kernel_names
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    def kernel_sources(stem: str) -> dict[str, str]:
        source = generate_triton(load(model_path(stem)))
        source = re.sub(r"\n( *)if PARAMS_ONCE:.*\n(?:\1    .*\n)*", "\n", source)
        return {k: source.split(f"def {k}(")[1].split("@triton.jit")[0] for k in kernel_names(source)}

    checked = 0
    for stem in ("ttt_mlp", "moneta"):
        for kernel, text in kernel_sources(stem).items():
            lines = [ln.strip() for ln in text.splitlines()]
            for j, ln in enumerate(lines):
                m = re.match(r"(ln_weight|ln_bias) = tl\.load\(", ln)
                if not m:
                    continue
                later = lines[j + 1:]
                reader = next(k for k, x in enumerate(later) if re.search(rf"\b{m[1]}\b", x))
                assert not any(x.startswith("for hb in range(") for x in later[:reader]), (stem, kernel, ln)
                assert not later[reader].startswith(f"{m[1]} = tl.load("), (stem, kernel, ln)  # a load never read
                checked += 1
    assert checked > 20, checked
    loads = {kernel: len(re.findall(r"\bln_weight = tl\.load\(", text))
             for kernel, text in kernel_sources("ttt_linear").items()}
    assert max(loads.values()) == 1, loads
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    [row] = aot_report("moneta", chunk_size=64, head_dim=64, timeout=240, spill_guard=False,
                       only=["chunk_out_fwd_kernel"])
    assert row.ok and row.stack <= 112 and row.mma > 0, (row.stack, row.error)


def test_token_blocks_take_only_per_token_work():
    """mirasc.token_blocks cuts a state pass into the values before the sub-chunk loop, the rows made per token
    and the sums over the chunk's tokens; a row that mixes tokens (a running sum along the chunk) leaves the chunk
    whole, and so does an output with a token axis unless the loop may store it a sub-chunk at a time."""
    from mirasc.token_blocks import plan

    def program(mix: bool, row_output: bool = False) -> ir.Graph:
        g = ir.Graph()
        w, k, v = g.input("w", ("o", "i")), g.input("k", ("t", "i")), g.input("v", ("t", "o"))
        err = g.ew(lambda y, x: y - x, g.einsum(("t", "o"), k, w), v)
        err = g.cumsum(err, "t") if mix else err
        g.outputs = {"new_w": g.ew(lambda a, b: a - b, w, g.einsum(("o", "i"), err, k))}
        if row_output:
            g.outputs["err"] = err
        return g

    cut = plan(program(mix=False))
    assert cut is not None and len(cut.sums) == 1 and cut.sums[0].axes == ("o", "i")
    assert plan(program(mix=True)) is None
    assert plan(program(mix=False, row_output=True)) is None
    assert plan(program(mix=False, row_output=True), frozenset({"err"})) is not None
    assert plan(program(mix=True, row_output=True), frozenset({"err"})) is None


def test_aot_refines_the_spill_guards_choice_with_the_parameters_once(monkeypatch):
    """An MLP memory's backward state pass whose best candidate still spills is compiled once more with PARAMS_ONCE
    on top of that candidate (mirasc.backends.tuning.refinements), and `mirasc aot` reports the result where it
    spills less: here, with compiles faked (titans' pass, every config 64 B but its inputs read again, 32, the
    parameters once, 48, and both, 8), the two together, two compiles past the candidates (the other refinement,
    twice the choice's rows, spills as much as the choice here)."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    import mirasc.aot as aot

    compiled = []

    def fake(self, kernel, config):
        compiled.append(config)
        stack = {(True, True): 8, (True, False): 32, (False, True): 48}.get(
            (config.reread_inputs, config.params_once), 64)
        return aot.KernelReport(self.spec, kernel, self.head_dim, self.hidden, self.chunk_size, self.dtype, self.arch,
                                ok=True, stack=stack, num_warps=config.num_warps, reread_inputs=config.reread_inputs,
                                params_once=config.params_once)

    monkeypatch.setattr(aot._Target, "compile", fake)
    (row,) = aot.aot_report("titans", head_dim=64, only=["chunk_state_bwd_kernel"])
    assert row.reread_inputs and row.params_once and row.stack == 8 and row.default_stack == 64, row
    assert row.configs_compiled == len(compiled) and compiled[-2].params_once and compiled[-2].reread_inputs
    assert compiled[-1].reread_inputs and compiled[-1].row_block == 2 * compiled[0].row_block > 0, compiled
    assert sum(c.params_once for c in compiled) == 2, compiled  # the default with it (a candidate), then the refinement
    (plain,) = aot.aot_report("titans", head_dim=64, only=["chunk_state_bwd_kernel"], spill_guard=False)
    assert not plain.params_once and plain.configs_compiled == 1, plain


def test_the_spill_guard_loads_input_tiles_again_after_the_loops():
    """Yaad's local_bwd kernel at sm_90a, D = 64 spills with its input tiles held through its hidden-block loops
    (96 B when this was written) and none with them loaded again after the loops that do not read them: the spill
    guard's REREAD_INPUTS candidate, which mirasc aot reports. (Should the default stop spilling, the guard keeps it
    and this test needs another kernel. Titans' forward state pass was this test's kernel until its LayerNorm ran
    by row blocks, whose whole chunk as one block spills none; then titans' local_bwd, 8 B with its inputs loaded
    again, until the guard also tried twice the default's rows, which spill none there.)"""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report

    (row,) = aot_report("yaad", chunk_size=64, head_dim=64, only=["chunk_local_bwd_kernel"], timeout=240)
    assert row.ok and row.default_stack > 0 and row.reread_inputs, row
    assert row.stack < row.default_stack, (row.stack, row.default_stack)


def test_the_spill_guard_loads_input_tiles_again_after_the_products():
    """Gated DeltaNet's third decay-gradient term at sm_80, D = 128 (no hidden-block loops) holds its key tile
    through the matrix products between its reads and spilled 16 B a thread that way when this was written; loaded
    again with offsets of its own (REREAD_INPUTS) it spills none, and the spill guard takes that. (Should the
    default stop spilling, the guard keeps it and this test needs another kernel: DeltaNet's first key-gradient term
    at D = 64 and Gated DeltaNet's at D = 128, this test's kernels before their products were made by head-axis
    blocks, did.)"""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report

    (row,) = aot_report("gated_deltanet", arch=80, chunk_size=64, head_dim=128,
                        only=["chunk_grad_gate_alpha_3_bwd_kernel"], timeout=240)
    assert row.ok and row.default_stack > 0 and row.reread_inputs, row
    assert row.stack < row.default_stack, (row.stack, row.default_stack)


def test_key_gradient_terms_are_made_and_stored_by_head_blocks():
    """A linear memory's key-gradient term ends in a (C, C)·(C, D) product of a token tile: DeltaNet's first one at
    sm_80, D = 128 held that (64, 128) fp32 result whole and spilled 48 B a thread with its default config, 32 with
    the spill guard's best. Made and stored a block of BK head columns at a time (mirasc.kernel_body, "head-axis
    blocks"), its default config spills none."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    kernel = "chunk_grad_k_0_bwd_kernel"
    source = generate_triton(load(model_path("deltanet")))
    body = source[source.index(f"def {kernel}("):].split("@triton.jit")[0]
    loop = body[body.rindex("for kb in range(0, D, BK):"):]
    assert "k_block = tl.load(" in loop and "tl.store(grad_block_ptr" in loop and "offs_k[None, :]" in loop, loop
    assert body.count("tl.store(") == 1, body  # stored by blocks only
    (row,) = aot_report("deltanet", arch=80, chunk_size=64, head_dim=128, only=[kernel], timeout=240,
                        spill_guard=False)
    assert row.ok and row.stack == 0 and row.mma > 0, (row.stack, row.error)


def test_products_with_the_state_rows_are_made_by_head_blocks():
    """Gated DeltaNet's third decay-gradient term makes two products over the head axis of a key tile scaled per
    token with the state's rows (k·e^Λ·W₀ᵀ and k·η·ΔWᵀ); made whole at sm_80, D = 128 they held two (64, 128) fp32
    tiles and the term spilled 24 B a thread with the spill guard's best config. Made by blocks of BK head columns,
    the key tile's block scaled inside the loop (mirasc.kernel_body, "head-axis blocks"), no whole tile is loaded."""
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    kernel = "chunk_grad_gate_alpha_3_bwd_kernel"
    source = generate_triton(load(model_path("gated_deltanet")))
    body = source[source.index(f"def {kernel}("):].split("@triton.jit")[0]
    for state in ("starts_w1_ptr", "carries_w1_ptr"):
        assert re.search(rf"for kb in range\(0, D, BK\):.*\n(        .*\n)*        \w+_block = tl\.load\({state}", body)
        assert not re.search(rf"\n    \w+ = tl\.load\({state}", body), body
    assert not re.search(r"\bk = tl\.load\(", body) and "k_block = tl.load(" in body  # no whole key tile


def test_channel_decay_products_go_by_channel_blocks():
    """An MLP memory's channel-decay products held (C, D) tiles whole through their sub-chunk steps: Yaad's first
    key-gradient term at sm_90a, D = 128 spilled 552 B a thread with its default config, all of it on those lines.
    Made by blocks of BK channel columns, every factor read from scratch memory by that block
    (emit_triton.decayed_product), it spilled 216 B by blocks of 64 and none by blocks of 32, the launcher's BK there
    now (`channel_block`); the bar is half the figure by blocks of 64."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report
    from mirasc.backends.triton import channel_block
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    kernel = "chunk_grad_k_0_bwd_kernel"
    source = generate_triton(load(model_path("yaad")))
    body = source[source.index(f"def {kernel}("):].split("@triton.jit")[0]
    loops = re.findall(r"\n    for (v\d+)_cb in range\(0, (D|BV), BK\):", body)
    assert len(loops) == 3, loops
    for product, _ in loops:  # inside each, the steps read their factors by the block's columns only
        start = body.index(f"for {product}_cb")
        steps = body[start:body.index(f"\n    {product} = ", start)]
        assert f"{product}_c[None, :]" in steps and "tl.arange(0, D)[None, :]" not in steps, steps
    (row,) = aot_report("yaad", arch=90, chunk_size=64, head_dim=128, only=[kernel], timeout=240,
                        spill_guard=False)
    assert (channel_block(128), channel_block(16)) == (32, 16) and row.head_block == 32
    assert row.ok and row.mma > 0 and row.stack <= 216 // 2, (row.stack, row.error)


def test_an_a100_gets_the_register_ceiling():
    """ptxas for sm_80, left to itself, gave titans' outputs kernel 32 registers a thread and 5,200 B of spills; with
    the launcher's ceiling of 255 (Triton's maxnreg) it takes the registers it needs."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report
    from mirasc.backends.triton import max_registers

    assert max_registers(80) == 255 and max_registers(90) is None
    (row,) = aot_report("titans", arch=80, chunk_size=64, head_dim=64, only=["chunk_out_fwd_kernel"], timeout=240,
                        spill_guard=False)
    assert row.ok and row.regs > 128 and row.stack < 5200, (row.regs, row.stack, row.error)


def test_an_a100_gets_the_narrower_value_block():
    """At sm_80 RetNet's value-blocked decay-gradient term spilled 24 B a thread with BV = 32; the launcher's
    choice there, 16, leaves it none, and sm_90 keeps 32 (mirasc.backends.triton.value_block)."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report
    from mirasc.backends.triton import value_block

    assert (value_block(64, 80), value_block(64, 90), value_block(16, 90)) == (16, 32, 16)
    (row,) = aot_report("retnet", arch=80, chunk_size=64, head_dim=64,
                        only=["chunk_grad_gate_alpha_3_bwd_kernel"], timeout=240)
    assert row.ok and row.stack == 0 and row.mma > 0, (row.stack, row.error)


def test_an_a100_makes_the_scores_by_head_blocks():
    """Mamba2's decay-gradient term makes its scores q·kᵀ over the head axis; whole at D = 128, sm_80 holds all of kᵀ
    in every warp and spilled 176 B a thread. By blocks of BK = 32 head columns there (mirasc.kernel_body, "head-axis
    blocks"), loaded inside the loop, it spills none."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report
    from mirasc.backends.triton import head_block
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    assert (head_block(128), head_block(64, 90), head_block(64, 80), head_block(16, 80)) == (64, 64, 32, 16)
    kernel = "chunk_grad_gate_alpha_3_bwd_kernel"
    source = generate_triton(load(model_path("mamba2")))
    body = source[source.index(f"def {kernel}("):].split("@triton.jit")[0]
    assert "for kb in range(0, D, BK):" in body and "k_block = tl.load(" in body
    # TTT-Linear's kernels too, though they hold whole value rows (its LayerNorm)
    assert re.search(r"\+= tl\.dot\(\w+_block", generate_triton(load(model_path("ttt_linear"))))
    (row,) = aot_report("mamba2", arch=80, chunk_size=64, head_dim=128, only=[kernel], timeout=240)
    assert row.ok and row.stack == 0 and row.mma > 0, (row.stack, row.error)


def test_aot_reports_the_config_the_spill_guard_takes():
    """Gated DeltaNet's first key-gradient term at sm_80, D = 128 spills 16 B a thread at the launcher's default (8
    warps, BV = 16). A GPU launch replaces that default by the first candidate that compiles without spills
    (mirasc.backends.tuning.SpillGuard), and `mirasc aot` reports that choice: BV = 32, after the default and 4
    warps alone; with the guard off, the default."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report

    only = ["chunk_grad_k_0_bwd_kernel"]
    (row,) = aot_report("gated_deltanet", arch=80, head_dim=128, only=only, timeout=240)
    assert row.ok and row.stack == 0 and row.default_stack > 0 and row.configs_compiled == 3, row
    assert (row.num_warps, row.block_value) == (8, 32), row
    (plain,) = aot_report("gated_deltanet", arch=80, head_dim=128, only=only, timeout=240, spill_guard=False)
    assert plain.stack == row.default_stack and plain.configs_compiled == 1, plain
    assert (plain.num_warps, plain.block_value) == (8, 16), plain


@pytest.mark.parametrize("stem", ["titans", "memora"])
def test_a_sum_of_hidden_axis_contractions_keeps_one_accumulator(stem):
    """Where a value is the plain sum of contractions over the hidden axis made in one loop (titans' weights and
    momentum, memora's two layers' paths), the terms accumulate into one tile: no line adds two tiles that a loop
    accumulated, and the sum's tile is zeroed once. (Their values are checked against the torch backend in
    tests/test_triton.py.)"""
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    shared = 0
    for kernel in generate_triton(load(stem)).split("@triton.jit")[1:]:  # value names are per kernel
        terms = re.findall(r"^\s+(v\d+) \+= ", kernel, re.M)
        accumulated = set(terms)
        shared += len(terms) - len(accumulated)
        for pair in re.findall(r"^\s+v\d+ = \((v\d+) \+ (v\d+)\)$", kernel, re.M):
            assert not set(pair) <= accumulated, f"two accumulators added after their loop: {pair}"
        for name in accumulated:
            assert len(re.findall(rf"^\s+{name} = tl\.zeros\(", kernel, re.M)) == 1, name
    assert shared > 0, "no accumulator takes more than one term"


def test_hidden_blocks_shrink_as_the_head_grows():
    """BH halves as D doubles, so the (C, BH) and (BH, D) dot operands keep their shared memory: titans at D = 128
    (hidden 512) took 328 KB of shared memory in its backward state pass with BH = 32, over an H100's 227 KB, and
    208 KB with 16 (bench/README.md). Never below 16, tl.dot's smallest side, nor above the hidden size."""
    from mirasc.backends.triton import hidden_block

    assert hidden_block(256, 64) == 32
    assert hidden_block(512, 128) == 16
    assert hidden_block(1024, 256) == 16
    assert hidden_block(16, 16) == 16
    assert hidden_block(64, 32) == 32


def test_a_kernel_short_of_shared_memory_gets_a_smaller_hidden_block():
    """The launcher halves BH (down to 16) when the device refuses a kernel for its shared memory, and remembers it;
    any other refusal, or one at BH = 16, reaches the caller. (A stand-in kernel: the refusal needs a GPU.)"""
    from triton.runtime.errors import OutOfResources

    from mirasc.backends.triton import launch_fitting

    class Kernel:
        def __init__(self, fits_at: int, what: str = "shared memory"):
            self.fits_at, self.what, self.calls = fits_at, what, []

        def __getitem__(self, grid):
            def launch(*args, BH, **consts):
                self.calls.append(BH)
                if BH > self.fits_at:
                    raise OutOfResources(BH * 7000, 167936, self.what)
            return launch

    k = Kernel(fits_at=16)
    launch_fitting(k, (4, 1, 1), (1, 2), {"BH": 64, "C": 64})
    assert k.calls == [64, 32, 16]
    launch_fitting(k, (4, 1, 1), (1, 2), {"BH": 64, "C": 64})  # remembered: no second refusal
    assert k.calls == [64, 32, 16, 16]
    with pytest.raises(OutOfResources):
        launch_fitting(Kernel(fits_at=8), (1, 1, 1), (), {"BH": 32})
    threads = Kernel(fits_at=8, what="threads")
    with pytest.raises(OutOfResources):
        launch_fitting(threads, (1, 1, 1), (), {"BH": 32})
    assert threads.calls == [32]


def _segments_at(kernel: str) -> list[list[str]]:
    """The chunk body's statements at the indent of its hidden-block loops, a loop (or any block) as one segment."""
    lines = kernel.splitlines()
    first = next(ln for ln in lines if "for hb in range(0, HID, BH):  # the hidden axis" in ln)
    indent = len(first) - len(first.lstrip())
    start = lines.index(first)
    while start > 0 and (len(lines[start - 1]) - len(lines[start - 1].lstrip()) >= indent or not lines[start - 1]):
        start -= 1
    segments: list[list[str]] = []
    for ln in lines[start:]:
        depth = len(ln) - len(ln.lstrip())
        if ln.strip() and depth < indent:
            break
        if depth > indent and segments:
            segments[-1].append(ln)
        else:
            segments.append([ln])
    return segments


@pytest.mark.parametrize("stem", ["moneta", "titans"])
def test_tiles_do_not_wait_in_registers_through_a_loop(stem):
    """A register tile read after a hidden-block loop (or channel-decay product) that does not read it is parked in
    scratch memory, not held through the loop: in every kernel of the MLP memory, after a hidden-block loop that does
    not mention a parked name, the name is read back (`# parked`) before it is read again; and every read-back from
    scratch comes after a barrier that follows the last park store (other threads stored the tile)."""
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    read_backs = 0
    for kernel in generate_triton(load(stem)).split("@triton.jit")[1:]:
        if "for hb in range" not in kernel:
            continue
        parked = set(re.findall(r"^\s+(\w+) = .*  # parked$", kernel, re.M))
        read_backs += len(re.findall(r"  # parked$", kernel, re.M))
        held = set()
        stored_since_barrier = False
        for seg in _segments_at(kernel):
            # code only: comments and docstrings name values too
            text = "\n".join(ln.split("  # ")[0] for ln in seg if not ln.strip().startswith('"""'))
            head = seg[0].strip()
            if head.startswith("tl.debug_barrier()"):
                stored_since_barrier = False
            if head.endswith("# park"):
                stored_since_barrier = True
            target = re.match(r"(\w+) = ", head)
            if target and head.endswith("# parked") and "scratch" in head:
                assert not stored_since_barrier, f"{stem}: {head[:60]} reads a tile with no barrier after its store"
            for name in parked:
                mentioned = re.search(rf"\b{name}\b", text) is not None
                if target and target.group(1) == name and len(seg) == 1:
                    held.add(name)
                elif mentioned:
                    assert name in held, f"{stem}: {name} read after a loop passed it, with no read-back: {head[:70]}"
                elif head.startswith("for hb in"):  # a hidden-block loop that does not read it
                    held.discard(name)
    assert read_backs > 0, "no tile parked"


@pytest.mark.parametrize("stem", ["moneta", "titans"])
def test_hidden_block_loops_hold_few_outside_tiles(stem, monkeypatch):
    """A hidden-block loop that would hold more than LOOP_UNITS of the chunk's tiles from outside it and of its sums
    through every block is split into consecutive loops that each hold at most that (past a loop's first value,
    which may hold more alone); the split loops' values are the original loop's, in order. (That the split kernels
    compute what the torch backend does is tests/test_triton.py's.)"""
    from mirasc import kernel_body
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    split = kernel_body._split_loops
    splits = []

    def checked(segments, into):
        out = split(segments, into)
        before = [v.id for seg in segments if isinstance(seg, kernel_body._Loop) for v in seg.values]
        after = [v.id for seg in out if isinstance(seg, kernel_body._Loop) for v in seg.values]
        assert after == before
        for seg in out:
            if not isinstance(seg, kernel_body._Loop):
                continue
            outside, sums, part = {}, 0.0, kernel_body._Loop()
            for v in seg.values:  # past its first value, a value that adds tiles keeps the loop within the bound
                reads = kernel_body._outside_reads(v, part)
                sibling = v.id in into and any(into.get(u.id) is into[v.id] for u in part.values)
                own = kernel_body.tile_units(v) if v.id in seg.sums and not sibling else 0.0
                adds = sum(u for i, u in reads.items() if i not in outside) + own
                outside.update(reads)
                sums += own
                assert not (part.values and adds > 0 and not sibling) or \
                    sum(outside.values()) + sums <= kernel_body.LOOP_UNITS or any(
                        into.get(u.id) is not None and into.get(u.id) is into.get(w.id)
                        for u in part.values for w in seg.values[len(part.values):])  # a shared sum still open
                part.values.append(v)
        splits.append(len(out) - len(segments))
        return out

    monkeypatch.setattr(kernel_body, "_split_loops", checked)
    generate_triton(load(stem))
    assert max(splits) > 0, "no loop was split"


def _module_kernels(stem: str) -> tuple[str, dict[str, str]]:
    """A prebuilt spec's generated Triton module, and the source of each kernel by name."""
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    text = generate_triton(load(stem))
    return text, {k.split("(")[0].strip(): k for k in re.split(r"^def ", text, flags=re.M)[1:]}


@pytest.mark.parametrize("stem", ["deltanet", "gated_deltanet"])
def test_backward_state_pass_reads_its_carry_free_products(stem):
    """The delta rule's backward state pass, sequential over chunks, makes no product that needs no adjoint from the
    next chunk: the scores' product with d_out (local_0) comes from the chunk-parallel local_bwd kernel, made for
    every chunk before the pass, which reads it; the gradient kernels that need it read it as well."""
    text, kernels_by_name = _module_kernels(stem)
    state_bwd, local_bwd = kernels_by_name["chunk_state_bwd_kernel"], kernels_by_name["chunk_local_bwd_kernel"]
    assert "local_0 = tl.load(local_0_ptr" in state_bwd
    assert "# scores" not in state_bwd and "# scores" in local_bwd
    assert "tl.store(local_0_ptr" in local_bwd
    assert any("local_0 = tl.load(local_0_ptr" in k for n, k in kernels_by_name.items() if n.startswith("chunk_grad_"))
    description = text[text.index("DESCRIPTION"):]
    assert "'local': [['local_0', ['s', 'o']]]" in description and "'local_bwd': {'grid': 'chunks'" in description
    assert _carry_free_left(stem) == []  # nothing carry-free and made by a product is left in the pass


def _carry_free_left(stem: str) -> list:
    """The carry-free values `carry_free` still finds in a spec's backward state pass once it reads the local ones."""
    from mirasc.loader import load

    spec = load(stem)
    fwd = lower(derive(spec), channel_decay="products")
    io = _kernel_io(spec, fwd)
    a = _Assembler(io, fwd, differentiate(fwd, input_names(spec)))
    part = _only(a.backward, [f"d_{s}" for s in io.states])
    return carry_free(part, {f"d_new_{s}" for s in io.states})


def test_ttt_linear_backward_state_pass_reads_the_layernorm_adjoint_made_before_it():
    """TTT-Linear's state adjoint gains q^T·g per chunk, a (D, D) matrix no carried adjoint reaches, where g is the
    adjoint of the output LayerNorm's input: a (C, D) tile made from d_out through a product with the chunk's start
    state. The (D, D) matrix is no token tile, so its token-tile operand g is made before the pass (local_bwd), and
    the sequential pass reads g where it made the LayerNorm's backward from d_out in every chunk."""
    _, kernels_by_name = _module_kernels("ttt_linear")
    state_bwd, local_bwd = kernels_by_name["chunk_state_bwd_kernel"], kernels_by_name["chunk_local_bwd_kernel"]
    assert "d_out_ptr +" not in state_bwd and "starts_w1_ptr +" not in state_bwd
    assert "d_out_ptr +" in local_bwd
    assert _carry_free_left("ttt_linear") == []


@pytest.mark.parametrize("stem", ["deltanet", "gated_deltanet"])
def test_state_pass_reads_the_ut_transform_made_before_it(stem):
    """The delta rule's UT transform (I + A)⁻¹, C substitution steps over (C, C) tiles, is made for every chunk at once
    by the stored_fwd kernel, launched before the state pass; the sequential state pass reads it and has no
    substitution loop."""
    text, kernels_by_name = _module_kernels(stem)
    state_fwd, stored_fwd = kernels_by_name["chunk_state_fwd_kernel"], kernels_by_name["chunk_stored_fwd_kernel"]
    substitution = re.compile(r"for \w+_r in range\(1, C\)")
    assert substitution.search(stored_fwd) and not substitution.search(state_fwd)
    assert "stored_0 = tl.load(stored_0_ptr" in state_fwd and "tl.store(stored_0_ptr" not in state_fwd
    assert "tl.store(stored_0_ptr" in stored_fwd
    assert "'stored_fwd': {'grid': 'chunks'" in text[text.index("DESCRIPTION"):]


@pytest.mark.parametrize("stem", ["moneta", "titans"])
def test_parked_tiles_keep_straight_line_code_within_its_register_bound(stem, monkeypatch):
    """Between the hidden-block loops, a kernel's straight-line values hold at most PARK_UNITS register tiles live at
    once (its own result included; tiles it reads, outputs and inputs other than the reloadable ones (an earlier
    kernel's values for the chunk, read again from memory) are never parked, so where they alone exceed the bound
    nothing movable remains); a parked tile never leaves the registers for a segment that reads it, and leaves them
    for every hidden-block loop that passes it. Checked on every kernel's plan by replaying it."""
    from mirasc import kernel_body

    plan = kernel_body._parked
    by_pressure = []  # tiles leaving the registers for a straight-line value

    reloaded = []  # kernels whose plan reloads an input

    def checked(segments, excluded, reloadable):
        evicted = plan(segments, excluded, reloadable)
        reloaded.extend([1] * bool(set(evicted) & reloadable))
        reads = [kernel_body._segment_reads(seg) for seg in segments]
        last = {i: j for j, r in enumerate(reads) for i in r}
        made = {}
        for j, seg in enumerate(segments):
            for v in kernel_body._values(seg):
                made[v.id] = (j, v)
        held: dict[int, float] = {}
        for j, seg in enumerate(segments):
            held = {i: u for i, u in held.items() if last.get(i, -1) >= j}
            for i in reads[j]:
                assert j not in evicted.get(i, set()), f"{stem}: a tile leaves the registers for its reader"
                if i in made and kernel_body.tile_units(made[i][1]) > 0 and not kernel_body.wide(made[i][1]):
                    held[i] = kernel_body.tile_units(made[i][1])
            for i in [i for i in held if j in evicted.get(i, set())]:
                del held[i]
                by_pressure.extend([i] * (not kernel_body._heavy(seg)))
            movable = [i for i in held if i not in reads[j] and last[i] > j and i not in excluded
                       and (i in reloadable or not isinstance(made[i][1].op, kernel_body.ir.Input))]
            if kernel_body._heavy(seg):
                assert not movable, f"{stem}: a loop passes a tile it does not read in registers"
            else:
                live = sum(held.values()) + (kernel_body.tile_units(seg) if isinstance(seg, kernel_body.Value) else 0)
                assert live <= kernel_body.PARK_UNITS or not movable, f"{stem}: {live} tiles live, some movable"
            for v in kernel_body._values(seg):  # a row run's values leave the registers with their row blocks
                kept = isinstance(seg, kernel_body.Value) or (isinstance(seg, kernel_body._Loop) and v.id in seg.sums)
                if kernel_body.tile_units(v) > 0 and not kernel_body.wide(v) and not kernel_body.inlined(v) and kept:
                    held[v.id] = kernel_body.tile_units(v)
        return evicted

    monkeypatch.setattr(kernel_body, "_parked", checked)
    from mirasc.codegen import generate_triton
    from mirasc.loader import load

    generate_triton(load(stem))
    assert by_pressure, "no tile parked for a straight-line value"
    assert reloaded, "no chunk-local input read again"


@pytest.mark.parametrize("stem", ["titans", "memora"])
def test_mlp_memory_gradient_kernels_read_the_carry_free_values(stem):
    """An MLP memory's backward state pass has carry-free (C, D) values too (the chunk's memory outputs, the inner
    loss's gradient, the LayerNorm's adjoints: made from the chunk's start state, not from the adjoint carried in),
    made for every chunk at once by local_bwd. The pass and the gradient kernels read them instead of making the
    chunk's forward pass again for them, and load one again from its buffer before a reader far from the first
    ("# again") where it would hold its registers through the hidden-block loops between (in the pass this spills
    less than holding them: titans 576 -> 472 B, mirasc aot, sm_90a, D = 64)."""
    text, kernels_by_name = _module_kernels(stem)
    local_bwd = kernels_by_name["chunk_local_bwd_kernel"]
    assert "tl.store(local_0_ptr" in local_bwd and "for hb in range(0, HID, BH)" in local_bwd
    state_bwd = kernels_by_name["chunk_state_bwd_kernel"]
    assert "local_0 = tl.load(local_0_ptr" in state_bwd
    assert "# again" in state_bwd and "tl.store(local_" not in state_bwd  # parked with no store
    grads = [k for n, k in kernels_by_name.items() if n.startswith("chunk_grad_")]
    assert sum("= tl.load(local_" in k for k in grads) > len(grads) // 2
    assert any("# again" in k for k in grads)
    assert "'local_bwd': {'grid': 'chunks'" in text[text.index("DESCRIPTION"):]


def _three_term_sum(hidden: bool) -> ir.Graph:
    """out = k·W₁ᵀ + k·W₂ᵀ + k·W₃ᵀ, (t, o) tiles each read by the sum alone; with `hidden`, the first term is a sum
    over the hidden axis (a kernel with a hidden-block loop)."""
    g = ir.Graph()
    k = g.input("k", ("t", "i"))
    mats = [g.input(f"w{j}", ("o", "i")) for j in range(3)]
    terms = [g.einsum(("t", "o"), k, w) for w in mats]
    if hidden:
        x = g.input("x", ("t", "h"))
        terms[0] = g.einsum(("t", "o"), x, g.input("u", ("o", "h")))
    g.outputs = {"out": g.ew(lambda a, b, c: a + b + c, *terms)}
    return g


def test_straight_line_sums_add_each_term_where_it_is_made():
    """A sum of register tiles in a kernel without hidden-block loops is a running sum: each term joins the sum's
    tile where it is made, so that no term holds its registers until the last is made. Kernels with loops keep the
    sum whole (their measured spills went up)."""
    from mirasc.kernel_body import body

    loads = {n: f"tl.load({n}_ptr)" for n in ("k", "w0", "w1", "w2", "x", "u")}
    graph = _three_term_sum(hidden=False)
    lines = body(graph, loads).lines
    total = f"v{graph.outputs['out'].id}"
    # each term is made whole or, over the head axis of loaded tiles, summed by blocks (`v += tl.dot` in a loop)
    made = [j for j, x in enumerate(lines) if re.match(r"\s*v\d+ \+?= tl\.dot", x)]
    adds = [j for j, x in enumerate(lines) if x.startswith(f"{total} = ")]
    assert len(made) == 3 and len(adds) == 3, lines
    assert all(m < a for m, a in zip(made, adds)) and all(a < m for a, m in zip(adds, made[1:])), lines
    assert lines[adds[0]].endswith("# a running sum") and f"{total} + " in lines[adds[2]], lines
    looped = body(_three_term_sum(hidden=True), loads, {"x": ("x_ptr", "0"), "u": ("u_ptr", "0")}).lines
    assert not any("running sum" in x for x in looped), looped


def test_outputs_stored_where_they_are_made_leave_the_registers():
    """A narrow output the caller lets the body store (`early_stores`, as the local_bwd kernel does) is stored on
    the line after its own, not after the kernel's last line: it need not hold its registers through a later
    hidden-block loop (MLP memories' local_bwd kernels, D = 64, sm_90a: 720 stack bytes in all against 2,368)."""
    from mirasc.kernel_body import body

    g = ir.Graph()
    k = g.input("k", ("t", "i"))
    first = g.einsum(("t", "o"), k, g.input("w0", ("o", "i")))
    second = g.einsum(("t", "o"), g.input("x", ("t", "h")), g.input("u", ("o", "h")))
    g.outputs = {"first": first, "second": second}
    loads = {n: f"tl.load({n}_ptr)" for n in ("k", "w0")}
    sources = {"x": ("x_ptr", "0"), "u": ("u_ptr", "0")}
    stores = {n: f"tl.store({n}_ptr, v{v.id})" for n, v in g.outputs.items()}
    lines = body(g, loads, sources, early_stores=stores).lines
    made = next(j for j, x in enumerate(lines) if x.startswith(f"v{first.id} = "))
    loop = next(j for j, x in enumerate(lines) if x.startswith("for hb in"))
    assert lines[made + 1] == stores["first"] and made < loop, lines
    assert lines.index(stores["second"]) > loop and all(s in lines for s in stores.values()), lines
    held = body(g, loads, sources).lines  # without early stores the caller stores the outputs after the lines
    assert not any(x.startswith("tl.store(first_ptr") for x in held), held


def test_an_input_is_loaded_after_the_loops_before_its_first_reader():
    """A narrow input's load that a hidden-block loop separates from its first reader moves to just before that
    reader (a loop, or a line between loops); an input nothing reads, one with nothing heavy before its reader, and
    a reloadable one stay where the schedule put them."""
    from mirasc.kernel_body import _inputs_where_read, _Loop

    g = ir.Graph()
    k, unread = g.input("k", ("t", "i")), g.input("unread", ("t", "i"))
    first = g.einsum(("t", "o"), g.input("x", ("t", "h")), g.input("u", ("o", "h")))
    second = g.einsum(("t", "h"), k, g.input("w", ("h", "i")))
    loops = [_Loop(values=[first], sums={first.id}), _Loop(values=[second])]
    assert _inputs_where_read([unread, k, *loops]) == [unread, loops[0], k, loops[1]]
    assert _inputs_where_read([unread, k, *loops], frozenset({"k"})) == [unread, k, *loops]
    straight = [k, unread, g.ew(lambda a, b: a + b, k, unread), *loops]
    assert _inputs_where_read(straight) == straight


def test_a_chain_of_per_token_values_is_made_after_the_loops_before_its_reader():
    """A per-token vector that hidden-block loops separate from its first reader is made just before that reader,
    and so is a tile read only by such a vector (a LayerNorm's row statistic and the tile it sums); a vector with
    nothing heavy before its reader, a tile that other values read, and any value in a kernel without loops stay
    where they were."""
    from mirasc.kernel_body import _Loop, _made_where_read

    g = ir.Graph()
    x, y = g.input("x", ("t", "o")), g.input("y", ("t", "o"))
    square = g.ew(lambda a: a * a, x)
    stat = g.sum(square, "o")  # read only after the loops: it moves, and its tile with it
    near = g.sum(y, "o")  # read before any loop: it stays
    scaled = g.ew(lambda a, b: a * b, y, near)
    late = g.ew(lambda a, b: a * b, y, stat)
    first = g.einsum(("t", "h"), scaled, g.input("u", ("h", "o")))
    loops = [_Loop(values=[first]), _Loop(values=[g.einsum(("t", "h"), x, g.input("w", ("h", "o")))])]
    segments = [x, y, square, stat, near, scaled, *loops, late]
    assert _made_where_read(segments) == [x, y, near, scaled, *loops, square, stat, late]
    shared = g.ew(lambda a, b: a + b, square, x)  # a second reader of the tile keeps it in place
    kept = [x, y, square, stat, near, scaled, *loops, shared, late]
    assert _made_where_read(kept) == [x, y, square, near, scaled, *loops, shared, stat, late]
    straight = [x, y, square, stat, near, scaled, late]
    assert _made_where_read(straight) == straight


def test_a_per_token_vector_read_across_loops_is_parked():
    """A vector along the tokens read before and after hidden-block loops that do not read it leaves the registers
    before them, as a tile does; a scalar stays."""
    from mirasc.kernel_body import _Loop, _parked

    g = ir.Graph()
    x = g.input("x", ("t", "o"))
    stat = g.sum(g.ew(lambda a: a * a, x), "o")
    total = g.sum(stat, "t")
    early = g.ew(lambda a, b, c: a * b * c, x, stat, total)
    loops = [_Loop(values=[g.einsum(("t", "h"), early, g.input(f"w{n}", ("h", "o")))]) for n in range(2)]
    late = g.ew(lambda a, b, c: a + b + c, x, stat, total)
    evicted = _parked([x, stat, total, early, *loops, late], excluded=set(), reloadable=set())
    assert evicted.get(stat.id) == {4} and total.id not in evicted, evicted  # out before the first loop


def test_mlp_memories_make_each_token_address_where_it_is_used():
    """An MLP memory's kernels give every token load and store offsets of its own (private_index: an opaque zero in
    inline PTX on a GPU, the plain offsets under the interpreter), and every load of a carry-free value too; the
    linear memories' kernels share theirs (their uses of private_index make a state pass's index vectors per
    chunk, under INDEX_PER_CHUNK, and an input's second load, under REREAD_INPUTS). The GPU form compiles for
    sm_90a and keeps its loads' alignment (the kernel still compiles with tensor cores)."""
    pytest.importorskip("triton", reason="ahead-of-time compilation needs the triton package")
    from mirasc.aot import aot_report, kernel_names
    from mirasc.codegen import generate_triton

    mlp = generate_triton(mirasc.load(model_path("ttt_mlp")))
    for kernel in kernel_names(mlp):
        source = mlp.split(f"def {kernel}(")[1].split("@triton.jit")[0]
        token_accesses = re.findall(r"tl\.(?:load|store)\(\w+ \+ \(row \* T \+ bos\)[^\n]*", source)
        assert token_accesses and all("private_index(offs_t, C, tok, ON_GPU)" in a  # or by row blocks' rows
                                      or "private_index(offs_rb, BR, tok, ON_GPU)" in a for a in token_accesses), kernel
        local_loads = re.findall(r"= tl\.load\(local_\d+_ptr[^\n]*", source)
        assert all("private_index(" in a for a in local_loads), kernel
    assert re.findall(r"= tl\.load\(local_\d+_ptr[^\n]*", mlp)  # the carry-free values are read somewhere
    lines = [ln.strip() for ln in generate_triton(mirasc.load(model_path("gated_deltanet"))).splitlines()]
    uses = [(before, ln) for before, ln in zip(lines, lines[1:]) if "private_index(" in ln and "def " not in ln]
    vector = r"offs_\w = private_index\(.*tl\.arange\(0, \w+\), \w+, tok, ON_GPU\)"
    vectors = [ln for _, ln in uses if re.fullmatch(vector, ln)]
    again = [ln for before, ln in uses if before.startswith("if REREAD_INPUTS:") and re.match(r"\w+ = tl\.load\(", ln)]
    assert vectors and again and len(vectors) + len(again) == len(uses), uses
    (row,) = aot_report("ttt_mlp", chunk_size=16, head_dim=16, only=["chunk_out_fwd_kernel"], timeout=240)
    assert row.ok and row.mma > 0, row.error


def _extents(text: str) -> set[str]:
    """The axes a load's or store's offsets name, a token axis by any name (t, s, u) as t: a relabelling that keeps
    them is the same register tile; one from the head axis to the value axis (i -> o, BV wide) is not."""
    return {"t" if a in "su" else a for a in re.findall(r"offs_([a-z])\b", text)}


@pytest.mark.parametrize("stem", ["moneta", "titans"])
def test_a_relabelled_parked_tile_is_read_back_from_its_tiles_slot(stem):
    """A parked relabelling of a parked tile (`v49 = v48`, the (t, i) tile read as (s, i)) has no store of its own:
    it is read back from the slot the tile it relabels was stored to. So in an MLP memory's kernels no park store
    writes a relabelling of a tile another park store writes, and such relabellings are read back."""
    from mirasc.codegen import generate_triton

    read_back = 0
    for kernel in generate_triton(mirasc.load(model_path(stem))).split("@triton.jit")[1:]:
        alias = dict(re.findall(r"^\s+(v\d+) = (v\d+)$", kernel, re.M))  # a relabelling keeping the axes' order
        stored = {v: s for s, v in re.findall(r"^\s+tl\.store\((scratch[^\n]*), (v\d+)\)  # park$", kernel, re.M)}
        for value, where in stored.items():
            base = alias.get(value)
            assert not (base in stored and _extents(stored[base]) == _extents(where)), (stem, value, base, "stored")
        for value, base in alias.items():
            back = re.findall(rf"^\s+{value} = tl\.load\(([^\n]*)\)  # parked$", kernel, re.M)
            if base in stored and value not in stored and back:
                slot = stored[base].split(" + offs_")[0]  # the slot's start, without the tile's offsets
                assert all(b.split(" + offs_")[0] == slot for b in back), (value, back)
                read_back += 1
    assert read_back > 0, "no relabelled tile was parked"


@pytest.mark.parametrize("stem", ["moneta", "yaad", "memora"])
def test_a_parked_decay_factor_is_read_from_its_park_slot(stem):
    """A channel-decay product's factor that is parked where it is made (Moneta's cumulative log-decays, read a slice
    at a time by the product and read back whole later) is stored once a chunk: the product reads it from its park
    slot, and no staging store writes it again. A value-axis tile (parked D wide, held BV wide) keeps both."""
    from mirasc.codegen import generate_triton

    read_from_park = 0
    for kernel in generate_triton(mirasc.load(model_path(stem))).split("@triton.jit")[1:]:
        parked = {v: s.split(" + offs_")[0]
                  for s, v in re.findall(r"^\s+tl\.store\((scratch[^\n]*), (v\d+)\)  # park$", kernel, re.M)}
        staged = re.findall(r"^\s+tl\.store\(scratch[^\n]* \+ tl\.arange\(0, C\)\[:, None\] \* (?:C|D) "
                            r"\+ tl\.arange\(0, (?:C|D)\)\[None, :\], (v\d+)\)$", kernel, re.M)
        assert not set(staged) & set(parked), (stem, sorted(set(staged) & set(parked)))
        product_reads = set(re.findall(r"tl\.load\((scratch[^()]*?) \+ (?:tl\.arange\(0, C\)|v\d+_[prs])", kernel))
        read_from_park += len(product_reads & set(parked.values()))
    assert read_from_park > 0, f"{stem}: no channel-decay product reads a park slot"


def _row_block_loops(kernel: str) -> list[list[str]]:
    """The bodies of a kernel's loops over blocks of BR rows (mirasc.kernel_body, row blocks)."""
    lines, loops = kernel.split("\n"), []
    for k, text in enumerate(lines):
        if text.strip().startswith("for rb in range(0, C, BR):"):
            depth = len(text) - len(text.lstrip())
            body = []
            for inner in lines[k + 1:]:
                if inner.strip() and len(inner) - len(inner.lstrip()) <= depth:
                    break
                body.append(inner.strip())
            loops.append(body)
    return loops


@pytest.mark.parametrize("stem", ["titans", "ttt_mlp", "moneta", "yaad", "memora"])
def test_an_mlp_memorys_token_by_token_stretches_run_by_row_blocks(stem):
    """An MLP memory's values made token by token between its hidden-block loops (its LayerNorm's backward, in the
    backward state pass) are made BR rows at a time: inside each row-block loop no line reads the chunk's whole token
    offsets, every value assigned is a block's (suffix `_rows`, or `_rows_c0` for a common subexpression of one), and
    the kernels with such loops take BR."""
    text, kernels = _module_kernels(stem)
    loops = _row_block_loops(kernels["chunk_state_bwd_kernel"])
    assert loops, f"{stem}: the backward state pass makes its LayerNorm's backward whole"
    for body in (b for k in kernels.values() for b in _row_block_loops(k)):
        assert body[0] == "offs_rb = rb + tl.arange(0, BR)"
        assert not [x for x in body if re.search(r"\boffs_[tsu]\b", x)], body
        assigned = [re.match(r"(\w+) = ", x).group(1) for x in body[1:] if re.match(r"\w+ = ", x)]
        assert assigned and all(re.search(r"_rows(_c\d+)?$", a) for a in assigned), assigned
        assert any(x.startswith("tl.store(") and "offs_rb" in x for x in body)  # what is read after it leaves by rows
    description = text[text.index("DESCRIPTION"):]
    entry = description[description.index("'state_bwd': {"):]
    assert "'row_blocks': True" in entry[:entry.index("}")]
