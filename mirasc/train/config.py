"""Training configuration: a flat dataclass, loadable from `models/configs/*.toml` and overridden by flags.

A TOML file may hold the fields at top level or in tables ([model], [train], [data], [task]); tables are flattened.
Aliases: layers / num_hidden_layers -> num_layers, heads -> num_heads, vocab -> vocab_size, lr / peak_lr -> lr.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("mqar", "niah", "robust", "lm")
TRANSFORMER_NAMES = ("transformer", "transformer++", "attention")
ALIASES = {
    "layers": "num_layers", "num_hidden_layers": "num_layers", "heads": "num_heads", "vocab": "vocab_size",
    "peak_lr": "lr", "learning_rate": "lr", "d_model": "hidden_size", "dim": "hidden_size", "batch": "batch_size",
    "kv": "kv_pairs", "gradient_accumulation_steps": "grad_accum",
}


class TrainError(Exception):
    """Bad training input (config, data, checkpoint); the message is one line and names the problem."""


@dataclass
class TrainConfig:
    # model
    spec: str = "moneta"                 # a .miras path, a prebuilt name (moneta, yaad, ...), or "transformer"
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    vocab_size: int | None = None        # default: the task's vocabulary
    hybrid: bool = False
    window: int | None = None
    chunk_size: int | None = None
    spec_options: dict = field(default_factory=dict)   # the spec's `option` choices, e.g. {"normalisation": "none"}
    model_kwargs: dict = field(default_factory=dict)   # extra MirasConfig fields
    model_factory: str | None = None     # "module:function" (config -> nn.Module); tests use a stand-in
    # task and data
    task: str = "mqar"
    tier: str = "cpu"                    # MQAR tier: cpu (V=512) or paper (V=8192, Based mix)
    seq_len: int | None = None
    kv_pairs: int | None = None
    data: str | None = None
    tokenizer: str | None = None
    bin_dtype: str | None = None
    niah_kind: str = "pk"
    contamination: float = 0.1
    robust_mode: str = "random"
    num_passes: int = 3
    # optimisation
    steps: int = 200
    batch_size: int = 64                 # global batch (over processes and accumulation)
    grad_accum: int = 1
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int | None = None      # default: 10% of steps, at most 1000
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"                 # auto | cpu | cuda
    amp: bool = True                     # bf16 autocast on GPU (never on CPU)
    torch_compile: bool = False          # torch backend: chunk programs through torch.compile (MemoryOp.compile_chunks)
    fsdp: bool = False                   # under torchrun: FSDP2 (fully_shard per block + root) instead of DDP
    threads: int | None = None
    # bookkeeping
    out: str = "runs/run"
    log_every: int = 10
    ckpt_every: int = 100
    eval_examples: int | None = None
    eval_batch_size: int = 64
    eval_at_end: bool = True
    resume: bool = False
    overwrite: bool = False
    quiet: bool = False

    # -- helpers -----------------------------------------------------------------------------------------
    @property
    def is_transformer(self) -> bool:
        return self.spec.lower() in TRANSFORMER_NAMES

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> TrainConfig:
        return dataclasses.replace(self, **kw)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def normalise(d: dict, source: str = "config") -> dict:
    """Flatten tables, apply aliases, reject unknown keys (one-line TrainError)."""
    flat: dict = {}
    for k, v in d.items():
        if isinstance(v, dict) and k not in ("model_kwargs", "spec_options"):
            flat.update(normalise(v, source))
            continue
        k = ALIASES.get(k, k)
        if k not in FIELDS:
            raise TrainError(f"{source}: unknown setting {k!r}")
        flat[k] = v
    return flat


def load_toml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise TrainError(f"config file not found: {p}")
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise TrainError("reading TOML on Python 3.10 needs the `tomli` package") from None
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except Exception as e:
        raise TrainError(f"{p}: invalid TOML: {str(e).splitlines()[0]}") from None
    data.pop("name", None)
    data.pop("description", None)
    return normalise(data, str(p))


def make_config(config=None, **overrides) -> TrainConfig:
    """TrainConfig from a TrainConfig, a dict, a TOML path, or None (defaults), then keyword overrides
    (None values are ignored, so CLI flags that were not given leave the file's values)."""
    if isinstance(config, TrainConfig):
        base = config.to_dict()
    elif isinstance(config, dict):
        base = normalise(config)
    elif isinstance(config, (str, Path)):
        base = load_toml(config)
    elif config is None:
        base = {}
    else:
        raise TrainError(f"config must be a TrainConfig, dict or TOML path, got {type(config).__name__}")
    base.update(normalise({k: v for k, v in overrides.items() if v is not None}, "overrides"))
    try:
        cfg = TrainConfig(**base)
    except TypeError as e:
        raise TrainError(str(e)) from None
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    def pos(name, allow_none=False):
        v = getattr(cfg, name)
        if v is None and allow_none:
            return
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise TrainError(f"{name} must be a positive integer, got {v!r}")

    for n in ("hidden_size", "num_layers", "num_heads", "steps", "batch_size", "grad_accum", "log_every",
              "ckpt_every", "eval_batch_size"):
        pos(n)
    for n in ("vocab_size", "seq_len", "kv_pairs", "window", "chunk_size", "warmup_steps", "threads", "eval_examples"):
        pos(n, allow_none=True)
    if cfg.hidden_size % cfg.num_heads:
        raise TrainError(f"hidden size {cfg.hidden_size} is not divisible by {cfg.num_heads} heads")
    if cfg.task not in TASKS:
        raise TrainError(f"unknown task {cfg.task!r} (expected {', '.join(TASKS)})")
    if not cfg.lr > 0:
        raise TrainError(f"learning rate must be positive, got {cfg.lr}")
    if not 0 <= cfg.min_lr_ratio <= 1:
        raise TrainError(f"min_lr_ratio must lie in [0, 1], got {cfg.min_lr_ratio}")
    if not isinstance(cfg.torch_compile, bool):
        raise TrainError(f"torch_compile must be true or false, got {cfg.torch_compile!r}")
    if not isinstance(cfg.fsdp, bool):
        raise TrainError(f"fsdp must be true or false, got {cfg.fsdp!r}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        raise TrainError(f"device must be auto, cpu or cuda, got {cfg.device!r}")
    if cfg.data is not None and not Path(cfg.data).exists():
        raise TrainError(f"data path not found: {cfg.data}")
    if cfg.tokenizer is not None and not Path(cfg.tokenizer).exists():
        raise TrainError(f"tokenizer not found: {cfg.tokenizer}")
    if not isinstance(cfg.spec_options, dict):
        raise TrainError(f"spec_options must be a table of option = value, got {cfg.spec_options!r}")
    if cfg.batch_size % cfg.grad_accum:
        raise TrainError(f"batch size {cfg.batch_size} is not divisible by grad_accum {cfg.grad_accum}")
    resolve_spec(cfg.spec)


def resolve_spec(spec: str) -> str | None:
    """None for the Transformer++ baseline, else the spec as `mirasc.compile` takes it: a prebuilt name (from the
    package), a path or spec text (mirasc.sources.resolve; a word that is none of these is a TrainError)."""
    if spec.lower() in TRANSFORMER_NAMES:
        return None
    from mirasc.errors import SpecError
    from mirasc.sources import resolve

    try:
        src = resolve(spec)
    except SpecError as e:
        where = "" if e.file == "<string>" else f"{e.file}: "
        raise TrainError(f"spec not found: {where}{e.message} (or 'transformer')") from None
    return spec if src.kind == "text" else src.file


def config_path(name_or_path: str) -> Path:
    """A packaged model config for a bare name (`tiny`, `170m`, ...: mirasc/specs/configs/NAME.toml), else the
    path itself."""
    p = Path(name_or_path)
    if p.suffix != ".toml" and not p.exists():
        from mirasc.resources import config_file, config_names

        found = config_file(name_or_path)
        if found is None:
            raise TrainError(f"config file not found: {name_or_path} (a .toml path or one of "
                             f"{', '.join(config_names())})")
        return found
    return p


def dump_config(cfg: TrainConfig, path: Path) -> None:
    path.write_text(json.dumps(cfg.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
