"""MirasLayer: the Miras token mixer of the paper's Figure 2 around a compiled memory op.

    x ─ Linear ─ causal depthwise Conv1d(k=4) ─ SiLU ─┬─ q, k: ℓ₂-normalise (─ RoPE, optional) ─┐
                                                      └─ v ─────────────────────────────────────┤
    x ─ low-rank Linear ─ Linear ─ activation ─ gates (α, η, δ, θ, …, in natural units) ────────┤
                                                                            memory op (mirasc) ─ per-head RMSNorm
    x ─ Linear ─ sigmoid ───────────────────────────────────────────────────────────────────── ⊗ ─ Linear ─ y

Learned outer parameters: the initial memory (one tensor per state field, [H, out, in], initialised from
`op.init_state(1, H, D)`), the memory's LayerNorm affine (`op.param_shapes`), static gates, and the projections.

Initialisation (measured: bench/README.md, "Initialisation"). The memory sees v at the scale the projections give it,
while an MLP memory's output M(k) = k + LayerNorm(...) is unit-scale per channel: its writes must be large enough
to move that LayerNorm output towards v. With the q, k, v projections at a language model's generic normal(0, 0.02)
(at hidden 32, issue 10 measured |v| ≈ 0.17 against a readout of norm ≈ 5.8), Titans, Memora and Moneta reached
0.045, 0.245 and 0.160 on MQAR at the main job's budget (seed 0; Titans 0.97 over three seeds with the init below).
So q, k and v always get PyTorch's nn.Linear default, U(±1/sqrt(fan_in)) (std 1/sqrt(3·fan_in), as titans-pytorch's
projections), whatever the model's `initializer_range` (that still sets the embeddings, the output gate and
projection and the MLPs); `MirasLayer.qkv_init_std` restores a normal(0, std) init for ablations. Gates start at
the value the spec declares (`init`: Moneta's learning rate 0.2), else at GATE_INIT by role (decay 0.99, learning
rate 0.5, momentum 0.5, a gate of the bias such as Huber's δ 1; the learning rate 2 for the KL map,
GATE_INIT_FOR_MAP), with a small data-dependent spread (GateProjection); the initial memory is `op.init_state`
(learned from there), the memory's LayerNorm the identity, except that a spec's `norm_start = unit` (Moneta's)
starts its gain at 1/sqrt(D): the normalised branch then has the unit norm of the key it is added to, where from 1
Moneta stayed near 0.2 at four seeds of six of the main job's MQAR (bench/README.md, "The LayerNorm's gain at the
start"; `MirasLayer.norm_gain_init` sets c/sqrt(D) for every spec, an ablation). A gate's range is the spec's:
Yaad's and Memora's η are bounded sigmoids, (0, 1) and (0, 4), since with an unbounded softplus η Yaad failed two
of six seeds of the main job (their `lr_gate` option; bench/README.md, "Yaad's inner learning rate, bounded").

Sequences. `attention_mask` [B, T] (1 real, 0 pad; left or right padding, or holes) and `cu_seqlens` (B = 1,
packed) are handled exactly: each row's (segment's) real tokens are gathered to the front and the op runs once
per distinct length on exactly those tokens, so every sequence is computed as if it were alone (chunk
boundaries from its own first token, fresh initial memory and conv state); pad positions output zeros.
With no padding this is a single op call on the whole batch.

Decoding is chunk-consistent: a token fed with a filled cache gets exactly the output that a full forward of
the sequence up to it gives (the logits of greedy decoding by repeated full forwards), for every spec and chunk
size C. Chunks start at each row's first real token, so the cache holds the memory at the start of the current
chunk, the conv tail before it, the layer inputs of the chunk's tokens so far (seen % C of them) and the number
of real tokens seen (the RoPE position). Each new token re-runs the layer on the current chunk's tokens from the
chunk-start memory, and a token that completes a chunk moves the chunk start on. With C = 1 this is the exact
per-token step (`op.step`); with C > 1 a step costs up to C tokens of work, the price of reproducing the chunked
form the model was trained with (gradients at the chunk-start memory, boundary maps at chunk ends).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .gates import GateProjection, clamp_to_range, gate_activation, gate_init_value, inverse_activation
from .primitives import RotaryEmbedding, apply_rotary
from .sequences import RowsAndCache

__all__ = ["MirasLayer"]

NORM_GAIN = "ln_weight"  # the gain of an MLP memory's LayerNorm among the op's outer parameters


class MirasLayer(RowsAndCache):
    """The Miras token mixer (Figure 2 of Behrouz et al. 2025) around a compiled memory op.

    spec: a path, spec text, Spec or an already compiled MemoryOp. head_dim defaults to hidden_size // num_heads;
    gate_rank to 32 (hidden <= 1024) or 64; chunk_size None uses the spec's chunk size.
    forward(x [B, T, hidden], attention_mask=None, cu_seqlens=None, cache=None, use_cache=False) -> (y, cache)
    """

    # The q, k, v projections' init: None is nn.Linear's default, U(±1/sqrt(fan_in)); a number is normal(0, it).
    # A class attribute so that benchmarks can measure the alternative (bench.tasks --qkv-init-std 0.02).
    qkv_init_std: float | None = None
    # The memory's LayerNorm gain (`ln_weight`) at the start: None follows the spec's `norm_start` (1, the identity
    # affine, or 1/sqrt(head_dim)); a number c starts it at c / sqrt(head_dim) for every spec, so that the normalised
    # branch has norm c beside the unit-norm key it is added to. An ablation (bench.tasks --norm-gain-init).
    norm_gain_init: float | None = None

    def __init__(self, spec, hidden_size: int, num_heads: int, head_dim: int | None = None, conv_size: int = 4,
                 gate_rank: int | None = None, use_rope: bool = False, chunk_size: int | None = None,
                 backend: str = "auto", rope_base: float = 10000.0, norm_eps: float = 1e-6,
                 options: dict | None = None):
        super().__init__()
        from ..runtime import MemoryOp
        from ..runtime import compile as _compile

        self.op = spec if isinstance(spec, MemoryOp) else _compile(spec, backend=backend, options=options)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.head_dim = D = head_dim or hidden_size // num_heads
        H = num_heads
        if conv_size < 1:
            raise ValueError(f"conv_size must be >= 1, got {conv_size}")
        self.conv_size = conv_size
        self.chunk_size = chunk_size
        self.gate_rank = gate_rank or (32 if hidden_size <= 1024 else 64)
        self.norm_eps = norm_eps
        inner = H * D
        self.q_proj = nn.Linear(hidden_size, inner, bias=False)
        self.k_proj = nn.Linear(hidden_size, inner, bias=False)
        self.v_proj = nn.Linear(hidden_size, inner, bias=False)
        # depthwise causal conv over the concatenated q|k|v projections (three depthwise convs in one)
        self.conv_weight = nn.Parameter(torch.empty(3 * inner, conv_size))
        self.rotary = RotaryEmbedding(D, rope_base) if use_rope else None

        self.gate_meta = list(self.op.meta.gates)
        self._map_name = None if self.op.meta.map is None else self.op.meta.map.name
        self.gate_proj = nn.ModuleDict()
        self.static_gates = nn.ParameterDict()
        for g in self.gate_meta:
            if g.data_dependent:
                self.gate_proj[g.name] = GateProjection(g, hidden_size, H, D, self.gate_rank,
                                                        map_name=self._map_name)
            else:
                shape = (H, D) if g.kind == "channel" else (H,)
                self.static_gates[g.name] = nn.Parameter(torch.empty(shape))
        self._gate_acts = {g.name: gate_activation(g) for g in self.gate_meta}

        # learned initial memory, one parameter per state field, [H, out, in]
        self.state_fields = tuple(self.op.state_shapes(1, H, D))
        with torch.device("cpu"):
            s0 = self.op.init_state(1, H, D, torch.float32, "cpu")
        self.initial_state = nn.ParameterList([nn.Parameter(s[0].clone()) for s in s0])
        # the memory's LayerNorm affine (outer parameters)
        self.memory_params = nn.ParameterDict(
            {p: nn.Parameter(torch.empty(shape)) for p, shape in self.op.param_shapes(H, D).items()})

        self.o_norm_weight = nn.Parameter(torch.ones(D))  # per-head RMSNorm of the memory output (shared weight)
        self.g_proj = nn.Linear(hidden_size, inner, bias=False)  # output gate: sigmoid(g_proj(x))
        self.o_proj = nn.Linear(inner, hidden_size, bias=False)
        self._reset_own_parameters()

    # ------------------------------------------------------------------ init
    def _reset_own_parameters(self) -> None:
        """Initialise the parameters this module owns directly, and the q, k, v projections (see "Initialisation"
        in the module docstring); the output gate and output projection are left to their own (or the model's)
        init. A model's generic init runs on the Linear children first and on this module after them, so the
        projections that feed the memory get their scale here whatever the model's initializer_range."""
        with torch.no_grad():
            for lin in (self.q_proj, self.k_proj, self.v_proj):
                if self.qkv_init_std is None:
                    lin.reset_parameters()  # U(±1/sqrt(fan_in)): std 1/sqrt(3 fan_in)
                else:
                    lin.weight.normal_(0.0, self.qkv_init_std)
            bound = 1.0 / math.sqrt(self.conv_size)
            self.conv_weight.uniform_(-bound, bound)
            for g in self.gate_meta:
                if not g.data_dependent:
                    self.static_gates[g.name].fill_(
                        inverse_activation(g, gate_init_value(g, self._map_name)))
            with torch.device("cpu"):  # from_pretrained builds the model under a meta-device context
                s0 = self.op.init_state(1, self.num_heads, self.head_dim, torch.float32, "cpu")
            for p, s in zip(self.initial_state, s0):
                p.copy_(s[0].to(p.device))
            for param in self.op.meta.params:
                self.memory_params[param.name].fill_(param.default)
            gain = self._norm_gain_start()
            if gain is not None and NORM_GAIN in self.memory_params:
                self.memory_params[NORM_GAIN].fill_(gain)
            self.o_norm_weight.fill_(1.0)

    def _norm_gain_start(self) -> float | None:
        """The memory LayerNorm's gain at the start where it is not the op's default 1: c/sqrt(D) for the ablation's
        c, or 1/sqrt(D) for a spec's `norm_start = unit` (the branch's norm then matches the unit-norm key's)."""
        if self.norm_gain_init is not None:
            return self.norm_gain_init / math.sqrt(self.head_dim)
        if self.op.meta.memory.arguments.get("norm_start") == "unit":
            return 1.0 / math.sqrt(self.head_dim)
        return None

    def __deepcopy__(self, memo):
        # the compiled op (it holds a Python module) is shared, not copied; everything else is copied as usual
        import copy

        memo[id(self.op)] = self.op
        new = self.__class__.__new__(self.__class__)
        memo[id(self)] = new
        for k, v in self.__dict__.items():
            new.__dict__[k] = copy.deepcopy(v, memo)
        return new

    def extra_repr(self) -> str:
        return (f"op={self.op.name!r}, hidden={self.hidden_size}, heads={self.num_heads}, head_dim={self.head_dim}, "
                f"conv={self.conv_size}, gate_rank={self.gate_rank}, rope={self.rotary is not None}, "
                f"chunk_size={self.chunk_size}")

    # ------------------------------------------------------------------ pieces
    def gates(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """All gates the op takes, in natural units: data-dependent from x [B, T, hidden], static parameters."""
        out = {}
        for g in self.gate_meta:
            if g.data_dependent:
                out[g.name] = self.gate_proj[g.name](x)
            else:
                z = self.static_gates[g.name].float()
                out[g.name] = clamp_to_range(self._gate_acts[g.name](z), g)
        return out

    def initial_memory(self, batch: int) -> tuple[torch.Tensor, ...]:
        return self.op.State(*(p.unsqueeze(0).expand(batch, *p.shape) for p in self.initial_state))

    def _mix(self, x: torch.Tensor, state=None, conv=None, pos0=None, chunk_size=None, want_state=False):
        """The layer on rows that all start at their first token (state/conv/pos0 None) or continue from a cache.

        Returns (y [B, T, hidden], final state or None, conv tail [B, K-1, 3·H·D])."""
        B, T, _ = x.shape
        H, D, K = self.num_heads, self.head_dim, self.conv_size
        proj = torch.cat([self.q_proj(x), self.k_proj(x), self.v_proj(x)], dim=-1)  # [B, T, 3HD]
        if conv is None:
            conv = proj.new_zeros(B, K - 1, proj.shape[-1])
        xp = torch.cat([conv.to(proj.dtype), proj], dim=1)
        y = F.conv1d(xp.transpose(1, 2), self.conv_weight.to(proj.dtype).unsqueeze(1), groups=proj.shape[-1])
        y = F.silu(y.transpose(1, 2))
        q, k, v = (t.reshape(B, T, H, D) for t in y.split(H * D, dim=-1))
        q = F.normalize(q, dim=-1, eps=1e-6)
        k = F.normalize(k, dim=-1, eps=1e-6)
        if self.rotary is not None:
            pos = torch.arange(T, device=x.device)[None, :]
            if pos0 is not None:
                pos = pos + pos0[:, None]
            cos, sin = self.rotary.cos_sin(pos)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if state is None:
            state = self.initial_memory(B)
        params = {n: p for n, p in self.memory_params.items()}
        o, new_state = self.op(q, k, v, gates=self.gates(x), initial_state=state, output_final_state=want_state,
                               chunk_size=self.chunk_size if chunk_size is None else chunk_size, params=params)
        of = o.float()
        of = of * torch.rsqrt(of.pow(2).mean(-1, keepdim=True) + self.norm_eps) * self.o_norm_weight.float()
        o = of.to(x.dtype).reshape(B, T, H * D) * torch.sigmoid(self.g_proj(x))
        return self.o_proj(o), new_state, xp[:, xp.shape[1] - (K - 1):]

    def chunk(self) -> int:
        """The chunk size the op runs with (the layer's, else the spec's)."""
        return int(self.chunk_size or self.op.meta.chunk_size)
