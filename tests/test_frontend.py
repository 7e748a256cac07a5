"""Tests of the `.miras` front end: parse, check, load, the standard library and the prebuilt specs."""

from __future__ import annotations

import dataclasses
import random
import re
import time
from pathlib import Path

import pytest

from mirasc.check import check, stdlib_defs
from mirasc.components.maps.kl import KLMap
from mirasc.components.maps.lq import LqMap
from mirasc.components.memories.linear import LinearMemory
from mirasc.components.memories.mlp import MLPMemory
from mirasc.errors import SpecError
from mirasc.loader import load
from mirasc.parse import parse
from mirasc.spec import (
    BinOp,
    Call,
    Compare,
    Const,
    GateRef,
    Neg,
    Num,
    Reduce,
    Spec,
    Var,
    Where,
)

ROOT = Path(__file__).resolve().parent.parent
MODELS = sorted((ROOT / "models").glob("*.miras"))

EXAMPLE = """\
# moneta.miras
model moneta

memory mlp(depth = 2, expansion = 4, activation = gelu, residual = true, norm = layernorm)

gate alpha : channel, range (0, 1],   activation sigmoid    # retention
gate eta   : channel, range [0, inf), activation softplus   # inner learning rate

param p = 3
bias lp(p)
retention decay(alpha) + lq(q = 4)
algorithm gd(lr = eta)

chunk 64
surrogate abs = sqrt(eps = 1e-6)
"""

YAAD = """\
model yaad
option huber_form = coordinate | token
memory mlp(depth = 2, expansion = 4, activation = gelu, residual = true, norm = layernorm)
gate alpha : channel, range (0, 1],   activation sigmoid
gate eta   : channel, range [0, inf), activation softplus
when huber_form = coordinate {
    gate delta : channel, range (0, inf), activation softplus
    bias huber(delta)
}
when huber_form = token {
    gate delta : scalar, range (0, inf), activation softplus
    bias huber_mix(delta)
}
retention decay(alpha)
algorithm gd(lr = eta)
surrogate abs = logcosh(sharpness = 10)
"""

TITANS = """\
memory mlp(depth = 2)
gate alpha : scalar, range (0, 1]
gate eta   : scalar, range [0, inf)
gate theta : scalar, range [0, 1)
bias l2()
retention decay(alpha)
algorithm momentum(lr = eta, momentum = theta)
"""

# A small valid base for error tests.
BASE = "memory linear\ngate eta : scalar, range [0, inf)\nbias {bias}\nalgorithm gd(lr = eta)\n"


def strip(e):
    """An Expr without spans, as nested tuples, for structural comparison."""
    if isinstance(e, Num):
        return ("num", e.value)
    if isinstance(e, Var):
        return ("var", e.name, e.role)
    if isinstance(e, BinOp):
        return (e.op, strip(e.lhs), strip(e.rhs))
    if isinstance(e, Neg):
        return ("neg", strip(e.arg))
    if isinstance(e, Call):
        return ("call", e.fn, *map(strip, e.args))
    if isinstance(e, Compare):
        return ("cmp", e.op, strip(e.lhs), strip(e.rhs))
    if isinstance(e, Where):
        return ("where", strip(e.cond), strip(e.then), strip(e.otherwise))
    if isinstance(e, Reduce):
        return (e.fn, strip(e.arg))
    raise AssertionError(e)


def error_of(spec, **kw) -> str:
    with pytest.raises(SpecError) as ei:
        load(spec, **kw)
    return str(ei.value)


# ---------------------------------------------------------------------------------------------------------
# positive tests
# ---------------------------------------------------------------------------------------------------------


