"""generate() against transformers' generate, the sampling steps by construction, and why each row ended."""
from types import SimpleNamespace

import numpy as np
import paddle
import pytest
import torch
from paddlenlp.generation import TextIteratorStreamer
from reference import tiny_belle_dir, tiny_bloom, tiny_llama

from paddle_belle import AutoTokenizer
from paddle_belle.generation import (PRESETS, GenerationConfig, greedy_token, make_config, nucleus, pick, replies,
                                     stream)

IDS = np.random.default_rng(0).integers(4, 101, (2, 7))
MASK = np.ones_like(IDS)
MASK[1, :3] = 0
IDS[1, :3] = 3  # left padding with the pad id


@pytest.mark.parametrize("arch", ["bloom", "llama"])
def test_greedy_ids_equal_transformers(arch):
    hf, ours = tiny_bloom(6, 0.5) if arch == "bloom" else tiny_llama(0.5, num_key_value_heads=2)
    kwargs = dict(max_new_tokens=24, do_sample=False, repetition_penalty=1.2, pad_token_id=3, eos_token_id=2)
    ref = hf.generate(torch.tensor(IDS), attention_mask=torch.tensor(MASK), **kwargs).numpy()
    out = ours.generate(paddle.to_tensor(IDS), attention_mask=paddle.to_tensor(MASK), **kwargs).numpy()
    np.testing.assert_array_equal(out, ref)


def test_eos_ends_a_row_and_pads_it():
    hf, ours = tiny_llama(0.5)
    first = ours.generate(IDS[:1], max_new_tokens=6, do_sample=False).numpy()[0, 7:]
    eos = int(first[2])  # pretend the third generated token is EOS
    out = ours.generate(IDS, attention_mask=MASK, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0).numpy()
    assert out[0, 7:10].tolist() == first[:3].tolist() and (out[0, 10:] == 0).all()
    ref = hf.generate(torch.tensor(IDS), attention_mask=torch.tensor(MASK), max_new_tokens=6, do_sample=False,
                      eos_token_id=eos, pad_token_id=0).numpy()
    np.testing.assert_array_equal(out, ref)
    held = ours.generate(IDS[:1], max_new_tokens=6, min_new_tokens=6, do_sample=False, eos_token_id=eos).numpy()[0, 7:]
    assert eos not in held.tolist() and len(held) == 6


def test_top_k_1_sampling_is_greedy():
    _, ours = tiny_bloom(4, 0.5)
    greedy = ours.generate(IDS, attention_mask=MASK, max_new_tokens=10, do_sample=False).numpy()
    sampled = ours.generate(IDS, attention_mask=MASK, max_new_tokens=10, do_sample=True, top_k=1, seed=7).numpy()
    np.testing.assert_array_equal(sampled, greedy)


def test_temperature_towards_zero_is_greedy():
    _, ours = tiny_bloom(4, 0.5)
    greedy = ours.generate(IDS, attention_mask=MASK, max_new_tokens=10, do_sample=False).numpy()
    cold = ours.generate(IDS, attention_mask=MASK, max_new_tokens=10, do_sample=True, temperature=1e-4, seed=3).numpy()
    np.testing.assert_array_equal(cold, greedy)


def test_same_seed_same_text_other_seed_other_text():
    _, ours = tiny_bloom(4, 0.02)  # flat distributions: sampling really varies
    a, b, c = (ours.generate(IDS, attention_mask=MASK, preset="belle-train", max_new_tokens=12, seed=s).numpy()
               for s in (1, 1, 2))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_top_p_keeps_exactly_the_smallest_nucleus():
    probs = np.array([[0.5, 0.2, 0.15, 0.1, 0.05]], dtype="float32")
    for p, kept in ((0.5, 1), (0.51, 2), (0.7, 2), (0.71, 3), (0.85, 3), (0.86, 4), (1.0, 5)):
        ids, chances = nucleus(np.log(probs[0]), GenerationConfig(do_sample=True, top_p=p))
        assert ids.tolist() == list(range(kept)), (p, ids)  # the most likely ones
        np.testing.assert_allclose(chances, probs[0, :kept] / probs[0, :kept].sum(), rtol=1e-6)
    ids, _ = nucleus(np.log(np.array([0.1, 0.3, 0.2, 0.3, 0.1], "float32")), GenerationConfig(do_sample=True, top_k=2))
    assert ids.tolist() == [1, 3]
    ids, _ = nucleus(np.log(np.array([0.1, 0.3, 0.2, 0.3, 0.1], "float32")), GenerationConfig(do_sample=True, top_k=3))
    assert ids.tolist() == [1, 2, 3]


def test_draws_follow_the_distribution():
    probs = np.array([0.1, 0.2, 0.3, 0.4], dtype="float32")
    config, rng = GenerationConfig(do_sample=True), np.random.default_rng(0)
    draws = np.array([pick(np.log(probs), config, rng) for _ in range(4000)])
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / 4000, probs, atol=0.03)


