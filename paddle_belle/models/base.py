"""What BLOOM and LLaMA share: the KV cache, masking, the attention core, the loss, and the model base class.

Both models subclass PaddleNLP's ``PretrainedModel``/``PretrainedConfig`` so that PaddleNLP's Trainer, peft and
config machinery work on them. Loading and saving are ours (models/loading.py); CPU tuning is in cpu.py.
"""
from __future__ import annotations

import math

import numpy as np
import paddle
import paddle.nn.functional as F
from paddlenlp.transformers import PretrainedModel
from paddlenlp.transformers.model_outputs import CausalLMOutputWithPast

from paddle_belle import generation, kernels
from paddle_belle.cpu import serial, tied_head
from paddle_belle.models import loading
from paddle_belle.quant.linear import QuantEmbedding, kernel_weight, linear


class Layer(paddle.nn.Layer):
    """nn.Layer whose call is a plain call of ``forward`` while the layer has no hooks. Paddle 3.3.1's
    Layer.__call__ first checks five modes (to_static, dygraph, profiler, ...: paddle/nn/layer/layers.py), ~2.5 us a
    call against ~0.3 here; a bloom-560m decoding step makes ~120 such calls, belle-tiny-zh's steps are mostly
    calls. A layer given hooks (PaddleSlim's, a user's) is called through Paddle's __call__ as before."""

    def __call__(self, *inputs, **kwargs):
        if self._forward_pre_hooks or self._forward_post_hooks:
            return super().__call__(*inputs, **kwargs)
        return self.forward(*inputs, **kwargs)


# Large negative instead of -inf: a fully masked row (a padding query) then softmaxes to uniform, not NaN.
MASKED = float(np.finfo(np.float32).min)


class KVCache:
    """Preallocated key/value buffers, one pair per layer, each [batch, kv_heads, max_length, head_dim].

    ``length`` positions are filled. Layers write their new keys/values at ``length`` and read ``[:length+new]``;
    the model advances ``length`` once all layers have run.
    """

    def __init__(self, n_layers, batch_size, n_kv_heads, max_length, head_dim, dtype):
        shape = [batch_size, n_kv_heads, max_length, head_dim]
        self.keys = [paddle.zeros(shape, dtype) for _ in range(n_layers)]
        self.values = [paddle.zeros(shape, dtype) for _ in range(n_layers)]
        self.max_length = max_length
        self.length = 0

    def _check(self, end):
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} are needed")

    def update(self, layer: int, k: paddle.Tensor, v: paddle.Tensor):
        start, end = self.length, self.length + k.shape[2]
        self._check(end)
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]

    def buffers(self, layer: int):
        """Layer ``layer``'s whole key and value buffers (DecodeStep writes and reads them in place)."""
        return self.keys[layer], self.values[layer]

    def decode_columns(self, batch_size: int) -> paddle.Tensor:
        """Where a decoding step's new key/value goes in each of the first ``batch_size`` rows: ``length``."""
        self._check(self.length + 1)
        return paddle.full([batch_size], self.length, dtype="int64")


# Whether decoding steps take the native decode-attention op where it applies (decode_step); tests switch it off to
# compare with the Paddle path.
NATIVE_DECODE_ATTENTION = True
# Whether a decoding step's layers run as one native op each (models/bloom.py BloomBlock.decode, models/llama.py
# LlamaDecoderLayer.decode); tests switch it off to compare with the op-by-op path.
NATIVE_DECODE_LAYERS = True


class DecodeStep:
    """In place of the bias tensor, for a decoding step (one new token a row) whose attention the native op computes
    (kernels.decode_attention): the cache, the attention mask [b, width], each row's cache column for its new key and
    value, and ALiBi's slopes (BLOOM). Built once a forward by ``decode_step``; each layer then calls ``attend``, one
    op for what ``cache.update`` and ``attend`` do in about ten (decode_attention.cc)."""

    def __init__(self, cache, mask, columns, slopes=None):
        self.cache, self.mask, self.columns, self.slopes = cache, mask, columns, slopes

    def attend(self, layer, q, k=None, v=None, cos=None, sin=None):
        """q [b, n_head, 1, d] and k, v [b, kv, 1, d] (any shape with those numbers in that order), or q alone as
        BLOOM's fused qkv; ``cos``/``sin`` [b, ..., d]: RoPE, applied to q and k in the op. -> [b, 1, n_head * d]."""
        keys, values = self.cache.buffers(layer)
        return kernels.decode_attention(q, k, v, keys, values, self.columns, self.mask, self.slopes, cos, sin)