def test_language_md_example_loads():
    doc = (ROOT / "docs" / "language.md").read_text(encoding="utf-8")
    block = re.search(r"```\n(# moneta.miras.*?)```", doc, re.S)
    text = block.group(1) if block else EXAMPLE
    s = load(text)
    assert isinstance(s, Spec)
    assert s.name == "moneta" and s.file == "<string>" and s.source == text
    assert s.memory == MLPMemory(2, 4, "gelu", True, "layernorm", 1e-5, span=s.memory.span)
    assert [g.name for g in s.gates] == ["alpha", "eta"]
    alpha = s.gate("alpha")
    assert (alpha.kind, alpha.low, alpha.high, alpha.low_open, alpha.high_open) == ("channel", 0, 1, True, False)
    assert alpha.activation == "sigmoid" and alpha.data_dependent
    eta = s.gate("eta")
    assert eta.high == float("inf") and eta.high_open and not eta.low_open
    assert s.params == (("p", 3.0),)
    assert s.bias.text == "lp(p)"
    assert strip(s.bias.expr) == ("sum", ("^", ("call", "abs", ("var", "r", "r")), ("num", 3.0)))
    assert isinstance(s.retention.decay, GateRef) and s.retention.decay.name == "alpha"
    assert s.retention.map == LqMap(q=4.0, eps=1e-6, span=s.retention.map.span)
    assert s.algorithm.kind == "gd" and s.algorithm.lr.name == "eta"
    assert s.chunk_size == 64
    assert s.surrogates.abs == "sqrt" and s.surrogates.abs_eps == 1e-6
    assert s.bias.span.line == s.source.splitlines().index("bias lp(p)") + 1


def test_example_and_models_load():
    assert load(EXAMPLE).name == "moneta"
    for path in MODELS:
        s = load(path)
        assert s.name == path.stem, path
        assert s.file == str(path)
        s2 = load(str(path))
        assert s2 == s


def test_defaults_and_names(tmp_path):
    s = load("memory linear\nbias dot()\nalgorithm gd(lr = 1)\n")
    assert s.name == "spec"
    assert s.memory == LinearMemory(span=s.memory.span)
    assert s.retention.decay is None and s.retention.map is None
    assert s.chunk_size == 64 and s.gates == () and s.options == () and s.params == ()
    assert s.algorithm.lr == Const(1.0, s.algorithm.lr.span)
    f = tmp_path / "my_model.miras"
    f.write_text("memory mlp\nbias l2()\nalgorithm gd(lr = 0.1)\n", encoding="utf-8")
    s = load(f)
    assert s.name == "my_model" and s.file == str(f)
    assert s.memory == MLPMemory(2, 4, "gelu", True, "layernorm", 1e-5, span=s.memory.span)
    assert dataclasses.replace(load(f.read_bytes()).memory, span=s.memory.span) == s.memory


def test_options_and_when():
    s = load(YAAD)
    assert s.options == (("huber_form", "coordinate"),)
    assert s.gate("delta").kind == "channel"
    assert s.bias.text == "huber(delta)"
    s = load(YAAD, options={"huber_form": "token"})
    assert s.options == (("huber_form", "token"),)
    assert s.gate("delta").kind == "scalar"
    assert s.bias.text == "huber_mix(delta)"
    assert strip(s.bias.expr) == (
        "where",
        ("cmp", "<=", ("norm2", ("var", "r", "r")), ("var", "delta", "gate")),
        ("*", ("num", 0.5), ("sum", ("^", ("var", "r", "r"), ("num", 2.0)))),
        ("*", ("var", "delta", "gate"), ("sum", ("call", "abs", ("var", "r", "r")))),
    )
    assert error_of(YAAD, options={"huber_form": "tok"}) == (
        "<string>:2:8: error: option `huber_form` cannot be 'tok'; its values are `coordinate`, `token`\n"
        "option huber_form = coordinate | token\n"
        "       ^"
    )
    assert error_of(YAAD, options={"huber": "token"}).startswith(
        "<string>:1:1: error: unknown option `huber`; did you mean `huber_form`?"
    )


def test_param_override():
    s = load(EXAMPLE, options={"p": 2.5})
    assert s.params == (("p", 2.5),)
    assert strip(s.bias.expr)[1][2] == ("num", 2.5)
    assert "p must be in [1, inf), got 0.5" in error_of(EXAMPLE, options={"p": 0.5})


def test_stdlib_expansions():
    r = ("var", "r", "r")
    cases = {
        "l2()": ("*", ("num", 0.5), ("sum", ("^", r, ("num", 2.0)))),
        "dot()": ("neg", ("sum", ("*", ("var", "y", "y"), ("var", "v", "v")))),
        "lp(3)": ("sum", ("^", ("call", "abs", r), ("num", 3.0))),
        "value_shift(2)": (
            "+",
            ("+", ("*", ("num", 0.5), ("sum", ("^", r, ("num", 2.0)))), ("*", ("num", 2.0), ("norm2", r))),
            ("*", ("num", 0.5), ("^", ("num", 2.0), ("num", 2.0))),
        ),
        "huber(1)": (
            "sum",
            (
                "where",
                ("cmp", "<=", ("call", "abs", r), ("num", 1.0)),
                ("*", ("num", 0.5), ("^", r, ("num", 2.0))),
                ("*", ("num", 1.0), ("-", ("call", "abs", r), ("*", ("num", 0.5), ("num", 1.0)))),
            ),
        ),
    }
    for bias, want in cases.items():
        s = load("memory linear\nbias " + bias + "\nalgorithm gd(lr = 1)\n")
        assert strip(s.bias.expr) == want, bias
        assert s.bias.text == bias
    assert set(stdlib_defs()) == {"dot", "l2", "lp", "huber", "huber_norm", "huber_mix", "value_shift"}


