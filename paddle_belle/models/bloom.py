"""BLOOM (BigScience) in Paddle, parameter-for-parameter compatible with PaddleNLP 2.8.1's BloomForCausalLM.

Reference: transformers/models/bloom/modeling_bloom.py (4.46). Linear weights are Paddle's [in, out]; the fused
query_key_value output is per-head interleaved ([..., n_head, 3, head_dim]) exactly as in HF and PaddleNLP, so a
conversion from HF is a plain transpose. The LM head is the word embedding, and is not saved.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import paddle
import paddle.nn as nn
import paddle.nn.functional as F
from paddlenlp.transformers import PretrainedConfig

from paddle_belle import kernels
from paddle_belle.arch import BLOOM as ARCH
from paddle_belle.cpu import serial
from paddle_belle.models import base
from paddle_belle.models.base import CausalLM, DecodeStep, Layer, attend, attention_bias, decode_step, embed
from paddle_belle.quant.linear import linear


class BloomConfig(PretrainedConfig):
    """BLOOM hyper-parameters under PaddleNLP's field names (n_layer, n_head, hidden_size).

    HF's and older spellings are accepted: num_hidden_layers, num_attention_heads, n_embed, torch_dtype.
    """

    model_type = "bloom"
    attribute_map = ARCH.config_aliases

    def __init__(
        self,
        vocab_size: int = 250880,
        hidden_size: int = 64,
        n_layer: int = 2,
        n_head: int = 8,
        layer_norm_epsilon: float = 1e-5,
        initializer_range: float = 0.02,
        apply_residual_connection_post_layernorm: bool = False,
        hidden_dropout: float = 0.0,
        attention_dropout: float = 0.0,
        bos_token_id: int = 1,
        eos_token_id: int = 2,
        pad_token_id: int = 3,
        **kwargs,
    ):
        # Aliases arrive as keywords when the config is built directly rather than through from_dict.
        n_layer = kwargs.pop("num_hidden_layers", n_layer)
        n_head = kwargs.pop("num_attention_heads", n_head)
        hidden_size = kwargs.pop("n_embed", hidden_size)
        kwargs.pop("tie_word_embeddings", None)  # BLOOM's head is always the embedding
        super().__init__(
            bos_token_id=bos_token_id, eos_token_id=eos_token_id, pad_token_id=pad_token_id,
            tie_word_embeddings=True, **kwargs,
        )
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.n_layer = n_layer
        self.n_head = n_head
        self.layer_norm_epsilon = layer_norm_epsilon
        self.initializer_range = initializer_range
        self.apply_residual_connection_post_layernorm = apply_residual_connection_post_layernorm
        self.hidden_dropout = hidden_dropout
        self.attention_dropout = attention_dropout
        if hidden_size % n_head:
            raise ValueError(f"hidden_size {hidden_size} is not divisible by n_head {n_head}")


def alibi_slopes(n_head: int) -> list[float]:
    """ALiBi head slopes (Press et al. 2021); for a head count that is not a power of two, the slopes of the
    next power of two fill in with every other value, as BLOOM was trained."""
    closest = 2 ** math.floor(math.log2(n_head))
    base = 2 ** (-(2 ** -(math.log2(closest) - 3)))
    slopes = [base**p for p in range(1, closest + 1)]
    if closest != n_head:
        extra_base = 2 ** (-(2 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra_base**p for p in range(1, 2 * min(closest, n_head - closest), 2)]
    return slopes


@functools.lru_cache(maxsize=None)
def slopes_tensor(n_head: int) -> paddle.Tensor:
    """alibi_slopes as a float32 tensor [n_head], made once (a decoding step needs no new one)."""
    return paddle.to_tensor(alibi_slopes(n_head), dtype="float32")


def alibi_bias(attention_mask: paddle.Tensor, n_head: int) -> paddle.Tensor:
    """[batch, n_head, 1, kv_length] float32: slope × position, positions counted over real tokens only so that
    left padding does not shift them (HF's build_alibi_tensor)."""
    mask = (attention_mask != 0).astype("float32")  # packed rows number their samples 1, 2, ...
    positions = (mask.cumsum(-1) - 1) * mask
    slopes = paddle.to_tensor(np.reshape(alibi_slopes(n_head), [1, n_head, 1, 1]), dtype="float32")
    return slopes * positions.unsqueeze([1, 2])


class LayerNorm(Layer, nn.LayerNorm):
    """nn.LayerNorm over the last axis (same parameters and op), calling the op directly: Paddle 3.3.1's
    F.layer_norm checks its arguments in Python (paddle/nn/functional/norm.py) for ~12 us a call, where the op itself
    takes ~7 on a decoding row of 1024; a bloom-560m step has 49. A decoding step's rows on one thread (cpu.serial)."""

    def forward(self, x):
        shape, p = x.shape, self._parameters  # (not self.weight: Layer.__getattr__, 0.7 us, 100 a bloom-560m step)
        return serial(math.prod(shape), paddle._C_ops.layer_norm, x, p.get("weight"), p.get("bias"), self._epsilon,
                      len(shape) - 1)


def bloom_gelu(x):
    # HF's bloom_gelu_forward is x/2 * (1 + tanh(0.79788456 x (1 + 0.044715 x²))): the tanh GELU, with sqrt(2/pi)
    # rounded to 8 digits (1e-9 relative, far below float32's 6e-8). One fused op instead of seven eager ones.
    return F.gelu(x, approximate=True)


class BloomAttention(Layer):
    def __init__(self, config: BloomConfig):
        super().__init__()
        self.n_head, self.head_dim = config.n_head, ARCH.head_dim(config)
        self.query_key_value = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.attention_dropout = nn.Dropout(config.attention_dropout)

    def forward(self, x, bias, cache, layer):
        return linear(self.dense, self.mix(x, bias, cache, layer))

    def mix(self, x, bias, cache, layer):
        """The attention up to dense's input [b, s, hidden] (GPTQ quantizes query_key_value before dense reads it)."""
        b, s, _ = x.shape
        qkv = linear(self.query_key_value, x)  # [b, s, n_head, 3, head_dim] in memory
        if isinstance(bias, DecodeStep):  # the native op reads q, k and v from qkv as they lie
            return bias.attend(layer, qkv)
        if s == 1:  # a decoding step: that is [b, n_head, 3, 1, head_dim], no transpose needed
            q, k, v = qkv.reshape([b, self.n_head, 3, 1, self.head_dim]).unbind(2)
        else:
            q, k, v = qkv.reshape([b, s, self.n_head, 3, self.head_dim]).transpose([3, 0, 2, 1, 4]).unbind(0)
        if cache is not None:  # q, k, v: each [b, n_head, s, head_dim]
            k, v = cache.update(layer, k, v)
        return attend(q, k, v, bias, self.attention_dropout)


class BloomMLP(Layer):
    def __init__(self, config: BloomConfig):
        super().__init__()
        self.dense_h_to_4h = nn.Linear(config.hidden_size, 4 * config.hidden_size)
        self.dense_4h_to_h = nn.Linear(4 * config.hidden_size, config.hidden_size)

    def forward(self, x):
        return linear(self.dense_4h_to_h, self.hidden(x))

    def hidden(self, x):  # dense_4h_to_h's input
        return bloom_gelu(linear(self.dense_h_to_4h, x))


class BloomBlock(Layer):
    def __init__(self, config: BloomConfig):
        super().__init__()
        self.input_layernorm = LayerNorm(config.hidden_size, epsilon=config.layer_norm_epsilon)
        self.self_attention = BloomAttention(config)
        self.post_attention_layernorm = LayerNorm(config.hidden_size, epsilon=config.layer_norm_epsilon)
        self.mlp = BloomMLP(config)
        self.post_ln_residual = config.apply_residual_connection_post_layernorm
        self.dropout = config.hidden_dropout

    def forward(self, x, bias, cache, layer):
        if isinstance(bias, DecodeStep) and base.NATIVE_DECODE_LAYERS:
            out = self.decode(x, bias, layer)
            if out is not None:
                return out
        h = self.input_layernorm(x)
        residual = h if self.post_ln_residual else x
        x = residual + self.drop(self.self_attention(h, bias, cache, layer))
        h = self.post_attention_layernorm(x)
        residual = h if self.post_ln_residual else x
        return residual + self.drop(self.mlp(h))

    def decode(self, x, step, layer):
        """``forward`` for a decoding step as one native op (kernels/decoder_layer.cc: Python runs once a layer, not
        between the Linears, whose weights leave the CPU caches cold), or None where the op does not apply
        (base.layer_params)."""
        norms = self.input_layernorm, self.post_attention_layernorm
        found = base.layer_params(self, [p for norm in norms for p in (norm.weight, norm.bias)], ARCH, x.shape[0])
        if found is None:
            return None
        params, layout = found
        keys, values = step.cache.buffers(layer)
        return kernels.bloom_block(x, params, keys, values, step.columns, step.mask, step.slopes, layout,
                                   norms[0]._epsilon, self.post_ln_residual)

    def drop(self, x):
        """Hidden dropout; in eval none, and no call (F.dropout's Python, ~5 us, twice a layer of a decoding step)."""
        return F.dropout(x, self.dropout, training=True) if self.training and self.dropout else x

    def stages(self, x, bias, layer):
        """``forward`` (without a cache) one Linear at a time, for GPTQ (quant/quantize.py): yields the input of
        each (ARCH.linear_groups: query_key_value, dense, dense_h_to_4h, dense_4h_to_h), in that order, before it
        runs on it, then the block's output. The caller may quantize a Linear's weights before resuming: the rest
        of the pass then runs on them (GPTQ's "true sequential")."""
        h = self.input_layernorm(x)
        residual = h if self.post_ln_residual else x
        yield h
        h = self.self_attention.mix(h, bias, None, layer)
        yield h
        x = residual + self.drop(linear(self.self_attention.dense, h))
        h = self.post_attention_layernorm(x)
        residual = h if self.post_ln_residual else x
        yield h
        h = self.mlp.hidden(h)
        yield h
        yield residual + self.drop(linear(self.mlp.dense_4h_to_h, h))


class BloomModel(Layer):
    def __init__(self, config: BloomConfig):
        super().__init__()
        self.n_head = config.n_head
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.word_embeddings_layernorm = LayerNorm(config.hidden_size, epsilon=config.layer_norm_epsilon)
        self.h = nn.LayerList([BloomBlock(config) for _ in range(config.n_layer)])
        self.ln_f = LayerNorm(config.hidden_size, epsilon=config.layer_norm_epsilon)

    def forward(self, input_ids, attention_mask, position_ids=None, cache=None):
        # position_ids is unused: ALiBi takes positions from the attention mask.
        x = self.word_embeddings_layernorm(embed(self.word_embeddings, input_ids))
        # ALiBi plus the causal/padding mask, built once for all layers: [batch, n_head, seq, kv_length]; or for the
        # native decode attention, the mask and the slopes as they are.
        bias = decode_step(cache, attention_mask, x, self.training, slopes_tensor(self.n_head)) or (
            alibi_bias(attention_mask, self.n_head) + attention_bias(attention_mask, input_ids.shape[1]))
        for i, block in enumerate(self.h):
            x = block(x, bias, cache, i)
        return self.ln_f(x)


class BloomForCausalLM(CausalLM):
    config_class = BloomConfig
    base_model_prefix = ARCH.body
    arch = ARCH

    def __init__(self, config: BloomConfig):
        super().__init__(config)
        self.bloom = BloomModel(config)
