"""LLaMA in Paddle, parameter-for-parameter compatible with PaddleNLP 2.8.1's LlamaForCausalLM.

Reference: transformers/models/llama/modeling_llama.py (4.46): RMSNorm, rotate-half RoPE, SwiGLU MLP,
grouped-query attention. Linear weights are Paddle's [in, out]; ``lm_head.weight`` is [hidden, vocab].
"""
from __future__ import annotations

import math

import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddle.incubate.nn.functional import fused_rms_norm
from paddlenlp.transformers import PretrainedConfig

from paddle_belle import kernels
from paddle_belle.arch import LLAMA as ARCH, rope_scaling_fields
from paddle_belle.cpu import serial
from paddle_belle.models import base
from paddle_belle.models.base import (CausalLM, DecodeStep, Layer, attend, attention_bias, cast, decode_step, embed,
                                      split_heads, token_positions)
from paddle_belle.quant.linear import linear

class LlamaConfig(PretrainedConfig):
    """LLaMA hyper-parameters under PaddleNLP's field names.

    RoPE scaling is stored as PaddleNLP's ``rope_scaling_type`` ("linear", "dynamic_ntk", "ntk") and
    ``rope_scaling_factor``; HF's ``rope_scaling`` dict ({"type" or "rope_type": "linear"|"dynamic", "factor"})
    is translated on the way in.
    """

    model_type = "llama"

    def __init__(
        self,
        vocab_size: int = 32000,
        hidden_size: int = 4096,
        intermediate_size: int = 11008,
        num_hidden_layers: int = 32,
        num_attention_heads: int = 32,
        num_key_value_heads: int | None = None,
        max_position_embeddings: int = 2048,
        rms_norm_eps: float = 1e-6,
        rope_theta: float = 10000.0,
        rope_scaling_type: str | None = None,
        rope_scaling_factor: float = 1.0,
        tie_word_embeddings: bool = False,
        initializer_range: float = 0.02,
        attention_dropout: float = 0.0,
        hidden_act: str = "silu",
        pad_token_id: int = 0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        **kwargs,
    ):
        rope_scaling_type, rope_scaling_factor = rope_scaling_fields(
            kwargs.pop("rope_scaling", None), rope_scaling_type, rope_scaling_factor
        )
        if hidden_act != "silu":
            raise ValueError(f"hidden_act {hidden_act!r} is not supported; LLaMA uses silu")
        super().__init__(
            pad_token_id=pad_token_id, bos_token_id=bos_token_id, eos_token_id=eos_token_id,
            tie_word_embeddings=tie_word_embeddings, **kwargs,
        )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads or num_attention_heads
        self.max_position_embeddings = max_position_embeddings
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        self.rope_scaling_type = rope_scaling_type
        self.rope_scaling_factor = rope_scaling_factor
        self.initializer_range = initializer_range
        self.attention_dropout = attention_dropout
        self.hidden_act = hidden_act
        if hidden_size % num_attention_heads or num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"hidden_size {hidden_size}, num_attention_heads {num_attention_heads} and num_key_value_heads "
                f"{self.num_key_value_heads} must divide evenly"
            )


class LlamaRMSNorm(Layer):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = self.create_parameter([hidden_size], default_initializer=nn.initializer.Constant(1.0))
        self.eps = eps

    def forward(self, x, residual=None):
        """The norm of ``x``; with ``residual``, (the norm of x + residual, x + residual)."""
        if x.dtype == paddle.float32 and not paddle.is_grad_enabled():
            # Inference: Paddle's fused op (incubate/nn/functional/fused_rms_norm.py; it has no backward on the CPU)
            # with the residual add: one op for the six below (~7 us instead of ~35 at a decoding row of 576), equal
            # to them within float32 rounding (tests/models/test_llama.py)
            shape = x.shape
            out = serial(math.prod(shape), fused_rms_norm, x, self.weight, None, self.eps, len(shape) - 1, None,
                         residual)  # (bias None, then the residual)
            return out[0] if residual is None else out[:2]
        if residual is not None:
            x = x + residual
            return self.forward(x), x
        h = cast(x, paddle.float32)  # normalise in float32 like HF, then scale in the model's dtype
        # h * h, not h.pow(2): Paddle 3.3.1's CPU pow runs the general power function, 16x slower at [512, 576]
        # (4.7 vs 0.29 ms; GPTQ's calibration passes run it per layer), and torch's pow(2), the reference, is h * h
        h = h * paddle.rsqrt((h * h).mean(-1, keepdim=True) + self.eps)
        return self.weight * cast(h, x.dtype)


def rope_cos_sin(config: LlamaConfig, head_dim: int, position_ids: paddle.Tensor):
    """cos, sin [batch, 1, seq, head_dim] for ``position_ids`` [batch, seq], with the configured scaling; the sine
    with its first half negated, for ``rope``."""
    base, factor, kind = config.rope_theta, config.rope_scaling_factor, config.rope_scaling_type
    exponent = head_dim / (head_dim - 2)
    if kind == "ntk":
        base *= factor**exponent
    elif kind == "dynamic_ntk":
        # Dynamic NTK: the base grows once the sequence outgrows the trained context (HF "dynamic").
        seq_len = int(position_ids.max()) + 1
        if seq_len > config.max_position_embeddings:
            base *= (factor * seq_len / config.max_position_embeddings - (factor - 1)) ** exponent
    inv_freq = 1.0 / base ** (paddle.arange(0, head_dim, 2, dtype="float32") / head_dim)
    if kind == "linear":
        inv_freq = inv_freq / factor  # positions interpolated by 1/factor
    freqs = position_ids.astype("float32").unsqueeze(-1) * inv_freq
    sin = freqs.sin()
    return paddle.concat([freqs, freqs], axis=-1).cos().unsqueeze(1), paddle.concat([-sin, sin], axis=-1).unsqueeze(1)


