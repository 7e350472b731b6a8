"""paddle_belle: the BELLE models and their workflow on PaddlePaddle."""
__version__ = "0.1.0"

from paddle_belle.auto import AutoModelForCausalLM, AutoTokenizer  # noqa: E402
from paddle_belle.models import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

__all__ = [
    "AutoModelForCausalLM",
    "AutoTokenizer",
    "BloomConfig",
    "BloomForCausalLM",
    "LlamaConfig",
    "LlamaForCausalLM",
]
