"""Model names -> local checkpoint directories: a local directory as is, or a PaddleNLP community model.

A community name ``org/name`` lives at ``$PPNLP_ENDPOINT/models/community/org/name/<file>`` and is cached in
``$PPNLP_HOME/models/org/name/``: PaddleNLP's own scheme, so a cache filled by either package serves both.
Downloads go to ``<file>.part`` and resume from it; only a complete file gets its final name. Offline mode
(``PADDLE_BELLE_OFFLINE``, or PaddleNLP's ``AISTUDIO_BOS_OFFLINE``) makes no request at all.

Imports neither paddle nor paddlenlp, so that command-line helpers and dataset downloads stay light.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import requests
from filelock import FileLock
from tqdm.auto import tqdm

from paddle_belle import registry
from paddle_belle.checkpoint import CHAT_TEMPLATE, HF_TOKENIZER_VOCAB, TOKENIZER_CONFIG, TOKENIZER_VOCAB, write_json
from paddle_belle.arch import model_type_of

DEFAULT_ENDPOINT = "https://bj.bcebos.com/paddlenlp"
# Alternatives, best first: the first one the server has is downloaded. An index brings the shards it lists.
WEIGHTS = (
    "model.safetensors.index.json", "model.safetensors", "model_state.pdparams.index.json", "model_state.pdparams"
)
# Required tokenizer files by model_type, each a tuple of alternatives. PaddleNLP's LlamaTokenizer wants
# sentencepiece.bpe.model; HF's tokenizer.model is the same format and AutoTokenizer converts the layout.
TOKENIZER = {"bloom": [(name,) for name in TOKENIZER_VOCAB["bloom"]],
             "llama": [TOKENIZER_VOCAB["llama"] + HF_TOKENIZER_VOCAB["llama"]]}
OPTIONAL = (*TOKENIZER_CONFIG, CHAT_TEMPLATE, "generation_config.json")
ABSENT = ".paddle_belle_absent.json"  # optional files the server lacks: not asked for again
TIMEOUT = (10, 60)  # seconds to connect, and at most between two reads
RETRIES = 3  # failed attempts in a row that brought no new bytes, before a download gives up
RETRY_WAIT = 1.0  # seconds, times the number of failures in a row
CHUNK = 1 << 20
_NAME_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# What a dropped or stalled connection raises; retried, resuming where it stopped.
_DROPPED = (requests.ConnectionError, requests.exceptions.ChunkedEncodingError, requests.ReadTimeout)


class NotOnServer(FileNotFoundError):
    """HTTP 404: the server does not have the file."""


class _Interrupted(Exception):
    """The connection ended before the server's announced size arrived."""


def is_offline() -> bool:
    """True when PADDLE_BELLE_OFFLINE or PaddleNLP's AISTUDIO_BOS_OFFLINE is 1/true/yes."""
    flags = (os.environ.get(v, "").strip().lower() for v in ("PADDLE_BELLE_OFFLINE", "AISTUDIO_BOS_OFFLINE"))
    return any(flag in ("1", "true", "yes") for flag in flags)


def _is_plain_name(part) -> bool:
    # fullmatch, not ^...$ ($ accepts a trailing newline). The pattern leaves out /, \, :, ?, #, %, whitespace and
    # a leading dot, so names cannot traverse the cache or rewrite the URL; ".." is refused even inside a name.
    return isinstance(part, str) and bool(_NAME_PART.fullmatch(part)) and ".." not in part


def parse_name(name: str) -> tuple[str, str]:
    """('org', 'name') for 'org/name'; ValueError for anything else."""
    parts = name.split("/")
    if len(parts) != 2 or not all(map(_is_plain_name, parts)):
        raise ValueError(f"{name!r} is neither a local directory nor a model name like 'org/name' "
                         f"({registry.did_you_mean(name)})")
    return parts[0], parts[1]


def cache_root() -> Path:
    """$PPNLP_HOME, PaddleNLP's cache (~/.paddlenlp when unset or empty)."""
    return Path(os.environ.get("PPNLP_HOME") or Path.home() / ".paddlenlp").expanduser()


def cache_dir(org: str, name: str) -> Path:
    return cache_root() / "models" / org / name