def rope(x, cos, sin):
    """HF's x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] taken as roll(x) = [x2, x1] times the
    sine's negated first half: the same numbers (a sign moved between the factors), 2 ops fewer a call."""
    return x * cos + paddle.roll(x, x.shape[-1] // 2, axis=-1) * sin


class LlamaAttention(Layer):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.n_head, self.n_kv_head = config.num_attention_heads, ARCH.n_kv_heads(config)
        self.head_dim = ARCH.head_dim(config)
        h, kv = config.hidden_size, self.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(h, h, bias_attr=False)
        self.k_proj = nn.Linear(h, kv, bias_attr=False)
        self.v_proj = nn.Linear(h, kv, bias_attr=False)
        self.o_proj = nn.Linear(h, h, bias_attr=False)
        self.attention_dropout = nn.Dropout(config.attention_dropout)

    def forward(self, x, cos, sin, bias, cache, layer):
        return linear(self.o_proj, self.mix(x, cos, sin, bias, cache, layer))

    def mix(self, x, cos, sin, bias, cache, layer):
        """The attention up to o_proj's input [b, s, hidden] (GPTQ quantizes q/k/v before o_proj reads it)."""
        q, k, v = linear(self.q_proj, x), linear(self.k_proj, x), linear(self.v_proj, x)
        if isinstance(bias, DecodeStep):  # [b, 1, heads * d] is [b, heads, 1, d] in memory; RoPE in the op
            return bias.attend(layer, q, k, v, cos, sin)
        q, k, v = split_heads(q, self.n_head), split_heads(k, self.n_kv_head), split_heads(v, self.n_kv_head)
        cos, sin = cast(cos, q.dtype), cast(sin, q.dtype)
        q, k = rope(q, cos, sin), rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # the cache holds kv heads, not repeated ones (attend groups them)
        return attend(q, k, v, bias, self.attention_dropout)


class LlamaMLP(Layer):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias_attr=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias_attr=False)

    def forward(self, x):
        return linear(self.down_proj, self.hidden(x))

    def hidden(self, x):  # down_proj's input
        return F.silu(linear(self.gate_proj, x)) * linear(self.up_proj, x)


class LlamaDecoderLayer(Layer):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = LlamaAttention(config)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = LlamaMLP(config)

    def forward(self, x, cos, sin, bias, cache, layer):
        if isinstance(bias, DecodeStep) and base.NATIVE_DECODE_LAYERS:
            out = self.decode(x, cos, sin, bias, layer)
            if out is not None:
                return out
        h, x = self.post_attention_layernorm(self.self_attn(self.input_layernorm(x), cos, sin, bias, cache, layer), x)
        return x + self.mlp(h)

    def decode(self, x, cos, sin, step, layer):
        """``forward`` for a decoding step as one native op (kernels/decoder_layer.cc; models/bloom.py BloomBlock.decode
        says why), or None where the op does not apply (base.layer_params)."""
        if cos.dtype != paddle.float32:
            return None
        norms = self.input_layernorm.weight, self.post_attention_layernorm.weight
        found = base.layer_params(self, norms, ARCH, x.shape[0])
        if found is None:
            return None
        params, layout = found
        keys, values = step.cache.buffers(layer)
        return kernels.llama_layer(x, params, keys, values, step.columns, step.mask, cos, sin, layout,
                                   self.input_layernorm.eps)

    def stages(self, x, cos, sin, bias, layer):
        """``forward`` (without a cache) one group of Linears at a time, for GPTQ (quant/quantize.py): yields the
        input of each group that reads one input (ARCH.linear_groups: q/k/v, o, gate/up, down), in that order,
        before the group runs on it, then the block's output. The caller may quantize a group's weights before
        resuming: the rest of the pass then runs on them (GPTQ's "true sequential")."""
        h = self.input_layernorm(x)
        yield h
        h = self.self_attn.mix(h, cos, sin, bias, None, layer)
        yield h
        h, x = self.post_attention_layernorm(linear(self.self_attn.o_proj, h), x)
        yield h
        h = self.mlp.hidden(h)
        yield h
        yield x + linear(self.mlp.down_proj, h)


class LlamaModel(Layer):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.head_dim = ARCH.head_dim(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.LayerList([LlamaDecoderLayer(config) for _ in range(config.num_hidden_layers)])
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids, attention_mask, position_ids=None, cache=None):
        if position_ids is None:
            position_ids = token_positions(attention_mask, input_ids.shape[1])
        cos, sin = rope_cos_sin(self.config, self.head_dim, position_ids)
        x = embed(self.embed_tokens, input_ids)
        bias = (decode_step(cache, attention_mask, x, self.training)
                or attention_bias(attention_mask, input_ids.shape[1]))
        for i, layer in enumerate(self.layers):
            x = layer(x, cos, sin, bias, cache, i)
        return self.norm(x)


class LlamaForCausalLM(CausalLM):
    config_class = LlamaConfig
    base_model_prefix = ARCH.body
    arch = ARCH

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        self.llama = LlamaModel(config)
        if not config.tie_word_embeddings:
            self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias_attr=False)

    def get_output_embeddings(self):
        return None if self.config.tie_word_embeddings else self.lm_head