def test_presets_and_overrides():
    card = PRESETS["belle-card"]
    assert (card.top_k, card.top_p, card.temperature, card.repetition_penalty, card.max_new_tokens) == (30, 0.85, 0.35, 1.2, 200)
    assert (PRESETS["belle-train"].top_p, PRESETS["belle-gradio"].max_new_tokens) == (0.6, 512)
    assert make_config("belle-card", max_new_tokens=5, top_k=None).top_k == 30
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        make_config("nope")
    with pytest.raises(TypeError, match="unknown generation argument"):
        make_config(None, beams=3)


@pytest.mark.parametrize("setting, message", [
    (dict(top_k=-3), "top_k must be a whole number >= 0 (0: off), not -3"),
    (dict(top_k=2.5), "top_k must be a whole number >= 0 (0: off), not 2.5"),
    (dict(top_p=1.5), "top_p must be in (0, 1] (1: off), not 1.5"),
    (dict(temperature=float("nan")), "temperature must be >= 0, not nan"),
    (dict(repetition_penalty=0), "repetition_penalty must be > 0 (1: off), not 0"),
    (dict(max_new_tokens=0), "max_new_tokens must be a whole number >= 1, not 0"),
    (dict(min_new_tokens=-1), "min_new_tokens must be a whole number >= 0, not -1"),
    (dict(temperature=0), "temperature must be > 0 when sampling (do_sample=False is greedy)"),
    (dict(seed=-1), "seed must be a whole number >= 0, not -1"),
])
def test_bad_settings_are_refused_by_name(setting, message):
    """Before, top_k=-3 reached paddle.topk and came back as Paddle's own error."""
    with pytest.raises(ValueError) as error:
        make_config("belle-card", **setting)
    assert str(error.value) == message


def test_paddlenlp_style_call_keeps_its_return_convention():
    _, ours = tiny_llama(0.5)
    hf_style = ours.generate(IDS, attention_mask=MASK, max_new_tokens=5, do_sample=False).numpy()
    ids, scores = ours.generate(paddle.to_tensor(IDS), attention_mask=paddle.to_tensor(MASK),
                                decode_strategy="greedy_search", max_length=5)
    np.testing.assert_array_equal(ids.numpy(), hf_style[:, 7:])
    assert scores.shape == [2, 1] and (scores.numpy() < 0).all()
    with pytest.raises(NotImplementedError, match="beam_search"):
        ours.generate(IDS, decode_strategy="beam_search")


