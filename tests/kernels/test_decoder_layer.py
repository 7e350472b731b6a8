"""The native decoder-layer ops (kernels/decoder_layer.cc: one op a layer for a decoding step, BLOOM and LLaMA)
against the op-by-op path they replace (the norms, the Linears through linear(), the decode-attention op, GELU or
SiLU, the adds; itself checked against HF in tests/models and tests/kernels/test_decode_attention.py), in every
weight format."""
import numpy as np
import paddle
import pytest
from reference import max_rel_diff, random_quant_layer, tiny_bloom, tiny_llama
from test_decode_attention import decode

from paddle_belle import kernels
from paddle_belle.models import base
from paddle_belle.quant.format import QuantConfig
from paddle_belle.models.bloom import slopes_tensor
from paddle_belle.models.llama import rope_cos_sin
from paddle_belle.quant.linear import HalfLinear, block_linears, decoder_blocks

# Relative to the largest logit. One layer of either path differs from the other by float32 rounding (LayerNorm's
# sums, GELU's tanh, in another order): <= 2e-6 here (test_one_layer...). Two layers of std-0.5 random weights then
# amplify that up to ~2e-5 in the logits; a wrong term (a bias, a residual, a head's keys) moves them by O(1).
TOL, LAYER_TOL = 5e-5, 5e-6
FORMATS = {
    "float32": None,
    "bfloat16": "bfloat16",
    "float16": "float16",
    "int4": QuantConfig(bits=4, group_size=128),
    "int8 asymmetric": QuantConfig(bits=8, group_size=128, sym=False),
    "int4 act-order": QuantConfig(bits=4, group_size=64, act_order=True),
    "int3 asymmetric": QuantConfig(bits=3, group_size=32, sym=False),
}


pytestmark = pytest.mark.usefixtures("needs_kernels")


@pytest.fixture
def calls(count_calls):
    """How many times the ops ran."""
    return count_calls("bloom_block", "llama_layer")


def bloom(fmt, arch="bloom", **overrides):
    """A 2-layer BLOOM (or LLaMA, 2 kv heads) of hidden size 160 (K not a multiple of 128: a partial last group)
    with its Linears in ``fmt``: half weights, or random packed codes (with biases where the model has them)."""
    if arch == "bloom":
        _, model = tiny_bloom(4, 0.5, hidden_size=160, **overrides)
    else:
        _, model = tiny_llama(0.5, hidden_size=160, intermediate_size=320, num_key_value_heads=2)
    for i, block in enumerate(decoder_blocks(model)):
        for j, (_, parent, attr, layer) in enumerate(block_linears(model, block)):
            (k, n), spec, bias = layer.weight.shape, FORMATS[fmt], layer.bias is not None
            if isinstance(spec, str):
                half = HalfLinear(k, n, spec, bias=bias)
                half.weight.set_value(layer.weight.astype(spec))
                if bias:
                    half.bias.set_value(layer.bias)
                setattr(parent, attr, half)
            elif spec is not None:
                setattr(parent, attr, random_quant_layer(spec, k, n, seed=10 * i + j, bias=bias)[0])
    return model.eval()


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_each_weight_format_decodes_as_the_op_by_op_path(fmt, arch, calls, monkeypatch):
    model = bloom(fmt, arch)
    native = decode(model)  # two rows, one left-padded: 4 decoding steps
    assert calls[0] == 4 * 2  # every step of both layers took the op
    monkeypatch.setattr(base, "NATIVE_DECODE_LAYERS", False)
    op_by_op = decode(model)
    assert calls[0] == 8
    assert max_rel_diff(native, op_by_op) <= TOL


def one_step(model, block, x, native, kv, monkeypatch):
    """``block``'s output for one decoding step of x [1, 1, 160] at position 5, over a cache of 5 given keys and
    values; and the cache."""
    monkeypatch.setattr(base, "NATIVE_DECODE_LAYERS", native)
    heads = kv.shape[2]
    cache = base.KVCache(1, 1, heads, 8, 40, "float32")
    cache.keys[0][:], cache.values[0][:], cache.length = paddle.to_tensor(kv[0]), paddle.to_tensor(kv[1]), 5
    mask = paddle.ones([1, 6], "int64")
    with paddle.no_grad():
        if model.arch.model_type == "bloom":
            step = base.decode_step(cache, mask, x, False, slopes_tensor(4))
            return block(x, step, cache, 0).numpy(), cache
        cos, sin = rope_cos_sin(model.config, 40, paddle.to_tensor([[5]]))
        return block(x, cos, sin, base.decode_step(cache, mask, x, False), cache, 0).numpy(), cache


@pytest.mark.parametrize("arch", ["bloom", "llama"])
@pytest.mark.parametrize("fmt", list(FORMATS))
def test_one_layer_equals_the_op_by_op_path(fmt, arch, monkeypatch):
    """One decoding step of one layer over a cache of 5 random keys and values, so that only this layer's rounding
    can differ; and the step's key and value land in the cache alike."""
    model = bloom(fmt, arch)
    block = decoder_blocks(model)[0]
    rng = np.random.default_rng(0)
    for _ in range(3):
        x = paddle.to_tensor(3 * rng.standard_normal([1, 1, 160]).astype("float32"))
        kv = rng.standard_normal([2, 1, 4 if arch == "bloom" else 2, 8, 40]).astype("float32")
        (ours, our_cache), (theirs, their_cache) = (one_step(model, block, x, n, kv, monkeypatch) for n in (1, 0))
        assert max_rel_diff(ours, theirs) <= LAYER_TOL
        for name in ("keys", "values"):
            new = [getattr(c, name)[0][0, :, 5].numpy() for c in (our_cache, their_cache)]
            assert np.abs(new[1]).sum() > 0 and max_rel_diff(*new) <= LAYER_TOL


