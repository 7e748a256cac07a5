"""torch modules around compiled Miras memories: the Miras token mixer and Llama-style blocks."""

from .blocks import (
    AttentionCache,
    CausalAttention,
    MirasBlock,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    build_mixer,
    default_intermediate_size,
)
from .gates import GATE_INIT, GateProjection, gate_activation, gate_init_value
from .layer import MirasLayer
from .sequences import MirasLayerCache

__all__ = [
    "GATE_INIT",
    "AttentionCache",
    "CausalAttention",
    "GateProjection",
    "MirasBlock",
    "MirasLayer",
    "MirasLayerCache",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "build_mixer",
    "default_intermediate_size",
    "gate_activation",
    "gate_init_value",
]