def decode_step(cache, attention_mask, x, training, slopes=None) -> DecodeStep | None:
    """A DecodeStep when this forward is a decoding step the native op can compute: one new position (``x``
    [b, 1, hidden]) into a float32 cache that has per-row columns for it, float32 CPU inference (kernels.usable), no
    attention dropout (``training`` false). None otherwise: the Paddle path (cache.update, attend) runs."""
    if not (NATIVE_DECODE_ATTENTION and cache is not None and x.shape[1] == 1 and not training
            and kernels.usable(x) and cache.buffers(0)[0].dtype == paddle.float32):
        return None
    columns = cache.decode_columns(x.shape[0])
    if columns is None:
        return None
    mask = cast(attention_mask, paddle.int64)
    return DecodeStep(cache, mask if mask.is_contiguous() else mask.contiguous(), columns, slopes)


def layer_params(block, norms, arch, rows: int):
    """What a native decoder-layer op (kernels/decoder_layer.cc) reads for ``block``: the ``norms``' parameters, then
    each Linear of ``arch.linear_groups`` in that order (the op's) as quant/linear.py kernel_weight gives it, and the
    Linears' layout. None where the op would not compute what the block's layers do: a hook on any of them
    (PaddleSlim's, a user's: they must see their calls), a Linear that no kernel computes for ``rows`` rows."""
    layers = list(block._sub_layers.values())
    for layer in layers:  # (the dicts, not sublayers(): this runs for every layer of every decoding step)
        if layer._forward_pre_hooks or layer._forward_post_hooks:
            return None
        layers += layer._sub_layers.values()
    params, layout = list(norms), []
    for path in (path for group in arch.linear_groups for path in group):
        parent, name = path.split(".")
        weight = kernel_weight(block._sub_layers[parent]._sub_layers[name], rows)
        if weight is None:
            return None
        params += weight[0]
        layout += weight[1]
    return params, layout


def attention_bias(attention_mask: paddle.Tensor, query_length: int) -> paddle.Tensor:
    """Additive float32 mask [batch, 1, query_length, kv_length]: 0 where a query may attend, MASKED elsewhere.

    ``attention_mask`` is [batch, kv_length] (1 = token, 0 = padding) over cached and new positions; the queries
    are the last ``query_length`` of them, so query i may see keys up to position kv_length - query_length + i.
    Packed rows number their samples instead (1, 1, 2, 2, 2, 3, 0 = padding): a token sees its own sample only.
    """
    if query_length == 1:  # a decoding step: the one query is the last position and may see every real key
        return (attention_mask == 0).astype("float32")[:, None, None, :] * MASKED
    kv_length = attention_mask.shape[1]
    query_pos = paddle.arange(kv_length - query_length, kv_length).unsqueeze(1)
    causal = paddle.arange(kv_length).unsqueeze(0) <= query_pos
    keys = attention_mask[:, None, None, :]
    allowed = causal[None, None] & (keys != 0)
    if query_length > 1:  # packed rows come whole, never one decoding step at a time: no cost per new token
        queries = attention_mask[:, None, -query_length:, None]
        # A padding query (0) keeps seeing every real key before it, as unpacked rows always did.
        allowed = allowed & ((keys == queries) | (queries == 0))
    return (1.0 - allowed.astype("float32")) * MASKED


def embed(embedding, input_ids: paddle.Tensor) -> paddle.Tensor:
    """``embedding(input_ids)``; a Paddle Embedding's lookup of a decoding step's rows on one thread (cpu.serial)."""
    if type(embedding) is not paddle.nn.Embedding:  # QuantEmbedding (numpy's lookup), GPTQ's stand-ins
        return embedding(input_ids)
    return serial(math.prod(input_ids.shape) * embedding._embedding_dim, embedding, input_ids)


def cast(x: paddle.Tensor, dtype) -> paddle.Tensor:
    """``x`` as ``dtype``, and no op at all when it already is: a no-op cast is still a dispatched op, and a
    decoding step is made of small ops."""
    return x if x.dtype == dtype else x.astype(dtype)


