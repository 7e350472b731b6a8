"""Half weights on the CPU (from_pretrained(dtype="bfloat16" | "float16")): Linear weights and the embedding stay in
that dtype and are read through the native kernels, with float32 arithmetic; the pure-Paddle fallback agrees."""
import numpy as np
import paddle
import pytest
from reference import tiny_llama_dir

from paddle_belle import AutoModelForCausalLM, AutoTokenizer, kernels
from paddle_belle.checkpoint import load_state_dict, read_config, save_state_dict
from paddle_belle.quant.linear import HalfLinear

PROMPT = "Human: 写一首关于春天的诗\n\nAssistant:"


def greedy(model, ids, n=48):
    return model.generate(ids, max_new_tokens=n, do_sample=False).numpy()[:, ids.shape[1]:]


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_bundled_model_in_half_gives_the_float32_greedy_ids(dtype, tmp_path):
    """The same weight values computed in float32 either way, so the same greedy ids. belle-tiny-zh is stored in
    float16 (exact in float32); for bfloat16 the checkpoint is first rounded to bfloat16, since bfloat16's 8-bit
    mantissa is itself a change of weights (it moves a near-tie at the 3rd token of this prompt)."""
    import shutil

    from paddle_belle.convert.engine import cast
    from paddle_belle.registry import BUNDLED

    path = BUNDLED / "belle-tiny-zh"
    if dtype == "bfloat16":
        path = shutil.copytree(path, tmp_path / "bf16")
        save_state_dict({k: cast(v, np.dtype("uint16")) if v.dtype == np.float16 else v
                         for k, v in load_state_dict(path).items()}, path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    ids = tokenizer(PROMPT, return_tensors="pd")["input_ids"]
    half = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    block = half.bloom.h[0]
    assert isinstance(block.mlp.dense_h_to_4h, HalfLinear) and str(block.mlp.dense_h_to_4h.weight.dtype).endswith(dtype)
    assert str(half.bloom.word_embeddings.weight.dtype).endswith(dtype)
    assert half.bloom.ln_f.weight.dtype == paddle.float32 and block.self_attention.dense.bias.dtype == paddle.float32
    np.testing.assert_array_equal(greedy(half, ids), greedy(AutoModelForCausalLM.from_pretrained(path), ids))


def test_half_llama_matches_float32_and_the_fallback(tmp_path, monkeypatch):
    """A float16 checkpoint: float16 weights hold exactly its numbers, so the logits equal float32's up to summation
    order, through the kernels (an untied head: a HalfLinear) and through the fallback alike."""
    tiny_llama_dir(tmp_path / "llama")
    state = {k: v.astype(np.float16) for k, v in load_state_dict(tmp_path / "llama").items()}
    save_state_dict(state, tmp_path / "llama")
    full = AutoModelForCausalLM.from_pretrained(tmp_path / "llama")
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "llama", dtype="float16")
    assert isinstance(half.lm_head, HalfLinear)
    ids = paddle.to_tensor([[1, 5, 9, 2, 7, 3]])
    with paddle.no_grad():
        expected = full(ids).logits.numpy()
        atol = 1e-5 * np.abs(expected).max()  # summation order: relative to the logits' scale
        np.testing.assert_allclose(half(ids).logits.numpy(), expected, rtol=1e-5, atol=atol)
        monkeypatch.setenv("PADDLE_BELLE_KERNELS", "0")
        np.testing.assert_allclose(half(ids).logits.numpy(), expected, rtol=1e-5, atol=atol)
    monkeypatch.delenv("PADDLE_BELLE_KERNELS")
    half.save_pretrained(tmp_path / "saved")  # weights as held: half Linears and embedding, float32 norms
    saved = load_state_dict(tmp_path / "saved")
    assert saved["llama.layers.0.mlp.up_proj.weight"].dtype == np.float16
    assert saved["llama.norm.weight"].dtype == np.float32 and read_config(tmp_path / "saved")["dtype"] == "float16"
    again = AutoModelForCausalLM.from_pretrained(tmp_path / "saved", dtype="float16")
    with paddle.no_grad():
        np.testing.assert_allclose(again(ids).logits.numpy(), expected, rtol=1e-5, atol=atol)


def test_the_tied_head_reads_the_half_embedding_through_the_kernel(monkeypatch):
    if kernels.cpu_kernels() is None:
        pytest.skip("the native CPU kernels could not be built here (no C++ compiler?)")
    calls = []
    real = kernels.rows_matmul
    monkeypatch.setattr(kernels, "rows_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    model = AutoModelForCausalLM.from_pretrained("belle-tiny-zh", dtype="bfloat16")
    with paddle.no_grad():
        model(paddle.to_tensor([[1, 2, 3]]))
    assert calls
