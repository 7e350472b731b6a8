"""Every fact about each architecture, in one table per ``model_type``, framework-free (no Paddle import).

An ``Arch`` holds the HF -> PaddleNLP and GGUF -> PaddleNLP weight-name tables, the embedding and head names and the
tie rule, where the decoder blocks live, the block's Linears in the order GPTQ quantizes them, BELLE's LoRA targets,
config field names, and the parameter shapes a config implies. The models, converters, quantizer, trainer, registry
and model cards read these facts here (litgpt's ``Config`` and llama.cpp's converter classes play the same role).

Weight tables map a name template to (PaddleNLP name template, transpose); ``{}`` is the layer index. nn.Linear
stores [out, in] in torch (and GGUF's numpy order) and [in, out] in Paddle, so every Linear weight transposes;
embeddings, norms and biases do not. Paddle -> HF is the same table read backwards (``invert``).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

_LAYER = re.compile(r"\.(\d+)\.")
HF_HEAD = "lm_head.weight"  # the LM head's name in HF checkpoints of every architecture (tied or not)


def _get(config, key, default=None):  # a field of a config.json dict or of a config object
    return config.get(key, default) if isinstance(config, dict) else getattr(config, key, default)


@dataclass(frozen=True)
class Arch:
    model_type: str
    class_name: str  # PaddleNLP's and transformers' causal-LM class
    body: str  # the Paddle body attribute and name prefix (PaddleNLP's base_model_prefix)
    hf_body: str  # the HF prefix of the body: checkpoints of the bare body (BloomModel, LlamaModel) lack it
    blocks: str  # the body's attribute holding the decoder blocks
    layers_field: str  # config fields (PaddleNLP spelling) of the block count and the head count
    heads_field: str
    embedding: str  # Paddle name of the input embedding
    head: str | None  # Paddle name of the LM head; None: the head is always the embedding (BLOOM) and never saved
    hf_to_paddle: dict[str, tuple[str, bool]]
    # Each block's Linears (paths inside the block), in the groups GPTQ quantizes together, in order ("true
    # sequential", IST-DASLab/gptq llama.py): a later group's Hessian sees the earlier groups' quantized outputs.
    # The Linears of a group read the same input (so they share one Hessian), the first of them called first.
    linear_groups: tuple[tuple[str, ...], ...]
    lora_targets: tuple[str, ...]  # BELLE's LoRA recipe (train/configs/lora_config_{bloom,llama}.json)
    # (PaddleNLP config) -> shapes of the tensors before the blocks, of one block, and after the blocks
    shapes: Callable[[dict], tuple[dict, dict, dict]]
    config_aliases: dict[str, str] = field(default_factory=dict)  # HF (or older) spelling -> PaddleNLP spelling
    hf_ignored: tuple[str, ...] = ()  # regexes of HF tensors that are not weights
    # llama.cpp's tensor names (gguf-py constants.py TENSOR_NAMES for this architecture) -> ours
    gguf_to_paddle: dict[str, tuple[str, bool]] = field(default_factory=dict)
    # GGUF metadata key (after "<architecture>.") -> config field, both ways; gguf_extra: keys llama.cpp's
    # converter derives rather than reads (convert_hf_to_gguf.py set_gguf_parameters of the model class)
    gguf_fields: dict[str, str] = field(default_factory=dict)
    gguf_extra: Callable[[dict], dict] = lambda config: {}

    def hf_name(self, name: str) -> str:
        return rename(name, invert(self.hf_to_paddle))[0]

    # Dimensions, from a PaddleNLP-field config.json dict or a config object.
    def n_layers(self, config) -> int:
        return _get(config, self.layers_field)

    def n_heads(self, config) -> int:
        return _get(config, self.heads_field)

    def n_kv_heads(self, config) -> int:
        return _get(config, "num_key_value_heads") or self.n_heads(config)

    def head_dim(self, config) -> int:
        return _get(config, "hidden_size") // self.n_heads(config)

    def tied(self, config) -> bool:
        """Whether the LM head is the (transposed) input embedding."""
        return self.head is None or bool(_get(config, "tie_word_embeddings", False))

    def tied_copies(self, config) -> dict[str, str]:
        """Checkpoint names written as a transposed copy of another parameter. PaddleNLP 2.8.1's LlamaForCausalLM
        ignores tie_word_embeddings and always builds and loads lm_head (paddlenlp/transformers/llama/modeling.py),
        so a tied LLaMA checkpoint still carries the head, equal to the embedding. BLOOM saves no head at all."""
        return {self.head: self.embedding} if self.head and self.tied(config) else {}

    def checkpoint_shapes(self, config) -> dict[str, list[int]]:
        """Every tensor name and shape of a PaddleNLP checkpoint for a (PaddleNLP-field) config, in the order
        our models hold them: embeddings, blocks, the final norm and head."""
        first, layer, last = self.shapes(config)
        blocks = {f"{self.body}.{self.blocks}.{i}.{n}": s for i in range(self.n_layers(config)) for n, s in layer.items()}
        return {**first, **blocks, **last}

    def model_shapes(self, config) -> dict[str, list[int]]:
        """The distinct parameters a model holds: a tied head counts once, as the embedding."""
        shapes = self.checkpoint_shapes(config)
        for copy in self.tied_copies(config):
            shapes.pop(copy)
        return shapes

    def parameters(self, config) -> int:
        return sum(math.prod(s) for s in self.model_shapes(config).values())

    def linear_weights(self, config) -> dict[str, list[int]]:
        """Name and [in, out] shape of every decoder-block Linear weight (what quantization replaces)."""
        paths = tuple(f".{path}.weight" for group in self.linear_groups for path in group)
        return {n: s for n, s in self.checkpoint_shapes(config).items() if n.endswith(paths)}


# ------------------------------------------------------------------------------------------------- BLOOM
def _bloom_shapes(c: dict) -> tuple[dict, dict, dict]:
    h, v = c["hidden_size"], c["vocab_size"]
    first = {"bloom.word_embeddings.weight": [v, h], "bloom.word_embeddings_layernorm.weight": [h],
             "bloom.word_embeddings_layernorm.bias": [h]}
    layer = {"input_layernorm.weight": [h], "input_layernorm.bias": [h],
             "self_attention.query_key_value.weight": [h, 3 * h], "self_attention.query_key_value.bias": [3 * h],
             "self_attention.dense.weight": [h, h], "self_attention.dense.bias": [h],
             "post_attention_layernorm.weight": [h], "post_attention_layernorm.bias": [h],
             "mlp.dense_h_to_4h.weight": [h, 4 * h], "mlp.dense_h_to_4h.bias": [4 * h],
             "mlp.dense_4h_to_h.weight": [4 * h, h], "mlp.dense_4h_to_h.bias": [h]}
    return first, layer, {"bloom.ln_f.weight": [h], "bloom.ln_f.bias": [h]}


BLOOM = Arch(
    model_type="bloom", class_name="BloomForCausalLM", body="bloom", hf_body="transformer.", blocks="h",
    layers_field="n_layer", heads_field="n_head",
    embedding="bloom.word_embeddings.weight", head=None,
    hf_to_paddle={
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
    },
    linear_groups=(("self_attention.query_key_value",), ("self_attention.dense",), ("mlp.dense_h_to_4h",),
                   ("mlp.dense_4h_to_h",)),
    lora_targets=(".*query_key_value.*",),
    shapes=_bloom_shapes,
    config_aliases={"num_hidden_layers": "n_layer", "num_attention_heads": "n_head", "n_embed": "hidden_size"},
    # llama.cpp stores the fused QKV as [Q; K; V] rows, not per head (convert/gguf.py qkv_to_gguf), and needs no
    # output.weight: its BLOOM loader reuses token_embd (llama.cpp src/models/bloom.cpp).
    gguf_to_paddle={
        "token_embd.weight": ("bloom.word_embeddings.weight", False),
        "token_embd_norm.weight": ("bloom.word_embeddings_layernorm.weight", False),
        "token_embd_norm.bias": ("bloom.word_embeddings_layernorm.bias", False),
        "blk.{}.attn_norm.weight": ("bloom.h.{}.input_layernorm.weight", False),
        "blk.{}.attn_norm.bias": ("bloom.h.{}.input_layernorm.bias", False),
        "blk.{}.attn_qkv.weight": ("bloom.h.{}.self_attention.query_key_value.weight", True),
        "blk.{}.attn_qkv.bias": ("bloom.h.{}.self_attention.query_key_value.bias", False),
        "blk.{}.attn_output.weight": ("bloom.h.{}.self_attention.dense.weight", True),
        "blk.{}.attn_output.bias": ("bloom.h.{}.self_attention.dense.bias", False),
        "blk.{}.ffn_norm.weight": ("bloom.h.{}.post_attention_layernorm.weight", False),
        "blk.{}.ffn_norm.bias": ("bloom.h.{}.post_attention_layernorm.bias", False),
        "blk.{}.ffn_up.weight": ("bloom.h.{}.mlp.dense_h_to_4h.weight", True),
        "blk.{}.ffn_up.bias": ("bloom.h.{}.mlp.dense_h_to_4h.bias", False),
        "blk.{}.ffn_down.weight": ("bloom.h.{}.mlp.dense_4h_to_h.weight", True),
        "blk.{}.ffn_down.bias": ("bloom.h.{}.mlp.dense_4h_to_h.bias", False),
        "output_norm.weight": ("bloom.ln_f.weight", False),
        "output_norm.bias": ("bloom.ln_f.bias", False),
    },
    gguf_fields={"block_count": "n_layer", "embedding_length": "hidden_size", "attention.head_count": "n_head",
                 "attention.head_count_kv": "n_head", "attention.layer_norm_epsilon": "layer_norm_epsilon"},
    # BloomModel.set_gguf_parameters: the MLP is always 4x; context_length is seq_length, else the hidden size
    # (BLOOM's ALiBi has no position limit; llama.cpp only uses it as the default context).
    gguf_extra=lambda c: {"feed_forward_length": 4 * c["hidden_size"],
                          "context_length": c.get("seq_length", c["hidden_size"])},
)


# ------------------------------------------------------------------------------------------------- LLaMA
def _llama_shapes(c: dict) -> tuple[dict, dict, dict]:
    h, v, i = c["hidden_size"], c["vocab_size"], c["intermediate_size"]
    kv = LLAMA.n_kv_heads(c) * LLAMA.head_dim(c)
    layer = {"input_layernorm.weight": [h], "self_attn.q_proj.weight": [h, h], "self_attn.k_proj.weight": [h, kv],
             "self_attn.v_proj.weight": [h, kv], "self_attn.o_proj.weight": [h, h],
             "post_attention_layernorm.weight": [h], "mlp.gate_proj.weight": [h, i], "mlp.up_proj.weight": [h, i],
             "mlp.down_proj.weight": [i, h]}
    # PaddleNLP 2.8.1 always has a head, tied config or not (see Arch.tied_copies).
    return {"llama.embed_tokens.weight": [v, h]}, layer, {"llama.norm.weight": [h], "lm_head.weight": [h, v]}


LLAMA = Arch(
    model_type="llama", class_name="LlamaForCausalLM", body="llama", hf_body="model.", blocks="layers",
    layers_field="num_hidden_layers", heads_field="num_attention_heads",
    embedding="llama.embed_tokens.weight", head="lm_head.weight",
    hf_to_paddle={
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
    },
    linear_groups=(("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), ("self_attn.o_proj",),
                   ("mlp.gate_proj", "mlp.up_proj"), ("mlp.down_proj",)),
    lora_targets=tuple(f".*{name}.*" for name in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                    "down_proj")),
    shapes=_llama_shapes,
    hf_ignored=(r".*\.rotary_emb\.inv_freq$",),  # older checkpoints saved RoPE's inverse frequencies
    gguf_to_paddle={
        "token_embd.weight": ("llama.embed_tokens.weight", False),
        "output_norm.weight": ("llama.norm.weight", False),
        "output.weight": ("lm_head.weight", True),
        "blk.{}.attn_norm.weight": ("llama.layers.{}.input_layernorm.weight", False),
        "blk.{}.attn_q.weight": ("llama.layers.{}.self_attn.q_proj.weight", True),
        "blk.{}.attn_k.weight": ("llama.layers.{}.self_attn.k_proj.weight", True),
        "blk.{}.attn_v.weight": ("llama.layers.{}.self_attn.v_proj.weight", True),
        "blk.{}.attn_output.weight": ("llama.layers.{}.self_attn.o_proj.weight", True),
        "blk.{}.ffn_norm.weight": ("llama.layers.{}.post_attention_layernorm.weight", False),
        "blk.{}.ffn_gate.weight": ("llama.layers.{}.mlp.gate_proj.weight", True),
        "blk.{}.ffn_up.weight": ("llama.layers.{}.mlp.up_proj.weight", True),
        "blk.{}.ffn_down.weight": ("llama.layers.{}.mlp.down_proj.weight", True),
    },
    gguf_fields={"block_count": "num_hidden_layers", "context_length": "max_position_embeddings",
                 "embedding_length": "hidden_size", "feed_forward_length": "intermediate_size",
                 "attention.head_count": "num_attention_heads", "attention.head_count_kv": "num_key_value_heads",
                 "attention.layer_norm_rms_epsilon": "rms_norm_eps", "rope.freq_base": "rope_theta",
                 "vocab_size": "vocab_size"},
    gguf_extra=lambda c: {"rope.dimension_count": c["hidden_size"] // c["num_attention_heads"]},
)

ARCHS = {a.model_type: a for a in (BLOOM, LLAMA)}


# --------------------------------------------------------------------------------------------- look-ups
def get(model_type: str, source="config.json") -> Arch:
    if model_type not in ARCHS:
        raise ValueError(f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(ARCHS)})")
    return ARCHS[model_type]


def model_type_of(config: dict, source="config.json") -> str:
    """bloom or llama for a config dict; older PaddleNLP configs name only the class (architectures/init_class)."""
    model_type = config.get("model_type")
    if model_type is None:
        names = " ".join(config.get("architectures") or [config.get("init_class") or ""]).lower()
        model_type = next((t for t in ARCHS if t in names), None)
    return get(model_type, source).model_type


def invert(table: dict[str, tuple[str, bool]]) -> dict[str, tuple[str, bool]]:
    return {target: (source, transpose) for source, (target, transpose) in table.items()}


HF_TO_PADDLE = {t: a.hf_to_paddle for t, a in ARCHS.items()}
PADDLE_TO_HF = {t: invert(a.hf_to_paddle) for t, a in ARCHS.items()}


def rename(name: str, table: dict[str, tuple[str, bool]]) -> tuple[str, bool] | None:
    """(target name, transpose) for ``name`` under ``table``, or None if the table does not know it."""
    m = _LAYER.search(name)
    template = name[: m.start()] + ".{}." + name[m.end() :] if m else name
    if template not in table:
        return None
    target, transpose = table[template]
    return (target.format(m.group(1)) if m else target), transpose


def paddle_shapes(model_type: str, config: dict) -> dict[str, list[int]]:
    """Every PaddleNLP checkpoint tensor name and shape a (PaddleNLP-field) config implies."""
    return get(model_type).checkpoint_shapes(config)


def parameters(model_type: str, config: dict) -> int:
    """Distinct parameters of a model (a tied head counts once) from a config.json in either spelling."""
    return get(model_type).parameters(paddle_config(model_type, config))


# ----------------------------------------------------------------------------------------------- configs
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
    arch = get(model_type)
    out = {k: v for k, v in config.items() if k not in ("torch_dtype", "rope_scaling", "transformers_version")}
    out["dtype"] = config.get("dtype") or config.get("torch_dtype") or "float32"
    for alias, name in arch.config_aliases.items():
        if alias in out:
            out[name] = out.pop(alias)
    if model_type == "llama":
        out["rope_scaling_type"], out["rope_scaling_factor"] = rope_scaling_fields(
            config.get("rope_scaling"), config.get("rope_scaling_type"), config.get("rope_scaling_factor", 1.0))
    out["model_type"] = model_type
    out["architectures"] = [arch.class_name]
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
