"""The model side of the server: admission (slots and a bounded queue) and text generation on one compute thread.

Every Paddle and tokenizer call runs on a single compute thread: Paddle's dygraph keeps global state (the tracer,
``no_grad``) that is not safe to drive from several threads at once. That thread runs a continuous-batching loop
(batching.Batcher): each step is one forward pass for the next token of every reply in flight, plus a chunk of a new
prompt's prefill; between steps it runs the event loop's jobs (tokenizing, adding and cancelling requests).
``--max-concurrency`` is the number of rows in that batch.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from itertools import groupby

from paddle_belle import generation, prompts
from paddle_belle.batching import Batcher
from paddle_belle.chat import context_length
from paddle_belle.cpu import use_cpu_threads_here


class QueueFull(Exception):
    """Every slot is busy and the queue is full: the request gets 429."""


class ContextExceeded(ValueError):
    """The prompt and max_tokens do not fit the context: 400 ``context_length_exceeded``, whose message names the
    prompt's tokens so that a client can ask again with a max_tokens that fits (paddle_belle.api does)."""


@dataclass
class Stats:
    active: int = 0
    queued: int = 0
    peak_active: int = 0
    peak_queued: int = 0
    completed: int = 0
    disconnected: int = 0  # requests whose client went away before the reply was finished
    rejected: int = 0  # 429s


class Slots:
    """At most ``max_active`` requests generate at once; up to ``max_queue`` more wait (first come, first served);
    beyond that a request is refused at once rather than left to time out."""

    def __init__(self, max_active: int, max_queue: int):
        if max_active < 1 or max_queue < 0:
            raise ValueError(f"--max-concurrency must be >= 1 and --max-queue >= 0 (got {max_active}, {max_queue})")
        self.max_active, self.max_queue = max_active, max_queue
        self.stats = Stats()
        self._free = None  # made in the server's event loop (Python 3.9 binds it to the loop current at creation)

    @contextlib.asynccontextmanager
    async def acquire(self):
        if self._free is None:
            self._free = asyncio.Semaphore(self.max_active)
        s = self.stats
        if self._free.locked():  # every slot busy: wait in the queue, if there is room in it
            if s.queued >= self.max_queue:
                s.rejected += 1
                raise QueueFull(f"{s.active} requests running and {s.queued} queued (limits {self.max_active} and "
                                f"{self.max_queue}); retry later")
            s.queued += 1
            s.peak_queued = max(s.peak_queued, s.queued)
            try:
                await self._free.acquire()
            finally:
                s.queued -= 1
        else:
            await self._free.acquire()  # a free slot: taken at once
        s.active += 1
        s.peak_active = max(s.peak_active, s.active)
        try:
            yield
        finally:
            s.active -= 1
            self._free.release()


