"""The naming facts of each architecture, framework-free: HF -> PaddleNLP weight names (with which weights
transpose), the parameter shapes a config implies, and config field names in both worlds.

Weight tables map an HF name template to (PaddleNLP name template, transpose); ``{}`` is the layer index.
nn.Linear stores [out, in] in torch and [in, out] in Paddle, so every Linear weight transposes; embeddings,
norms and biases do not. The Paddle -> HF tables are the same facts read backwards (``invert``).
"""
from __future__ import annotations

import re

BLOOM_HF_TO_PADDLE = {
    "transformer.word_embeddings.weight": ("bloom.word_embeddings.weight", False),
    "transformer.word_embeddings_layernorm.weight": ("bloom.word_embeddings_layernorm.weight", False),
    "transformer.word_embeddings_layernorm.bias": ("bloom.word_embeddings_layernorm.bias", False),
    "transformer.h.{}.input_layernorm.weight": ("bloom.h.{}.input_layernorm.weight", False),
    "transformer.h.{}.input_layernorm.bias": ("bloom.h.{}.input_layernorm.bias", False),
    "transformer.h.{}.self_attention.query_key_value.weight": ("bloom.h.{}.self_attention.query_key_value.weight", True),
    "transformer.h.{}.self_attention.query_key_value.bias": ("bloom.h.{}.self_attention.query_key_value.bias", False),
    "transformer.h.{}.self_attention.dense.weight": ("bloom.h.{}.self_attention.dense.weight", True),
    "transformer.h.{}.self_attention.dense.bias": ("bloom.h.{}.self_attention.dense.bias", False),
    "transformer.h.{}.post_attention_layernorm.weight": ("bloom.h.{}.post_attention_layernorm.weight", False),
    "transformer.h.{}.post_attention_layernorm.bias": ("bloom.h.{}.post_attention_layernorm.bias", False),
    "transformer.h.{}.mlp.dense_h_to_4h.weight": ("bloom.h.{}.mlp.dense_h_to_4h.weight", True),
    "transformer.h.{}.mlp.dense_h_to_4h.bias": ("bloom.h.{}.mlp.dense_h_to_4h.bias", False),
    "transformer.h.{}.mlp.dense_4h_to_h.weight": ("bloom.h.{}.mlp.dense_4h_to_h.weight", True),
    "transformer.h.{}.mlp.dense_4h_to_h.bias": ("bloom.h.{}.mlp.dense_4h_to_h.bias", False),
    "transformer.ln_f.weight": ("bloom.ln_f.weight", False),
    "transformer.ln_f.bias": ("bloom.ln_f.bias", False),
}

LLAMA_HF_TO_PADDLE = {
    "model.embed_tokens.weight": ("llama.embed_tokens.weight", False),
    "model.layers.{}.input_layernorm.weight": ("llama.layers.{}.input_layernorm.weight", False),
    "model.layers.{}.self_attn.q_proj.weight": ("llama.layers.{}.self_attn.q_proj.weight", True),
    "model.layers.{}.self_attn.k_proj.weight": ("llama.layers.{}.self_attn.k_proj.weight", True),
    "model.layers.{}.self_attn.v_proj.weight": ("llama.layers.{}.self_attn.v_proj.weight", True),
    "model.layers.{}.self_attn.o_proj.weight": ("llama.layers.{}.self_attn.o_proj.weight", True),
    "model.layers.{}.post_attention_layernorm.weight": ("llama.layers.{}.post_attention_layernorm.weight", False),
    "model.layers.{}.mlp.gate_proj.weight": ("llama.layers.{}.mlp.gate_proj.weight", True),
    "model.layers.{}.mlp.up_proj.weight": ("llama.layers.{}.mlp.up_proj.weight", True),
    "model.layers.{}.mlp.down_proj.weight": ("llama.layers.{}.mlp.down_proj.weight", True),
    "model.norm.weight": ("llama.norm.weight", False),
    "lm_head.weight": ("lm_head.weight", True),
}

HF_TO_PADDLE = {"bloom": BLOOM_HF_TO_PADDLE, "llama": LLAMA_HF_TO_PADDLE}
# The HF prefix of the body: checkpoints of the bare body (BloomModel, LlamaModel) lack it.
HF_BODY_PREFIX = {"bloom": "transformer.", "llama": "model."}
# Tensors HF checkpoints may carry that are not weights (older LLaMA checkpoints saved RoPE's inverse frequencies).
HF_IGNORED = {"bloom": [], "llama": [re.compile(r".*\.rotary_emb\.inv_freq$")]}
EMBEDDING = {"bloom": ("transformer.word_embeddings.weight", "bloom.word_embeddings.weight"),
             "llama": ("model.embed_tokens.weight", "llama.embed_tokens.weight")}
HEAD = {"bloom": ("lm_head.weight", None), "llama": ("lm_head.weight", "lm_head.weight")}  # BLOOM has no Paddle head


def model_type_of(config: dict, source="config.json") -> str:
    """bloom or llama for a config dict; older PaddleNLP configs name only the class (architectures/init_class)."""
    model_type = config.get("model_type")
    if model_type is None:
        names = " ".join(config.get("architectures") or [config.get("init_class") or ""]).lower()
        model_type = next((t for t in HF_TO_PADDLE if t in names), None)
    if model_type not in HF_TO_PADDLE:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(HF_TO_PADDLE)})")
    return model_type


def invert(table: dict[str, tuple[str, bool]]) -> dict[str, tuple[str, bool]]:
    return {target: (source, transpose) for source, (target, transpose) in table.items()}


PADDLE_TO_HF = {model_type: invert(table) for model_type, table in HF_TO_PADDLE.items()}
_LAYER = re.compile(r"\.(\d+)\.")


