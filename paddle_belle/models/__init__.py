"""Model registry: config.json's model_type -> our model class."""
from paddle_belle.models.bloom import BloomConfig, BloomForCausalLM
from paddle_belle.models.llama import LlamaConfig, LlamaForCausalLM

MODELS = {"bloom": BloomForCausalLM, "llama": LlamaForCausalLM}

__all__ = ["MODELS", "BloomConfig", "BloomForCausalLM", "LlamaConfig", "LlamaForCausalLM"]
