"""The native CPU kernels (paddle_belle/kernels) against float64 matmuls of the exact dequantized weights, on every
instruction-set path, through QuantLinear, and against the pure-Paddle path on whole tiny models."""
import warnings

import numpy as np
import paddle
import pytest
from reference import random_quant_layer as random_layer
from reference import tiny_bloom, tiny_llama

from paddle_belle import kernels
from paddle_belle.quant import QuantConfig, QuantEmbedding, QuantLinear, dequantize
from paddle_belle.quant.quantize import quantize_model

ISAS = ["best", "avx2", "scalar"]  # PADDLE_BELLE_KERNELS_ISA caps the path the kernel takes (never raises it)
# Rows of x: one and a few (one tile: up to 4 rows), batched decoding steps (whole and partial blocks of 4 rows).
ROWS = [1, 2, 3, 5, 8, 16, 17]


@pytest.fixture(scope="module")
def ops():
    if not kernels.enabled():
        pytest.skip("the native CPU kernels are disabled (PADDLE_BELLE_KERNELS=0)")
    module = kernels.cpu_kernels()
    if module is None:
        pytest.skip("the native CPU kernels could not be built here (no C++ compiler?)")
    return module


@pytest.fixture(params=ISAS)
def isa(request, ops, monkeypatch):
    if request.param != "best":
        monkeypatch.setenv("PADDLE_BELLE_KERNELS_ISA", request.param)
    return request.param


def assert_close(actual, expected, rtol=1e-5):
    """Relative to the output's scale: float32 accumulation over K terms, against a float64 reference."""
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


CONFIGS = [
    QuantConfig(bits=8, group_size=64, method="rtn"),
    QuantConfig(bits=8, group_size=-1, method="rtn", sym=False),
    QuantConfig(bits=4, group_size=64, method="rtn"),
    QuantConfig(bits=4, group_size=64, method="rtn", sym=False, act_order=True),
    QuantConfig(bits=4, group_size=-1, method="rtn"),
    QuantConfig(bits=3, group_size=32, method="gptq", act_order=True),
    QuantConfig(bits=2, group_size=64, method="gptq", sym=False),
]
CONFIG_IDS = ["int8", "int8-asym-channel", "int4", "int4-asym-actorder", "int4-channel", "int3-actorder", "int2-asym"]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("m", ROWS)
def test_quant_kernel_equals_dequantized_matmul(config, m, isa):
    # K = 200 in groups of 64: a partial last group (8 rows); N = 37: whole vectors and single columns.
    layer, weight, bias = random_layer(config, 200, 37, seed=m)
    x = np.random.RandomState(1).standard_normal((m, 200)).astype(np.float32)
    expected = x.astype(np.float64) @ weight.astype(np.float64) + bias
    assert_close(layer(paddle.to_tensor(x)).numpy(), expected)


@pytest.mark.parametrize("config", CONFIGS[2:4], ids=CONFIG_IDS[2:4])
def test_quant_kernel_whole_tiles_batched_input(config, isa):
    # N = 300: several whole tiles of every path; x [2, 5, K] (ten rows: two full blocks of four and a rest of two);
    # odd K = 257 (per-channel: the last byte's upper code is padding).
    for in_features, group in ((256, config.group_size), (257, -1)):
        c = QuantConfig(**{**config.to_dict(), "group_size": group})
        layer, weight, bias = random_layer(c, in_features, 300)
        x = np.random.RandomState(2).standard_normal((2, 5, in_features)).astype(np.float32)
        out = layer(paddle.to_tensor(x)).numpy()
        assert out.shape == (2, 5, 300)
        assert_close(out, x.astype(np.float64) @ weight.astype(np.float64) + bias)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("m", ROWS)
def test_dense_kernel_equals_float32_matmul(dtype, m, isa):
    rng = np.random.RandomState(m)
    for k, n in ((200, 37), (96, 300)):
        w = paddle.to_tensor(rng.standard_normal((k, n)).astype(np.float32)).astype(dtype)
        x = rng.standard_normal((m, k)).astype(np.float32)
        expected = x.astype(np.float64) @ w.astype("float32").numpy().astype(np.float64)
        assert_close(kernels.dense_matmul(paddle.to_tensor(x), w).numpy(), expected)
        bias = rng.standard_normal(n).astype(np.float32)
        assert_close(kernels.dense_matmul(paddle.to_tensor(x), w, paddle.to_tensor(bias)).numpy(), expected + bias)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("m", ROWS)
