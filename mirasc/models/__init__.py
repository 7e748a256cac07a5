"""Hugging Face wrappers: MirasConfig, MirasModel, MirasForCausalLM (model_type "miras").

Importing this package registers the classes with AutoConfig, AutoModel and AutoModelForCausalLM. It needs the
optional extra `transformers` (`pip install mirasc[hf]`); `import mirasc` and `mirasc.compile` do not.
"""

from __future__ import annotations

try:
    import transformers  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "mirasc.models needs the Hugging Face transformers library: pip install mirasc[hf] "
        "(or pip install 'transformers>=4.40' safetensors)") from e

from .configuration import MirasConfig
from .modeling import MirasCache, MirasForCausalLM, MirasModel, MirasPreTrainedModel


def _register() -> None:
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

    try:
        AutoConfig.register("miras", MirasConfig)
    except ValueError:  # already registered (re-import)
        pass
    for auto, cls in ((AutoModel, MirasModel), (AutoModelForCausalLM, MirasForCausalLM)):
        try:
            auto.register(MirasConfig, cls)
        except ValueError:
            pass


_register()

__all__ = ["MirasCache", "MirasConfig", "MirasForCausalLM", "MirasModel", "MirasPreTrainedModel"]
