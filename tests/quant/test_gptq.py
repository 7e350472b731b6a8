"""GPTQ against PaddleSlim's own fasterquant, and block-by-block quantization of whole (tiny) models."""
import contextlib
import io
import json

import numpy as np
import paddle
import pytest
from paddleslim.quant.advanced import GPTQ as PaddleSlimGPTQ
from reference import our_logits, tiny_bloom, tiny_llama

from paddle_belle import AutoModelForCausalLM
from paddle_belle.checkpoint import CheckpointError, load_state_dict, save_state_dict
from paddle_belle.convert.engine import iter_hf_as_paddle
from paddle_belle.quant import QuantConfig, QuantEmbedding, QuantLinear
from paddle_belle.quant.quantize import quantize_model
from paddle_belle.quant.format import quantize_rtn
from paddle_belle.quant.gptq import Hessian, quantize_linears
from paddle_belle.quant.linear import block_linears, decoder_blocks


def correlated_inputs(n, features, seed=0, dead=()):
    """Inputs with correlated features (as in real activations, where GPTQ's error feedback pays off)."""
    rng = np.random.RandomState(seed)
    mix = rng.standard_normal((features, features)).astype(np.float32) / np.sqrt(features)
    x = rng.standard_normal((n, 16, features)).astype(np.float32) @ (np.eye(features, dtype=np.float32) + 2 * mix)
    x[..., list(dead)] = 0
    return x


def linear_pair(in_features, out_features, seed=0):
    paddle.seed(seed)
    a = paddle.nn.Linear(in_features, out_features)
    b = paddle.nn.Linear(in_features, out_features)
    b.weight.set_value(a.weight)
    b.bias.set_value(a.bias)
    return a, b


def calibrate(wrapper, x):
    for sample in x:
        wrapper(paddle.to_tensor(sample[None]))


@pytest.mark.parametrize("in_features, group_size, act_order", [
    (64, 16, False), (64, 16, True), (64, -1, False), (64, -1, True),
    (300, 128, True), (300, 32, False),  # three of the loop's 128-column blocks, the last one partial
])
def test_same_weights_as_paddleslim_fasterquant(in_features, group_size, act_order):
    """Where PaddleSlim's fasterquant runs at all (some input column is dead, so its H[dead, dead] index is not
    empty), it (Paddle ops, float32) and ours (numpy; the inverse Hessian's Cholesky factor in float64) write the
    same fake-quantized weights from the same Hessian: no code differs (a code is a step of ~1e-2 here), the scales
    only by float32 rounding accumulated over the columns (1e-4 relative over 300 of them). Our Hessian (numpy)
    equals the one its forward accumulates (Paddle) within float32 rounding."""
    theirs_layer, ours_layer = linear_pair(in_features, 24)
    x = correlated_inputs(6 if in_features < 100 else 40, in_features, dead=[5, 40])  # 40: more tokens than inputs
    theirs, ours = PaddleSlimGPTQ(theirs_layer, quant_bits=4), Hessian(in_features)
    calibrate(theirs, x)
    for sample in x:
        ours.add(paddle.to_tensor(sample[None]))
    H = theirs.hessian.numpy()
    np.testing.assert_allclose(ours.matrix(), H, rtol=1e-5, atol=1e-6 * np.abs(H).max())
    assert (np.diag(ours.matrix()) == 0).sum() == 2  # the dead inputs stay exactly dead
    with contextlib.redirect_stdout(io.StringIO()):  # it prints per layer
        theirs.fasterquant(groupsize=group_size, actorder=act_order)
    q, = quantize_linears([ours_layer], H, QuantConfig(bits=4, group_size=group_size, act_order=act_order))
    np.testing.assert_allclose(ours_layer.weight.numpy(), theirs_layer.weight.numpy(), rtol=1e-4, atol=1e-6)
    # ... and our codes and scales are exactly the weights we wrote.
    config = QuantConfig(bits=4, group_size=group_size, act_order=act_order)
    packed = QuantLinear.from_codes(q.codes, q.scales, q.zeros, config, perm=q.perm)
    np.testing.assert_array_equal(packed.weight().numpy(), ours_layer.weight.numpy())