@dataclass
class Reply:
    """What a generation produced so far; ``finish_reason`` is set when it is over."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str | None = None  # "stop" (EOS or a stop string) or "length"


def defaults(preset="belle-card", max_tokens_cap=2048, **overrides) -> generation.GenerationConfig:
    """The server's settings for requests that bring none: the preset with ``overrides``. Checked at start-up, so
    that a bad top_k or a default reply longer than the cap does not fail every request instead."""
    config = generation.make_config(preset, **overrides)
    if config.max_new_tokens > max_tokens_cap:
        raise ValueError(f"the default reply length ({config.max_new_tokens} tokens, --max-new-tokens or the preset's) "
                         f"is over --max-tokens ({max_tokens_cap})")
    return config


MOST_ROWS = 16  # a float32 step of 16 rows gave 7.4x one row's tokens/s, 4 rows 3.5x (README, Serving); the
# native kernel takes a tied head's rows up to 16 (cpu.KERNEL_HEAD_ROWS)


def default_rows(model, context: int, available: int | None = None, share: float = 0.5) -> tuple[int, str]:
    """``--max-concurrency``'s default and why, in words: as many rows as the KV cache (allocated for all of them at
    start) fits into ``share`` of the memory still available (bytes, default MemAvailable: the model is loaded by
    then), at least 1 and at most MOST_ROWS. The rest stays for a prefill's activations and everything else."""
    one = model.new_cache(1, 1)  # a row's bytes a token, from the cache the model makes (the arch's shapes, dtype)
    row = context * sum(t.numel().item() * t.element_size() for t in one.keys + one.values)
    if available is None:
        available = available_memory()
    rows = int(max(1, min(MOST_ROWS, share * available // row)))
    return rows, (f"default: the KV cache, {row / 2**20:,.0f} MiB a row of {context} tokens, within {share:.0%} of "
                  f"{available / 2**30:.1f} GiB available, at most {MOST_ROWS}")


def available_memory() -> int:
    """Bytes the kernel could give this process without swapping (MemAvailable), or every byte it has."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class Engine:
    """A model, its tokenizer and the defaults of the server (prompt style, preset, caps)."""

    def __init__(self, model, tokenizer, style=None, preset="belle-card", max_tokens_cap=2048, context=None, rows=8,
                 prefill_chunk=128, **overrides):
        """``rows``: replies generated together; ``prefill_chunk``: prompt tokens prefilled between two decoding
        steps. ``overrides`` (top_k, max_new_tokens, ...) change the preset: the defaults of requests that do not set
        their own."""
        self.model, self.tokenizer = model, generation.prepare_tokenizer(tokenizer)
        self.style = style or prompts.recorded_style(model.config)  # None: the style the model was trained in
        self.stops = prompts.get_style(self.style).stops
        self.preset = defaults(preset, max_tokens_cap, **overrides)
        self.max_tokens_cap = max_tokens_cap
        # BLOOM (ALiBi) has no position limit of its own: context_length's 2048 is BELLE's training length
        self.context = context or context_length(model)
        # every row's whole context allocated now: growing it later would stall every reply in flight (batching.py)
        self.batcher = Batcher(model, self.tokenizer, rows, self.context, prefill_chunk, columns=self.context)
        self._jobs = queue.SimpleQueue()
        self.step_seconds = 0.0  # spent in Batcher.step: over the wall time, how busy the model thread kept
        self.job_seconds = 0.0  # spent in the event loop's jobs (tokenizing prompts, adding and cancelling requests)
        threading.Thread(target=self._loop, name="paddle-belle-model", daemon=True).start()

    def _loop(self):
        """The compute thread: the jobs that came in, then one step of the batch, for ever. It sleeps on the job
        queue only when no reply is in flight."""
        use_cpu_threads_here()  # OpenMP thread counts are per thread: this one starts with Paddle's 1
        while True:
            first = None if self.batcher.busy else self._jobs.get()  # (the wait is not a job's time)
            start = time.perf_counter()
            if first:
                first()
            while not self._jobs.empty():
                self._jobs.get_nowait()()
            self.job_seconds += time.perf_counter() - start
            if not self.batcher.busy:
                continue
            start = time.perf_counter()
            try:
                events = self.batcher.step()
            except Exception as e:  # every reply in flight gets the error; the server goes on
                events = []
                for r in [r for r in self.batcher.slots if r is not None] + list(self.batcher.waiting):
                    self.batcher.cancel(r)
                    r.tag(e)
            self.step_seconds += time.perf_counter() - start
            for request, text in events:  # what the event loop needs, read now: the next step changes request
                request.tag((text, request.finish_reason, len(request.tokens)))

    # ---------------------------------------------------------------------------------------- prompts
    def chat_prompt(self, messages: list[dict], max_new_tokens: int, style: str | None = None) -> str:
        """OpenAI messages -> a BELLE prompt of ``style`` (None: the server's). BELLE has no system role: system
        text goes before the first user turn that is kept. Consecutive messages of one role are joined; the oldest
        turns are dropped until prompt and reply fit the context (the system text always stays)."""
        system = "\n".join(m["content"] for m in messages if m["role"] == "system")
        chat = (m for m in messages if m["role"] != "system")
        turns = [[role, "\n".join(m["content"] for m in group)] for role, group in groupby(chat, lambda m: m["role"])]
        if not turns or turns[-1][0] != "user":
            raise ValueError("the last message must come from the user")
        if turns[0][0] == "assistant":  # a conversation opened by the assistant: it answers an empty user turn
            turns.insert(0, ["user", ""])
        history = [(u[1], a[1]) for u, a in zip(turns[:-1:2], turns[1:-1:2])]
        query, eos, budget = turns[-1][1], self.tokenizer.eos_token or "", self.context - max_new_tokens
        style = style or self.style
        try:
            kept = prompts.fit_history(style, history, query, self.count_tokens, budget, eos, system)
        except ValueError:
            alone = self.count_tokens(prompts.render(style, [], query, eos, system))
            raise ContextExceeded(f"the prompt ({alone} tokens, the last message alone) and max_tokens "
                                  f"({max_new_tokens}) exceed the model's context of {self.context} tokens") from None
        return prompts.render(style, kept, query, eos, system)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    # ---------------------------------------------------------------------------------------- generation
    def config(self, max_tokens=None, temperature=None, top_p=None, top_k=None, repetition_penalty=None,
               seed=None, stop=None, min_tokens=None, chat=True) -> generation.GenerationConfig:
        """The server's preset with the request's settings. temperature 0 means greedy (as OpenAI's API);
        any other temperature means sampling."""
        max_tokens = self.preset.max_new_tokens if max_tokens is None else max_tokens
        if not 1 <= max_tokens <= self.max_tokens_cap:
            raise ValueError(f"max_tokens must be between 1 and {self.max_tokens_cap} (this server's cap), "
                             f"not {max_tokens}")
        stops = list(self.stops if chat else ()) + ([stop] if isinstance(stop, str) else list(stop or []))
        overrides = dict(max_new_tokens=max_tokens, top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                         seed=seed, stop_strings=[s for s in stops if s], min_new_tokens=min_tokens)
        return generation.make_config(self.preset, **overrides, **generation.temperature_settings(temperature))

    def encode(self, prompt: str, max_new_tokens: int) -> list[int]:
        ids = self.tokenizer(prompt)["input_ids"]
        if not ids:
            raise ValueError("the prompt is empty")
        if len(ids) + max_new_tokens > self.context:
            raise ContextExceeded(f"the prompt ({len(ids)} tokens) and max_tokens ({max_new_tokens}) exceed the "
                                  f"model's context of {self.context} tokens")
        return ids

    async def generate(self, prepare, config: generation.GenerationConfig, reply: Reply, strip=True):
        """Async text increments of one reply, filling ``reply``; ``strip``: for a chat reply. ``prepare()`` gives the
        prompt's ids: it runs on the model thread in the same job that adds the reply to the batch, so a request
        waits for one step to end, not one per tokenizer call (each a wait of up to a whole step, during which its
        row sits idle). The first increment is "", yielded once the reply is in the batch: awaiting it raises what
        ``prepare`` raised (a bad prompt) before anything is sent to the client. If the consumer stops early (a
        client disconnected), the reply is cancelled on the model thread before the next step, which frees its row.
        """
        loop, increments, added = asyncio.get_running_loop(), asyncio.Queue(), []

        def add():  # ``added``: the cancelling job below (after this one on the thread) finds the request there
            ids = prepare()
            reply.prompt_tokens = len(ids)
            added.append(self.batcher.add(ids, config, strip, tag=deliver))

        def deliver(item):  # on the model thread: (text, finish reason, tokens) after a step, or an exception
            loop.call_soon_threadsafe(increments.put_nowait, item)

        try:
            await self.run(add)
            yield ""
            while True:
                item = await increments.get()
                if isinstance(item, Exception):
                    raise item
                text, finish, reply.completion_tokens = item
                if text:
                    yield text
                if finish:
                    # OpenAI's finish reasons: "stop" for EOS and for a stop string alike
                    reply.finish_reason = "length" if finish == "length" else "stop"
                    return
        finally:
            if reply.finish_reason is None:  # also when cancelled while waiting for ``add``
                self._jobs.put(lambda: added and self.batcher.cancel(added[0]))

    async def run(self, fn, *args):
        """Run ``fn`` (tokenizer work: prompts, encoding; adding to the batch) on the model thread, between steps."""
        future = Future()

        def job():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn(*args))
                except BaseException as e:  # noqa: BLE001 - handed to the awaiting coroutine
                    future.set_exception(e)

        self._jobs.put(job)
        return await asyncio.wrap_future(future)
