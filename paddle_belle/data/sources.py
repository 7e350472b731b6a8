"""Where records come from: local .json/.jsonl files (or directories of them) and BELLE's releases by name.

``belle:<name>`` downloads ``<endpoint>/BelleGroup/<name>.zip`` from PaddleNLP's mirror once (resumable, through
hub.download), checks its MD5 and unpacks it into ``$PPNLP_HOME/datasets/BelleGroup/<name>/``.
"""
from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Iterator

import requests

from paddle_belle import hub
from paddle_belle.checkpoint import atomic_dir

DEFAULT_ENDPOINT = "https://paddlenlp.bj.bcebos.com/datasets"
# BELLE's public releases on PaddleNLP's mirror. No MD5 is published next to them; Baidu object storage's ETag
# is the MD5 of an object uploaded in one piece, so that is what the download is checked against.
RELEASES = (
    "train_0.5M_CN", "train_1M_CN", "train_2M_CN", "train_3.5M_CN",
    "school_math_0.25M", "multiturn_chat_0.8M", "generated_chat_0.4M",
)
SUFFIXES = (".json", ".jsonl")


def endpoint() -> str:
    return os.environ.get("PADDLE_BELLE_DATA_ENDPOINT", DEFAULT_ENDPOINT).rstrip("/")


def files_of(source: str) -> list[Path]:
    """The record files of ``source``: a file, a directory (its .json/.jsonl files, sorted) or ``belle:NAME``."""
    if source.startswith("belle:"):
        return files_of(str(fetch_release(source[len("belle:"):])))
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in SUFFIXES and p.is_file())
        if not files:
            raise FileNotFoundError(f"{source}: no .json or .jsonl files in this directory")
        return files
    if not path.is_file():
        raise FileNotFoundError(f"{source}: no such file (or use belle:NAME, NAME one of {', '.join(RELEASES)})")
    return [path]


def fetch_release(name: str) -> Path:
    """The unpacked directory of BELLE release ``name``, downloaded and verified on first use."""
    if name not in RELEASES:
        raise ValueError(f"unknown BELLE release {name!r} (known: {', '.join(RELEASES)})")
    target = hub.cache_root() / "datasets" / "BelleGroup" / name
    if target.is_dir():
        return target
    if hub.is_offline():
        raise FileNotFoundError(f"belle:{name} is not in the cache ({target}) and offline mode is on")
    url = f"{endpoint()}/BelleGroup/{name}.zip"
    archive = target.with_name(name + ".zip")
    hub.download(url, archive, md5=_etag_md5(url), desc=f"belle:{name}")
    with atomic_dir(target) as unpacked:
        with zipfile.ZipFile(archive) as z:
            for member in z.namelist():  # no absolute paths or ".." escaping the target (zip slip)
                if member.startswith("/") or ".." in Path(member).parts:
                    raise ValueError(f"{archive}: unsafe member path {member!r}")
            z.extractall(unpacked)
    archive.unlink()
    return target


def _etag_md5(url: str) -> str | None:
    try:
        etag = requests.head(url, timeout=hub.TIMEOUT, allow_redirects=True).headers.get("ETag", "").strip('"')
    except requests.RequestException:
        etag = ""
    if re.fullmatch(r"[0-9a-fA-F]{32}", etag):
        return etag
    warnings.warn(f"{url}: the server gives no MD5 (ETag {etag!r}); the download is checked for size only")
    return None


def read_records(path: Path) -> Iterator[tuple[str, object]]:
    """(``file:line``, record) for a JSON Lines file, or (``file: record N``, record) for a JSON array file.
    Broken JSON is yielded as (where, ValueError) so that the caller decides whether it is fatal."""
    with open(path, encoding="utf-8") as f:
        head = f.read(4096).lstrip()
        f.seek(0)
        if head.startswith("["):
            try:
                records = json.load(f)
            except ValueError as e:
                yield f"{path}:{getattr(e, 'lineno', '?')}", ValueError(f"broken JSON ({e})")
                return
            for i, record in enumerate(records, 1):
                yield f"{path}: record {i}", record
            return
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield f"{path}:{number}", json.loads(line)
            except ValueError as e:
                yield f"{path}:{number}", ValueError(f"broken JSON ({e})")