def split_heads(x: paddle.Tensor, n_head: int) -> paddle.Tensor:
    """[batch, seq, n_head * head_dim] -> [batch, n_head, seq, head_dim]. One position (a decoding step) is that
    already in memory: a reshape, no transpose."""
    b, s, _ = x.shape
    return x.reshape([b, n_head, 1, -1]) if s == 1 else x.reshape([b, s, n_head, -1]).transpose([0, 2, 1, 3])


def attend(q, k, v, bias, dropout):
    """softmax(q k^T / sqrt(head_dim) + bias) v, with scores and softmax in float32 as the references do, its heads
    merged: [batch, seq, n_head * head_dim].

    ``k`` and ``v`` may have fewer heads than ``q`` (grouped-query attention, ``bias`` then [batch, 1, ...]): each
    kv head serves n_head / n_kv consecutive query heads, whose rows are folded together rather than the cache
    copied once per query head (HF's repeat_kv), which would rewrite the whole cache at every decoding step.
    """
    b, n_head, s, d = q.shape
    groups = n_head // k.shape[1]
    if groups > 1:
        q = q.reshape([b, k.shape[1], groups * s, d])  # row j * s + i: query head kv * groups + j, position i
        bias = bias.tile([1, 1, groups, 1]) if s > 1 else bias
    scores = cast(paddle.matmul(q, k, transpose_y=True), paddle.float32) * d**-0.5 + bias
    probs = cast(F.softmax(scores, axis=-1), v.dtype)
    out = paddle.matmul(dropout(probs) if dropout.training else probs, v)  # (eval dropout: a call for nothing)
    if s == 1:  # [b, n_head, 1, d] (or [b, kv, groups, d]) is [b, 1, n_head * d] in memory: no transpose
        return out.reshape([b, 1, n_head * d])
    return out.reshape([b, n_head, s, d]).transpose([0, 2, 1, 3]).reshape([b, s, n_head * d])


def token_positions(attention_mask: paddle.Tensor, query_length: int) -> paddle.Tensor:
    """Position of each new token counted over real tokens only, so left padding does not shift positions."""
    positions = ((attention_mask != 0).astype("int64").cumsum(-1) - 1).clip(min=0)
    return positions[:, -query_length:]


def causal_lm_loss(logits: paddle.Tensor, labels: paddle.Tensor) -> paddle.Tensor:
    """Mean cross entropy over labels != -100.

    Labels are already shifted, PaddleNLP's convention: labels[:, t] is the token that should follow
    input_ids[:, t]. (HF instead takes unshifted labels and shifts inside the model.)
    """
    logits = logits.astype("float32").reshape([-1, logits.shape[-1]])
    labels = labels.reshape([-1]).astype("int64")
    # Not reduction="mean": with ignore_index, Paddle divides by every token, ignored ones included.
    per_token = F.cross_entropy(logits, labels, ignore_index=-100, reduction="none")
    return per_token.sum() / (labels != -100).astype("float32").sum().clip(min=1.0)


