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
# On the host, in numpy, one row at a time: a row's settings are its own (the Batcher's rows are different requests),
# and the steps touch few of a row's entries. Penalty and min-tokens change the seen and EOS ids only; top-k selects
# its candidates from block maxima (top_k_ids), and temperature, top-p and the draw then work on those k alone. The
# same steps as Paddle ops over whole rows (topk, sort, argsort, softmax, cumsum, put_along_axis of 250,880 logits,
# bloom's vocabulary) took 0.37-0.68 s of a 16-row step with belle-card's settings; this, 9 ms.
def host(scores) -> np.ndarray:
    """``scores`` [batch, vocab] as float32 numpy, read-only: on the CPU a zero-copy view (no copy of 16 x 250,880
    logits a step; and numpy's argmax of such a row took 40 us, Paddle 3.3.1's CPU argmax 210), elsewhere a copy."""
    if scores.place.is_cpu_place() and scores.dtype == paddle.float32:
        return np.from_dlpack(scores.detach())
    return scores.astype("float32").numpy()


def adjust(scores: np.ndarray, config: GenerationConfig, seen=None, eos=()) -> np.ndarray:
    """One row's ``scores`` [vocab] after the repetition penalty over ``seen`` (ids of its prompt and reply: HF's
    rule, a seen token's logit divided by the penalty if positive, multiplied if negative) and with the ``eos`` ids
    at -inf (before min_new_tokens). A changed copy: ``scores`` may be a read-only view of the model's logits."""
    penalty = np.float32(config.repetition_penalty)
    penalize = penalty != 1 and seen is not None and len(seen) > 0
    if not penalize and not len(eos):
        return scores
    scores = scores.copy()
    if penalize:
        old = scores[seen]  # repeated ids get the same value: each is changed once
        scores[seen] = np.where(old < 0, old * penalty, old / penalty)
    scores[list(eos)] = -np.inf
    return scores


def top_k_ids(scores: np.ndarray, k: int, block: int = 256) -> np.ndarray:
    """Ascending ids of the scores at least the k-th largest (ties kept, as HF's top-k). The k-th largest of the
    maxima of blocks of ``block`` scores is at most the k-th largest score (k blocks hold a score at least as
    large), so the few scores reaching it hold the top k: np.partition of those, not of the whole row (2 ms for
    250,880 scores, this 0.2)."""
    candidates = np.arange(len(scores))
    n = len(scores) // block * block
    if n >= block * k:
        maxima = np.append(scores[:n].reshape(-1, block).max(1), scores[n:].max(initial=-np.inf))
        candidates = np.flatnonzero(scores >= np.partition(maxima, -k)[-k])
    chosen = scores[candidates]
    return candidates[chosen >= np.partition(chosen, -k)[-k]]


def nucleus(scores: np.ndarray, config: GenerationConfig) -> tuple[np.ndarray, np.ndarray]:
    """The ids a draw may pick from one row's ``scores`` [vocab] (ascending) and their probabilities, in HF's order:
    temperature, top-k (ties with the k-th kept), top-p (the smallest set of tokens whose probabilities sum to at
    least ``top_p``; always the most likely one). A positive temperature keeps the order, so top-k picks first."""
    k = config.top_k
    ids = top_k_ids(scores, k) if k and k < len(scores) else np.arange(len(scores))
    logits = scores[ids] / np.float32(config.temperature)
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    if config.top_p < 1.0:
        order = np.argsort(probs, kind="stable")  # ascending, as HF
        drop = np.cumsum(probs[order]) <= 1 - config.top_p
        drop[-1] = False
        keep = np.ones(len(ids), bool)
        keep[order[drop]] = False
        ids, probs = ids[keep], probs[keep] / probs[keep].sum()
    return ids, probs


def pick(scores: np.ndarray, config: GenerationConfig, rng: np.random.Generator | None) -> int:
    """One row's next token from its adjusted ``scores`` [vocab]: the argmax (the first of equals), or a draw."""
    if not config.do_sample:
        return int(scores.argmax())
    ids, probs = nucleus(scores, config)
    cumulative = np.cumsum(probs)
    # Inverse-CDF draw with u in (0, 1]: u = 0 could pick a token of probability 0; the clip guards float rounding
    u = (1.0 - rng.random()) * cumulative[-1]
    return int(ids[min(np.searchsorted(cumulative, u), len(ids) - 1)])


def greedy_token(scores: np.ndarray, config: GenerationConfig, seen=None, eos=()) -> int:
    """``pick(adjust(scores, config, seen, eos), config, None)`` for a greedy ``config``, without adjust's copy of the
    row (1 MB of bloom's 250,880 logits, most of a row's token choice at 16 rows): only the seen and EOS ids change,
    so the argmax is the better of the row's own (if it is none of them) and theirs, the lower id on a tie."""
    penalty = np.float32(config.repetition_penalty)
    best = int(scores.argmax())
    penalized = np.unique(seen) if penalty != 1 and seen is not None and len(seen) else np.zeros(0, np.int64)
    at = np.searchsorted(penalized, best)
    if best in eos or at < len(penalized) and penalized[at] == best:  # the row's best changes: adjust's copy
        return int(adjust(scores, config, seen, eos).argmax())
    for e in eos:  # an EOS id at -inf wins nothing (np.isin: 30 us, these few compares 1-2)
        penalized = penalized[penalized != e]
    if not len(penalized):
        return best
    old = scores[penalized]  # ascending ids: argmax takes the lowest of equals
    new = np.where(old < 0, old * penalty, old / penalty)
    j = int(new.argmax())
    return int(penalized[j]) if new[j] > scores[best] or (new[j] == scores[best] and penalized[j] < best) else best


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
            rows = host(out.logits[:, -1])
            masked = eos if step < config.min_new_tokens else ()
            rows = [adjust(row, config, ids[i, :length], masked) for i, row in enumerate(rows)]
            chosen = np.array([pick(row, config, rng) for row in rows], np.int64)
            if scores is not None:
                scores.append(np.array([log_softmax(row)[c] for row, c in zip(rows, chosen)], np.float32))
            done = np.array([reason is not None for reason in reasons])
            token = np.where(done, pad, chosen)
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


def log_softmax(row: np.ndarray) -> np.ndarray:
    """Log-probabilities of one row of scores, in float64."""
    row = row.astype(np.float64)
    row = row - row.max()
    return row - np.log(np.exp(row).sum())


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
