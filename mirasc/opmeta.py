"""What a compiled op is, as typed records (`MemoryOp.meta`): read from the METADATA literal of its generated module.

A generated module stores plain data (it is printed, diffed and hashed); the runtime, the layers and the tools read
these records instead, so that what a gate is for, what a parameter defaults to and how the state starts are
fields the compiler set, not conventions on names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class GateInfo:
    """An input gate: its shape kind, whether it comes per token, its declared range and activation, its roles
    (what it fills: `decay`, `lr`, `momentum`, `gamma`, or `bias`; mirasc.spec.Gate) and its declared `init`."""

    name: str
    kind: Literal["scalar", "channel"]
    data_dependent: bool
    low: float
    high: float
    low_open: bool
    high_open: bool
    activation: str | None
    roles: tuple[str, ...] = ()
    init: float | None = None  # the spec's declared initial value (a layer's start), or None: by role

    def interval(self) -> str:
        return ("(" if self.low_open else "[") + f"{self.low:g}, {self.high:g}" + (")" if self.high_open else "]")


@dataclass(frozen=True)
class ParamInfo:
    """An outer parameter of the memory, [H, D] (or [D]): its value in every entry when the caller passes none."""

    name: str
    default: float


@dataclass(frozen=True)
class MemoryInfo:
    """The memory architecture (mirasc.components.memories): its DSL name, its layers (depth, hidden size
    expansion·D, activation), how its weights start (`zero` or `scaled`) and its arguments as the spec bound them."""

    kind: str
    depth: int
    expansion: int
    activation: str
    initial_state: Literal["zero", "scaled"]
    arguments: dict[str, Any]


@dataclass(frozen=True)
class AlgorithmInfo:
    """The learning algorithm (mirasc.components.algorithms): its DSL name and its buffer's state-field letter
    (`s` for momentum's s1..sL; None: no buffer)."""

    name: str
    buffer: str | None


@dataclass(frozen=True)
class MapInfo:
    """The retention's boundary map: its DSL name (`lq`, `kl`, `softthreshold`, `sigmoid`), how the chunk program
    applies it (`mirror`: a mirror map on an accumulator; `projection`: at chunk ends; `lag`: an exact step at each
    chunk's first token), and the state it starts from
    (`scaled`: N(0, 1/fan_in) entries; `logits`: N(0, 1) logits; `softmax_rows`: rows of softmax(N(0, 1)))."""

    name: str
    kind: Literal["mirror", "projection", "lag"]
    initial_state: Literal["scaled", "logits", "softmax_rows"]


@dataclass(frozen=True)
class OpMeta:
    name: str
    memory: MemoryInfo
    map: MapInfo | None
    algorithm: AlgorithmInfo
    chunk_form: str
    gates: tuple[GateInfo, ...]
    params: tuple[ParamInfo, ...]
    chunk_size: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> OpMeta:
        """The records of a generated module's METADATA."""
        return cls(
            name=d["name"],
            memory=MemoryInfo(**d["memory"]),
            map=None if d["map"] is None else MapInfo(**d["map"]),
            algorithm=AlgorithmInfo(**d["algorithm"]),
            chunk_form=d["chunk_form"],
            gates=tuple(GateInfo(**{**g, "roles": tuple(g["roles"])}) for g in d["gates"]),
            params=tuple(ParamInfo(**p) for p in d["params"]),
            chunk_size=d["chunk_size"],
        )

    def gate_shapes(self, B: int, T: int, H: int, D: int) -> dict[str, tuple[int, ...]]:
        """Each gate's shape in a call: data-dependent [B, T, H(, D)], static [H(, D)]."""
        out = {}
        for g in self.gates:
            lead = (B, T, H) if g.data_dependent else (H,)
            out[g.name] = lead + ((D,) if g.kind == "channel" else ())
        return out

    def param_shapes(self, H: int, D: int) -> dict[str, tuple[int, ...]]:
        return {p.name: (H, D) for p in self.params}

    def state_shapes(self, B: int, H: int, D: int) -> dict[str, tuple[int, ...]]:
        """Each state field's shape [B, H, out, in]: the weight matrices, then the algorithm's buffer (momentum)."""
        mem = self.memory
        depth, hid = mem.depth, mem.expansion * D
        dims = [D] + [hid] * (depth - 1) + [D]
        shapes = {f"w{j + 1}": (B, H, dims[j + 1], dims[j]) for j in range(depth)}
        buffer = self.algorithm.buffer
        if buffer is not None:
            shapes.update({f"{buffer}{j + 1}": (B, H, dims[j + 1], dims[j]) for j in range(depth)})
        return shapes

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]


__all__ = ["AlgorithmInfo", "GateInfo", "MapInfo", "MemoryInfo", "OpMeta", "ParamInfo"]