# ------------------------------------------------------------------------------------------ model base
class CausalLM(PretrainedModel):
    """Base of our causal LMs: PaddleNLP's PretrainedModel with safe, strict, atomic loading and saving.
    Subclasses set ``arch``, their entry of arch.py."""

    def _init_weights(self, layer):
        # Replaces PaddleNLP BLOOM's _init_weights, which zeroes every Linear weight that has a bias.
        std = self.config.initializer_range
        if isinstance(layer, (paddle.nn.Linear, paddle.nn.Embedding)):
            layer.weight.set_value(paddle.normal(0.0, std, layer.weight.shape).astype(layer.weight.dtype))
        if isinstance(layer, (paddle.nn.Linear, paddle.nn.LayerNorm)) and layer.bias is not None:
            layer.bias.set_value(paddle.zeros_like(layer.bias))
        if isinstance(layer, paddle.nn.LayerNorm):
            layer.weight.set_value(paddle.ones_like(layer.weight))

    def forward(self, input_ids, attention_mask=None, position_ids=None, labels=None, cache=None, last_only=False,
                **unused):
        # **unused: PaddleNLP's Trainer and peft pass extras such as return_dict and use_cache.
        """Logits [batch, seq, vocab], and the loss when (already shifted, see causal_lm_loss) ``labels`` are given.

        ``attention_mask`` is [batch, cached + seq] with 1 for tokens and 0 for padding; all ones by default.
        Positions are counted over real tokens, so a left-padded row computes what it would unpadded.
        ``cache`` (from ``new_cache``) makes this call continue the sequence it holds; it is returned as
        ``past_key_values``. ``last_only`` computes logits for the last position only (generation needs no more,
        and the head is the largest matmul of a step).
        """
        past = cache.length if cache is not None else 0
        if attention_mask is None:
            attention_mask = paddle.ones([input_ids.shape[0], past + input_ids.shape[1]], dtype="int64")
        x = self.base_model(input_ids, attention_mask, position_ids, cache)
        if cache is not None:
            cache.length += input_ids.shape[1]
        logits = self.lm_logits(x[:, -1:] if last_only else x)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=cache)

    def generate(self, input_ids, attention_mask=None, generation_config=None, preset=None, tokenizer=None,
                 streamer=None, **kwargs):
        """Generate from ``input_ids`` [batch, seq] (left-padded, with ``attention_mask``, for batches).

        HF style (``do_sample=``, ``max_new_tokens=``, ``top_k=``, ...; or a ``preset`` name such as
        "belle-card") returns the full sequences like transformers. PaddleNLP style (``decode_strategy=``)
        returns PaddleNLP's (new ids, scores). ``stop_strings`` need ``tokenizer``; ``streamer`` gets
        put()/end() calls like transformers' and PaddleNLP's streamers.
        """
        if "decode_strategy" in kwargs:
            return generation.generate_paddlenlp_style(self, input_ids, attention_mask, **kwargs)
        for name, supported in (("num_beams", 1), ("num_return_sequences", 1)):
            if kwargs.pop(name, supported) != supported:
                raise NotImplementedError(f"{name} other than {supported} is not supported")
        kwargs.pop("use_cache", None)
        max_length = kwargs.pop("max_length", None)  # HF: prompt + new tokens
        if max_length is not None and kwargs.get("max_new_tokens") is None:
            kwargs["max_new_tokens"] = max_length - generation.as_ids(input_ids).shape[1]
        config = generation.make_config(preset or generation_config, **kwargs)
        return generation.generate(self, input_ids, attention_mask, config, tokenizer, streamer)

    def get_input_embeddings(self):
        return getattr(self.base_model, self.arch.embedding.split(".")[1])  # "bloom.word_embeddings.weight"

    def set_input_embeddings(self, value):
        setattr(self.base_model, self.arch.embedding.split(".")[1], value)

    def lm_logits(self, x):
        if not self.arch.tied(self.config):
            return linear(self.lm_head, x)
        embedding = self.get_input_embeddings()
        if isinstance(embedding, QuantEmbedding):  # stored as the head it is tied to (quant/format.py)
            return embedding.logits(x)
        return tied_head(x, embedding.weight)

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        a, c = self.arch, self.config
        return KVCache(a.n_layers(c), batch_size, a.n_kv_heads(c), max_length, a.head_dim(c), self.dtype_name)

    @property
    def dtype_name(self) -> str:
        """The dtype activations and the KV cache use: the norms'. (Not the first parameter's: on the CPU, half
        weights keep only the Linears and the embedding in bfloat16/float16, quant/linear.py keep_half.)"""
        return str(next(p.dtype for n, p in self.named_parameters() if "norm" in n)).replace("paddle.", "")

    @classmethod
    def from_pretrained(cls, path, dtype=None, strict=True, config=None, threads=None, **config_overrides):
        """Build the model from a local checkpoint directory (config.json + weights). On CPU, ``threads``
        (default: all available cores) are given to Paddle's kernels."""
        return loading.load(cls, path, dtype, strict, config, threads, **config_overrides)

    def load_weights(self, path, strict=True):
        loading.load_weights(self, path, strict)

    def save_pretrained(self, save_dir, safe_serialization=True, max_shard_size=None, state_dict=None, **unused):
        """Write config.json and the weights with PaddleNLP's names (see loading.save).
        (**unused: PaddleNLP's Trainer passes options such as merge_tensor_parallel and variant.)"""
        loading.save(self, save_dir, safe_serialization, max_shard_size, state_dict)