def test_user_defs_lets_and_shadowing():
    spec = (
        "memory linear\ngate eta : scalar, range [0, inf)\n"
        "def l2() = sum(abs(r))\n"  # shadows the stdlib
        "def sq(x, c : [0, inf)) = c * x^2\n"
        "let e = sum(sq(r, c = 2))\n"
        "bias l2() + e * eta - -y[0:0]\n"
    )
    # `y[0:0]` is not in the language
    assert "expected" in error_of(spec + "algorithm gd(lr = eta)\n")
    spec = spec.replace(" - -y[0:0]", "")
    s = load(spec + "algorithm gd(lr = eta)\n")
    assert strip(s.bias.expr) == (
        "+",
        ("sum", ("call", "abs", ("var", "r", "r"))),
        ("*", ("sum", ("*", ("num", 2.0), ("^", ("var", "r", "r"), ("num", 2.0)))), ("var", "eta", "gate")),
    )
    assert "c must be in [0, inf), got -1" in error_of(spec.replace("c = 2", "c = -1") + "algorithm gd(lr = 1)\n")


@pytest.mark.parametrize("arg", ["1/0", "(-1)^0.5", "1e300*1e300", "0^-1", "2*0.25", "-inf"])
def test_constant_arguments_are_checked(arg):
    msg = error_of("memory linear\nbias lp(" + arg + ")\nalgorithm gd(lr = 1)\n")
    assert msg.startswith("<string>:2:9: error: ") or msg.startswith("<string>:2:10: error: ")


def test_titans_and_kl():
    s = load(TITANS)
    assert s.algorithm.kind == "momentum" and s.algorithm.momentum.name == "theta"
    s = load("memory mlp\ngate a : channel, range (0, 1]\nbias l2()\nretention decay(a) + kl\nalgorithm gd(lr=1)\n")
    assert isinstance(s.retention.map, KLMap) and s.retention.map.eps == 1e-6


def test_parse_returns_ast_and_check_roundtrip():
    prog = parse(EXAMPLE, "x.miras")
    assert prog.file == "x.miras" and len(prog.stmts) == 10
    s = check(prog, EXAMPLE, "x.miras", None)
    assert s.name == "moneta" and s.file == "x.miras"


def test_spec_error_attributes():
    with pytest.raises(SpecError) as ei:
        load("memory linear\n\tbias l2() + eta\n")
    e = ei.value
    assert (e.file, e.line, e.col) == ("<string>", 2, 14)
    assert e.source_line == "\tbias l2() + eta"
    assert e.message.startswith("unknown name `eta`")
    assert str(e) == f"<string>:2:14: error: {e.message}\n\tbias l2() + eta\n" + " " * 13 + "^"


# ---------------------------------------------------------------------------------------------------------
# golden errors
# ---------------------------------------------------------------------------------------------------------