def model_url(org: str, name: str) -> str:
    endpoint = (os.environ.get("PPNLP_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    return f"{endpoint}/models/community/{org}/{name}"


def resolve(name_or_path: str | os.PathLike, *, offline: bool | None = None) -> Path:
    """A local checkpoint directory for ``name_or_path``: a local directory as is (never written to), or the
    cache directory of a community model 'org/name' (or a registry short name such as 'belle-7b-2m'),
    downloading what it lacks (offline: only checking it)."""
    path = Path(name_or_path)
    # A Path object always means a local path: the loader then reports what is missing there.
    if path.is_dir() or not isinstance(name_or_path, str):
        return path
    entry = registry.lookup(name_or_path) if "/" not in name_or_path else None
    if entry is not None and entry.bundled:  # ships inside the package
        return registry.BUNDLED / entry.name
    if entry is not None:  # a short name from the registry, e.g. belle-7b-2m
        if entry.paddlenlp is None:
            steps = entry.route.replace(", ", "`, then `paddle-belle ")
            raise FileNotFoundError(f"{entry.name} is not on PaddleNLP's bucket: download {entry.hf} from Hugging Face "
                                    f"and run `paddle-belle {steps}` on it")
        name_or_path = entry.paddlenlp
    org, name = parse_name(name_or_path)
    cache = cache_dir(org, name)
    if is_offline() if offline is None else offline:
        missing = missing_files(cache)
        if missing:
            raise FileNotFoundError(f"offline mode is on and {cache} lacks: {', '.join(missing)}")
        return cache
    created = [d for d in (cache, *cache.parents) if not d.exists()]  # deepest first
    cache.mkdir(parents=True, exist_ok=True)
    lock = cache / ".lock"
    # Two processes resolving the same model would otherwise append to the same .part files.
    with FileLock(str(lock)):
        try:
            _fill_cache(model_url(org, name), cache)
        except BaseException:
            _remove_if_empty(created, lock)
            raise
    return cache


def _remove_if_empty(created: list[Path], lock: Path) -> None:
    """After a failed download: if the model's directory holds nothing to resume from (its lock, empty .part
    files), remove them and the directories this call made, so that a mistyped name or an unreachable server
    leaves no trace in $PPNLP_HOME. A cache with files in it, or made earlier, stays as it is."""
    if not created:
        return
    cache = created[0]
    leftovers = [p for p in cache.iterdir() if p != lock]
    if any(not p.name.endswith(".part") or p.stat().st_size for p in leftovers):
        return
    for p in (*leftovers, lock):
        p.unlink(missing_ok=True)
    for directory in created:
        try:
            directory.rmdir()  # only if empty: another process may have started filling it meanwhile
        except OSError:
            return


def missing_files(cache: Path) -> list[str]:
    """The required files a cache directory lacks; 'a or b' where either would do."""
    has_config = (cache / "config.json").is_file()
    groups = [("config.json",), WEIGHTS, *(TOKENIZER[_model_type(cache / "config.json")] if has_config else [])]
    missing = []
    for group in groups:
        gaps = [_missing(cache, file) for file in group]
        if all(gaps):  # no alternative complete: name the shards of a partial index, else the alternatives
            missing += next((gap for file, gap in zip(group, gaps) if gap != [file]), [" or ".join(group)])
    if not has_config:
        missing.append("the tokenizer files (which depend on config.json's model_type)")
    return missing


def _missing(cache: Path, file: str) -> list[str]:
    """What of ``file`` the cache lacks: the file itself, or for an index the shards it lists."""
    if not (cache / file).is_file():
        return [file]
    return [s for s in _shards(cache / file) if not (cache / s).is_file()] if file.endswith(".index.json") else []


def _shards(index: Path) -> list[str]:
    """The shard names an index lists; each must be a plain file name, as the index comes from a server."""
    try:
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"{index}: not a valid index ({e})") from None
    bad = [s for s in shards if not _is_plain_name(s)]
    if bad:
        raise ValueError(f"{index}: weight_map names {bad[0]!r}, which is not a plain file name")
    return shards


def _model_type(config_file: Path) -> str:
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from None
    return model_type_of(config, config_file)


def _fill_cache(url: str, cache: Path) -> None:
    _get_one_of(url, cache, ("config.json",))
    for group in [WEIGHTS, *TOKENIZER[_model_type(cache / "config.json")]]:
        _get_one_of(url, cache, group)
    record = cache / ABSENT
    recorded = set(json.loads(record.read_text(encoding="utf-8"))) if record.is_file() else set()
    absent = set(recorded)
    for file in OPTIONAL:
        if file not in absent and not (cache / file).is_file():
            try:
                download(f"{url}/{file}", cache / file)
            except NotOnServer:
                absent.add(file)
    if absent != recorded:
        write_json(record, sorted(absent))


def _get_one_of(url: str, cache: Path, group: tuple[str, ...]) -> None:
    """Make one of ``group`` complete in the cache: nothing to do if one is, else the first the server has."""
    if any(not _missing(cache, file) for file in group):
        return
    for file in group:
        try:
            _get(url, cache, file)
            return
        except NotOnServer:
            continue
    raise NotOnServer(f"{url}/{group[0]}: not found (HTTP 404)" if len(group) == 1
                      else f"{url}/: none of {', '.join(group)} found (HTTP 404)")


def _get(url: str, cache: Path, file: str) -> None:
    """Download ``file`` unless the cache has it; for an index, also every shard it lists."""
    if not (cache / file).is_file():
        download(f"{url}/{file}", cache / file)
    if file.endswith(".index.json"):
        for shard in _shards(cache / file):
            try:
                _get(url, cache, shard)
            except NotOnServer as e:  # a listed shard must exist: not a reason to try the next alternative
                raise FileNotFoundError(f"{e}, though {file} lists it") from None


def download(url: str, dest: str | os.PathLike, *, expected_size: int | None = None, sha256: str | None = None,
             md5: str | None = None, desc: str | None = None) -> Path:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a ``.part`` that an earlier call left.

    A dropped connection is resumed at once; after RETRIES failures in a row without new bytes, ConnectionError
    is raised and the .part kept for the next call. A size or checksum mismatch removes the .part and raises
    ValueError. ``dest`` appears only complete and verified (os.replace is atomic). HTTP 404 raises NotOnServer.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = 0
    while True:
        before = _size(part)
        try:
            _fetch(url, part, desc or dest.name)
            break
        except (*_DROPPED, _Interrupted) as e:
            failures = 0 if _size(part) > before else failures + 1
            if failures > RETRIES:
                raise ConnectionError(f"{url}: connection failed after {_size(part)} bytes ({e}); "
                                      "a new call resumes from there") from None
            time.sleep(RETRY_WAIT * failures)
    problem = None
    if expected_size is not None and _size(part) != expected_size:
        problem = f"{_size(part)} bytes, expected {expected_size}"
    else:
        for algorithm, expected in (("sha256", sha256), ("md5", md5)):
            actual = _digest(part, algorithm) if expected else None
            if actual and actual != expected.lower():
                problem = f"{algorithm} {actual}, expected {expected.lower()}"
                break
    if problem:
        part.unlink()
        raise ValueError(f"{url}: {problem}; the download was deleted")
    os.replace(part, dest)
    return dest


def _fetch(url: str, part: Path, desc: str) -> None:
    """One attempt: append to ``part`` from where it ends (HTTP Range), or start over if the server sends it all."""
    have = _size(part)
    # identity: Content-Length must count the bytes written to disk, not a compressed body.
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={have}-"} if have else {})}
    with requests.get(url, headers=headers, stream=True, timeout=TIMEOUT) as r:
        if r.status_code == 404:
            raise NotOnServer(f"{url}: not found (HTTP 404)")
        if r.status_code == 416:  # nothing after byte `have`: the .part is complete, unless the file is shorter
            m = re.fullmatch(r"bytes \*/(\d+)", r.headers.get("Content-Range", ""))
            if m and int(m[1]) != have:
                part.unlink()
                _fetch(url, part, desc)
            return
        r.raise_for_status()
        if r.status_code == 206:
            m = re.fullmatch(r"bytes (\d+)-\d+/(\d+)", r.headers.get("Content-Range", ""))
            if not m or int(m[1]) != have:
                got = r.headers.get("Content-Range")
                raise ValueError(f"{url}: asked for bytes {have}- and got Content-Range {got!r}")
            total = int(m[2])
        else:  # 200: the server ignored Range and sends the whole file, so the .part starts over
            have, total = 0, int(r.headers["Content-Length"]) if "Content-Length" in r.headers else None
        # urllib3 raises on a short body and loses the bytes it buffered; the size is checked below instead, so
        # everything that arrived is kept and the next attempt resumes after it.
        r.raw.enforce_content_length = False
        bar = tqdm(total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None)
        with bar, open(part, "ab" if have else "wb") as f:
            for chunk in r.iter_content(CHUNK):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and _size(part) < total:
        raise _Interrupted(f"{_size(part)} of {total} bytes arrived")


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()
