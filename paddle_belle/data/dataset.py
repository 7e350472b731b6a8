"""Sources -> a ``datasets`` dataset of conversations -> tokenised training samples, with a summary.

Records are read by our own line reader (so that a bad one is reported as file:line) inside
``Dataset.from_generator``; ``datasets`` then caches, maps with a progress bar, and streams large files.
A bad record is kept as a row with its error, so that the cached dataset serves runs with and without
``skip_bad`` and the counts come from the data itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import datasets

from paddle_belle.data.encode import IGNORE, encode_conversation, supervised
from paddle_belle.data.records import to_conversation
from paddle_belle.data.sources import files_of, read_records

FEATURES = datasets.Features({
    "conversations": [{"from": datasets.Value("string"), "value": datasets.Value("string")}],
    "error": datasets.Value("string"),
})


def _rows(files):
    for file, _size, _mtime in files:
        for where, record in read_records(file):
            try:
                if isinstance(record, Exception):
                    raise record
                yield {"conversations": to_conversation(record), "error": ""}
            except ValueError as e:
                yield {"conversations": [], "error": f"{where}: {e}"}


def load_conversations(sources: list[str], skip_bad: bool = False, streaming: bool = False):
    """Every record of ``sources`` as a conversation. A bad record raises ValueError naming file:line, unless
    ``skip_bad``; either way the returned dataset keeps its row, with the message in ``error``."""
    files = [(str(f), f.stat().st_size, f.stat().st_mtime_ns) for s in sources for f in files_of(s)]
    # size and mtime are in the arguments so that datasets' cache notices an edited file.
    if streaming:
        ds = datasets.IterableDataset.from_generator(_rows, features=FEATURES, gen_kwargs={"files": files})
        return ds if skip_bad else ds.map(_raise_error)
    try:
        ds = datasets.Dataset.from_generator(_rows, features=FEATURES, gen_kwargs={"files": files})
    except ValueError:
        # datasets' message for a generator that yields nothing ('Instruction "train" corresponds to no data!')
        # names no file; looked for only here, so that a non-empty run never reads a file twice.
        empty = [name for name, _size, _mtime in files if next(read_records(name), None) is None]
        if len(empty) == len(files):
            raise ValueError(f"{', '.join(empty)}: no records (the file{'s are' if len(empty) > 1 else ' is'} "
                             "empty)") from None
        raise
    if not skip_bad:
        first = next((e for e in ds["error"] if e), None)
        if first:
            raise ValueError(f"{first} (--skip-bad skips such records)")
    return ds


def _raise_error(row):
    if row["error"]:
        raise ValueError(f"{row['error']} (--skip-bad skips such records)")
    return row


@dataclass
class DataSummary:
    records: int = 0
    bad: int = 0  # malformed records skipped (skip_bad)
    unsupervised: int = 0  # samples whose replies were all truncated away
    samples: int = 0
    tokens: int = 0
    supervised_tokens: int = 0
    rows: int | None = None  # packed rows, when packing

    def __str__(self):
        return (f"{self.records} records: {self.bad} malformed skipped, {self.unsupervised} dropped with no "
                f"supervised token left after truncation; {self.samples} samples, {self.tokens} tokens "
                f"({self.supervised_tokens} supervised)" + (f", packed into {self.rows} rows" if self.rows else ""))


def _encode(row, tokenizer, style, max_length):
    if row["error"]:
        return {"input_ids": [], "labels": []}
    return encode_conversation(row["conversations"], tokenizer, style, max_length)


def _pack_batch(batch, max_length):
    rows = {"input_ids": [], "labels": [], "position_ids": [], "attention_mask": []}
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        if not rows["input_ids"] or len(rows["input_ids"][-1]) + len(ids) > max_length:
            for column in rows.values():
                column.append([])
        segment = (rows["attention_mask"][-1][-1] + 1) if rows["attention_mask"][-1] else 1
        rows["input_ids"][-1] += ids
        rows["labels"][-1] += labels
        rows["position_ids"][-1] += list(range(len(ids)))
        rows["attention_mask"][-1] += [segment] * len(ids)
    return rows


def pack(dataset, max_length: int):
    """Consecutive samples share a row while they fit in ``max_length`` tokens. ``attention_mask`` numbers the
    samples of a row (1, 1, 2, 2, 2, ...) so that attention stays inside each sample (models/base.py
    attention_bias), and ``position_ids`` restart at each sample: a packed sample computes what it would alone."""
    progress = {} if isinstance(dataset, datasets.IterableDataset) else {"desc": "packing"}
    return dataset.map(_pack_batch, batched=True, batch_size=1000, fn_kwargs={"max_length": max_length},
                       remove_columns=["input_ids", "labels"], **progress)


def build_dataset(sources: list[str], tokenizer, style: str, max_length: int, skip_bad: bool = False,
                  streaming: bool = False, packing: bool = False):
    """(tokenised dataset with ``input_ids`` and ``labels``, DataSummary); the summary is None when streaming
    (nothing is read before training starts). ``packing`` puts several short samples in one row (see pack)."""
    conversations = load_conversations(sources, skip_bad, streaming)
    kwargs = {"tokenizer": tokenizer, "style": style, "max_length": max_length}
    if streaming:
        encoded = conversations.map(_encode, fn_kwargs=kwargs, remove_columns=["conversations", "error"])
        encoded = encoded.filter(supervised)
        return (pack(encoded, max_length) if packing else encoded), None
    encoded = conversations.map(_encode, fn_kwargs=kwargs, desc="tokenizing")
    summary = DataSummary(records=len(encoded), bad=sum(1 for e in encoded["error"] if e))
    kept = encoded.filter(lambda row: not row["error"] and supervised(row), desc="dropping")
    kept = kept.remove_columns(["conversations", "error"])
    summary.unsupervised = summary.records - summary.bad - len(kept)
    summary.samples = len(kept)
    for labels in kept["labels"]:
        summary.tokens += len(labels)
        summary.supervised_tokens += sum(1 for label in labels if label != IGNORE)
    if packing:
        kept = pack(kept, max_length)
        summary.rows = len(kept)
    return kept, summary