GOLDEN = [
    (  # unknown name with a suggestion
        BASE.format(bias="l2() + eta2"),
        "<string>:3:13: error: unknown name `eta2`; did you mean `eta`?\nbias l2() + eta2\n            ^",
    ),
    (  # duplicate statement
        BASE.format(bias="l2()") + "bias dot()\n",
        "<string>:5:1: error: duplicate `bias` (first declared at 3:1)\nbias dot()\n^",
    ),
    (  # bad chunk size
        BASE.format(bias="l2()") + "chunk 48\n",
        "<string>:5:7: error: chunk size must be 1 or a power of two from 16 to 1024, got 48\nchunk 48\n      ^",
    ),
    (  # p < 1
        BASE.format(bias="lp(0.5)"),
        "<string>:3:9: error: p must be in [1, inf), got 0.5\nbias lp(0.5)\n        ^",
    ),
    (  # p's interval against a gate's range
        BASE.format(bias="lp(eta)"),
        "<string>:3:9: error: p must be in [1, inf), but gate `eta` has range [0, inf)\nbias lp(eta)\n        ^",
    ),
    (  # unused gate
        BASE.format(bias="l2()") + "gate alpha : scalar, range (0, 1]\n",
        "<string>:5:6: error: gate `alpha` is declared but never used\ngate alpha : scalar, range (0, 1]\n     ^",
    ),
    (  # recursive def
        "def f(x) = g(x)\ndef g(x) = f(x) + y\n" + BASE.format(bias="f(eta)"),
        "<string>:2:12: error: recursive definition of `f`\ndef g(x) = f(x) + y\n           ^",
    ),
    (  # missing bias
        "memory linear\nalgorithm gd(lr = 1)\n",
        "<string>:1:1: error: missing `bias` statement (every spec needs one)\nmemory linear\n^",
    ),
    (  # truncated spec
        EXAMPLE[: EXAMPLE.rindex("lq(q =") + 6],
        "<string>:11:32: error: expected one of `(`, `-`, a name, a number, found the end of the spec\n"
        "retention decay(alpha) + lq(q =\n"
        "                               ^",
    ),
    (  # garbage
        "memory linear\nbias y @ v\n",
        "<string>:2:8: error: unexpected character `@`\nbias y @ v\n       ^",
    ),
    (  # a control character
        b"memory linear\nbias y\x00\n",
        "<string>:2:7: error: unexpected character U+0000\nbias y\x00\n      ^",
    ),
    (  # non-UTF-8 bytes
        b"model m\n# caf\xe9\nbias y\n",
        "<string>:2:6: error: the spec is not valid UTF-8 (byte 0xe9)\n# caf\ufffd\n     ^",
    ),
    (  # deep nesting
        "memory linear\nbias " + "(" * 65 + "y" + ")" * 65 + "\n",
        "<string>:2:70: error: brackets are nested more than 64 deep\nbias "
        + "(" * 65
        + "y"
        + ")" * 65
        + "\n"
        + " " * 69
        + "^",
    ),
    (  # decay out of range
        "memory linear\nbias l2()\nalgorithm gd(lr = 1)\nretention decay(1.5)\n",
        "<string>:4:17: error: decay must be in [0, 1], got 1.5\nretention decay(1.5)\n                ^",
    ),
    (  # a gate's range unfit for its use
        "memory linear\ngate eta : scalar\nbias l2()\nalgorithm gd(lr = eta)\n",
        "<string>:4:19: error: gate `eta` has range (-inf, inf); `lr` needs a range inside [0, inf)\n"
        "algorithm gd(lr = eta)\n"
        "                  ^",
    ),
    (  # data-dependent soft-threshold
        "memory linear\ngate g : scalar, range [0, 1]\nbias l2()\nalgorithm gd(lr = 1)\n"
        "retention softthreshold(g, form = ftrl)\n",
        "<string>:5:25: error: boundary maps act at chunk ends where no token's gate applies; declare `g` static\n"
        "retention softthreshold(g, form = ftrl)\n"
        "                        ^",
    ),
    (  # channel gates on a deep MLP
        "memory mlp(depth = 3)\ngate a : channel, range (0, 1]\nbias l2()\nalgorithm gd(lr = 1)\nretention decay(a)\n",
        "<string>:5:17: error: channel-wise gates act on the D-sized axis of each weight matrix; depth 3 has an "
        "h×h middle matrix (use a scalar gate or depth ≤ 2)\nretention decay(a)\n                ^",
    ),
    (  # sum of a scalar
        BASE.format(bias="l2() + sum(eta)"),
        "<string>:3:13: error: `sum` reduces over the channel axis, but its argument is already a per-token scalar\n"
        "bias l2() + sum(eta)\n            ^",
    ),
    (  # a bias that ignores the prediction
        BASE.format(bias="sum(v^2) * eta"),
        "<string>:3:6: error: the attentional bias does not depend on the memory's prediction (y or r)\n"
        "bias sum(v^2) * eta\n     ^",
    ),
    (  # a gate's init outside its range
        BASE.replace("range [0, inf)", "range [0, inf), init -0.5").format(bias="l2()"),
        "<string>:2:41: error: init -0.5 is outside the gate's range [0, inf)\n"
        "gate eta : scalar, range [0, inf), init -0.5\n" + " " * 40 + "^",
    ),
    (  # unknown memory kind
        "memory mpl\n",
        "<string>:1:8: error: unknown memory `mpl` (use `linear` or `mlp`); did you mean `mlp`?\nmemory mpl\n       ^",
    ),
    (  # out-of-range number
        BASE.format(bias="1e999 * l2()"),
        "<string>:3:6: error: number `1e999` is out of range\nbias 1e999 * l2()\n     ^",
    ),
    (  # kl with momentum
        TITANS.replace("decay(alpha)", "decay(alpha) + kl(eps = 1e-6)"),
        "<string>:6:26: error: `kl` retention cannot be combined with `momentum`: its lag step is an exact "
        "softmax step on the weights, which has no momentum buffer\n"
        "retention decay(alpha) + kl(eps = 1e-6)\n"
        "                         ^",
    ),
]


