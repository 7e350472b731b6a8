import copy

import numpy as np
import paddle
import pytest
from reference import random_quant_layer as random_layer

from paddle_belle.quant import QuantConfig, QuantLinear, dequantize
from paddle_belle.quant import linear as linear_module


@pytest.mark.parametrize("config", [
    QuantConfig(bits=4, group_size=32, method="rtn"),
    QuantConfig(bits=4, group_size=32, method="rtn", sym=False),
    QuantConfig(bits=8, group_size=-1, method="rtn"),
    QuantConfig(bits=3, group_size=16, method="gptq", act_order=True),
    QuantConfig(bits=2, group_size=32, method="gptq", sym=False, act_order=True),
], ids=["int4-sym", "int4-asym", "int8-channel", "int3-actorder", "int2-asym-actorder"])
@pytest.mark.parametrize("block_elements", [1 << 22, 1])
def test_quantized_linear_equals_dequantized_matmul(config, block_elements, monkeypatch):
    # 72 inputs in groups of 32: the last group is partial. block_elements=1 forces one group per block. Float
    # activations: the int8 ones (4 and 8 bits by default) are tested in tests/kernels/test_cpu_matmul.py.
    monkeypatch.setenv("PADDLE_BELLE_INT8_ACTIVATIONS", "0")
    monkeypatch.setattr(linear_module, "BLOCK_ELEMENTS", block_elements)
    layer, weight, bias = random_layer(config, 72, 24)
    x = np.random.RandomState(1).standard_normal((2, 5, 72)).astype(np.float32)
    expected = x @ weight + bias
    np.testing.assert_allclose(layer(paddle.to_tensor(x)).numpy(), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.weight().numpy(), weight, rtol=1e-6, atol=1e-7)


def test_quantized_linear_keeps_integer_weights_resident():
    config = QuantConfig(bits=4, group_size=128, method="rtn")
    layer, _, _ = random_layer(config, 576, 1536, bias=False)
    state = layer.state_dict()
    assert sorted(state) == ["qweight", "scales"]
    assert state["qweight"].dtype == paddle.uint8 and state["qweight"].shape == [288, 1536]
    assert state["scales"].shape == [5, 1536]  # 576 = 4 x 128 + 64: five groups
    held = sum(int(np.prod(t.shape)) * t.element_size() for t in state.values())
    assert held <= 0.27 * 576 * 1536 * 2  # int4 + float32 scales per 128 vs fp16


def test_paddle_path_equals_dequantized_matmul(monkeypatch):
    """The same on the pure-Paddle path, which CPU float32 inputs take only without the native kernels
    (PADDLE_BELLE_KERNELS=0, or no compiler); the test above goes through them where they build."""
    monkeypatch.setenv("PADDLE_BELLE_KERNELS", "0")
    for config in [QuantConfig(bits=4, group_size=32, method="rtn"),
                   QuantConfig(bits=4, group_size=32, method="rtn", sym=False),
                   QuantConfig(bits=8, group_size=-1, method="rtn"),
                   QuantConfig(bits=3, group_size=16, method="gptq", act_order=True),
                   QuantConfig(bits=2, group_size=32, method="gptq", sym=False, act_order=True)]:
        for block_elements in (1 << 22, 1):
            test_quantized_linear_equals_dequantized_matmul(config, block_elements, monkeypatch)


@pytest.mark.parametrize("kernels_on", ["1", "0"], ids=["kernels", "paddle"])
@pytest.mark.parametrize("embedding", ["int8", "int4"])
def test_quantized_embedding_lookup_and_head_equal_the_dequantized_table(embedding, kernels_on, monkeypatch):
    """The token table [vocab, hidden] is stored as its head [hidden, vocab] (quant/format.py): a lookup gives the
    dequantized rows of exactly the tokens asked for, the head x @ E^T of the dequantized table."""
    from paddle_belle.quant import QuantEmbedding

    monkeypatch.setenv("PADDLE_BELLE_KERNELS", kernels_on)
    monkeypatch.setenv("PADDLE_BELLE_INT8_ACTIVATIONS", "0")  # the exact head; int8 activations: test_cpu_matmul.py
    config = QuantConfig(method="rtn", embedding=embedding).embedding_config()
    hidden, vocab = 200, 101  # int4: groups of 128, the last partial; an odd vocabulary (a 64-column tile and a part)
    head, weight, _ = random_layer(config, hidden, vocab, bias=False)
    layer = QuantEmbedding(hidden, vocab, config)
    layer.set_state_dict(head.state_dict())
    table = weight.T  # [vocab, hidden], float32, exact
    ids = np.array([[3, 36, 0], [100, 64, 17]])
    np.testing.assert_array_equal(layer(paddle.to_tensor(ids)).numpy(), table[ids])
    x = np.random.RandomState(2).standard_normal((2, 3, hidden)).astype(np.float32)
    with paddle.no_grad():
        logits = layer.logits(paddle.to_tensor(x)).numpy()
    expected = x.astype(np.float64) @ table.T.astype(np.float64)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    # the head's kernel left the codes in its tile order: lookups read them so
    assert (layer._tiles is not None) == (kernels_on == "1")
    np.testing.assert_array_equal(layer(paddle.to_tensor(ids)).numpy(), table[ids])
    assert (layer._tiles is not None) == (kernels_on == "1")


@pytest.mark.parametrize("config", [QuantConfig(bits=4, group_size=64, method="rtn", sym=False, act_order=True),
                                    QuantConfig(bits=8, group_size=-1, method="rtn"), "bfloat16", "float32"],
                         ids=["int4-asym", "int8", "half", "float32"])
