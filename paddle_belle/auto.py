"""``AutoModelForCausalLM``: pick the model class from a checkpoint directory's config.json."""
from __future__ import annotations

from paddle_belle import arch, hub
from paddle_belle.checkpoint import read_config
from paddle_belle.models import MODELS


def model_type_of(path) -> str:
    return arch.model_type_of(read_config(path), f"{path}/config.json")


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path, dtype=None, **kwargs):
        """Load a checkpoint into our BLOOM or LLaMA class, chosen by config.json's model_type.

        ``path``: a local checkpoint directory, or a PaddleNLP community model name such as
        'bellegroup/belle-7b-2m', downloaded into $PPNLP_HOME/models unless cached there (see ``hub.resolve``).

        ``dtype``: float32 (default on CPU), float16 or bfloat16 where the device runs them; by default the
        checkpoint's own dtype on accelerators.
        """
        path = hub.resolve(path)
        return MODELS[model_type_of(path)].from_pretrained(path, dtype=dtype, **kwargs)
