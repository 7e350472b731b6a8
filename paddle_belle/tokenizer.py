"""Tokenizers: PaddleNLP's BloomTokenizer/LlamaTokenizer, fed from PaddleNLP or HF file layouts.

``AutoTokenizer`` converts HF layouts (convert/tokenizer.py) on the fly into a content-addressed cache.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import regex
from paddlenlp.transformers import BloomTokenizer as _PaddleNLPBloomTokenizer
from paddlenlp.transformers import LlamaTokenizer as _PaddleNLPLlamaTokenizer

from paddle_belle import hub
from paddle_belle.checkpoint import HF_TOKENIZER_VOCAB, TOKENIZER_CONFIG, TOKENIZER_VOCAB
from paddle_belle.convert.tokenizer import tokenizer_type, write_paddle_tokenizer

# BLOOM's pre-tokenizer: the matches of this regex and the text between them are the pieces (Split, behaviour
# "Isolated"), then byte-level BPE. It is BLOOM_SPLIT_ONIGURUMA with Oniguruma's nested class flattened.
BLOOM_SPLIT = regex.compile(r" ?[^\s|().,!?…。，、।۔،]+")


class _TorchStyleCalls:
    """Accepts ``return_tensors="pt"``: code written for transformers (the belle-7b-2m card) then gets Paddle
    tensors, the framework's own, where PaddleNLP would raise."""

    def __call__(self, *args, **kwargs):
        if kwargs.get("return_tensors") == "pt":
            kwargs["return_tensors"] = "pd"
        return super().__call__(*args, **kwargs)


class LlamaTokenizer(_TorchStyleCalls, _PaddleNLPLlamaTokenizer):
    """PaddleNLP's LlamaTokenizer (accepting return_tensors="pt")."""


class BloomTokenizer(_TorchStyleCalls, _PaddleNLPBloomTokenizer):
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
    # What the conversion reads, in this order: the digest names caches made before.
    names = [*TOKENIZER_VOCAB["bloom"], *HF_TOKENIZER_VOCAB["bloom"], *HF_TOKENIZER_VOCAB["llama"], *TOKENIZER_CONFIG]
    sources = [path / n for n in names if (path / n).is_file()]
    digest = hashlib.sha256(b"".join(p.name.encode() + p.read_bytes() for p in sources)).hexdigest()[:16]
    out = hub.cache_root() / "paddle_belle" / "tokenizers" / digest
    if not (out / "tokenizer_config.json").is_file():
        write_paddle_tokenizer(path, out, model_type)
    return out


class AutoTokenizer:
    @staticmethod
    def from_pretrained(path, **kwargs):
        """PaddleNLP's tokenizer for a directory in PaddleNLP's layout or HF's (tokenizer.json, tokenizer.model,
        merges.txt without header), or for a PaddleNLP community model name (see ``hub.resolve``)."""
        path = hub.resolve(path)
        model_type = tokenizer_type(path)
        return TOKENIZERS[model_type].from_pretrained(str(paddle_layout(path, model_type)), **kwargs)
