"""Talking to a model: a multi-turn chat session that streams its replies, and batch generation over JSONL."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from paddle_belle import generation, prompts
from paddle_belle.checkpoint import atomic_path

DEFAULT_CONTEXT = 2048  # BLOOM has no position limit (ALiBi); BELLE trained at this length


def context_length(model) -> int:
    return getattr(model.config, "max_position_embeddings", None) or DEFAULT_CONTEXT


class ChatSession:
    """Multi-turn chat: each ``ask`` renders the history in the chosen style, dropping the oldest turns to fit the
    context, streams the reply, and remembers the turn."""

    def __init__(self, model, tokenizer, style=None, preset="belle-card", max_history=None, **overrides):
        # style None: the one the model was trained in (prompts.recorded_style)
        style = style or prompts.recorded_style(model.config)
        self.model, self.tokenizer, self.style = model, generation.prepare_tokenizer(tokenizer), style
        self.config = generation.make_config(preset, stop_strings=list(prompts.get_style(style).stops), **overrides)
        self.max_history = max_history
        self.history: list[tuple[str, str]] = []

    def reset(self) -> None:
        self.history = []

    def ask(self, query: str) -> Iterator[str]:
        eos, budget = self.tokenizer.eos_token or "", context_length(self.model) - self.config.max_new_tokens
        history = self.history if self.max_history is None else self.history[len(self.history) - self.max_history:]
        count = lambda text: len(self.tokenizer(text)["input_ids"])  # noqa: E731
        history = prompts.fit_history(self.style, history if self.max_history != 0 else [], query, count, budget, eos)
        ids = self.tokenizer(prompts.render(self.style, history, query, eos))["input_ids"]
        reply = []
        for (chunk,) in generation.replies(self.model, self.tokenizer, np.array([ids]), config=self.config,
                                           strip=True, texts=reply):
            if chunk:
                yield chunk
        self.history.append((query, reply[0].text.strip()))


def read_records(path: Path):
    """(line number, record or error message) for each non-empty line of a JSONL file."""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                if not isinstance(record.get("prompt", record.get("instruction")), str):
                    raise ValueError('needs a "prompt" (or BELLE\'s "instruction" [+ "input"]) string')
                yield n, record
            except ValueError as e:
                yield n, f"{type(e).__name__}: {e}" if not isinstance(e, json.JSONDecodeError) else f"bad JSON ({e})"


def query_of(record: dict) -> str:
    if "prompt" in record:
        return record["prompt"]
    return "\n".join(t for t in (record["instruction"], record.get("input") or "") if t)


def generate_batch(model, tokenizer, queries: list[str], style=None, preset="belle-card", **overrides) -> list[str]:
    """Replies to independent single-turn ``queries``, generated together in a left-padded batch (``style`` None:
    the model's recorded one)."""
    style = style or prompts.recorded_style(model.config)
    tokenizer = generation.prepare_tokenizer(tokenizer)
    config = generation.make_config(preset, stop_strings=list(prompts.get_style(style).stops), **overrides)
    texts = [prompts.render(style, [], q, tokenizer.eos_token or "") for q in queries]
    enc = tokenizer(texts, padding=True, return_attention_mask=True)
    replies = []
    for _ in generation.replies(model, tokenizer, np.array(enc["input_ids"]), np.array(enc["attention_mask"]), config,
                                strip=True, texts=replies):
        pass
    return [reply.text.rstrip() for reply in replies]


def check_output_file(out_path, force: bool = False) -> None:
    """An existing output file is replaced only with ``force`` (as `card`; checkpoints never are)."""
    if Path(out_path).exists() and not force:
        raise FileExistsError(f"{out_path} exists (use --force to replace it)")


def generate_file(model, tokenizer, in_path, out_path, batch_size=8, force=False, **kwargs) -> int:
    """Answer every record of a JSONL file into another (record + "output"). Bad records are reported on stderr
    with their line number and skipped; the rest are written. Returns the number of failures. An existing
    ``out_path`` is replaced only with ``force``."""
    check_output_file(out_path, force)
    records = list(read_records(Path(in_path)))
    failures = 0
    with atomic_path(out_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for n, record in records:
            if isinstance(record, str):
                print(f"{in_path}:{n}: {record}", file=sys.stderr)
                failures += 1
        good = [(n, r) for n, r in records if isinstance(r, dict)]
        for i in tqdm(range(0, len(good), batch_size), desc="generating", unit="batch", disable=None):
            batch = good[i : i + batch_size]
            try:
                replies = generate_batch(model, tokenizer, [query_of(r) for _, r in batch], **kwargs)
            except Exception as e:  # report the batch's lines; the others are still answered
                for n, _ in batch:
                    print(f"{in_path}:{n}: generation failed ({type(e).__name__}: {e})", file=sys.stderr)
                failures += len(batch)
                continue
            for (_, record), reply in zip(batch, replies):
                out.write(json.dumps({**record, "output": reply}, ensure_ascii=False) + "\n")
    return failures
