"""``AutoModelForCausalLM`` and ``AutoTokenizer``: pick the class from a checkpoint directory's config."""
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
from paddle_belle.models import MODELS
from paddle_belle.models.base import read_config


def model_type_of(path) -> str:
    config = read_config(path)
    model_type = config.get("model_type")
    if model_type is None:  # older PaddleNLP configs name only the class
        names = " ".join(config.get("architectures") or [config.get("init_class", "")]).lower()
        model_type = next((t for t in MODELS if t in names), None)
    if model_type not in MODELS:
        raise ValueError(f"{path}: model_type {model_type!r} is not supported (supported: {', '.join(MODELS)})")
    return model_type


class AutoModelForCausalLM:
    @staticmethod
    def from_pretrained(path, dtype=None, **kwargs):
        """Load a checkpoint directory into our BLOOM or LLaMA class, chosen by config.json's model_type.

        ``dtype``: float32 (default on CPU), float16 or bfloat16 where the device runs them; by default the
        checkpoint's own dtype on accelerators.
        """
        return MODELS[model_type_of(path)].from_pretrained(path, dtype=dtype, **kwargs)


# ----------------------------------------------------------------------------------------------- tokenizers
# BLOOM's pre-tokenizer (its tokenizer.json): the matches of this regex and the text between them are the pieces
# (Split, behaviour "Isolated"), then byte-level BPE. In Oniguruma the original ` ?[^(\s|[.,!?…。，、।۔،])]+` is a
# nested class, i.e. this flat one.
BLOOM_SPLIT = regex.compile(r" ?[^\s|().,!?…。，、।۔،]+")


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
SPECIAL_TOKENS = ("bos_token", "eos_token", "unk_token", "pad_token")


def _cache_home() -> Path:
    return Path(os.environ.get("PPNLP_HOME", Path.home() / ".paddlenlp")) / "paddle_belle" / "tokenizers"


def _special_tokens(path: Path) -> dict:
    """Special tokens and a few plain settings from HF's tokenizer_config.json/special_tokens_map.json."""
    found = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        if (path / name).is_file():
            data = json.loads((path / name).read_text(encoding="utf-8"))
            for key in SPECIAL_TOKENS + ("padding_side", "add_bos_token", "add_eos_token", "chat_template"):
                value = data.get(key)
                if isinstance(value, dict):  # HF writes AddedToken objects as dicts
                    value = value.get("content")
                if value is not None:
                    found[key] = value
    return found


def _tokenizer_type(path: Path) -> str:
    """For a tokenizer directory without config.json: from tokenizer_class, else from the files present."""
    config = path / "tokenizer_config.json"
    name = json.loads(config.read_text(encoding="utf-8")).get("tokenizer_class", "") if config.is_file() else ""
    for model_type in TOKENIZERS:
        if model_type in name.lower():
            return model_type
    if (path / "tokenizer.model").is_file() or (path / "sentencepiece.bpe.model").is_file():
        return "llama"
    if (path / "tokenizer.json").is_file() or (path / "vocab.json").is_file():
        return "bloom"
    raise FileNotFoundError(f"{path}: no config.json and no tokenizer files this package knows")


def _paddle_layout(path: Path, model_type: str) -> Path:
    """A directory in PaddleNLP's tokenizer layout for ``path``: ``path`` itself if it already is one, else a
    converted copy in a content-addressed cache (the source directory is never written to)."""
    if model_type == "bloom":
        merges = path / "merges.txt"
        if (path / "vocab.json").is_file() and merges.is_file():
            first = merges.read_text(encoding="utf-8").split("\n", 1)[0]
            if first.startswith("#version"):
                return path
            sources = [path / "vocab.json", merges]
        elif (path / "tokenizer.json").is_file():
            sources = [path / "tokenizer.json"]
        else:
            raise FileNotFoundError(f"{path}: no BLOOM tokenizer (vocab.json + merges.txt, or tokenizer.json)")
    else:
        if (path / "sentencepiece.bpe.model").is_file():
            return path
        if not (path / "tokenizer.model").is_file():
            raise FileNotFoundError(f"{path}: no LLaMA tokenizer (sentencepiece.bpe.model or tokenizer.model)")
        sources = [path / "tokenizer.model"]
    sources += [path / n for n in ("tokenizer_config.json", "special_tokens_map.json") if (path / n).is_file()]
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    out = _cache_home() / digest
    if (out / "tokenizer_config.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    if model_type == "bloom":
        if sources[0].name == "tokenizer.json":
            model = json.loads(sources[0].read_text(encoding="utf-8"))["model"]
            vocab = model["vocab"]
            # tokenizers writes merges as "a b" strings, newer versions as ["a", "b"] pairs
            merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
        else:
            vocab = json.loads((path / "vocab.json").read_text(encoding="utf-8"))
            merges = [m for m in (path / "merges.txt").read_text(encoding="utf-8").split("\n") if m.strip()]
        write_json(out / "vocab.json", vocab)
        with atomic_path(out / "merges.txt") as tmp:
            # PaddleNLP drops the first and last line of merges.txt: a header and a trailing newline are required.
            Path(tmp).write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    else:
        with atomic_path(out / "sentencepiece.bpe.model") as tmp:
            shutil.copyfile(path / "tokenizer.model", tmp)
    config = {"tokenizer_class": TOKENIZERS[model_type].__name__, **_special_tokens(path)}
    write_json(out / "tokenizer_config.json", config)  # written last: its presence marks a complete entry
    return out


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path, **kwargs):
        """PaddleNLP's tokenizer for a checkpoint directory, in PaddleNLP's layout or HF's (tokenizer.json,
        tokenizer.model, merges.txt without header)."""
        path = Path(path)
        model_type = model_type_of(path) if (path / "config.json").is_file() else _tokenizer_type(path)
        return TOKENIZERS[model_type].from_pretrained(str(_paddle_layout(path, model_type)), **kwargs)