def test_rows_kernel_equals_the_transposed_matmul(dtype, m, isa):
    """x @ e^T with e [N, K] read as stored: the LM head tied to the input embedding."""
    rng = np.random.RandomState(m)
    for k, n in ((200, 37), (67, 300)):  # K odd and below a vector: the scalar tail
        e = paddle.to_tensor(rng.standard_normal((n, k)).astype(np.float32)).astype(dtype)
        x = rng.standard_normal((m, k)).astype(np.float32)
        expected = x.astype(np.float64) @ e.astype("float32").numpy().astype(np.float64).T
        assert_close(kernels.rows_matmul(paddle.to_tensor(x), e).numpy(), expected)
    with pytest.raises(ValueError, match=r"w must be a contiguous CPU tensor \[N, 67\] \(\[out, in\]\)"):
        kernels.rows_matmul(paddle.to_tensor(x), paddle.zeros([300, 66]))


def test_half_subnormals_inf_and_nan_decode_exactly(ops, monkeypatch):
    values = np.array([0, 1e-7, -3e-6, 6e-5, 1.0, -2.5, 65504, np.inf, -np.inf, np.nan], np.float32)
    w = paddle.to_tensor(np.repeat(values, 17)[None, :])  # K = 1, N = 170: vectors and single columns
    x = paddle.ones([1, 1])
    for isa in ISAS:
        if isa != "best":
            monkeypatch.setenv("PADDLE_BELLE_KERNELS_ISA", isa)
        for dtype in ("float16", "bfloat16"):
            half = w.astype(dtype)
            np.testing.assert_array_equal(kernels.dense_matmul(x, half).numpy(), half.astype("float32").numpy())


def test_fallback_path_gives_the_same(ops, monkeypatch):
    config = QuantConfig(bits=4, group_size=64, method="rtn", sym=False, act_order=True)
    layer, _, _ = random_layer(config, 200, 37)
    x = paddle.to_tensor(np.random.RandomState(3).standard_normal((3, 200)).astype(np.float32))
    with paddle.no_grad():
        native = layer(x).numpy()
        monkeypatch.setenv("PADDLE_BELLE_KERNELS", "0")
        assert kernels.cpu_kernels() is None
        assert_close(layer(x).numpy(), native)


def test_inputs_that_need_a_gradient_take_the_paddle_path(ops):
    config = QuantConfig(bits=8, group_size=64, method="rtn")
    layer, weight, _ = random_layer(config, 200, 37, bias=False)
    x = paddle.to_tensor(np.random.RandomState(4).standard_normal((2, 200)).astype(np.float32), stop_gradient=False)
    layer(x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), np.broadcast_to(weight.sum(axis=1), (2, 200)), rtol=1e-5, atol=1e-5)


def greedy_ids(model, prompt):
    with paddle.no_grad():
        out = model.generate(paddle.to_tensor(prompt), max_new_tokens=8, do_sample=False)
    return (out[0] if isinstance(out, tuple) else out).numpy()


@pytest.mark.parametrize("family", ["bloom", "llama"])
@pytest.mark.parametrize("bits", [4, 8])
def test_tiny_models_same_greedy_ids_as_the_paddle_path(family, bits, ops, monkeypatch):
    """With the token tables quantized too (int4 with the 4-bit Linears, int8 with the 8-bit ones): BLOOM's tied
    head, LLaMA's separate head and both embeddings' lookups."""
    if family == "bloom":
        _, model = tiny_bloom(n_head=4, std=0.5)
    else:  # hidden 48 in groups of 32: partial last groups
        _, model = tiny_llama(std=0.5, hidden_size=48, intermediate_size=64, num_attention_heads=4,
                              num_key_value_heads=2)
    config = QuantConfig(bits=bits, group_size=32, method="rtn", sym=bits == 8, embedding=f"int{bits}")
    quantize_model(model, config, progress=False)
    assert isinstance(model.get_input_embeddings(), QuantEmbedding)
    calls = []
    real = kernels.quant_matmul
    monkeypatch.setattr(kernels, "quant_matmul", lambda x, q, *a: calls.append(q.shape[1]) or real(x, q, *a))
    prompt = np.array([[5, 17, 42, 8], [3, 9, 60, 1]])
    native = greedy_ids(model, prompt)
    assert model.config.vocab_size in calls, "the head did not use the kernel"
    monkeypatch.setenv("PADDLE_BELLE_KERNELS", "0")
    np.testing.assert_array_equal(greedy_ids(model, prompt), native)