@pytest.mark.parametrize("spec,want", GOLDEN, ids=[str(i) for i in range(len(GOLDEN))])
def test_golden_errors(spec, want):
    assert error_of(spec) == want


def test_huge_spec_is_refused_fast(tmp_path):
    big = "memory linear\nbias l2()\nalgorithm gd(lr = 1)\n# " + "x" * (1 << 20) + "\n"
    t = time.perf_counter()
    msg = error_of(big)
    assert time.perf_counter() - t < 2.0
    n = len(big.encode())
    assert msg == f"<string>:1:1: error: spec is {n} bytes; the limit is 65536\nmemory linear\n^"
    f = tmp_path / "big.miras"
    f.write_text(big, encoding="utf-8")
    t = time.perf_counter()
    assert error_of(f).startswith(f"{f}:1:1: error: spec is {n} bytes; the limit is 65536")
    assert time.perf_counter() - t < 2.0


def test_nasty_but_small_specs_are_fast():
    lets = "let a0 = y\n" + "".join(f"let a{i} = a{i - 1} + a{i - 1}\n" for i in range(1, 60))
    defs = "def f0(x) = x\n" + "".join(f"def f{i}(x) = f{i - 1}(x) + f{i - 1}(x)\n" for i in range(1, 60))
    for spec in (
        "memory linear\nalgorithm gd(lr = 1)\n" + lets + "bias a59\n",
        "memory linear\nalgorithm gd(lr = 1)\n" + defs + "bias f59(r)\n",
        "memory linear\nalgorithm gd(lr = 1)\nbias y" + " + y" * 8000 + "\n",
        "memory linear\nalgorithm gd(lr = 1)\nbias " + "-" * 30000 + "y\n",
        "bias " + "(" * 64 + "y" + ")" * 64,
    ):
        t = time.perf_counter()
        with pytest.raises(SpecError) as ei:
            load(spec)
        assert time.perf_counter() - t < 2.0
        assert ei.value.line >= 1 and ei.value.col >= 1


INJECTIONS = [
    "memory linear\nbias __import__('os').system('touch {m}')\nalgorithm gd(lr = 1)\n",
    'model __import__("os").system("touch {m}")\nmemory linear\nbias l2()\nalgorithm gd(lr = 1)\n',
    "memory linear\nbias l2()\nalgorithm gd(lr = __import__('os').system('touch {m}'))\n",
    "param p = __import__('os').system('touch {m}')\nmemory linear\nbias l2()\nalgorithm gd(lr = 1)\n",
    "memory mlp(depth = __import__('os').system('touch {m}'))\nbias l2()\nalgorithm gd(lr = 1)\n",
    "memory linear\nbias l2()\nalgorithm gd(lr = 1)\nchunk __import__('os').system('touch {m}')\n",
    "def f() = __import__('os').system('touch {m}')\nmemory linear\nbias l2()\nalgorithm gd(lr = 1)\n",
    "memory linear\nbias __import__(os)\nalgorithm gd(lr = 1)\n",
    "memory linear\nbias l2()\nalgorithm gd(lr = __import__)\n",
    "param p = __import__\nmemory linear\nbias l2()\nalgorithm gd(lr = 1)\n",
    "memory linear\nbias l2() + eval(y)\nalgorithm gd(lr = 1)\n",
    "memory linear\nbias l2()\nalgorithm gd(lr = 1)\nsurrogate abs = exec(eps = 1)\n",
]


@pytest.mark.parametrize("template", INJECTIONS)
def test_code_injection_is_a_located_error(template, tmp_path):
    marker = tmp_path / "pwned"
    spec = template.replace("{m}", str(marker))
    with pytest.raises(SpecError) as ei:
        load(spec)
    e = ei.value
    assert 1 <= e.line <= spec.count("\n") + 1 and e.col >= 1
    assert not marker.exists()
    with pytest.raises(SpecError):
        load(spec, options={"x": "__import__('os').system('touch " + str(marker) + "')"})
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------------------
# fuzz
# ---------------------------------------------------------------------------------------------------------

