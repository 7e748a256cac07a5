"""MirasConfig: sizes plus the spec's text, so a saved model is self-contained."""

from __future__ import annotations

try:
    from transformers import PretrainedConfig
except ImportError:  # transformers >= 5 spells it PreTrainedConfig (PretrainedConfig stays as an alias)
    from transformers import PreTrainedConfig as PretrainedConfig


def _spec_text(spec) -> str | None:
    """A prebuilt name or a path is read into text; text is kept as is (mirasc.sources.resolve)."""
    if spec is None:
        return None
    from ..module_cache import read_spec

    return read_spec(spec)[0]


class MirasConfig(PretrainedConfig):
    """Configuration of a Miras language model (or, with spec=None / mixer="attention", a Transformer++).

    spec: a prebuilt name (`moneta`, ...), a .miras path or spec text (stored as text); None only for
    mixer="attention".
    torch_compile: run the torch backend's chunk programs through torch.compile (MemoryOp.compile_chunks: Moneta
    on a 2-core CPU 3.5x faster forward+backward, 2.5x forward, bench/README.md; after a one-off compile of tens of
    seconds per chunk shape); the Triton path ignores it.
    spec_options: the spec's `option` choices ({name: value}; None for its defaults), e.g. moneta's
    {"normalisation": "none"}.
    mixer: "miras" (every block a MirasLayer; with hybrid=True, Samba-style alternation of Miras and
    sliding-window attention with `window`) or "attention" (Transformer++: RoPE attention, sliding if `window`).
    head_dim defaults to hidden_size // num_heads; intermediate_size to 8/3·hidden rounded up to 32;
    chunk_size None uses the spec's chunk size.
    """

    model_type = "miras"
    keys_to_ignore_at_inference = ["past_key_values", "cache"]

    def __init__(self, spec=None, vocab_size: int = 32000, hidden_size: int = 768, num_hidden_layers: int = 12,
                 num_heads: int = 16, head_dim: int | None = None, intermediate_size: int | None = None,
                 conv_size: int = 4, gate_rank: int | None = None, use_rope: bool = False, mixer: str | None = None,
                 hybrid: bool = False, window: int | None = None, chunk_size: int | None = None,
                 max_position_embeddings: int = 4096, rope_base: float = 10000.0, norm_eps: float = 1e-6,
                 initializer_range: float = 0.02, backend: str = "auto", tie_word_embeddings: bool = True,
                 use_cache: bool = True, spec_options: dict | None = None, torch_compile: bool = False, **kwargs):
        mixer = mixer or ("miras" if spec is not None else "attention")
        if mixer not in ("miras", "attention"):
            raise ValueError(f"mixer must be 'miras' or 'attention', got {mixer!r}")
        if mixer == "miras" and spec is None:
            raise ValueError("mixer='miras' needs a spec (a .miras path or spec text)")
        if hybrid and mixer != "miras":
            raise ValueError("hybrid=True alternates Miras and sliding-window attention: it needs mixer='miras'")
        if hybrid and window is None:
            raise ValueError("hybrid=True needs the sliding window size `window`")
        self.spec = _spec_text(spec)
        if spec_options is not None and not isinstance(spec_options, dict):
            raise ValueError(f"spec_options must be a dict of option name -> value, got {type(spec_options).__name__}")
        self.spec_options = {str(k): str(v) for k, v in spec_options.items()} if spec_options else None
        self.torch_compile = bool(torch_compile)
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_heads = num_heads
        self.num_attention_heads = num_heads
        self.head_dim = head_dim
        self.intermediate_size = intermediate_size
        self.conv_size = conv_size
        self.gate_rank = gate_rank
        self.use_rope = use_rope
        self.mixer = mixer
        self.hybrid = hybrid
        self.window = window
        self.chunk_size = chunk_size
        self.max_position_embeddings = max_position_embeddings
        self.rope_base = rope_base
        self.norm_eps = norm_eps
        self.initializer_range = initializer_range
        self.backend = backend
        self.use_cache = use_cache
        super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)
