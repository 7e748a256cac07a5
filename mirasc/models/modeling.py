"""MirasModel / MirasForCausalLM: Hugging Face PreTrainedModel wrappers around the mirasc.nn blocks.

Written against transformers 4.40 … 5.x: the cache travels as `past_key_values` (4.x) or `cache` (5.x); forward
accepts both names and the output carries it under whichever field the installed CausalLMOutputWithPast has.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import PreTrainedModel
from transformers.generation import GenerationMixin
from transformers.modeling_outputs import BaseModelOutputWithPast, CausalLMOutputWithPast

from ..nn.blocks import MirasBlock, build_mixer
from ..nn.sequences import MirasLayerCache
from .configuration import MirasConfig

__all__ = ["MirasCache", "MirasForCausalLM", "MirasModel", "MirasPreTrainedModel"]

_TF5 = int(transformers.__version__.split(".")[0]) >= 5


def _cache_field(output_cls) -> str:
    names = {f.name for f in dataclasses.fields(output_cls)}
    return "cache" if "cache" in names else "past_key_values"


class MirasCache:
    """Generation cache: one entry per block (MirasLayerCache or AttentionCache, None before the first call) and
    the number of token columns seen (`get_seq_length`, what generate slices input_ids by)."""

    is_compileable = False
    is_croppable = False

    def __init__(self, num_layers: int):
        self.layers: list = [None] * num_layers
        self.seq_len = 0

    def __len__(self) -> int:
        return len(self.layers)

    def __getitem__(self, i):
        return self.layers[i]

    @property
    def is_linear(self) -> list[bool]:
        return [isinstance(c, MirasLayerCache) for c in self.layers]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_len

    def reorder_cache(self, beam_idx: torch.Tensor) -> None:
        for c in self.layers:
            if c is not None:
                c.reorder(beam_idx)


class MirasPreTrainedModel(PreTrainedModel):
    config_class = MirasConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MirasBlock"]
    _is_stateful = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        with torch.no_grad():
            if isinstance(module, nn.Linear):
                module.weight.normal_(0.0, std)
                if module.bias is not None:
                    module.bias.zero_()
            elif isinstance(module, nn.Embedding):
                module.weight.normal_(0.0, std)
            elif hasattr(module, "_reset_own_parameters"):
                module._reset_own_parameters()

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:  # our own cache object, not DynamicCache
        return False


class MirasModel(MirasPreTrainedModel):
    """The backbone: embeddings -> blocks -> final RMSNorm; returns last_hidden_state (and the cache)."""

    def __init__(self, config: MirasConfig):
        super().__init__(config)
        from ..nn.blocks import RMSNorm

        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        op = None
        if config.mixer == "miras":
            from ..runtime import compile as _compile

            op = _compile(config.spec, backend=config.backend, options=getattr(config, "spec_options", None))
            if getattr(config, "torch_compile", False):
                op = op.compile_chunks()
        self.layers = nn.ModuleList([
            MirasBlock(config.hidden_size,
                       build_mixer(i, config.hidden_size, config.num_heads, spec=op, mixer=config.mixer,
                                   hybrid=config.hybrid, window=config.window, head_dim=config.head_dim,
                                   conv_size=config.conv_size, gate_rank=config.gate_rank, use_rope=config.use_rope,
                                   chunk_size=config.chunk_size, backend=config.backend, rope_base=config.rope_base),
                       config.intermediate_size, config.norm_eps)
            for i in range(config.num_hidden_layers)])
        self.norm = RMSNorm(config.hidden_size, config.norm_eps)
        self.post_init()

    def get_input_embeddings(self):
        return self.embed_tokens

    def set_input_embeddings(self, value):
        self.embed_tokens = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                past_key_values: MirasCache | None = None, use_cache: bool | None = None,
                inputs_embeds: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                return_dict: bool = True, cache: MirasCache | None = None, **kwargs):
        cache = cache if cache is not None else past_key_values
        use_cache = use_cache if use_cache is not None else (cache is not None)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        T = x.shape[1]
        if attention_mask is not None and bool(attention_mask.bool().all()):
            attention_mask = None
        if use_cache and cache is None:
            cache = MirasCache(len(self.layers))
        for i, block in enumerate(self.layers):
            x, layer_cache = block(x, attention_mask=attention_mask, cu_seqlens=cu_seqlens,
                                   cache=cache.layers[i] if cache is not None else None, use_cache=use_cache)
            if use_cache:
                cache.layers[i] = layer_cache
        x = self.norm(x)
        if use_cache:
            cache.seq_len += T
        else:
            cache = None
        out = BaseModelOutputWithPast(last_hidden_state=x, **{_cache_field(BaseModelOutputWithPast): cache})
        return out if return_dict else (x, cache)


class MirasForCausalLM(MirasPreTrainedModel, GenerationMixin):
    """MirasModel + a (tied) LM head. `model.model` is the backbone, `model.lm_head` the head."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"} if _TF5 else ["lm_head.weight"]

    def __init__(self, config: MirasConfig):
        super().__init__(config)
        self.model = MirasModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def get_output_embeddings(self):
        return self.lm_head

    def set_output_embeddings(self, value):
        self.lm_head = value

    def forward(self, input_ids: torch.LongTensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.LongTensor | None = None, past_key_values: MirasCache | None = None,
                use_cache: bool | None = None, cu_seqlens: torch.Tensor | None = None, return_dict: bool = True,
                inputs_embeds: torch.Tensor | None = None, cache: MirasCache | None = None, **kwargs):
        """Logits [B, T, V] (fp32 when labels are given); loss = next-token cross-entropy, ignore_index -100."""
        out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                         past_key_values=cache if cache is not None else past_key_values, use_cache=use_cache,
                         inputs_embeds=inputs_embeds, cu_seqlens=cu_seqlens, return_dict=True)
        logits = self.lm_head(out.last_hidden_state)
        loss = None
        if labels is not None:
            shift = logits[:, :-1].float()
            loss = F.cross_entropy(shift.reshape(-1, shift.shape[-1]), labels[:, 1:].reshape(-1).to(logits.device),
                                   ignore_index=-100)
        new_cache = getattr(out, _cache_field(BaseModelOutputWithPast))
        if not return_dict:
            return (loss, logits, new_cache) if loss is not None else (logits, new_cache)
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{_cache_field(CausalLMOutputWithPast): new_cache})

    def prepare_inputs_for_generation(self, input_ids, past_key_values=None, attention_mask=None, use_cache=True,
                                      inputs_embeds=None, cache=None, **kwargs):
        """Feed only the tokens the cache has not seen (all of them on the first call); keep the full mask."""
        cache = cache if cache is not None else past_key_values
        seen = cache.get_seq_length() if isinstance(cache, MirasCache) else 0
        inputs = {"attention_mask": attention_mask, "use_cache": use_cache, "past_key_values": cache}
        if inputs_embeds is not None and seen == 0:
            inputs["inputs_embeds"] = inputs_embeds
        else:
            inputs["input_ids"] = input_ids[:, seen:] if seen else input_ids
        return inputs

    def _reorder_cache(self, cache, beam_idx):  # transformers 4.x beam search
        cache.reorder_cache(beam_idx)
        return cache