FALLBACK = [EXAMPLE, YAAD, TITANS, "memory linear\nbias dot()\nretention none\nalgorithm gd(lr = 1)\n"]
TOKEN_RE = re.compile(r"\s+|#[^\n]*|[A-Za-z_][A-Za-z0-9_]*|\d+\.?\d*(?:[eE][+-]?\d+)?|<=|>=|==|!=|.", re.S)
VOCAB = [
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "=",
    "|",
    "+",
    "-",
    "*",
    "/",
    "^",
    "<",
    "<=",
    "==",
    "\n",
    " ",
    "model",
    "memory",
    "gate",
    "param",
    "option",
    "when",
    "let",
    "def",
    "bias",
    "retention",
    "algorithm",
    "chunk",
    "surrogate",
    "range",
    "activation",
    "static",
    "scalar",
    "channel",
    "linear",
    "mlp",
    "y",
    "v",
    "r",
    "alpha",
    "eta",
    "delta",
    "theta",
    "p",
    "inf",
    "nan",
    "none",
    "decay",
    "lq",
    "kl",
    "softthreshold",
    "sigmoid",
    "gd",
    "momentum",
    "where",
    "sum",
    "norm2",
    "abs",
    "l2",
    "lp",
    "dot",
    "huber",
    "0",
    "1",
    "-1",
    "0.5",
    "1.5",
    "1e999",
    "1e-999",
    "3",
    "16",
    "48",
    "2048",
    "999999999999",
    "'",
    '"',
    "@",
    "\x00",
    "é",
    "\t",
    "__import__",
    "#",
]
BAD_NUMBERS = ["0", "-1", "1.5", "1e999", "-0", "1e-400", "1024", "2048", "17", "9", "0.0", "1e308", "1e309"]


def _mutate(rng: random.Random, text: str) -> str:
    toks = TOKEN_RE.findall(text)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        if not toks:
            toks = [rng.choice(VOCAB)]
        op = rng.randrange(6)
        i = rng.randrange(len(toks))
        if op == 0:  # delete a token
            del toks[i]
        elif op == 1:  # insert a token
            toks.insert(i, rng.choice(VOCAB))
        elif op == 2:  # swap two tokens
            j = rng.randrange(len(toks))
            toks[i], toks[j] = toks[j], toks[i]
        elif op == 3:  # duplicate a run of tokens (often a whole line)
            j = min(len(toks), i + rng.randrange(1, 30))
            toks[j:j] = toks[i:j]
        elif op == 4:  # an out-of-range number
            nums = [k for k, t in enumerate(toks) if t[:1].isdigit()]
            if nums:
                toks[rng.choice(nums)] = rng.choice(BAD_NUMBERS)
        else:  # truncate
            toks = toks[:i]
    return "".join(toks)


def _inside(e: SpecError, text: str) -> bool:
    lines = text.split("\n")
    if not 1 <= e.line <= len(lines):
        return False
    return 1 <= e.col <= len(lines[e.line - 1]) + 1


def test_fuzz_mutants():
    seeds = [p.read_text(encoding="utf-8") for p in MODELS] or []
    seeds += FALLBACK
    rng = random.Random(20250504)
    n_spec = n_err = 0
    t0 = time.perf_counter()
    for k in range(2400):
        base = seeds[k % len(seeds)]
        text = _mutate(rng, base)
        opts = (
            {"huber_form": rng.choice(["coordinate", "token", "bad"])} if "huber_form" in text and k % 3 == 0 else None
        )
        try:
            # as bytes, always spec text: a str of one line ending in ".miras" (a truncated comment can be one) is a
            # path to load (mirasc.sources.resolve)
            out = load(text.encode("utf-8"), options=opts)
        except SpecError as e:
            assert _inside(e, text), (text, str(e))
            assert str(e).startswith(f"<string>:{e.line}:{e.col}: error: ")
            n_err += 1
        else:
            assert isinstance(out, Spec)
            dataclasses.replace(out)  # a well-formed frozen dataclass
            n_spec += 1
    assert n_spec + n_err == 2400
    assert n_err > 500 and n_spec > 50, (n_spec, n_err)
    assert time.perf_counter() - t0 < 45
