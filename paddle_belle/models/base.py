"""What BLOOM and LLaMA share: the KV cache, masking, the attention core, the loss, device dtypes, load and save.

Both models subclass PaddleNLP's ``PretrainedModel``/``PretrainedConfig`` so that PaddleNLP's Trainer, peft and
config machinery work on them. Loading and saving are ours, though: PaddleNLP's ``from_pretrained`` unpickles
``.pdparams`` with ``paddle.load`` (arbitrary code on a hostile file) and its saves are not atomic.
"""
from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import paddle
import paddle.nn.functional as F
import threadpoolctl
from paddlenlp.transformers import PretrainedModel
from paddlenlp.transformers.model_outputs import CausalLMOutputWithPast
from paddlenlp.transformers.model_utils import dtype_guard, no_init_weights
from tqdm.auto import tqdm

from paddle_belle import generation
from paddle_belle.checkpoint import CheckpointError, iter_state_dict, save_state_dict, to_paddle, write_json

CONFIG_NAME = "config.json"
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

    def update(self, layer: int, k: paddle.Tensor, v: paddle.Tensor):
        start, end = self.length, self.length + k.shape[2]
        if end > self.max_length:
            raise ValueError(f"KV cache holds {self.max_length} positions; {end} are needed")
        self.keys[layer][:, :, start:end] = k
        self.values[layer][:, :, start:end] = v
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]


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


def cast(x: paddle.Tensor, dtype) -> paddle.Tensor:
    """``x`` as ``dtype``, and no op at all when it already is: a no-op cast is still a dispatched op, and a
    decoding step is made of small ops."""
    return x if x.dtype == dtype else x.astype(dtype)