def test_paddleslim_fasterquant_still_crashes_without_dead_columns():
    """Why gptq.py restates fasterquant. If this starts failing, PaddleSlim got fixed: use it as is."""
    layer, _ = linear_pair(32, 8)
    wrapper = PaddleSlimGPTQ(layer, quant_bits=4)
    calibrate(wrapper, correlated_inputs(2, 32))
    with contextlib.redirect_stdout(io.StringIO()), pytest.raises(ValueError, match="index"):
        wrapper.fasterquant(groupsize=16, actorder=False)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("sym", [True, False])
def test_gptq_output_error_below_rtn(bits, sym):
    """GPTQ's point: on the calibration inputs, the layer's output error is well below round-to-nearest's."""
    layer, copy = linear_pair(128, 32)
    x = correlated_inputs(8, 128)
    config = QuantConfig(bits=bits, group_size=32, sym=sym)
    codes, scales, zeros = quantize_rtn(copy.weight, config)
    rtn = QuantLinear.from_codes(codes, scales, zeros, config, bias=copy.bias)
    hessian = Hessian(128)
    for sample in x:
        hessian.add(paddle.to_tensor(sample[None]))
    exact = paddle.nn.functional.linear(paddle.to_tensor(x), copy.weight, copy.bias).numpy()
    q, = quantize_linears([layer], hessian.matrix(), config)
    gptq = QuantLinear.from_codes(q.codes, q.scales, q.zeros, config, bias=copy.bias)
    error = {name: float(np.square(m(paddle.to_tensor(x)).numpy() - exact).mean()) for name, m in
             (("rtn", rtn), ("gptq", gptq))}
    assert error["gptq"] < 0.7 * error["rtn"], error


def calibration_ids(vocab, n=8, seqlen=24, seed=0):
    return np.random.RandomState(seed).randint(0, vocab, (n, seqlen))


def quantized_llama(config, **overrides):
    # hidden 48 in groups of 32: every Linear reading the hidden state has a partial last group.
    _, model = tiny_llama(std=0.02, hidden_size=48, intermediate_size=64, num_attention_heads=4,
                          num_key_value_heads=2, **overrides)
    ids = calibration_ids(101)
    with paddle.no_grad():
        float_logits = our_logits(model, ids[:2]).logits.numpy()
    quantize_model(model, config, ids, progress=False)
    return model, ids, float_logits


@pytest.mark.parametrize("config", [
    QuantConfig(bits=4, group_size=32),
    QuantConfig(bits=4, group_size=32, sym=False, act_order=True),
    QuantConfig(bits=8, group_size=32, method="rtn"),
], ids=["gptq4", "gptq4-asym-actorder", "rtn8"])
def test_llama_save_load_same_logits(config, tmp_path):
    model, ids, float_logits = quantized_llama(config)
    layers = [m for m in model.sublayers() if type(m) is QuantLinear]
    assert len(layers) == 2 * 7 + 1  # and the untied head, on the token tables' grid (int8 by default)
    assert model.lm_head.config == config.embedding_config() and not config.quantize_lm_head
    assert isinstance(model.get_input_embeddings(), QuantEmbedding)
    assert not [m for m in model.sublayers() if type(m) is paddle.nn.Linear]
    with paddle.no_grad():
        logits = our_logits(model, ids[:2]).logits.numpy()
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())["quantization_config"]
    assert saved == config.to_dict()
    state = load_state_dict(tmp_path)
    assert "llama.layers.0.self_attn.q_proj.weight" not in state
    assert state["llama.layers.0.self_attn.q_proj.qweight"].dtype == np.uint8
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded.llama.layers[1].mlp.down_proj, QuantLinear)
    with paddle.no_grad():
        np.testing.assert_allclose(our_logits(loaded, ids[:2]).logits.numpy(), logits, rtol=1e-6, atol=1e-6)
    # Quantized, but still the same model: logits stay close to the float ones (8-bit: very close).
    tolerance = 0.02 if config.bits == 8 else 0.2
    assert np.abs(logits - float_logits).max() <= tolerance * np.abs(float_logits).max()


