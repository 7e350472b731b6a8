"""`paddle-belle decrypt` against files made by an independent re-statement of point-alpaca's encrypt.py (the scheme
of BELLE's models/decrypt.py): right bytes back, the result converts, and bad inputs leave nothing behind."""
import hashlib
import os

import numpy as np
import paddle
import pytest
import torch
import transformers

from paddle_belle import AutoModelForCausalLM
from paddle_belle.cli import main
from paddle_belle.convert import decrypt as decrypt_module


def encrypt(plain: bytes, key: bytes, name: str, directory, chunk: int = 10 * 1024 * 1024):
    """point-alpaca's encrypt.py: <name>.<sha256 hex>.enc = SHA-256 digest, then each `chunk` of the data XOR the
    next `chunk` of the key (from the key's start again once it is used up), a short key chunk repeated."""
    digest = hashlib.sha256(plain).digest()
    out, position = [digest], 0
    for start in range(0, len(plain), chunk):
        data = plain[start : start + chunk]
        key_chunk = key[position : position + chunk]
        if not key_chunk:
            position, key_chunk = 0, key[:chunk]
        position += len(key_chunk)
        pad = (key_chunk * (len(data) // len(key_chunk) + 1))[: len(data)]
        out.append((int.from_bytes(data, "little") ^ int.from_bytes(pad, "little")).to_bytes(len(data), "little"))
    path = directory / f"{name}.{digest.hex()}.enc"
    path.write_bytes(b"".join(out))
    return path


def leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(decrypt_module, "CHUNK", 1000)
    return 1000


def test_decrypts_a_repo_directory_with_key_wrap_and_short_key_chunks(tmp_path, small_chunks, capsys):
    rng = np.random.default_rng(0)
    key = rng.bytes(1700)  # chunks of 1000 and 700 bytes, then from the start again
    files = {"pytorch_model.bin": rng.bytes(5321), "config.json": b'{"model_type": "llama"}', "empty.txt": b""}
    enc = tmp_path / "BELLE-LLaMA-7B-2M-enc"
    enc.mkdir()
    for name, data in files.items():
        encrypt(data, key, name, enc, chunk=small_chunks)
    (enc / "README.md").write_text("not encrypted, not BELLE's data")
    (tmp_path / "consolidated.00.pth").write_bytes(key)
    assert main(["decrypt", str(enc), str(tmp_path / "consolidated.00.pth"), str(tmp_path / "out")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == files


def test_real_chunk_size_and_one_file(tmp_path):
    rng = np.random.default_rng(1)
    key, plain = rng.bytes(10 * 1024 * 1024 + 3), rng.bytes(21 * 1024 * 1024 + 5)  # key chunks: 10 MiB, 3 B, 10 MiB
    path = encrypt(plain, key, "llama7b-2m-4bit-128g.pt", tmp_path)
    (tmp_path / "key.pth").write_bytes(key)
    decrypt_module.decrypt(path, tmp_path / "key.pth", tmp_path / "out")
    assert (tmp_path / "out" / "llama7b-2m-4bit-128g.pt").read_bytes() == plain


@pytest.mark.parametrize("damage", ["wrong key", "truncated", "lfs pointer", "empty"])
def test_bad_inputs_fail_in_one_line_naming_the_file_and_leave_nothing(tmp_path, small_chunks, capsys, damage):
    rng = np.random.default_rng(2)
    key = rng.bytes(3000)
    enc = tmp_path / "enc"
    enc.mkdir()
    first = encrypt(b'{"a": 1}', key, "config.json", enc, chunk=small_chunks)
    bad = encrypt(rng.bytes(4500), key, "pytorch_model.bin", enc, chunk=small_chunks)
    (tmp_path / "key.pth").write_bytes(rng.bytes(3000) if damage == "wrong key" else key)
    if damage == "truncated":
        bad.write_bytes(bad.read_bytes()[:2500])
    elif damage == "lfs pointer":
        bad.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4532\n")
    elif damage == "empty":
        bad.write_bytes(b"")
    before = leftovers(tmp_path)
    assert main(["decrypt", str(enc), str(tmp_path / "key.pth"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    named = first if damage == "wrong key" else bad  # a wrong key fails on the first file, in name order
    assert len(err.splitlines()) == 1 and err.count(".enc") == 1 and str(named) in err, err
    assert {"wrong key": "wrong key file", "truncated": "truncated", "lfs pointer": "git lfs pull",
            "empty": "truncated"}[damage] in err
    assert leftovers(tmp_path) == before  # no output directory, no partial one


def test_decrypted_release_converts_like_any_hf_checkpoint(tmp_path):
    """The -enc flow end to end: an HF LLaMA checkpoint encrypted against a fake consolidated.00.pth (torch.save'd
    tensors), decrypted, converted, and giving transformers' logits."""
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4)).eval()
    hf.save_pretrained(tmp_path / "plain", safe_serialization=False)  # pytorch_model.bin, as BELLE's releases
    key_path = tmp_path / "llama-7b" / "consolidated.00.pth"
    key_path.parent.mkdir()
    torch.save({"tok_embeddings.weight": torch.randn(300, 64)}, key_path)
    enc = tmp_path / "BELLE-LLaMA-7B-2M-enc"
    enc.mkdir()
    for f in (tmp_path / "plain").iterdir():
        encrypt(f.read_bytes(), key_path.read_bytes(), f.name, enc)
    assert main(["decrypt", str(enc), str(key_path), str(tmp_path / "hf")]) == 0
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "pd")]) == 0
    ids = np.random.default_rng(0).integers(0, 101, (1, 6))
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "pd")
    with paddle.no_grad(), torch.no_grad():
        np.testing.assert_allclose(ours(paddle.to_tensor(ids)).logits.numpy(), hf(torch.tensor(ids)).logits.numpy(),
                                   atol=1e-4, rtol=1e-4)
    assert sorted(os.listdir(tmp_path / "hf")) == sorted(os.listdir(tmp_path / "plain"))
