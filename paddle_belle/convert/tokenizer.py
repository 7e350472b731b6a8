"""Tokenizer files between layouts, framework-free.

PaddleNLP layout: BLOOM ``vocab.json`` + ``merges.txt`` (with a header line), LLaMA ``sentencepiece.bpe.model``,
plus ``tokenizer_config.json`` naming the class, ``special_tokens_map.json`` and ``chat_template.json``.
HF layout: BLOOM ``tokenizer.json``, LLaMA ``tokenizer.model``. A LLaMA-family tokenizer that is only a
``tokenizer.json`` (byte-level BPE: SmolLM2, Llama-3) is the same file in both layouts.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from paddle_belle.checkpoint import atomic_path, write_json

SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
PADDLE_TOKENIZER_CLASSES = {"bloom": "BloomTokenizer", "llama": "LlamaTokenizer"}
# BLOOM's pre-tokenizer regex exactly as its tokenizer.json spells it (Oniguruma syntax: a nested class).
BLOOM_SPLIT_ONIGURUMA = " ?[^(\\s|[.,!?…。，、।۔،])]+"
# The belle-7b-2m card's prompt; multi-turn concatenates "Human: {input}\n\nAssistant:{output}" turns.
BELLE_CHAT_TEMPLATE = {
    "system": "",
    "conversation": ["Human: {{user}}\n\nAssistant:", "{{bot}}\n\n"],
    "query": "Human: {{query}}\n\nAssistant:",
}


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def special_tokens(path: Path) -> dict:
    """Special tokens and a few plain settings from tokenizer_config.json/special_tokens_map.json (either layout)."""
    found = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        data = _read_json(path / name)
        for key in SPECIAL_TOKENS + ("padding_side", "add_bos_token", "add_eos_token", "model_max_length"):
            value = data.get(key)
            if isinstance(value, dict):  # HF writes AddedToken objects as dicts
                value = value.get("content")
            if value is not None:
                found[key] = value
    return found


def tokenizer_type(path: Path) -> str:
    """bloom or llama, for a directory: from config.json, else tokenizer_class, else the files present."""
    name = _read_json(path / "config.json").get("model_type") or _read_json(path / "tokenizer_config.json").get(
        "tokenizer_class", ""
    )
    for model_type in PADDLE_TOKENIZER_CLASSES:
        if model_type in name.lower():
            return model_type
    if (path / "tokenizer.model").is_file() or (path / "sentencepiece.bpe.model").is_file():
        return "llama"
    if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        return "bloom"
    raise FileNotFoundError(f"{path}: no tokenizer files this package knows")


def _bloom_vocab_merges(path: Path) -> tuple[dict, list[str]]:
    if (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        lines = (path / "merges.txt").read_text(encoding="utf-8").split("\n")
        return _read_json(path / "vocab.json"), [m for m in lines if m.strip() and not m.startswith("#version")]
    if (path / "tokenizer.json").is_file():
        model = _read_json(path / "tokenizer.json")["model"]
        # tokenizers writes merges as "a b" strings, newer versions as ["a", "b"] pairs
        return model["vocab"], [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    raise FileNotFoundError(f"{path}: no BLOOM tokenizer (vocab.json + merges.txt, or tokenizer.json)")


def json_only(path: Path, model_type: str) -> bool:
    """Whether a LLaMA-family tokenizer is only an HF tokenizer.json (a byte-level BPE such as SmolLM2's or
    Llama-3's, with no sentencepiece model): such a file travels as it is, in either layout. (A directory that
    paddle_belle's JsonTokenizer saved says so in tokenizer_config.json, config.json or not.)"""
    saved = _read_json(path / "tokenizer_config.json").get("tokenizer_class") == "JsonTokenizer"
    return (model_type == "llama" or saved) and (path / "tokenizer.json").is_file() and not any(
        (path / n).is_file() for n in ("sentencepiece.bpe.model", "tokenizer.model"))


def _copy_json_tokenizer(src: Path, dst: Path) -> None:
    for name in ("tokenizer.json", "special_tokens_map.json", "tokenizer_config.json"):
        if (src / name).is_file():  # tokenizer_config.json last
            _copy(src / name, dst / name)


def _sentencepiece_file(path: Path) -> Path:
    for name in ("sentencepiece.bpe.model", "tokenizer.model"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no LLaMA tokenizer (sentencepiece.bpe.model, tokenizer.model or tokenizer.json)")


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_paddle_tokenizer(src: Path, dst: Path, model_type: str) -> None:
    """Write the files PaddleNLP's tokenizer class loads, plus BELLE's chat template, from either layout (a
    tokenizer.json-only LLaMA tokenizer is copied: paddle_belle's JsonTokenizer reads it in both)."""
    dst.mkdir(parents=True, exist_ok=True)
    if json_only(src, model_type):
        return _copy_json_tokenizer(src, dst)
    if model_type == "bloom":
        vocab, merges = _bloom_vocab_merges(src)
        write_json(dst / "vocab.json", vocab)
        with atomic_path(dst / "merges.txt") as tmp:
            # PaddleNLP drops the first and last line of merges.txt: a header and a trailing newline are required.
            Path(tmp).write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    else:
        _copy(_sentencepiece_file(src), dst / "sentencepiece.bpe.model")
    tokens = special_tokens(src)
    write_json(dst / "special_tokens_map.json", {k: v for k, v in tokens.items() if k in SPECIAL_TOKENS})
    write_json(dst / "chat_template.json", BELLE_CHAT_TEMPLATE)
    # Written last: its presence marks a complete directory.
    write_json(dst / "tokenizer_config.json", {"tokenizer_class": PADDLE_TOKENIZER_CLASSES[model_type], **tokens})


def write_hf_tokenizer(src: Path, dst: Path, model_type: str) -> None:
    """Write what transformers' AutoTokenizer loads: BLOOM tokenizer.json (BLOOM's pipeline), LLaMA tokenizer.model
    (or the tokenizer.json it came with)."""
    dst.mkdir(parents=True, exist_ok=True)
    if json_only(src, model_type):
        return _copy_json_tokenizer(src, dst)
    tokens = special_tokens(src)
    if model_type == "bloom":
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab, merges = _bloom_vocab_merges(src)
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[tuple(m.split(" ")) for m in merges]))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(BLOOM_SPLIT_ONIGURUMA), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        tok.decoder = decoders.ByteLevel()
        tok.add_special_tokens([t for k, t in tokens.items() if k in SPECIAL_TOKENS])
        with atomic_path(dst / "tokenizer.json") as tmp:
            tok.save(str(tmp))
        tokenizer_class = "BloomTokenizerFast"
    else:
        _copy(_sentencepiece_file(src), dst / "tokenizer.model")
        tokenizer_class = "LlamaTokenizer"
    write_json(dst / "special_tokens_map.json", {k: v for k, v in tokens.items() if k in SPECIAL_TOKENS})
    write_json(dst / "tokenizer_config.json", {"tokenizer_class": tokenizer_class, **tokens})


def train_bloom_tokenizer(texts, vocab_size: int, directory: Path) -> Path:
    """Train a byte-level BPE the way BLOOM's is built (its pre-tokenizer split, ByteLevel without regex, specials
    <unk> <s> </s> <pad> = 0..3) on ``texts`` and save it as HF ``tokenizer.json`` in ``directory``; convert it with
    write_paddle_tokenizer for PaddleNLP's BloomTokenizer."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(BLOOM_SPLIT_ONIGURUMA), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / "tokenizer.json") as tmp:
        tok.save(str(tmp))
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "BloomTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "pad_token": "<pad>",
    })
    return directory