def test_streamer_and_stop_strings(tmp_path):
    model = tiny_belle_dir(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    ids = tok("Human: 你好\n\nAssistant:", return_tensors="pt")["input_ids"]
    streamer = TextIteratorStreamer(tok, skip_prompt=True)
    full = model.generate(ids, max_new_tokens=30, do_sample=False, streamer=streamer)
    streamed = "".join(streamer)
    new_text = tok.decode(full.numpy()[0, ids.shape[1]:].tolist())
    assert streamed == new_text and len(new_text) > 0
    stop = new_text[len(new_text) // 2 : len(new_text) // 2 + 2]  # a string the greedy reply will produce
    stopped = model.generate(ids, max_new_tokens=30, do_sample=False, stop_strings=[stop], tokenizer=tok).numpy()
    stopped_text = tok.decode(stopped[0, ids.shape[1]:].tolist())
    assert stop in stopped_text and len(stopped[0]) < len(full.numpy()[0])
    with pytest.raises(ValueError, match="stop_strings need the tokenizer"):
        model.generate(ids, max_new_tokens=3, stop_strings=["x"])


class Scripted:
    """A stand-in model whose rows generate fixed tokens (greedy), to end each row a different way."""

    config = SimpleNamespace(eos_token_id=2, pad_token_id=0)

    def __init__(self, rows):
        self.rows, self.step = np.array(rows), 0

    def new_cache(self, batch, length):
        return None

    def __call__(self, input_ids, attention_mask=None, cache=None, last_only=True):
        logits = np.zeros([len(self.rows), 1, 16], dtype="float32")
        logits[np.arange(len(self.rows)), 0, self.rows[:, self.step]] = 1.0
        self.step += 1
        return SimpleNamespace(logits=paddle.to_tensor(logits))


class Letters:
    """A stand-in tokenizer: token i is the i-th character (0, pad, and 2, EOS, are special)."""

    def decode(self, ids, skip_special_tokens=False):
        return "".join("_a_你好Hu!xyz"[i] for i in ids if not (skip_special_tokens and i in (0, 2)))


ROWS = [[3, 4, 2, 4, 4], [3, 5, 6, 4, 4], [3, 4, 4, 4, 4]]  # 你好 then EOS; 你 then "Hu"; 你好好好 to the end


def test_each_row_says_why_it_ended():
    config = GenerationConfig(max_new_tokens=4, stop_strings=["Hu"])
    reasons, steps, seen = [], [], []
    for token in stream(Scripted(ROWS), np.zeros([3, 2]), config=config, tokenizer=Letters(), reasons=reasons):
        steps.append(token.tolist())
        seen.append(list(reasons))
    assert steps == [[3, 3, 3], [4, 5, 4], [2, 6, 4], [0, 0, 4]]  # ended rows yield the pad id
    # a row's reason is there when its last token is
    assert seen == [[None] * 3, [None] * 3, ["eos", "stop", None], ["eos", "stop", "length"]]

    texts = []
    chunks = list(replies(Scripted(ROWS), Letters(), np.zeros([3, 2]), config=config, texts=texts))
    assert chunks == [["你", "你", "你"], ["好", "", "好"], ["", "", "好"], ["", "", "好"]]
    assert [(t.text, t.finish_reason, len(t.tokens)) for t in texts] == [
        ("你好", "eos", 3), ("你", "stop", 3), ("你好好好", "length", 4)]


def test_sampling_candidates_match_transformers_warpers():
    """nucleus() against transformers' own temperature -> top-k -> top-p warpers. Ties at the k-th score are kept
    (both); at top-p's edge transformers' order among equals is torch.sort's (unstable), so no ties there."""
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    rng = np.random.default_rng(5)
    for temperature, top_k, top_p in ((0.35, 30, 0.85), (0.9, 30, 0.6), (1.0, 0, 0.75), (0.7, 8, 1.0)):
        scores = rng.normal(0, 3, 20000).astype("float32")  # over 256 x top_k: top_k_ids's block maxima
        scores = np.round(scores, 1) if top_p == 1 else scores  # rounded: ties at the k-th
        ref = torch.tensor(scores[None])
        for warper in (TemperatureLogitsWarper(temperature), TopKLogitsWarper(top_k) if top_k else None,
                       TopPLogitsWarper(top_p) if top_p < 1 else None):
            ref = warper(None, ref) if warper else ref
        ref = torch.softmax(ref, -1)[0].numpy()
        ids, probs = nucleus(scores, GenerationConfig(do_sample=True, temperature=temperature, top_k=top_k, top_p=top_p))
        assert ids.tolist() == np.flatnonzero(ref).tolist()
        np.testing.assert_allclose(probs, ref[ids], rtol=1e-5)


def test_greedy_token_matches_transformers_processors():
    """The Batcher's greedy choice (no copy of the row) against transformers' repetition-penalty and min-new-tokens
    processors and torch's argmax: rows whose best id is unseen, seen (penalized) or EOS, ties included (rounded
    scores, ids seen several times)."""
    from transformers.generation.logits_process import (MinNewTokensLengthLogitsProcessor,
                                                        RepetitionPenaltyLogitsProcessor)
    rng = np.random.default_rng(6)
    for trial in range(300):
        scores = np.round(rng.normal(0, 2, 500), 0 if trial % 3 else 2).astype("float32")
        seen = rng.integers(0, 500, rng.integers(0, 40))
        if trial % 4 == 0:  # the row's best among the seen ids
            seen = np.append(seen, scores.argmax())
        eos, penalty = [int(scores.argmax())] if trial % 5 == 0 else [2], (1.0, 1.2, 0.8)[trial % 3]
        masked = eos if trial % 2 else ()
        ref = torch.tensor(scores[None])
        if len(seen):
            ref = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor(seen[None]), ref)
        if masked:
            ref = MinNewTokensLengthLogitsProcessor(0, 1, eos)(torch.zeros([1, 0], dtype=torch.long), ref)
        config = GenerationConfig(repetition_penalty=penalty)
        assert greedy_token(scores, config, seen, masked) == int(ref[0].argmax()), trial


def test_interleaved_streams_compute_without_gradients_and_leave_the_caller_alone():
    # A generator suspended inside no_grad would leave gradients off in the caller between tokens, and two
    # interleaved streams (one dropped while the other runs) would restore each other's saved state.
    hf, ours = tiny_bloom(4, 0.5)
    modes = []
    ours.register_forward_pre_hook(lambda layer, inputs: modes.append(paddle.is_grad_enabled()))
    config = GenerationConfig(max_new_tokens=6, do_sample=False, eos_token_id=[])
    first = stream(ours, IDS[:1], config=config)
    next(first)
    assert paddle.is_grad_enabled()
    second = stream(ours, IDS[:1], config=config)
    got = [next(second)]
    del first  # closed while the second is suspended
    got += list(second)
    assert paddle.is_grad_enabled() and modes and not any(modes)
    ref = hf.generate(torch.tensor(IDS[:1]), max_new_tokens=6, do_sample=False).numpy()[0, 7:]
    assert np.concatenate(got).tolist() == ref.tolist()