def test_kernel_order_never_shows(config, tmp_path):
    """The CPU kernels keep a layer's weight in their order (quant/linear.py KernelOrder: tiles of packed codes, a
    dense weight transposed), and whatever reads it otherwise sees the checkpoint's order: the attribute, the state
    dict (and so saving), codes(), moving or copying the layer, set_state_dict; and new weights loaded into it are
    taken as the checkpoint's order. A float32 nn.Linear becomes a FloatLinear at its first kernel call, an
    nn.Linear still, and a prompt's rows (Paddle's matmul) read its order as it lies."""
    from paddle_belle import kernels
    from paddle_belle.quant.linear import FloatLinear, HalfLinear, linear

    if kernels.cpu_kernels() is None:
        pytest.skip("the native CPU kernels could not be built here")
    if config == "bfloat16":
        layer, name = HalfLinear(200, 150, "bfloat16", bias=True), "weight"
        layer.weight.set_value(paddle.randn([200, 150]).astype("bfloat16"))
    elif config == "float32":
        layer, name = paddle.nn.Linear(200, 150), "weight"
        layer.bias.set_value(paddle.randn([150]))
    else:
        layer, name = random_layer(config, 200, 150)[0], "qweight"
    stored = layer._buffers if name == "qweight" else layer._parameters
    plain = stored[name].numpy().copy()
    x = paddle.to_tensor(np.random.RandomState(3).standard_normal((1, 200)).astype(np.float32))
    prompt = paddle.to_tensor(np.random.RandomState(4).standard_normal((80, 200)).astype(np.float32))
    with paddle.no_grad():
        expected = linear(layer, x).numpy()
        assert layer._tiles is not None and not np.array_equal(stored[name].numpy(), plain)
        if config == "float32":
            assert type(layer) is FloatLinear and isinstance(layer, paddle.nn.Linear)
            reference = prompt.numpy().astype(np.float64) @ plain + layer._parameters["bias"].numpy()
            np.testing.assert_allclose(linear(layer, prompt).numpy(), reference, rtol=1e-5,
                                       atol=1e-5 * np.abs(reference).max())
            assert layer._tiles is not None  # (read in place, not put back)
        np.testing.assert_array_equal(getattr(layer, name).numpy(), plain)  # put back
        assert layer._tiles is None
        linear(layer, x)
        np.testing.assert_array_equal(layer.state_dict()[name].numpy(), plain)
        linear(layer, x)
        paddle.save(layer.state_dict(), str(tmp_path / "layer.pdparams"))
        np.testing.assert_array_equal(paddle.load(str(tmp_path / "layer.pdparams"))[name].numpy(), plain)
        if name == "qweight" and config.bits == 8:
            linear(layer, x)
            np.testing.assert_array_equal(layer.codes().numpy(), plain)
        linear(layer, x)
        layer.to("cpu")
        np.testing.assert_array_equal(stored[name].numpy(), plain)
        linear(layer, x)
        np.testing.assert_array_equal(linear(copy.deepcopy(layer), x).numpy(), expected)
        linear(layer, x)
        layer.set_state_dict({**layer.state_dict(), name: paddle.to_tensor(plain)})
        np.testing.assert_array_equal(linear(layer, x).numpy(), expected)
        stored[name] = paddle.to_tensor(plain)  # new memory (as loading gives): the checkpoint's order
        np.testing.assert_array_equal(linear(layer, x).numpy(), expected)
    # with gradients (the Paddle path): the checkpoint's order
    with paddle.no_grad():
        linear(layer, x)
    x.stop_gradient = False
    layer(x).sum().backward()
    np.testing.assert_array_equal(stored[name].numpy(), plain)


@pytest.mark.parametrize("rows", [1, 2, 5, 8, 16, 17, 64, 65])
def test_linear_equals_the_float32_matmul_on_either_path(rows, monkeypatch):
    """linear(layer, x) (the models' Linear calls) takes the native kernel for FLOAT_KERNEL_ROWS rows of a float32
    nn.Linear in inference, Paddle's matmul otherwise, with gradients and with hooks; the result is always
    nn.Linear's. K = 200, N = 37: partial vectors."""
    from paddle_belle import kernels

    if kernels.cpu_kernels() is None:
        pytest.skip("the native CPU kernels could not be built here")
    calls = []
    real = kernels.dense_matmul
    monkeypatch.setattr(kernels, "dense_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    paddle.seed(rows)
    layer = paddle.nn.Linear(200, 37)
    layer.bias.set_value(paddle.randn([37]))
    x = np.random.RandomState(rows).standard_normal((rows, 1, 200)).astype(np.float32)  # a decoding step's shape
    expected = x.astype(np.float64) @ layer.weight.numpy().astype(np.float64) + layer.bias.numpy()
    with paddle.no_grad():
        out = linear_module.linear(layer, paddle.to_tensor(x)).numpy()
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
        assert bool(calls) == (rows in linear_module.FLOAT_KERNEL_ROWS)
        calls.clear()
        seen = []  # a hook (calibration collects inputs so) must see the call: the layer itself runs
        handle = layer.register_forward_post_hook(lambda _, inputs, out: seen.append(out.shape))
        linear_module.linear(layer, paddle.to_tensor(x))
        handle.remove()
        assert seen and not calls
    xt = paddle.to_tensor(x, stop_gradient=False)
    linear_module.linear(layer, xt).sum().backward()  # training: Paddle's matmul, gradients to input and weight
    assert not calls and layer.weight.grad is not None
    np.testing.assert_allclose(xt.grad.numpy()[0, 0], layer.weight.numpy().sum(axis=1), rtol=1e-5, atol=1e-5)
