"""Our BLOOM against HF transformers' BLOOM from identical weights."""
import math

import numpy as np
import paddle
import pytest
import threadpoolctl
import torch
from reference import hf_logits, max_rel_diff, our_logits, tiny_bloom
from transformers.models.bloom.modeling_bloom import build_alibi_tensor

from paddle_belle import BloomConfig, BloomForCausalLM
from paddle_belle.cpu import set_cpu_threads
from paddle_belle.models.bloom import alibi_slopes

TOL = 1e-4
rng = np.random.default_rng(0)
IDS = rng.integers(4, 101, (2, 12))
MASK = np.ones_like(IDS)
MASK[1, :4] = 0  # second row left-padded by 4


def shifted(labels):
    """HF shifts labels inside the model; ours expects them shifted already (PaddleNLP convention)."""
    return np.concatenate([labels[:, 1:], np.full((labels.shape[0], 1), -100)], axis=1)


@pytest.mark.parametrize("n_head", [4, 6])
@pytest.mark.parametrize("std", [0.02, 0.5])
def test_logits_and_loss_match_hf(n_head, std):
    hf, ours = tiny_bloom(n_head, std)
    labels = np.where(MASK == 1, IDS, -100)
    ref = hf_logits(hf, IDS, MASK, labels)
    out = our_logits(ours, IDS, MASK, shifted(labels))
    real = MASK == 1  # padding queries have no meaningful output in either implementation
    assert max_rel_diff(out.logits.numpy()[real], ref.logits.numpy()[real]) <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL * max(1.0, float(ref.loss))
    assert out[0] is out.loss and ours(paddle.to_tensor(IDS))[0].shape == [2, 12, 101]


def test_left_padding_gives_the_unpadded_result():
    _, ours = tiny_bloom(6, 0.5)
    padded = our_logits(ours, IDS, MASK).logits.numpy()[1, 4:]
    alone = our_logits(ours, IDS[1:, 4:]).logits.numpy()[0]
    assert max_rel_diff(padded, alone) <= TOL


def test_post_layernorm_residual_matches_hf():
    hf, ours = tiny_bloom(4, 0.5, apply_residual_connection_post_layernorm=True)
    ref, out = hf_logits(hf, IDS).logits.numpy(), our_logits(ours, IDS).logits.numpy()
    assert max_rel_diff(out, ref) <= TOL
    _, plain = tiny_bloom(4, 0.5)
    assert max_rel_diff(our_logits(plain, IDS).logits.numpy(), ref) > TOL  # the flag really changes the model


@pytest.mark.parametrize("n_head", list(range(1, 17)) + [112])
def test_alibi_slopes_match_hf(n_head):
    hf = build_alibi_tensor(torch.ones(1, 2, dtype=torch.long), n_head, torch.float32)[:, 0, 1].numpy()
    np.testing.assert_allclose(alibi_slopes(n_head), hf, rtol=1e-6)


def test_kv_cache_reproduces_full_sequence_logits():
    _, ours = tiny_bloom(6, 0.5)
    full = our_logits(ours, IDS, MASK).logits.numpy()
    cache = ours.new_cache(batch_size=2, max_length=IDS.shape[1])
    prefill = 5
    steps = [our_logits(ours, IDS[:, :prefill], MASK[:, :prefill], cache=cache).logits.numpy()]
    for t in range(prefill, IDS.shape[1]):
        steps.append(our_logits(ours, IDS[:, t : t + 1], MASK[:, : t + 1], cache=cache).logits.numpy())
    incremental = np.concatenate(steps, axis=1)
    assert cache.length == IDS.shape[1]
    real = MASK == 1
    assert max_rel_diff(incremental[real], full[real]) <= TOL


def test_config_reads_hf_and_paddlenlp_field_names():
    hf_style = BloomConfig.from_dict(
        {"model_type": "bloom", "num_hidden_layers": 3, "num_attention_heads": 4, "n_embed": 16,
         "layer_norm_epsilon": 1e-6, "vocab_size": 50, "torch_dtype": "float16", "pad_token_id": 3}
    )
    paddle_style = BloomConfig.from_dict({"n_layer": 3, "n_head": 4, "hidden_size": 16, "dtype": "float16"})
    for c in (hf_style, paddle_style):
        assert (c.n_layer, c.num_hidden_layers, c.n_head, c.num_attention_heads, c.hidden_size) == (3, 3, 4, 4, 16)
        assert c.dtype == "float16"
    assert hf_style.layer_norm_epsilon == 1e-6 and hf_style.vocab_size == 50
    assert BloomConfig(num_hidden_layers=5, n_embed=24, num_attention_heads=3).n_layer == 5


