"""paddle_belle: the BELLE models and their workflow on PaddlePaddle."""
__version__ = "0.1.0"

from paddle_belle.cpu import fast_mkl_on_amd  # before anything imports Paddle

fast_mkl_on_amd()

# Public names, imported on first use so that `paddle-belle --version` does not pay for importing Paddle.
_PUBLIC = {
    "AutoModelForCausalLM": "paddle_belle.auto",
    "AutoTokenizer": "paddle_belle.tokenizer",
    "BloomConfig": "paddle_belle.models",
    "BloomForCausalLM": "paddle_belle.models",
    "LlamaConfig": "paddle_belle.models",
    "LlamaForCausalLM": "paddle_belle.models",
}
__all__ = list(_PUBLIC)


def __getattr__(name):
    if name in _PUBLIC:
        import importlib

        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'paddle_belle' has no attribute {name!r}")
