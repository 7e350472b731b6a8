"""The native decode-attention op (kernels/decode_attention.cc) against the Paddle path it replaces (cache.update +
models/base.py attend) and against the whole sequence without a cache (the training path)."""
import os

import numpy as np
import paddle
import pytest
from reference import max_rel_diff, our_logits, tiny_bloom, tiny_llama

from paddle_belle import kernels
from paddle_belle.batching import RowCache
from paddle_belle.models import base
from paddle_belle.models.base import DecodeStep, KVCache, attend, attention_bias, token_positions
from paddle_belle.models.bloom import alibi_bias, slopes_tensor
from paddle_belle.models.llama import LlamaConfig, rope, rope_cos_sin

TOL = 1e-5
IDS = np.random.default_rng(1).integers(3, 101, (2, 12))
MASK = np.ones_like(IDS)
MASK[1, :3] = 0  # the second row left-padded by 3


pytestmark = pytest.mark.usefixtures("needs_kernels")


@pytest.fixture
def calls(count_calls):
    """How many times the op ran."""
    return count_calls("decode_attention")


def caches(rows, kv, length, d, seed):
    """Two identical KVCaches of one layer, filled with random keys and values."""
    rng = np.random.default_rng(seed)
    pair = [KVCache(1, rows, kv, length, d, "float32") for _ in range(2)]
    for name in ("keys", "values"):
        data = rng.standard_normal([rows, kv, length, d]).astype("float32")
        for c in pair:
            getattr(c, name)[0] = paddle.to_tensor(data)
    return pair


@pytest.mark.parametrize("d, columns", [(8, [5, 2, 0]), (48, [7, 3, 0]), (200, [119, 40, 0])])
@pytest.mark.parametrize("arch, n_head, kv", [("bloom", 4, 4), ("llama", 4, 4), ("llama", 6, 2)])
def test_rows_of_different_lengths_equal_the_paddle_path(arch, n_head, kv, d, columns):
    """A Batcher's decoding step (RowCache): rows with cached keys of their own number and one not decoding (all
    masked), each row's new key at its own column; ALiBi for BLOOM, RoPE and grouped-query heads for LLaMA. Head
    sizes: the op's scalar tail alone (8), vectors of 16 floats (48), 8 + 4 vectors and a tail (200, at enough keys
    for both threads)."""
    length = max(columns) + 5
    rows, width = len(columns), max(columns) + 1
    mask = np.zeros([rows, width], np.int64)
    mask[0, :6], mask[1, :3] = 1, 1
    mask = paddle.to_tensor(mask)
    ours, theirs = caches(rows, kv, length, d, seed=1)
    rng = np.random.default_rng(2)
    dropout = paddle.nn.Dropout(0.0)
    with paddle.no_grad():
        if arch == "bloom":
            qkv = paddle.to_tensor(rng.standard_normal([rows, 1, n_head * 3 * d]).astype("float32"))
            got = DecodeStep(RowCache(ours, width, columns=columns), mask, paddle.to_tensor(columns),
                             slopes_tensor(n_head)).attend(0, qkv)
            q, k, v = qkv.reshape([rows, n_head, 3, 1, d]).unbind(2)
            bias = alibi_bias(mask, n_head) + attention_bias(mask, 1)
        else:
            config = LlamaConfig(hidden_size=n_head * d, num_attention_heads=n_head, num_key_value_heads=kv)
            cos, sin = rope_cos_sin(config, d, token_positions(mask, 1) + 3)  # any positions: RoPE is elementwise
            q, k, v = (paddle.to_tensor(rng.standard_normal([rows, h, 1, d]).astype("float32"))
                       for h in (n_head, kv, kv))
            got = DecodeStep(RowCache(ours, width, columns=columns), mask, paddle.to_tensor(columns)).attend(
                0, q, k, v, cos, sin)
            q, k, bias = rope(q, cos, sin), rope(k, cos, sin), attention_bias(mask, 1)
        k, v = RowCache(theirs, width, columns=columns).update(0, k, v)
        want = attend(q, k, v, bias, dropout)
    assert got.shape == want.shape == [rows, 1, n_head * d]
    assert max_rel_diff(got.numpy()[:2], want.numpy()[:2]) <= TOL  # row 2 decodes nothing: nobody reads it
    assert not got.numpy()[2].any()
    for name in ("keys", "values"):  # the new keys and values went where the Paddle path put them
        np.testing.assert_array_equal(getattr(ours, name)[0].numpy(), getattr(theirs, name)[0].numpy())


def decode(model, cache_length=None):
    """Logits of IDS's last 4 positions (left-padded rows, MASK) decoded one at a time after a prefill."""
    n = IDS.shape[1]
    cache = model.new_cache(batch_size=2, max_length=cache_length or n)
    our_logits(model, IDS[:, : n - 4], MASK[:, : n - 4], cache=cache)
    steps = [our_logits(model, IDS[:, t : t + 1], MASK[:, : t + 1], cache=cache).logits for t in range(n - 4, n)]
    return paddle.concat(steps, axis=1).numpy()


@pytest.mark.parametrize("arch", ["bloom", "llama", "llama-gqa"])
def test_decoding_equals_the_paddle_path_and_the_training_path(arch, calls, monkeypatch):
    monkeypatch.setattr(base, "NATIVE_DECODE_LAYERS", False)  # (the layers would take the whole-layer op)
    if arch == "bloom":
        _, model = tiny_bloom(4, 0.5)
    else:
        _, model = tiny_llama(0.5, num_key_value_heads=2 if arch == "llama-gqa" else 4)
    native = decode(model)
    assert calls[0] == 4 * 2  # every decoding step of both layers took the op
    monkeypatch.setattr(base, "NATIVE_DECODE_ATTENTION", False)
    paddle_path = decode(model)
    assert calls[0] == 8
    full = model(paddle.to_tensor(IDS), attention_mask=paddle.to_tensor(MASK)).logits.numpy()[:, -4:]  # gradients on
    assert max_rel_diff(native, paddle_path) <= TOL
    assert max_rel_diff(native, full) <= TOL


def test_bad_input_is_one_clear_line():
    keys, values = caches(1, 2, 4, 8, seed=0)[0].buffers(0)
    q = paddle.zeros([1, 1, 2 * 3 * 8])
    with pytest.raises(ValueError, match=r"^belle_decode_attention: mask \[1, 5\] does not fit the cache \[1, 2, 4, 8\]$"):
        kernels.decode_attention(q, None, None, keys, values, paddle.to_tensor([0]), paddle.ones([1, 5], "int64"))
    with pytest.raises(ValueError, match="KV cache holds 4 positions; 5 are needed"):
        cache = KVCache(1, 1, 2, 4, 8, "float32")
        cache.length = 4
        cache.decode_columns(1)


def test_environment_switches_are_read_once_until_reload(monkeypatch):
    monkeypatch.setenv("PADDLE_BELLE_KERNELS", "0")  # (conftest.py: monkeypatch's changes reload them)
    assert not kernels.enabled() and kernels.cpu_kernels() is None
    os.environ["PADDLE_BELLE_KERNELS"] = "1"  # (monkeypatch restores the variable afterwards)
    assert not kernels.enabled()
    kernels.reload()
    assert kernels.enabled() and kernels.cpu_kernels() is not None
