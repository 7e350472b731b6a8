"""Continuous batching: many independent replies decoded together, one batched forward pass per step.

Decoding is memory-bound: a step reads every weight once whether it serves one sequence or sixteen, so running
every active request's next token as one forward gives many replies for nearly the price of one (vLLM's and
llama.cpp's server loop). Used by `paddle-belle serve`, `generate --input-file` and eval's answering.

Each request owns a row of one preallocated KV cache. Rows are left-aligned: a row's tokens fill columns
[0, length) of its row, and a decoding step writes each row's new key/value at that row's own length (scatter_),
so rows of any lengths share the cache without padding in front. The attention mask marks each row's columns
[0, length]; ALiBi and RoPE positions are counted over the mask (models/base.py token_positions, models/bloom.py
alibi_bias), so a row computes what it would alone. A decoding step runs rows [0, highest busy row]: requests take
the lowest free row, and the highest busy row moves down (with its cache) when a row below it frees. New requests
are prefilled between decoding steps, at most ``chunk`` prompt positions a step, oldest request first: the prompts
that fit whole are the right-padded rows of one forward (their padding counted in the budget), with the head on each
prompt's last position only; a longer prompt is prefilled alone, a chunk a step (a chunk before its last computes no
logits). So a long prompt delays running streams by one chunk at most, and each request joins the batch with its
first token; it leaves at EOS, a stop string or its length, and its row is free for the
next request at once.

Sampling is per row (generation.py's steps, in HF's order) with the request's own settings and its own numpy
Generator, so a seeded request draws the same numbers whatever else shares the batch.
"""
from __future__ import annotations

import itertools
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import paddle

from paddle_belle import generation
from paddle_belle.prompts import ReplyText


class RowCache:
    """The model's cache interface (``length``, ``update``) over a KVCache whose rows have lengths of their own.

    Either one row ``row`` takes a chunk of new tokens from column ``start``; or rows [0, b) take one new token
    each at their own column ``columns[r]``, and attention then reads the first ``width`` columns of those rows; or
    the rows ``rows`` take whole prompts (right-padded) from column 0, which attend to their own new keys only."""

    def __init__(self, cache, width, row=None, start=None, columns=None, rows=None):
        self.cache, self.width, self.row, self.start, self.rows = cache, width, row, start, rows
        if columns is not None:  # a decoding step: row r, head h's new vector goes to column columns[r], which is row
            # (r * heads + h) * max_length + columns[r] of a layer's buffer viewed as [-1, head_dim]
            _, heads, length, _ = cache.keys[0].shape
            flat = (np.arange(len(columns))[:, None] * heads + np.arange(heads)) * length + np.asarray(columns)[:, None]
            self.index = paddle.to_tensor(flat.reshape(-1).astype(np.int64))
        self.columns = None if columns is None else paddle.to_tensor(np.asarray(columns, np.int64))
        self.length = 0  # CausalLM.forward advances it; positions come from the attention mask instead

    def buffers(self, layer):
        return self.cache.buffers(layer)

    def decode_columns(self, batch_size):
        """Each row's column for a decoding step's new key/value (models/base.py DecodeStep); None for a prefill."""
        return self.columns

    def update(self, layer, k, v):
        keys, values = self.cache.keys[layer], self.cache.values[layer]
        if self.rows is not None:  # a padded tail lands past its row's length: masked until the row overwrites it
            for i, r in enumerate(self.rows):
                keys[r : r + 1, :, : k.shape[2]] = k[i : i + 1]
                values[r : r + 1, :, : k.shape[2]] = v[i : i + 1]
            return k, v
        if self.row is not None:
            r, s = self.row, self.start
            keys[r : r + 1, :, s : s + k.shape[2]] = k
            values[r : r + 1, :, s : s + k.shape[2]] = v
            return keys[r : r + 1, :, : self.width], values[r : r + 1, :, : self.width]
        # scatter_ into a view of the buffer (view, not reshape: it fails rather than copy), not index_put_ with
        # (row, head, column) indices: Paddle 3.3.1's CPU index_put_ took ~170 us for 16 rows of bloom-560m, this ~10
        for buffer, new in ((keys, k), (values, v)):
            buffer.view([-1, new.shape[-1]]).scatter_(self.index, new.reshape([-1, new.shape[-1]]))
        return keys[: k.shape[0], :, : self.width], values[: k.shape[0], :, : self.width]


