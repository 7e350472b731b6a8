"""Append-only JSONL files that survive being killed: the resumable outputs of datagen and eval.

Each record is one line written with a single write and flushed, so a kill (even SIGKILL) leaves every finished
record in the file and at most one torn last line, without its newline. ``load`` drops that torn tail (it was
never a finished record) and rejects anything else that is not a JSON object per line, naming file and line.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def read(path, what="record") -> list[dict]:
    """The records of a JSONL file; a bad line is a ValueError naming ``path:line``."""
    records = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: bad JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{n}: a {what} must be a JSON object")
            records.append(record)
    return records


def load(path) -> list[dict]:
    """The finished records of an append-only output (none if it does not exist yet), repairing a torn tail."""
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        print(f"{path}: dropping an unfinished last line ({len(data) - keep} bytes) left by an interrupted run",
              file=sys.stderr)
        with open(path, "r+b") as f:
            f.truncate(keep)
    return read(path)


class Appender:
    """``append(record)`` writes one line and flushes it; use as a context manager."""

    def __init__(self, path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self.f = open(path, "a", encoding="utf-8")

    def append(self, record: dict) -> None:
        # one write call per record; flush hands it to the OS, which keeps it through a kill of this process
        self.f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self):
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
