"""Continuous batching: every request gets exactly the ids it gets alone, and transformers' generate gets."""
import contextlib

import numpy as np
import pytest
import torch
from reference import tiny_bloom, tiny_llama

from paddle_belle import AutoModelForCausalLM, AutoTokenizer, cpu, prompts
from paddle_belle.batching import Batcher, generate_all
from paddle_belle.generation import GenerationConfig, stream


@pytest.fixture(scope="module")
def belle():
    return AutoModelForCausalLM.from_pretrained("belle-tiny-zh"), AutoTokenizer.from_pretrained("belle-tiny-zh")


@contextlib.contextmanager
def head_rows(model):
    """The rows of each call of ``model``'s head while the block runs (a list that fills)."""
    rows = []
    model.lm_logits = lambda x, head=model.lm_logits: rows.append(x.shape[0]) or head(x)
    try:
        yield rows
    finally:
        del model.lm_logits


def alone(model, tok, ids, config, **kw):
    (_, request), = generate_all(Batcher(model, tok, rows=1, **kw), [ids], config)
    return request


@pytest.mark.parametrize("rows, chunk", [(3, 8), (4, 128), (6, 8)])
@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_batched_greedy_ids_equal_each_alone_and_transformers(arch, rows, chunk, belle, monkeypatch):
    # BLOOM's tied head as large ones are computed on the CPU: numpy's BLAS for one row (alone), the native kernel
    # for a decoding batch (cpu.KERNEL_HEAD_ROWS); a head this small would otherwise be a Paddle matmul
    monkeypatch.setattr(cpu, "NUMPY_HEAD_MIN", 0)
    hf, ours = tiny_bloom(6, 0.5) if arch == "bloom" else tiny_llama(0.5, num_key_value_heads=2,
                                                                       max_position_embeddings=128)
    rng = np.random.default_rng(1)
    lengths, new = [3, 11, 26, 40, 5, 17, 1], [12, 30, 7, 20, 25, 16, 9]
    ids = [rng.integers(4, 101, n).tolist() for n in lengths]
    configs = [GenerationConfig(max_new_tokens=n, eos_token_id=2, repetition_penalty=1.3 if i % 3 == 1 else 1.0,
                                min_new_tokens=5 if i == 4 else 0) for i, n in enumerate(new)]
    # 3, 4 or 6 rows for 7 requests: requests join as others leave (6: steps of 5-6 rows take the kernels' many-rows
    # loops, cpu_matmul.cc). 8-token chunks: long prompts are prefilled over
    # several steps between decoding steps of the others. 128: the first three prompts (3, 11 and 26 tokens) are the
    # rows of one prefill (padded to 26: 78 positions), the fourth (40: 160 with them) then alone
    batcher = Batcher(ours, belle[1], rows=rows, max_length=128, chunk=chunk)
    with head_rows(ours) as heads:
        got = {i: r.tokens for i, r in generate_all(batcher, ids, configs)}
    assert heads[:2] == ([1, 1] if chunk == 8 else [3, 1])
    assert max(heads) >= rows - 1  # steps with (nearly) every row busy: at 6 rows, 5-row ones
    for i, (prompt, config) in enumerate(zip(ids, configs)):
        ref = hf.generate(torch.tensor([prompt]), max_new_tokens=config.max_new_tokens, do_sample=False,
                          min_new_tokens=config.min_new_tokens, repetition_penalty=config.repetition_penalty,
                          eos_token_id=2, pad_token_id=3)[0, len(prompt):].tolist()
        assert got[i] == alone(ours, belle[1], prompt, config, max_length=128, chunk=8).tokens == ref, i
    assert 1 < batcher.rows_stepped / batcher.steps <= rows