def test_bad_inputs_are_one_line_errors(ops):
    x = paddle.randn([2, 200])
    cases = [
        (lambda: kernels.quant_matmul(x, paddle.zeros([99, 37], "uint8"), paddle.ones([4, 37]), None, 4, 64),
         r"qweight must be uint8 \[100, N\] for 200 inputs at 4 bits, got uint8 \[99, 37\]"),
        (lambda: kernels.quant_matmul(x, paddle.zeros([100, 37], "int32"), paddle.ones([4, 37]), None, 4, 64),
         r"qweight must be uint8 \[100, N\].*got int32"),
        (lambda: kernels.quant_matmul(x, paddle.zeros([100, 37], "uint8"), paddle.ones([3, 37]), None, 4, 64),
         r"scales must be float32 \[4, 37\], got float32 \[3, 37\]"),
        (lambda: kernels.quant_matmul(x, paddle.zeros([100, 37], "uint8"), paddle.ones([4, 37]),
                                      paddle.zeros([4, 36], "uint8"), 4, 64), r"zeros must be uint8 \[4, 37\]"),
        (lambda: kernels.quant_matmul(x, paddle.zeros([100, 37], "uint8"), paddle.ones([4, 37]), None, 5, 64),
         "bits must be 2, 3, 4 or 8, got 5"),
        (lambda: kernels.quant_matmul(x.astype("float64"), paddle.zeros([100, 37], "uint8"), paddle.ones([4, 37]),
                                      None, 4, 64), "x must be float32, got float64"),
        (lambda: kernels.dense_matmul(x, paddle.zeros([200, 37], "int32")),
         "w must be float32, bfloat16 or float16, got int32"),
        (lambda: kernels.dense_matmul(x, paddle.zeros([199, 37])), r"w must be a contiguous CPU tensor \[200, N\]"),
        (lambda: kernels.dense_matmul(x, paddle.zeros([200, 37]), paddle.zeros([36])),
         r"bias must be float32 \[37\], got float32 \[36\]"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError, match=message) as error:
            call()
        assert "\n" not in str(error.value)


def test_a_failed_build_warns_once_and_layers_still_work(monkeypatch):
    monkeypatch.delenv("PADDLE_BELLE_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_loaded", {})
    monkeypatch.setattr(kernels, "_load", lambda: (_ for _ in ()).throw(RuntimeError("g++: not found")))
    with pytest.warns(RuntimeWarning, match=r"native CPU kernels unavailable \(g\+\+: not found\)"):
        assert kernels.cpu_kernels() is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert kernels.cpu_kernels() is None  # no second warning
        layer, weight, bias = random_layer(QuantConfig(bits=4, group_size=64, method="rtn"), 200, 37)
        x = np.random.RandomState(5).standard_normal((3, 200)).astype(np.float32)
        assert_close(layer(paddle.to_tensor(x)).numpy(), x.astype(np.float64) @ weight + bias)



def test_a_first_build_prints_nothing(ops, tmp_path):
    """A fresh machine builds the op once; Paddle's load() print()s progress, which must reach neither a caller's
    redirected sys.stdout (the card snippet's transcript) nor the process's own streams. In a subprocess: one
    process cannot register the same ops twice."""
    import os
    import subprocess
    import sys

    code = ("import contextlib, io\nout = io.StringIO()\nwith contextlib.redirect_stdout(out):\n"
            "    from paddle_belle import kernels\n    assert kernels.cpu_kernels() is not None\n"
            "assert out.getvalue() == '', out.getvalue()")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PADDLE_EXTENSION_DIR": str(tmp_path)})
    assert run.returncode == 0, run.stderr[-2000:]
    assert list(tmp_path.glob("belle_cpu_kernels_*/*.so"))  # really built there
    assert run.stdout == "" and "Compiling" not in run.stderr