def test_int8_activations_and_post_layernorm_residual(calls, monkeypatch):
    monkeypatch.setenv("PADDLE_BELLE_INT8_ACTIVATIONS", "1")  # (conftest.py: monkeypatch's changes reload it)
    model = bloom("int8 asymmetric", apply_residual_connection_post_layernorm=True)
    native = decode(model)
    assert calls[0] == 8
    monkeypatch.setattr(base, "NATIVE_DECODE_LAYERS", False)
    assert max_rel_diff(native, decode(model)) <= TOL


def test_a_hook_on_any_layer_of_the_block_keeps_the_op_by_op_path(calls):
    model = bloom("int4")
    expected = decode(model)
    assert calls[0] == 8
    seen = []
    block = decoder_blocks(model)[1]
    handle = block.mlp.dense_h_to_4h.register_forward_post_hook(lambda layer, inputs, out: seen.append(out.shape))
    assert max_rel_diff(decode(model), expected) <= TOL  # the hook only watches: the same numbers
    assert calls[0] == 8 + 4  # block 0 still took the op, block 1 ran its layers one by one
    assert len(seen) == 1 + 4  # the prefill and each decoding step called the hooked Linear
    handle.remove()


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_norms_and_activations_over_a_wide_range_of_values(arch, monkeypatch):
    """Inputs from 1e-7 to 1e4 in magnitude, both signs (GELU's tanh and SiLU's sigmoid saturate at both ends, and
    their vectorized exp must not overflow): the op equals the Paddle path elementwise."""
    model = bloom("float32", arch)
    block = decoder_blocks(model)[0]
    rng = np.random.default_rng(0)
    x = paddle.to_tensor((rng.choice([-1, 1], 160) * 10.0 ** rng.uniform(-7, 4, 160)).astype("float32"))
    kv = rng.standard_normal([2, 1, 4 if arch == "bloom" else 2, 8, 40]).astype("float32")
    ours, theirs = (one_step(model, block, x.reshape([1, 1, 160]), n, kv, monkeypatch)[0] for n in (1, 0))
    np.testing.assert_allclose(ours, theirs, rtol=2e-5, atol=1e-5 * np.abs(theirs).max())


def test_bad_input_is_one_line_naming_the_tensor():
    model = bloom("int4")
    block = decoder_blocks(model)[0]
    cache = model.new_cache(1, 4)
    keys, values = cache.buffers(0)
    x = paddle.zeros([1, 1, 160])
    step = (paddle.to_tensor([0]), paddle.ones([1, 1], "int64"), paddle.ones([4]))
    norms = [p for norm in (block.input_layernorm, block.post_attention_layernorm) for p in (norm.weight, norm.bias)]
    params, layout = base.layer_params(block, norms, model.arch, 1)
    good = list(params)
    params[4] = paddle.zeros([3, 480], "uint8")  # query_key_value's codes
    with pytest.raises(ValueError, match=r"^belle_bloom_block: self_attention\.query_key_value: qweight must be "
                                         r"uint8 \[80, N\] for 160 inputs at 4 bits, got uint8 \[3, 480\]$"):
        kernels.bloom_block(x, params, keys, values, *step, layout, 1e-5, False)
    params = list(good)
    params[0] = paddle.ones([160], "float64")
    with pytest.raises(ValueError, match=r"^belle_bloom_block: input_layernorm\.weight must be float32 \[160\], "
                                         r"got float64 \[160\]$"):
        kernels.bloom_block(x, params, keys, values, *step, layout, 1e-5, False)
    dense = [paddle.ones([160, 480], "int32"), good[6]]  # query_key_value dense, of a dtype no kernel reads
    with pytest.raises(ValueError, match=r"^belle_bloom_block: self_attention\.query_key_value: w must be float32, "
                                         r"bfloat16 or float16, got int32$"):
        kernels.bloom_block(x, good[:4] + dense + good[7:], keys, values, *step, [0, 0, 4] + layout[3:], 1e-5, False)


def test_llama_layer_names_a_bad_rope_table():
    model = bloom("int4", "llama")
    block = decoder_blocks(model)[0]
    cache = model.new_cache(1, 4)
    norms = block.input_layernorm.weight, block.post_attention_layernorm.weight
    params, layout = base.layer_params(block, norms, model.arch, 1)
    cos = paddle.ones([1, 40])
    with pytest.raises(ValueError, match=r"^belle_llama_layer: cos and sin must be float32 \[1, 40\], got float32 "
                                         r"\[1, 20\]$"):
        kernels.llama_layer(paddle.zeros([1, 1, 160]), params, *cache.buffers(0), paddle.to_tensor([0]),
                            paddle.ones([1, 1], "int64"), cos, paddle.ones([1, 20]), layout, 1e-6)
    with pytest.raises(ValueError, match=r"^belle_llama_layer: self_attn\.k_proj: qweight must be uint8 \[80, N\]"):
        kernels.llama_layer(paddle.zeros([1, 1, 160]), params[:4] + [paddle.zeros([2, 80], "uint8")] + params[5:],
                            *cache.buffers(0), paddle.to_tensor([0]), paddle.ones([1, 1], "int64"), cos, cos, layout,
                            1e-6)
