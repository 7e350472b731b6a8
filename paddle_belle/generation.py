"""Text generation: greedy and sampling with HF transformers' semantics, a preallocated KV cache, presets,
stop strings, streaming.

Logits go through the same steps, in the same order, as transformers 4.46: repetition penalty (over prompt and
generated tokens), min_new_tokens (EOS masked), then for sampling temperature -> top-k -> top-p, and a draw.
Draws use a numpy Generator seeded per call, so a seed gives the same text on every device.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import paddle
import paddle.nn.functional as F

from paddle_belle.presets import (PRESETS, GenerationConfig, make_config,  # noqa: F401  (re-exported)
                                  temperature_settings)
from paddle_belle.prompts import ReplyText


def prepare_tokenizer(tokenizer, padding_side: str | None = "left"):
    """Left padding for batched generation (None keeps the tokenizer's own, as training does), and a pad token
    where there is none (PaddleNLP's LlamaTokenizer; padding is masked out anyway)."""
    tokenizer.padding_side = padding_side or tokenizer.padding_side
    if tokenizer.pad_token_id is None:  # not pad_token: PaddleNLP logs an ERROR line when it is unset
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
    return tokenizer


def as_ids(ids):
    """int64 token ids as a paddle Tensor. A Tensor is not passed through paddle.to_tensor again: Paddle warns
    ("To copy construct from a tensor ...", paddle/tensor/creation.py) and copies it."""
    if isinstance(ids, paddle.Tensor):
        return ids if ids.dtype == paddle.int64 else ids.astype("int64")
    return paddle.to_tensor(ids, dtype="int64")


# ----------------------------------------------------------------------------------------- logits steps
def apply_repetition_penalty(scores, ids, penalty: float):
    """HF's rule: a seen token's logit is divided by ``penalty`` if positive, multiplied if negative."""
    seen = paddle.take_along_axis(scores, ids, axis=1)
    seen = paddle.where(seen < 0, seen * penalty, seen / penalty)
    return paddle.put_along_axis(scores, ids, seen, axis=1)


def top_k_filter(scores, k: int):
    k = min(k, scores.shape[-1])
    kth = paddle.topk(scores, k, axis=-1)[0][:, -1:]
    return paddle.where(scores < kth, paddle.full_like(scores, float("-inf")), scores)


def top_p_filter(scores, p: float):
    """Keep the smallest set of tokens whose probabilities sum to at least ``p`` (always the most likely one)."""
    sorted_scores = paddle.sort(scores, axis=-1)  # ascending, as HF
    order = paddle.argsort(scores, axis=-1)
    cumulative = F.softmax(sorted_scores, axis=-1).cumsum(-1)
    remove = (cumulative <= 1 - p).astype("int32")  # int32: put_along_axis has no bool kernel on CPU
    remove[:, -1] = 0
    mask = paddle.put_along_axis(paddle.zeros_like(remove), order, remove, axis=1).astype("bool")
    return paddle.where(mask, paddle.full_like(scores, float("-inf")), scores)


def argmax(scores) -> np.ndarray:
    """The index of each row's largest score (the first of equals), int64 numpy [batch]. On the CPU numpy's argmax
    on a zero-copy view: Paddle 3.3.1's CPU argmax took 210 us for a row of 250,880 (bloom-560m's vocabulary; 3.4 ms
    for 16 rows), numpy's 40 (1.6 ms)."""
    if scores.place.is_cpu_place() and scores.dtype in (paddle.float32, paddle.float16):  # numpy has no bfloat16
        return np.from_dlpack(scores.detach()).argmax(-1).astype(np.int64)
    return scores.argmax(-1).numpy()


def next_tokens(scores, config: GenerationConfig, rng: np.random.Generator | None):
    """One token per row from float32 ``scores`` [batch, vocab] that went through penalty and min-tokens."""
    if not config.do_sample:
        return paddle.to_tensor(argmax(scores))
    if config.temperature != 1.0:
        scores = scores / config.temperature
    if config.top_k:
        scores = top_k_filter(scores, config.top_k)
    if config.top_p < 1.0:
        scores = top_p_filter(scores, config.top_p)
    cumulative = F.softmax(scores, axis=-1).cumsum(-1)
    # Inverse-CDF draw with u in (0, 1]: u = 0 could pick a token of probability 0; clip guards float rounding.
    u = paddle.to_tensor(1.0 - rng.random((scores.shape[0], 1)), dtype="float32") * cumulative[:, -1:]
    return (cumulative < u).astype("int64").sum(-1).clip(max=scores.shape[-1] - 1)


# ------------------------------------------------------------------------------------------------ the loop
def stream(model, input_ids, attention_mask=None, config: GenerationConfig | None = None,
           tokenizer=None, scores: list | None = None, reasons: list | None = None) -> Iterator[np.ndarray]:
    """Yield the next token of every row, [batch] int64 numpy, until every row is done.

    A row is done at EOS, at a stop string (needs ``tokenizer``), or at max_new_tokens; done rows yield the pad
    id; a list ``reasons`` gets why each row ended ("eos", "stop", "length"; None till then). Batches are
    left-padded: ``attention_mask`` marks the real tokens (default: all of them). If ``scores`` is a list, each
    step appends the log-probability of the chosen tokens (after the repetition penalty).
    """
    config = config or GenerationConfig()
    input_ids = as_ids(input_ids)
    b, prompt_len = input_ids.shape
    eos = config.eos_token_id if config.eos_token_id is not None else model.config.eos_token_id
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    pad = config.pad_token_id if config.pad_token_id is not None else model.config.pad_token_id
    pad = pad if pad is not None else (eos[0] if eos else 0)
    if config.stop_strings and tokenizer is None:
        raise ValueError("stop_strings need the tokenizer (generate(..., tokenizer=tok))")
    rng = np.random.default_rng(config.seed) if config.do_sample else None

    total = prompt_len + config.max_new_tokens
    mask = paddle.ones([b, total], dtype="int64")
    if attention_mask is not None:
        mask[:, :prompt_len] = as_ids(attention_mask)
    # every token so far, for the repetition penalty; host-side, so a step costs no device writes or slices
    ids = np.full([b, total], pad, dtype=np.int64)
    ids[:, :prompt_len] = input_ids.numpy()
    cache = model.new_cache(b, total)
    reasons = reasons if reasons is not None else []
    reasons[:] = [None] * b

    step_input, length = input_ids, prompt_len
    for step in range(config.max_new_tokens):
        # Gradients off for the step, not across the yield: a generator suspended inside no_grad leaves it off in the
        # caller's code, and two interleaved streams (or one dropped while another runs) restore each other's saved
        # state, so a step could run with gradients on: bloom-560m float32, 74 -> 173 ms a step (benchmarks/steps.py).
        with paddle.no_grad():
            out = model(step_input, attention_mask=mask[:, :length], cache=cache, last_only=True)
            logits = out.logits[:, -1]
            logits = logits if logits.dtype == paddle.float32 else logits.astype("float32")
            if config.repetition_penalty != 1.0:
                seen = paddle.to_tensor(ids[:, :length])
                logits = apply_repetition_penalty(logits, seen, config.repetition_penalty)
            if step < config.min_new_tokens and eos:
                logits[:, eos] = float("-inf")
            chosen = next_tokens(logits, config, rng)
            if scores is not None:
                scores.append(paddle.take_along_axis(F.log_softmax(logits, -1), chosen[:, None], 1)[:, 0].numpy())
            done = np.array([reason is not None for reason in reasons])
            token = np.where(done, pad, chosen.numpy())
            ids[:, length] = token
            for row in np.flatnonzero(~done):  # before the yield, so a consumer sees why a row ended with its token
                if token[row] in eos:
                    reasons[row] = "eos"
                elif _ends_with_stop(tokenizer, ids[row, prompt_len : length + 1], config.stop_strings):
                    reasons[row] = "stop"
                elif step == config.max_new_tokens - 1:
                    reasons[row] = "length"
        yield token
        if None not in reasons:
            return
        step_input, length = paddle.to_tensor(token[:, None]), length + 1


def replies(model, tokenizer, input_ids, attention_mask=None, config=None, strip=False, texts=None) -> Iterator[list]:
    """Each step, the newly printable text of every row ("" for none), until every row has ended. ``strip`` drops
    the whitespace a chat reply begins with. If ``texts`` is a list, it holds each row's prompts.ReplyText."""
    config, texts, reasons = config or GenerationConfig(), texts if texts is not None else [], []
    decode = lambda ids: tokenizer.decode(ids, skip_special_tokens=True)  # noqa: E731
    texts[:] = [ReplyText(config.stop_strings, decode, strip) for _ in range(len(input_ids))]
    for token in stream(model, input_ids, attention_mask, config, tokenizer, reasons=reasons):
        yield [t.add(token[row], reasons[row]) if t.finish_reason is None else "" for row, t in enumerate(texts)]
        if all(t.finish_reason for t in texts):  # a stop string in the text, which the loop's check may miss
            return


def _ends_with_stop(tokenizer, tokens: np.ndarray, stops: list[str]) -> bool:
    if not stops:
        return False
    # Decoding the last few tokens is enough: a stop string spans at most as many tokens as it has characters.
    tail = tokenizer.decode(tokens[-max(len(s) for s in stops) - 1 :].tolist(), skip_special_tokens=False)
    return any(s in tail for s in stops)


def generate(model, input_ids, attention_mask=None, config: GenerationConfig | None = None, tokenizer=None,
             streamer=None):
    """HF-style: the full sequences [batch, prompt + new] (done rows padded), as a paddle Tensor."""
    input_ids = as_ids(input_ids)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    steps = []
    for token in stream(model, input_ids, attention_mask, config, tokenizer):
        steps.append(token)
        if streamer is not None:
            streamer.put(paddle.to_tensor(token))
    if streamer is not None:
        streamer.end()
    return paddle.concat([input_ids, paddle.to_tensor(np.stack(steps, axis=1))], axis=1)


def generate_paddlenlp_style(model, input_ids, attention_mask=None, decode_strategy="greedy_search", max_length=20,
                             min_length=0, top_k=0, top_p=1.0, temperature=1.0, repetition_penalty=1.0,
                             eos_token_id=None, pad_token_id=None, seed=None, **unused):
    """PaddleNLP 2.8.1's convention: ``max_length``/``min_length`` count new tokens, and the result is
    (new ids [batch, n], scores [batch, 1]) with scores the mean log-probability of each row's tokens."""
    if decode_strategy not in ("greedy_search", "sampling"):
        raise NotImplementedError(f"decode_strategy {decode_strategy!r} is not supported (greedy_search, sampling)")
    config = GenerationConfig(max_new_tokens=max_length, min_new_tokens=min_length, do_sample=decode_strategy == "sampling",
                              top_k=top_k, top_p=top_p, temperature=temperature, repetition_penalty=repetition_penalty,
                              eos_token_id=eos_token_id, pad_token_id=pad_token_id, seed=seed)
    logprobs = []
    steps = np.stack(list(stream(model, input_ids, attention_mask, config, scores=logprobs)), axis=1)
    logprobs = np.stack(logprobs, axis=1)
    # a row's steps after its EOS are padding, not part of its score
    is_eos = np.isin(steps, np.atleast_1d(eos_token_id if eos_token_id is not None else model.config.eos_token_id))
    live = np.cumsum(is_eos, axis=1) - is_eos == 0  # no EOS before this step
    mean = (logprobs * live).sum(1, keepdims=True) / live.sum(1, keepdims=True)
    return paddle.to_tensor(steps), paddle.to_tensor(mean.astype("float32"))