def rename(name: str, table: dict[str, tuple[str, bool]]) -> tuple[str, bool] | None:
    """(target name, transpose) for ``name`` under ``table``, or None if the table does not know it."""
    m = _LAYER.search(name)
    template = name[: m.start()] + ".{}." + name[m.end() :] if m else name
    if template not in table:
        return None
    target, transpose = table[template]
    return (target.format(m.group(1)) if m else target), transpose


def paddle_shapes(model_type: str, config: dict) -> dict[str, list[int]]:
    """Every PaddleNLP parameter name and shape a (PaddleNLP-field) config implies."""
    h, v = config["hidden_size"], config["vocab_size"]
    if model_type == "bloom":
        layer = {"input_layernorm.weight": [h], "input_layernorm.bias": [h],
                 "self_attention.query_key_value.weight": [h, 3 * h], "self_attention.query_key_value.bias": [3 * h],
                 "self_attention.dense.weight": [h, h], "self_attention.dense.bias": [h],
                 "post_attention_layernorm.weight": [h], "post_attention_layernorm.bias": [h],
                 "mlp.dense_h_to_4h.weight": [h, 4 * h], "mlp.dense_h_to_4h.bias": [4 * h],
                 "mlp.dense_4h_to_h.weight": [4 * h, h], "mlp.dense_4h_to_h.bias": [h]}
        shapes = {"bloom.word_embeddings.weight": [v, h], "bloom.word_embeddings_layernorm.weight": [h],
                  "bloom.word_embeddings_layernorm.bias": [h], "bloom.ln_f.weight": [h], "bloom.ln_f.bias": [h]}
        prefix, n_layers = "bloom.h", config["n_layer"]
    else:
        i, heads = config["intermediate_size"], config["num_attention_heads"]
        kv = (config.get("num_key_value_heads") or heads) * (h // heads)
        layer = {"input_layernorm.weight": [h], "self_attn.q_proj.weight": [h, h], "self_attn.k_proj.weight": [h, kv],
                 "self_attn.v_proj.weight": [h, kv], "self_attn.o_proj.weight": [h, h],
                 "post_attention_layernorm.weight": [h], "mlp.gate_proj.weight": [h, i], "mlp.up_proj.weight": [h, i],
                 "mlp.down_proj.weight": [i, h]}
        # PaddleNLP 2.8.1 always has a head, tied config or not (it ignores tie_word_embeddings).
        shapes = {"llama.embed_tokens.weight": [v, h], "llama.norm.weight": [h], "lm_head.weight": [h, v]}
        prefix, n_layers = "llama.layers", config["num_hidden_layers"]
    for n in range(n_layers):
        shapes.update({f"{prefix}.{n}.{k}": s for k, s in layer.items()})
    return shapes


# ----------------------------------------------------------------------------------------------- configs
# HF (or older) spelling -> PaddleNLP spelling.
BLOOM_CONFIG_ALIASES = {"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "n_embed": "hidden_size"}
# HF rope_scaling "type"/"rope_type" -> PaddleNLP rope_scaling_type. "ntk" (static NTK) is PaddleNLP's own.
ROPE_SCALING_TYPES = {"linear": "linear", "dynamic": "dynamic_ntk", "dynamic_ntk": "dynamic_ntk", "ntk": "ntk"}


def rope_scaling_fields(rope_scaling: dict | None, kind: str | None = None, factor: float = 1.0) -> tuple:
    """PaddleNLP's (rope_scaling_type, rope_scaling_factor) from HF's rope_scaling dict or PaddleNLP's fields."""
    if rope_scaling:
        kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
        factor = rope_scaling.get("factor", 1.0)
    if kind in (None, "default"):
        return None, 1.0
    if kind not in ROPE_SCALING_TYPES:
        raise ValueError(f"rope scaling {kind!r} is not supported (supported: {', '.join(ROPE_SCALING_TYPES)})")
    return ROPE_SCALING_TYPES[kind], factor


def paddle_config(model_type: str, config: dict) -> dict:
    """A config.json (HF or PaddleNLP spelling) in PaddleNLP's field names."""
    out = {k: v for k, v in config.items() if k not in ("torch_dtype", "rope_scaling", "transformers_version")}
    out["dtype"] = config.get("dtype") or config.get("torch_dtype") or "float32"
    if model_type == "bloom":
        for alias, field in BLOOM_CONFIG_ALIASES.items():
            if alias in out:
                out[field] = out.pop(alias)
    else:
        out["rope_scaling_type"], out["rope_scaling_factor"] = rope_scaling_fields(
            config.get("rope_scaling"), config.get("rope_scaling_type"), config.get("rope_scaling_factor", 1.0))
    out["model_type"] = model_type
    out["architectures"] = [{"bloom": "BloomForCausalLM", "llama": "LlamaForCausalLM"}[model_type]]
    return out


def hf_config(model_type: str, config: dict) -> dict:
    """A PaddleNLP config.json in the field names transformers reads."""
    config = paddle_config(model_type, config)  # normalise first, whatever spelling came in
    out = {k: v for k, v in config.items() if k not in ("dtype", "rope_scaling_type", "rope_scaling_factor")}
    out["torch_dtype"] = config["dtype"]
    if model_type == "llama" and config["rope_scaling_type"]:
        hf_type = {"linear": "linear", "dynamic_ntk": "dynamic"}.get(config["rope_scaling_type"])
        if hf_type is None:
            raise ValueError(f"rope scaling {config['rope_scaling_type']!r} has no transformers equivalent")
        out["rope_scaling"] = {"rope_type": hf_type, "factor": config["rope_scaling_factor"]}
    return out