def test_block_by_block_matches_quantizing_with_float_inputs_for_block_zero():
    """Block 0's Hessians come from the float embeddings, so its codes equal a direct GPTQ of those Linears on
    the captured inputs; later blocks see the quantized blocks' outputs (checked by the logits tests)."""
    config = QuantConfig(bits=4, group_size=32)
    _, model = tiny_llama(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)
    ids = calibration_ids(101)
    expected = {}
    for name in ("q_proj", "k_proj"):  # k_proj shares q_proj's input, and in quantize_model its Hessian
        linear = getattr(model.llama.layers[0].self_attn, name)
        reference = paddle.nn.Linear(*linear.weight.shape, bias_attr=False)
        reference.weight.set_value(linear.weight)
        hessian = Hessian(48)
        with paddle.no_grad():
            for window in ids:
                x = model.llama.embed_tokens(paddle.to_tensor(window[None]))
                hessian.add(model.llama.layers[0].input_layernorm(x))
        expected[name] = quantize_linears([reference], hessian.matrix(), config)[0].codes
    quantize_model(model, config, ids, progress=False)
    for name, codes in expected.items():
        np.testing.assert_array_equal(getattr(model.llama.layers[0].self_attn, name).codes().numpy(), codes)


class _Stop(Exception):
    pass


def per_group_passes(model, config, ids):
    """GPTQ in the reference's schedule (IST-DASLab/gptq llama.py ``llama_sequential``, and quantize.py before its
    one pass per block): for each group of Linears, every window runs from the token ids through the model's own
    forward, stopped at the group's first Linear by a hook, so the group's Hessian sees the groups quantized before
    it. Returns {Linear path: QuantizedWeight}; the model is left holding the dequantized weights."""
    def stop(layer, inputs):
        hessian.add(inputs[0])
        raise _Stop

    out = {}
    for i, block in enumerate(decoder_blocks(model)):
        linears = block_linears(model, block)
        for group in model.arch.linear_groups:
            members = [(path, linear) for path, _, _, linear in linears if path in group]
            hessian = Hessian(members[0][1].weight.shape[0])
            hook = members[0][1].register_forward_pre_hook(stop)
            for window in ids:
                with contextlib.suppress(_Stop), paddle.no_grad():
                    model(paddle.to_tensor(window[None]))
            hook.remove()
            for (path, _), q in zip(members, quantize_linears([m for _, m in members], hessian.matrix(), config)):
                out[f"{i}.{path}"] = q
    return out


@pytest.mark.parametrize("kind, config", [
    ("llama", QuantConfig(bits=4, group_size=32, act_order=True)),
    ("bloom", QuantConfig(bits=3, group_size=16, sym=False)),
])
def test_one_pass_per_block_gives_the_codes_of_a_pass_per_group(kind, config):
    """quantize_model runs each window through a block once, quantizing each group of Linears as soon as every
    window's pass has reached it: the same codes as restarting every window from the token ids for each group
    (the scales within float32 rounding: its passes multiply through numpy's BLAS, the model through Paddle)."""
    make = (lambda: tiny_llama(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2)[1]) \
        if kind == "llama" else (lambda: tiny_bloom(n_head=4, hidden_size=48)[1])
    ids = calibration_ids(101)
    expected = per_group_passes(make(), config, ids)
    model = quantize_model(make(), config, ids, progress=False)
    assert len(expected) == 2 * sum(map(len, model.arch.linear_groups))
    for name, q in expected.items():
        block, path = name.split(".", 1)
        layer = decoder_blocks(model)[int(block)]
        for attr in path.split("."):
            layer = getattr(layer, attr)
        np.testing.assert_array_equal(layer.codes().numpy(), q.codes, err_msg=name)
        np.testing.assert_allclose(layer.scales.numpy(), q.scales, rtol=1e-5, err_msg=name)


def test_quantize_lm_head(tmp_path):
    model, ids, _ = quantized_llama(QuantConfig(bits=8, group_size=16, quantize_lm_head=True))
    assert isinstance(model.lm_head, QuantLinear)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert isinstance(loaded.lm_head, QuantLinear)
    _, tied = tiny_llama(tie_word_embeddings=True)
    with pytest.raises(ValueError, match="tied"):
        quantize_model(tied, QuantConfig(bits=4, group_size=16, quantize_lm_head=True), calibration_ids(101))