def attend(q, k, v, bias, dropout):
    """softmax(q k^T / sqrt(head_dim) + bias) v, with scores and softmax in float32 as the references do.

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
    return out.reshape([b, n_head, s, d]) if groups > 1 else out


NUMPY_HEAD_MIN = 1 << 23  # elements (32 MB in float32): beyond any CPU cache


def tied_head(x: paddle.Tensor, embedding: paddle.Tensor) -> paddle.Tensor:
    """Logits ``x @ embedding^T`` for a head tied to the [vocab, hidden] input embedding.

    In inference on CPU the product goes through numpy's BLAS on a zero-copy view of the embedding: Paddle 3.3.1's
    CPU matmul streams this, the largest matrix of a decode step (1 GB for bloom-560m, 4 GB for belle-7b-2m), at
    ~28 GB/s where numpy reaches ~42 GB/s on the same machine (benchmarks/decode.py; the head is ~45% of
    bloom-560m's bytes per token). With gradients needed, or on any other device, it stays a Paddle matmul.
    """
    large = embedding.size >= NUMPY_HEAD_MIN  # a small head is overhead-bound, not bandwidth-bound: no gain there
    if large and x.place.is_cpu_place() and x.dtype == paddle.float32 and (
            not paddle.is_grad_enabled() or x.stop_gradient and embedding.stop_gradient):
        logits = x.numpy() @ np.from_dlpack(embedding.detach()).T
        return paddle.to_tensor(logits)
    return paddle.matmul(x, embedding, transpose_y=True)


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


# ------------------------------------------------------------------------------------------------ dtypes
def check_dtype(dtype) -> str:
    """The dtype as a string if the current device can run it, else a clear error."""
    name = str(dtype).replace("paddle.", "")
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"dtype must be float32, float16 or bfloat16, not {dtype!r}")
    if name == "float32":
        return name
    device = paddle.get_device()
    # Paddle's CPU kernels have no fp16/bf16 matmul; elsewhere ask Paddle rather than assume a vendor.
    supported = device != "cpu" and (
        paddle.amp.is_float16_supported(device) if name == "float16" else paddle.amp.is_bfloat16_supported(device)
    )
    if not supported:
        raise ValueError(f"dtype {name} cannot run on device {device!r}; use float32 there")
    return name


def set_cpu_threads(n: int | None = None) -> int:
    """Use ``n`` threads (default: every core this process may run on) for Paddle's CPU kernels: Paddle sets
    OMP_NUM_THREADS=1 at import unless told, which leaves all but one core idle. numpy's BLAS, which computes
    the large tied heads (tied_head), gets the same count: left alone it would take every core."""
    n = n or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    paddle.base.core.set_num_threads(n)
    threadpoolctl.threadpool_limits(n, user_api="blas")
    return n


def default_dtype(config) -> str:
    """The checkpoint's own dtype where the device runs it, else float32 (always so on CPU)."""
    try:
        return check_dtype(getattr(config, "dtype", None) or "float32")
    except ValueError:
        return "float32"


# ------------------------------------------------------------------------------------------ model base
class CausalLM(PretrainedModel):
    """Base of our causal LMs: PaddleNLP's PretrainedModel with safe, strict, atomic loading and saving."""

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
            kwargs["max_new_tokens"] = max_length - paddle.to_tensor(input_ids).shape[1]
        config = generation.make_config(preset or generation_config, **kwargs)
        return generation.generate(self, input_ids, attention_mask, config, tokenizer, streamer)

    def tied_copies(self) -> dict[str, str]:
        """Checkpoint names written as a transposed copy of another parameter (see LlamaForCausalLM)."""
        return {}

    def new_cache(self, batch_size: int, max_length: int) -> KVCache:
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, self.kv_heads, max_length, self.head_dim, self.dtype_name)

    @property
    def dtype_name(self) -> str:
        return str(self.parameters()[0].dtype).replace("paddle.", "")

    # -------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls, path, dtype=None, strict=True, config=None, threads=None, **config_overrides):
        """Build the model from a local checkpoint directory (config.json + weights). On CPU, ``threads``
        (default: all available cores) are given to Paddle's kernels."""
        path = Path(path)
        if paddle.get_device() == "cpu":
            set_cpu_threads(threads)
        quantization = None
        if config is None:
            raw = read_config(path)
            # Ours (quant/format.py), not PaddleNLP's QuantizationConfig, which would try to parse it.
            quantization = raw.pop("quantization_config", None)
            config = cls.config_class.from_dict(raw, **config_overrides)
        config.dtype = check_dtype(dtype) if dtype is not None else default_dtype(config)
        # LazyGuard: parameters get memory only when their weights arrive, so a 7B model is not initialised first.
        with no_init_weights(), dtype_guard(config.dtype), paddle.LazyGuard():
            model = cls(config)
            if quantization is not None:  # a quantized checkpoint: integer weights stay integer (QuantLinear)
                from paddle_belle.quant import QuantConfig, replace_linears

                replace_linears(model, QuantConfig.from_dict(quantization, f"{path / CONFIG_NAME}"))
        model.load_weights(path, strict=strict)
        model.eval()
        return model

    def load_weights(self, path, strict=True):
        """Load every parameter from ``path``; shape mismatches are errors, as are missing/unexpected names
        (warnings instead when ``strict`` is False)."""
        params = self.state_dict()
        tied = self.tied_copies()
        loaded, unexpected, copies = set(), [], {}
        progress = tqdm(total=len(params), desc="loading weights", unit="tensor", disable=None)
        for name, array in iter_state_dict(path):
            if name in tied:
                copies[name] = array
                continue
            if name not in params:
                unexpected.append(name)
                continue
            param = params[name]
            if list(array.shape) != list(param.shape):
                raise CheckpointError(
                    f"{path}: tensor {name} has shape {list(array.shape)}, the config expects {list(param.shape)}"
                )
            param.set_value(to_paddle(array, param.dtype))
            loaded.add(name)
            progress.update()
        progress.close()
        problems = []
        missing = sorted(set(params) - loaded)
        if missing:
            problems.append(f"missing {len(missing)} tensor(s): {', '.join(missing[:5])}")
        if unexpected:
            problems.append(f"unexpected {len(unexpected)} tensor(s): {', '.join(sorted(unexpected)[:5])}")
        if problems and (strict or missing):
            # Missing weights are always fatal: a model with uninitialised parameters is never what anyone wants.
            raise CheckpointError(f"{path}: " + "; ".join(problems))
        if problems:
            warnings.warn(f"{path}: " + "; ".join(problems))
        for name, array in copies.items():
            source = params[tied[name]].astype("float32").numpy().T
            if not np.array_equal(to_paddle(array, paddle.float32).numpy(), source):
                raise CheckpointError(
                    f"{path}: {name} differs from {tied[name]}, but the config ties them "
                    "(set tie_word_embeddings=false to use a separate head)"
                )

    # --------------------------------------------------------------------------------------- saving
    def save_pretrained(self, save_dir, safe_serialization=True, max_shard_size=None, state_dict=None, **unused):
        """Write config.json and the weights (model.safetensors by default, model_state.pdparams on request),
        with PaddleNLP's names, so that PaddleNLP's own classes load the directory too. ``state_dict`` replaces
        the model's own parameters (a merged LoRA model's, say).
        (**unused: PaddleNLP's Trainer passes options such as merge_tensor_parallel and variant.)"""
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        state = dict(self.state_dict() if state_dict is None else state_dict)
        quantized = getattr(self, "quantization", None) is not None
        for copy, source in self.tied_copies().items():
            if not quantized:  # the copy is for PaddleNLP's classes, which cannot load a quantized checkpoint anyway
                state[copy] = state[source].T.contiguous()
        save_state_dict(state, save_dir, safe_serialization=safe_serialization, max_shard_size=max_shard_size)
        self.config.dtype = self.dtype_name
        self.config.architectures = [type(self).__name__]
        config = json.loads(self.config.to_json_string())
        if getattr(self, "quantization", None) is not None:  # see quant/format.py
            config["quantization_config"] = self.quantization.to_dict()
        write_json(save_dir / CONFIG_NAME, config)


def read_config(path) -> dict:
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (is this a checkpoint directory?)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