@dataclass(eq=False)
class Request:
    """One reply: its prompt ids, settings and text so far (``text.tokens`` are the generated ids). ``finish_reason``
    is "eos", "stop" (a stop string) or "length" once it has ended; "cancelled" if it was cancelled. ``tag`` is the
    caller's."""

    ids: list[int]
    config: generation.GenerationConfig
    text: ReplyText
    tag: object = None
    row: int | None = None
    prefilled: int = 0  # prompt tokens in the cache so far
    finish_reason: str | None = None
    order: int = 0  # arrival
    rng: np.random.Generator | None = field(default=None, repr=False)

    @property
    def tokens(self) -> list[int]:
        return self.text.tokens

    @property
    def length(self) -> int:
        """Tokens in the cache: the prompt, then each generated token but the last (the next step's input)."""
        return self.prefilled + max(len(self.tokens) - 1, 0)


class Batcher:
    """Up to ``rows`` replies generated together; more wait their turn (first come, first served). ``add`` a
    request, call ``step`` until ``busy`` is false; each step returns (request, new text) for every request that
    got a token, and a request whose ``finish_reason`` is set has left the batch. Not thread-safe: one thread
    drives it (Paddle's dygraph state is global, see serve/engine.py)."""

    def __init__(self, model, tokenizer, rows: int = 8, max_length: int = 2048, chunk: int = 128, columns: int = 64):
        if rows < 1 or chunk < 1:
            raise ValueError(f"rows and the prefill chunk must be >= 1 (got {rows}, {chunk})")
        self.model, self.tokenizer = model, generation.prepare_tokenizer(tokenizer)
        self.rows, self.max_length, self.chunk = rows, max_length, chunk
        self.slots: list[Request | None] = [None] * rows
        self.waiting: deque[Request] = deque()
        # ``columns`` first, then grown on demand (doubling, up to max_length): a full-context cache for every row
        # is rows x context x layers x 2 x hidden floats (16 x 2048 of bloom-560m: 6.4 GB). But a growth copies the
        # whole cache in one step, which stalls every row (16 rows of bloom-560m to 1,013 columns: 10-54 s on a
        # shared 2-core machine), so the server allocates all of it at start (serve/engine.py).
        self.cache = model.new_cache(rows, min(max_length, columns))
        self._arrivals = itertools.count()
        self.steps = self.rows_stepped = 0  # decoding steps and the rows they carried: mean occupancy
        self.moves = 0  # rows moved down (_compact)
        # seconds in decoding forwards, in choosing their tokens and extending the replies' text, and in prefill
        self.seconds = {"decode": 0.0, "tokens": 0.0, "prefill": 0.0}
        eos = model.config.eos_token_id
        self.default_eos = [eos] if isinstance(eos, int) else list(eos or [])

    # ------------------------------------------------------------------------------------------- requests
    def add(self, ids, config: generation.GenerationConfig, strip=False, tag=None) -> Request:
        """Queue a reply to prompt ``ids``; ``strip`` drops the whitespace a chat reply begins with."""
        ids = [int(i) for i in ids]
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + config.max_new_tokens > self.max_length:
            raise ValueError(f"the prompt ({len(ids)} tokens) and max_new_tokens ({config.max_new_tokens}) exceed "
                             f"the {self.max_length} positions of this batch's KV cache")
        decode = lambda t: self.tokenizer.decode(t, skip_special_tokens=True)  # noqa: E731
        request = Request(ids, config, ReplyText(config.stop_strings, decode, strip), tag, order=next(self._arrivals),
                          rng=np.random.default_rng(config.seed) if config.do_sample else None)
        self.waiting.append(request)
        return request

    def cancel(self, request: Request) -> None:
        """Drop ``request`` now, freeing its row (a client went away)."""
        if request.row is not None:
            self.slots[request.row] = None
            request.row = None
        elif request in self.waiting:
            self.waiting.remove(request)
        request.finish_reason = request.finish_reason or "cancelled"

    @property
    def busy(self) -> bool:
        return bool(self.waiting) or any(self.slots)

    @property
    def occupied(self) -> int:
        return sum(r is not None for r in self.slots)

    # ------------------------------------------------------------------------------------------- a step
    def step(self) -> list[tuple[Request, str]]:
        """One decoding step for every row past its prompt, then up to ``chunk`` prompt tokens of prefill."""
        for i in range(self.rows):  # lowest rows first: a decoding step runs rows [0, highest busy row]
            if self.slots[i] is None and self.waiting:
                self.slots[i] = self.waiting.popleft()
                self.slots[i].row = i
        events = []
        with paddle.no_grad():
            self._compact()
            decoding = [r for r in self.slots if r is not None and r.tokens]
            if decoding:
                events += self._decode(decoding)
            budget, prompts, width, chunks = self.chunk, [], 0, []
            for request in sorted((r for r in self.slots if r is not None and not r.tokens), key=lambda r: r.order):
                left = len(request.ids) - request.prefilled
                # whole prompts go together, their padding counted: a short prompt beside a long one costs as much
                cost = (len(prompts) + 1) * max(width, left) - len(prompts) * width
                if not request.prefilled and cost <= budget:
                    prompts.append(request)
                    budget, width = budget - cost, max(width, left)
                elif budget:  # a prompt begun in an earlier step, or longer than what is left: a chunk of it, alone
                    chunks.append((request, min(budget, left)))
                    budget -= min(budget, left)
            start = time.perf_counter()
            if prompts:
                events += self._prefill_prompts(prompts, width)
            for request, n in chunks:
                events += self._prefill(request, n)
            self.seconds["prefill"] += time.perf_counter() - start
        return events

    def _compact(self) -> None:
        """Move the highest busy row down into the lowest free one, if there is one below it: otherwise one long
        reply left high up would keep every step computing all the rows beneath it."""
        busy = [i for i, r in enumerate(self.slots) if r is not None]
        low = self.slots.index(None) if None in self.slots else self.rows
        if not busy or low > busy[-1]:
            return
        r, n = self.slots[busy[-1]], self.slots[busy[-1]].length
        for kv in (self.cache.keys, self.cache.values) if n else ():  # a request not prefilled yet has no cache
            for t in kv:
                t[low : low + 1, :, :n] = t[r.row : r.row + 1, :, :n]
        self.slots[low], self.slots[r.row], r.row = r, None, low
        self.moves += 1

    def _prefill(self, r: Request, n: int) -> list:
        start, end = r.prefilled, r.prefilled + n
        self._reserve(len(r.ids))  # the whole prompt at its first chunk: one growth (a cache copy), not one a chunk
        ids = paddle.to_tensor([r.ids[start:end]], dtype="int64")
        mask, cache = paddle.ones([1, end], dtype="int64"), RowCache(self.cache, end, row=r.row, start=start)
        if end < len(r.ids):  # a chunk before the last only fills the cache: the body alone, no head (its largest
            self.model.base_model(ids, mask, None, cache)  # matmul: 1 GB of bloom-560m's weights for one position)
            r.prefilled = end
            return []
        logits = self.model(ids, attention_mask=mask, cache=cache, last_only=True).logits[:, -1]
        r.prefilled = end
        return [self._emit(r, generation.host(logits)[0])]

    def _prefill_prompts(self, requests: list[Request], width: int) -> list:
        """Whole prompts as the rows of one forward, right-padded to ``width``: positions (ALiBi, RoPE) come from the
        mask, so each row computes what it would alone, and the head (bloom-560m's: 1 GB) runs once, on each
        prompt's last position only."""
        self._reserve(width)
        ids, mask = np.zeros([len(requests), width], np.int64), np.zeros([len(requests), width], np.int64)
        for i, r in enumerate(requests):
            ids[i, : len(r.ids)], mask[i, : len(r.ids)] = r.ids, 1
        cache = RowCache(self.cache, width, rows=[r.row for r in requests])
        x = self.model.base_model(paddle.to_tensor(ids), paddle.to_tensor(mask), None, cache)
        last = paddle.to_tensor([i * width + len(r.ids) - 1 for i, r in enumerate(requests)])
        logits = self.model.lm_logits(paddle.gather(x.reshape([-1, x.shape[-1]]), last).unsqueeze(1))[:, -1]
        for r in requests:
            r.prefilled = len(r.ids)
        return [self._emit(r, row) for r, row in zip(requests, generation.host(logits))]

    def _decode(self, decoding: list[Request]) -> list:
        b = max(r.row for r in decoding) + 1
        width = max(r.length for r in decoding) + 1
        tokens, columns = np.zeros([b, 1], np.int64), np.zeros(b, np.int64)
        mask = np.zeros([b, width], np.int64)
        for i, r in enumerate(self.slots[:b]):
            if r is not None:
                columns[i] = r.length  # a row still in prefill: its next chunk overwrites this column
            if r is not None and r.tokens:
                tokens[i, 0] = r.tokens[-1]
                mask[i, : r.length + 1] = 1
        self._reserve(max(width, int(columns.max()) + 1))
        start = time.perf_counter()
        out = self.model(paddle.to_tensor(tokens), attention_mask=paddle.to_tensor(mask),
                         cache=RowCache(self.cache, width, columns=columns), last_only=True)
        logits = out.logits[:, -1]
        self.steps, self.rows_stepped = self.steps + 1, self.rows_stepped + len(decoding)
        rows, done = generation.host(logits), time.perf_counter()
        events = [self._emit(r, rows[r.row]) for r in decoding]
        self.seconds["decode"] += done - start
        self.seconds["tokens"] += time.perf_counter() - done
        return events

    def _emit(self, r: Request, scores) -> tuple[Request, str]:
        """Choose ``r``'s next token from its row of logits (numpy [vocab], read-only) and add it to its reply."""
        c = r.config
        eos = c.eos_token_id if c.eos_token_id is not None else self.default_eos
        eos = [eos] if isinstance(eos, int) else list(eos)
        seen = np.array(r.ids + r.tokens, np.int64) if c.repetition_penalty != 1.0 else None
        masked = eos if len(r.tokens) < c.min_new_tokens else ()
        token = (generation.pick(generation.adjust(scores, c, seen, masked), c, r.rng) if c.do_sample
                 else generation.greedy_token(scores, c, seen, masked))
        reason = "eos" if token in eos else "length" if len(r.tokens) + 1 >= c.max_new_tokens else None
        text = r.text.add(token, reason)
        if r.text.finish_reason:
            r.finish_reason = r.text.finish_reason
            self.slots[r.row], r.row = None, None
        return r, text

    def _reserve(self, width: int) -> None:
        """Grow the cache's columns to hold ``width`` (doubling, so that growth is rare)."""
        have = self.cache.keys[0].shape[2]
        if width <= have:
            return
        grown = min(self.max_length, max(width, 2 * have))
        for kv in (self.cache.keys, self.cache.values):
            for i, t in enumerate(kv):
                kv[i] = paddle.concat([t, paddle.zeros(t.shape[:2] + [grown - have, t.shape[3]], t.dtype)], axis=2)
        self.cache.max_length = grown


def generate_all(batcher: Batcher, prompts, configs, strip=False):
    """Reply to every prompt (ids) with ``batcher``, yielding (index, Request) as each one finishes, or
    (index, ValueError) for a prompt that does not fit. ``configs``: one GenerationConfig, or one per prompt.
    Only a batch's worth is taken from ``prompts`` ahead of the replies, so it may be a lazy stream."""
    pending = enumerate(prompts)

    def refill():
        while batcher.occupied + len(batcher.waiting) < batcher.rows:
            i, ids = next(pending, (None, None))
            if i is None:
                return
            try:
                batcher.add(ids, configs[i] if isinstance(configs, (list, tuple)) else configs, strip, tag=i)
            except ValueError as e:
                yield i, e

    yield from refill()
    while batcher.busy:
        for request, _ in batcher.step():
            if request.finish_reason:
                yield request.tag, request
        yield from refill()