def test_fresh_model_is_initialised_not_zeroed():
    # PaddleNLP 2.8.1's BLOOM _init_weights leaves every Linear weight zero; ours draws them with initializer_range.
    model = BloomForCausalLM(BloomConfig(vocab_size=64, hidden_size=32, n_layer=2, n_head=4, initializer_range=0.1))
    w = model.bloom.h[0].self_attention.query_key_value.weight.numpy()
    assert math.isclose(float(w.std()), 0.1, rel_tol=0.15)
    assert not model.bloom.h[0].self_attention.query_key_value.bias.numpy().any()
    assert (model.bloom.ln_f.weight.numpy() == 1).all()


def test_numpy_head_in_inference_matches_hf_and_training_keeps_gradients(monkeypatch):
    import paddle_belle.cpu as cpu

    monkeypatch.setattr(cpu, "NUMPY_HEAD_MIN", 0)  # every head takes the CPU inference path
    monkeypatch.setenv("PADDLE_BELLE_KERNELS", "0")  # without the kernels: one row through numpy's BLAS
    hf, ours = tiny_bloom(4, 0.5)
    ref = hf_logits(hf, IDS, MASK).logits.numpy()
    out = our_logits(ours, IDS, MASK).logits.numpy()  # under no_grad; several rows: Paddle's matmul
    real = MASK == 1
    assert max_rel_diff(out[real], ref[real]) <= TOL
    calls = []
    real_from_dlpack = np.from_dlpack
    monkeypatch.setattr(np, "from_dlpack", lambda t: calls.append(1) or real_from_dlpack(t))
    with paddle.no_grad():  # one row (a decoding step of one reply): numpy's BLAS
        single = ours(paddle.to_tensor(IDS[:1, :1])).logits.numpy()
    assert calls
    assert max_rel_diff(single[0], hf_logits(hf, IDS[:1, :1], MASK[:1, :1]).logits.numpy()[0]) <= TOL
    ours.train()  # with gradients the head stays a Paddle matmul, so the embedding still learns through it
    loss = ours(paddle.to_tensor(IDS), labels=paddle.to_tensor(IDS)).loss
    loss.backward()
    assert float(ours.bloom.word_embeddings.weight.grad.abs().sum()) > 0


def test_a_batched_decoding_step_goes_through_the_float32_kernel_and_matches_hf(monkeypatch):
    """Eight one-token rows (a batched decoding step's shape): the float32 Linears take the native kernel."""
    from paddle_belle import kernels

    calls = []
    real = kernels.dense_matmul
    monkeypatch.setattr(kernels, "dense_matmul", lambda *a, **k: calls.append(1) or real(*a, **k))
    hf, ours = tiny_bloom(4, 0.5)
    ids = IDS[:, :4].reshape(8, 1)
    out = our_logits(ours, ids).logits.numpy()
    assert len(calls) == 4 * 2 or kernels.cpu_kernels() is None  # 4 Linears a block, 2 blocks
    assert max_rel_diff(out, hf_logits(hf, ids).logits.numpy()) <= TOL


def test_threads_hold_paddle_and_numpy_blas_alike(tmp_path):
    """from_pretrained(threads=N) gives Paddle's kernels N threads and holds numpy's BLAS (the tied head) to N."""
    _, ours = tiny_bloom()
    ours.save_pretrained(tmp_path)
    try:
        BloomForCausalLM.from_pretrained(tmp_path, threads=1)
        blas = [i for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
    finally:
        set_cpu_threads()  # back to every core, for the tests that follow


def test_a_decoding_step_takes_the_large_tied_head_through_the_kernel(monkeypatch):
    """1-16 rows (a decoding step): the native kernel; a prompt's many rows: Paddle's matmul. Same logits."""
    import paddle_belle.cpu as cpu
    from paddle_belle import kernels

    if kernels.cpu_kernels() is None:
        pytest.skip("the native CPU kernels could not be built here (no C++ compiler?)")
    monkeypatch.setattr(cpu, "NUMPY_HEAD_MIN", 0)
    calls, real = [], kernels.rows_matmul
    monkeypatch.setattr(kernels, "rows_matmul", lambda x, e: calls.append(x.shape[0]) or real(x, e))
    embedding = paddle.randn([300, 32])
    for rows in (1, 3, 16, 17):
        x = paddle.randn([rows, 1, 32])
        with paddle.no_grad():
            np.testing.assert_allclose(cpu.tied_head(x, embedding).numpy(), x.numpy() @ embedding.numpy().T,
                                       rtol=1e-5, atol=1e-5)
    assert calls == [1, 3, 16]
