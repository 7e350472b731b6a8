"""Sliding-window perplexity, the way GPTQ (datautils + llama_eval) and llama.cpp's ``perplexity`` compute it.

The text is tokenized once; windows of ``seqlen`` tokens start every ``stride`` tokens. Every token is predicted
exactly once, from the window that first reaches it: with ``stride == seqlen`` (the default, GPTQ's evaluation)
the windows are disjoint and each one's first token has no prediction; a smaller stride gives later tokens more
context (transformers' "perplexity of fixed-length models"). perplexity = exp(mean negative log-likelihood).
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import paddle
from tqdm.auto import tqdm


def load_encoder(model_dir):
    """text -> token ids for a checkpoint directory, by our AutoTokenizer."""
    from paddle_belle.tokenizer import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    return lambda text: tokenizer(text)["input_ids"]


def windows(n_tokens: int, seqlen: int, stride: int | None = None):
    """(begin, end, first scored position) of each window over ``n_tokens`` tokens."""
    stride = stride or seqlen
    if seqlen < 2 or not 0 < stride <= seqlen:
        raise ValueError(f"need seqlen >= 2 and 0 < stride <= seqlen (got seqlen {seqlen}, stride {stride})")
    if n_tokens < 2:
        raise ValueError(f"{n_tokens} token(s): perplexity needs at least 2")
    out, scored = [], 1  # position 0 is never predicted
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + seqlen, n_tokens)
        out.append((begin, end, max(scored, begin + 1)))
        scored = end
        if end == n_tokens:
            break
    return out


@paddle.no_grad()
def perplexity(model, ids, seqlen: int = 2048, stride: int | None = None, progress: bool = True) -> dict:
    """{"perplexity", "tokens" (predicted), "nll" (mean, nats)} of ``model`` over the token ids."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    total, count = 0.0, 0
    for begin, end, first in tqdm(windows(ids.size, seqlen, stride), desc="perplexity", unit="window",
                                  disable=None if progress else True):
        window = paddle.to_tensor(ids[begin:end][None])
        labels = np.full([1, end - begin], -100, dtype=np.int64)
        # Labels are shifted (PaddleNLP's convention): label[t] is the token after input[t].
        labels[0, first - 1 - begin : end - 1 - begin] = ids[first:end]
        n = end - first
        loss = model(window, labels=paddle.to_tensor(labels)).loss
        total += float(loss) * n
        count += n
    nll = total / count
    return {"perplexity": math.exp(nll), "tokens": count, "nll": nll}


def perplexity_of_file(model_dir, data, seqlen: int = 2048, stride: int | None = None, threads: int | None = None,
                       start: float = 0.0, stop: float = 1.0) -> dict:
    """Perplexity of the checkpoint at ``model_dir`` on the text file ``data`` (its [start, stop) fraction of
    tokens, so that a calibration part and an evaluation part of one file can be kept apart)."""
    from paddle_belle.auto import AutoModelForCausalLM

    try:
        text = Path(data).read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{data}: not UTF-8 text ({e})") from None
    ids = load_encoder(model_dir)(text)
    ids = ids[int(len(ids) * start) : int(len(ids) * stop)]
    model = AutoModelForCausalLM.from_pretrained(model_dir, threads=threads)
    return perplexity(model, ids, seqlen, stride)