def test_tiny_bloom_alibi_quantizes_and_generates(tmp_path):
    hf, model = tiny_bloom(n_head=4, std=0.02)
    ids = calibration_ids(101)
    with paddle.no_grad():
        float_logits = our_logits(model, ids[:2]).logits.numpy()
    quantize_model(model, QuantConfig(bits=4, group_size=16), ids, progress=False)
    assert isinstance(model.bloom.h[0].self_attention.query_key_value, QuantLinear)
    assert model.bloom.h[0].self_attention.query_key_value.bias is not None
    with paddle.no_grad():
        logits = our_logits(model, ids[:2]).logits.numpy()
    assert np.abs(logits - float_logits).max() <= 0.2 * np.abs(float_logits).max()
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    prompt = paddle.to_tensor([[5, 17, 42, 8], [0, 3, 9, 60]])
    mask = paddle.to_tensor([[1, 1, 1, 1], [0, 1, 1, 1]])  # left padding goes through ALiBi's positions
    out = loaded.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False)
    assert out.shape == [2, 10]
    np.testing.assert_array_equal(out.numpy(), model.generate(prompt, attention_mask=mask, max_new_tokens=6,
                                                              do_sample=False).numpy())


def test_missing_scale_is_a_clear_error(tmp_path):
    model, _, _ = quantized_llama(QuantConfig(bits=4, group_size=32, method="rtn"))
    model.save_pretrained(tmp_path)
    state = load_state_dict(tmp_path)
    del state["llama.layers.1.mlp.up_proj.scales"]
    save_state_dict(state, tmp_path)
    with pytest.raises(CheckpointError, match="missing 1 tensor.*llama.layers.1.mlp.up_proj.scales"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_a_hessian_that_is_not_positive_definite_gets_more_damping():
    layer, _ = linear_pair(16, 8)
    h = np.eye(16, dtype="float32")
    h[-1, -1] = -0.05  # 1 % damping of the mean diagonal leaves it negative; 10 % does not
    with pytest.warns(UserWarning, match="16-input Linear not positive definite; damping x10"):
        q, = quantize_linears([layer], h, QuantConfig(bits=4, group_size=-1))
    assert np.isfinite(q.scales).all()
    with pytest.raises(ValueError, match="not positive definite even with"):  # no damping helps
        quantize_linears([layer], -np.eye(16, dtype="float32"), QuantConfig(bits=4, group_size=-1))


def _hf_checkpoint(kind, directory, dtype):
    hf, _ = tiny_llama(hidden_size=48, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2) \
        if kind == "llama" else tiny_bloom(n_head=4, hidden_size=48)
    hf.to(dtype).save_pretrained(directory, safe_serialization=True)
    return directory


@pytest.mark.parametrize("kind, layout, config", [
    ("llama", "hf", QuantConfig(bits=4, group_size=32, quantize_lm_head=True)),
    ("bloom", "paddle", QuantConfig(bits=3, group_size=16, sym=False, act_order=True)),
], ids=["llama-hf-fp16-head", "bloom-paddle-fp32-asym-actorder"])
def test_streamed_gptq_equals_quantizing_the_whole_model(kind, layout, config, tmp_path):
    """stream_gptq (one block's float weights in memory) writes exactly the tensors quantize_model makes on the
    whole float32 model, and keeps every tensor it does not quantize as the source stored it."""
    import torch

    from paddle_belle.quant.quantize import stream_gptq

    source = _hf_checkpoint(kind, tmp_path / "hf", torch.float16)
    if layout == "paddle":
        AutoModelForCausalLM.from_pretrained(source, dtype="float32").save_pretrained(tmp_path / "paddle")
        source = tmp_path / "paddle"
    ids = calibration_ids(101)
    model = quantize_model(AutoModelForCausalLM.from_pretrained(source, dtype="float32"), config, ids,
                           progress=False)
    whole = {k: v.numpy() for k, v in model.state_dict().items()}
    (tmp_path / "out").mkdir()
    stream_gptq(source, tmp_path / "out", config, ids, progress=False)
    streamed, original = load_state_dict(tmp_path / "out"), dict(iter_hf_as_paddle(source)) if layout == "hf" \
        else load_state_dict(source)
    assert set(streamed) == set(whole)
    for name, array in streamed.items():
        if name in original:  # not quantized: as stored
            assert array.dtype == original[name].dtype, name
            np.testing.assert_array_equal(array, original[name], err_msg=name)
        else:
            assert array.dtype == whole[name].dtype, name
            np.testing.assert_array_equal(array, whole[name], err_msg=name)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.quantization == config
