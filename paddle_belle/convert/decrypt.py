"""Decrypt BELLE's XOR-encrypted LLaMA releases (the ``*-enc`` repos) with the original LLaMA weights.

The scheme is point-alpaca's (pointnetwork/point-alpaca encrypt.py / decrypt.py), which BELLE's models/decrypt.py
follows: a file ``<name>.<sha256>.enc`` holds the 32-byte SHA-256 digest of the plaintext (its hex is the middle of
the name), then the plaintext XOR the key file -- the original LLaMA ``consolidated.00.pth`` -- taken in 10 MiB
chunks beside 10 MiB chunks of the data: the key's chunks are read in order, the key starts again from its first
byte when it runs out, and a short last key chunk is repeated across its data chunk. The output is ``<name>``,
checked against the digest.

Here the whole output directory is built beside its target and renamed when every file decrypted and matched, so a
wrong key or a truncated download leaves nothing behind (BELLE's script leaves the bad output in place).
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paddle_belle.checkpoint import atomic_dir

CHUNK = 10 * 1024 * 1024  # point-alpaca's chunk_size and key_chunk_size
DIGEST = 32  # SHA-256
ENCRYPTED = re.compile(r"^(?P<name>.+)\.(?P<sha256>[0-9a-f]{64})\.enc$")
LFS_POINTER = b"version https://git-lfs.github.com/spec/"


def encrypted_files(src: Path) -> list[Path]:
    """The ``.enc`` files of a downloaded repo directory (others, e.g. README.md, are not BELLE's data), or ``src``
    itself when it is one file; each name checked."""
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or directory")
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file() and p.name.endswith(".enc"))
    if not files:
        raise FileNotFoundError(f"{src}: no .enc files (BELLE's encrypted releases are named <file>.<sha256>.enc)")
    for f in files:
        if not ENCRYPTED.match(f.name):
            raise ValueError(f"{f}: not named <file>.<sha256>.enc, as BELLE's encrypted files are")
    return files


def decrypt(src, key, dst) -> Path:
    """Decrypt every ``<name>.<sha256>.enc`` of the directory ``src`` (or the one file ``src``) with ``key`` (the
    original LLaMA consolidated.00.pth) into the new directory ``dst``, as ``<name>``. Returns ``dst``."""
    src, key, dst = Path(src), Path(key), Path(dst)
    files = encrypted_files(src)
    if not key.is_file() or key.stat().st_size == 0:
        raise FileNotFoundError(f"{key}: no such key file, or it is empty (give LLaMA's original consolidated.00.pth)")
    total = sum(max(f.stat().st_size - DIGEST, 0) for f in files)
    with atomic_dir(dst) as tmp, tqdm(total=total, unit="B", unit_scale=True, desc="decrypting", disable=None) as bar:
        for f in files:
            decrypt_file(f, key, tmp / ENCRYPTED.match(f.name)["name"], bar.update)
    return dst


def decrypt_file(enc: Path, key: Path, out: Path, progress=lambda n: None) -> None:
    """Decrypt one file into ``out``; a digest that does not match is an error naming ``enc``."""
    with open(enc, "rb") as data, open(key, "rb") as pad, open(out, "wb") as sink:
        expected = data.read(DIGEST)
        if expected.startswith(LFS_POINTER[:DIGEST]):
            raise ValueError(f"{enc}: a Git LFS pointer, not the file itself (run `git lfs pull` in its repo)")
        if len(expected) < DIGEST:
            raise ValueError(f"{enc}: truncated ({len(expected)} bytes; an encrypted file starts with a 32-byte "
                             "SHA-256): download it again")
        if expected.hex() != ENCRYPTED.match(enc.name)["sha256"]:
            raise ValueError(f"{enc}: its first 32 bytes are not the SHA-256 its name carries: a damaged download")
        hasher = hashlib.sha256()
        while chunk := data.read(CHUNK):
            key_chunk = pad.read(CHUNK)
            if not key_chunk:  # the key ran out: start it again
                pad.seek(0)
                key_chunk = pad.read(CHUNK)
            plain = np.frombuffer(chunk, np.uint8) ^ np.resize(np.frombuffer(key_chunk, np.uint8), len(chunk))
            hasher.update(plain)
            sink.write(plain)
            progress(len(chunk))
    if hasher.digest() != expected:
        raise ValueError(f"{enc}: the decrypted data does not match the SHA-256 the file carries: a wrong key file "
                         f"({key} must be the original LLaMA consolidated.00.pth of this model's size) or a truncated "
                         "download")
