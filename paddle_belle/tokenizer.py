"""Tokenizers: PaddleNLP's BloomTokenizer/LlamaTokenizer, fed from PaddleNLP or HF file layouts.

PaddleNLP layout: BLOOM ``vocab.json`` + ``merges.txt`` (with a header line), LLaMA ``sentencepiece.bpe.model``.
HF layout: BLOOM ``tokenizer.json``, LLaMA ``tokenizer.model``. ``write_paddle_tokenizer``/``write_hf_tokenizer``
convert between them; ``AutoTokenizer`` converts on the fly into a content-addressed cache.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import regex
from paddlenlp.transformers import BloomTokenizer as _PaddleNLPBloomTokenizer
from paddlenlp.transformers import LlamaTokenizer

from paddle_belle.checkpoint import atomic_path, write_json

# BLOOM's pre-tokenizer (its tokenizer.json): the matches of this regex and the text between them are the pieces
# (Split, behaviour "Isolated"), then byte-level BPE. In Oniguruma the original ` ?[^(\s|[.,!?…。，、।۔،])]+` is a
# nested class, i.e. this flat one.
BLOOM_SPLIT_ONIGURUMA = " ?[^(\\s|[.,!?…。，、।۔،])]+"
BLOOM_SPLIT = regex.compile(r" ?[^\s|().,!?…。，、।۔،]+")
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")
# The belle-7b-2m card's prompt; multi-turn concatenates "Human: {input}\n\nAssistant:{output}" turns.
BELLE_CHAT_TEMPLATE = {
    "system": "",
    "conversation": ["Human: {{user}}\n\nAssistant:", "{{bot}}\n\n"],
    "query": "Human: {{query}}\n\nAssistant:",
}


class BloomTokenizer(_PaddleNLPBloomTokenizer):
    """PaddleNLP's BloomTokenizer with BLOOM's own pre-tokenizer.

    PaddleNLP 2.8.1 splits text with GPT-2's regex, so its ids differ from the ones BLOOM/BELLE were trained on
    wherever the two splits disagree (punctuation, digits, runs of spaces). Everything else is PaddleNLP's.
    """

    def _tokenize(self, text):
        pieces, last = [], 0
        for m in BLOOM_SPLIT.finditer(text):
            if m.start() > last:
                pieces.append(text[last : m.start()])
            pieces.append(m.group())
            last = m.end()
        if last < len(text):
            pieces.append(text[last:])
        tokens = []
        for piece in pieces:
            tokens.extend(self.bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))).split(" "))
        return tokens


TOKENIZERS = {"bloom": BloomTokenizer, "llama": LlamaTokenizer}


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
    for model_type in TOKENIZERS:
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


def _sentencepiece_file(path: Path) -> Path:
    for name in ("sentencepiece.bpe.model", "tokenizer.model"):
        if (path / name).is_file():
            return path / name
    raise FileNotFoundError(f"{path}: no LLaMA tokenizer (sentencepiece.bpe.model or tokenizer.model)")


def _copy(src: Path, dst: Path) -> None:
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def write_paddle_tokenizer(src: Path, dst: Path, model_type: str) -> None:
    """Write the files PaddleNLP's tokenizer class loads, plus BELLE's chat template, from either layout."""
    dst.mkdir(parents=True, exist_ok=True)
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
    write_json(dst / "tokenizer_config.json", {"tokenizer_class": TOKENIZERS[model_type].__name__, **tokens})


def write_hf_tokenizer(src: Path, dst: Path, model_type: str) -> None:
    """Write what transformers' AutoTokenizer loads: BLOOM tokenizer.json (BLOOM's pipeline), LLaMA tokenizer.model."""
    dst.mkdir(parents=True, exist_ok=True)
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


def _is_paddle_layout(path: Path, model_type: str) -> bool:
    if model_type == "llama":
        return (path / "sentencepiece.bpe.model").is_file()
    merges = path / "merges.txt"
    if not ((path / "vocab.json").is_file() and merges.is_file()):
        return False
    with open(merges, encoding="utf-8") as f:
        return f.readline().startswith("#version")


def paddle_layout(path: Path, model_type: str) -> Path:
    """``path`` if it is in PaddleNLP's layout, else a converted copy in a content-addressed cache under
    $PPNLP_HOME (the source directory is never written to)."""
    if _is_paddle_layout(path, model_type):
        return path
    names = ["vocab.json", "merges.txt", "tokenizer.json", "tokenizer.model", "tokenizer_config.json",
             "special_tokens_map.json"]
    sources = [path / n for n in names if (path / n).is_file()]
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    out = Path(os.environ.get("PPNLP_HOME", Path.home() / ".paddlenlp")) / "paddle_belle" / "tokenizers" / digest
    if not (out / "tokenizer_config.json").is_file():
        write_paddle_tokenizer(path, out, model_type)
    return out


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path, **kwargs):
        """PaddleNLP's tokenizer for a directory in PaddleNLP's layout or HF's (tokenizer.json, tokenizer.model,
        merges.txt without header)."""
        path = Path(path)
        model_type = tokenizer_type(path)
        return TOKENIZERS[model_type].from_pretrained(str(paddle_layout(path, model_type)), **kwargs)