def test_stops_seeds_and_a_cancelled_row(belle):
    model, tok = belle
    queries = ["你好", "写一首关于春天的诗", "请介绍一下中国的长城。" * 45, "1+1=?", "讲个故事"]
    ids = [tok(prompts.render("belle", [], q, tok.eos_token))["input_ids"] for q in queries]
    assert len(ids[2]) > 300  # the cache's columns grow (64 to 512), and the prompt takes 5 chunks
    greedy = GenerationConfig(max_new_tokens=40, repetition_penalty=1.3)  # over each row's own prompt and reply
    solo = [alone(model, tok, i, greedy, chunk=64) for i in ids]
    # a stop string from the middle of each greedy reply: the reply ends there, as it does alone
    configs = []
    for r in solo:
        text = r.text.text
        k = next(k for k in range(len(text) // 2, len(text) - 1) if text[k : k + 2].strip() == text[k : k + 2])
        configs.append(GenerationConfig(max_new_tokens=40 - len(configs), repetition_penalty=1.3,
                                        stop_strings=[text[k : k + 2]]))
    sampled = GenerationConfig(do_sample=True, temperature=0.9, top_k=30, top_p=0.9, repetition_penalty=1.2,
                               seed=7, max_new_tokens=30)
    other = GenerationConfig(do_sample=True, temperature=1.0, seed=8, max_new_tokens=50)
    expected = [alone(model, tok, i, c, chunk=64) for i, c in zip(ids, configs)]
    lone_sample = alone(model, tok, ids[0], sampled).tokens

    batcher = Batcher(model, tok, rows=3, chunk=64)
    requests = [batcher.add(i, c) for i, c in zip(ids, configs)]
    doomed = batcher.add(ids[1], other)  # cancelled mid-reply: its row goes to the next request at once
    for _ in range(6):
        batcher.step()
    seeded = batcher.add(ids[0], sampled)  # joins a batch already running, sampling among greedy and sampled rows
    while not doomed.tokens:
        batcher.step()
    busy = batcher.occupied
    batcher.cancel(doomed)
    assert (doomed.row, doomed.finish_reason, batcher.occupied) == (None, "cancelled", busy - 1)
    while batcher.busy:
        batcher.step()
    for r, e in zip(requests, expected):
        assert (r.tokens, r.text.text, r.finish_reason) == (e.tokens, e.text.text, e.finish_reason)
    assert [r.finish_reason for r in requests].count("stop") >= 3
    assert seeded.tokens == lone_sample and not any(batcher.slots)
    assert batcher.moves  # rows moved down when lower ones freed, with their caches


def test_alone_equals_generation_stream_and_a_prompt_too_long_is_reported(belle):
    model, tok = belle
    ids = tok(prompts.render("belle", [], "你好", tok.eos_token))["input_ids"]
    config = GenerationConfig(max_new_tokens=24, min_new_tokens=24)
    reference = [int(t[0]) for t in stream(model, np.array([ids]), config=config)]
    assert alone(model, tok, ids, config, chunk=4).tokens == reference
    results = dict(generate_all(Batcher(model, tok, rows=2, max_length=40), [ids, ids * 3], config))
    assert len(results[0].tokens) == 24 and "exceed the 40 positions" in str(results[1])


def test_prefill_chunks_before_the_last_compute_no_logits(belle):
    model, tok = belle
    ids = tok(prompts.render("belle", [], "请介绍一下中国的长城。" * 3, tok.eos_token))["input_ids"]
    assert len(ids) > 3 * 8  # four chunks of 8 at least
    config = GenerationConfig(max_new_tokens=6, min_new_tokens=6)
    reference = [int(t[0]) for t in stream(model, np.array([ids]), config=config)]
    heads, head = [], model.lm_logits
    model.lm_logits = lambda x: heads.append(x.shape[1]) or head(x)  # the positions each call computes logits for
    try:
        batcher = Batcher(model, tok, rows=2, chunk=8)
        request = batcher.add(ids, config)
        while not request.tokens:
            batcher.step()
        assert (request.prefilled, heads) == (len(ids), [1])  # the last chunk's last position only
        while batcher.busy:
            batcher.step()
    finally:
        del model.lm_logits
    assert request.tokens == reference and heads == [1] * 6  # then one position a decoding step


def test_a_request_not_yet_prefilled_moves_down_when_the_row_below_frees(belle):
    model, tok = belle
    first, second = (tok(prompts.render("belle", [], q, tok.eos_token))["input_ids"] for q in ("你好", "讲个故事"))
    config = GenerationConfig(max_new_tokens=8, min_new_tokens=8)
    batcher = Batcher(model, tok, rows=2, chunk=len(first))
    doomed, request = batcher.add(first, config), batcher.add(second, config)
    batcher.step()  # the chunk budget goes to the first prompt: the second has its row and nothing in the cache yet
    assert (request.row, request.prefilled) == (1, 0)
    batcher.cancel(doomed)
    while batcher.busy:
        batcher.step()
    assert batcher.moves == 1 and request.tokens == alone(model, tok, second, config).tokens


@pytest.mark.parametrize("bits", [4, 8])
def test_int8_activations_batched_greedy_ids_equal_each_alone(bits, belle, monkeypatch):
    """A quantized model with int8 activations (PADDLE_BELLE_INT8_ACTIVATIONS=1): decoding steps of 5-6 rows take the
    integer many-rows loop (cpu_matmul.cc imany_block), a request alone the one-row path; each request's greedy ids
    are the same either way (the int8 path computes a row's numbers whatever rows share the call)."""
    from paddle_belle import kernels
    from paddle_belle.quant import QuantConfig
    from paddle_belle.quant.quantize import quantize_model

    if kernels.cpu_kernels() is None:
        pytest.skip("the native CPU kernels are not available here")
    monkeypatch.setenv("PADDLE_BELLE_INT8_ACTIVATIONS", "1")
    _, ours = tiny_bloom(6, 0.5)
    quantize_model(ours, QuantConfig(bits=bits, group_size=32, method="rtn", embedding=f"int{bits}"), progress=False)
    rng = np.random.default_rng(2)
    ids = [rng.integers(4, 101, n).tolist() for n in (3, 11, 26, 40, 5, 17, 1)]
    configs = [GenerationConfig(max_new_tokens=n, eos_token_id=2) for n in (12, 30, 7, 20, 25, 16, 9)]
    batcher = Batcher(ours, belle[1], rows=6, max_length=128, chunk=8)
    with head_rows(ours) as heads:
        got = {i: r.tokens for i, r in generate_all(batcher, ids, configs)}
    assert sum(rows >= 5 for rows in heads) >= 5  # decoding steps of 5-6 rows
    for i, (prompt, config) in enumerate(zip(ids, configs)):
        assert got[i] == alone(ours, belle[1], prompt, config, max_length=128, chunk=8).tokens, i
