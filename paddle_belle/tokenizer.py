"""Tokenizers: PaddleNLP's BloomTokenizer/LlamaTokenizer, fed from PaddleNLP or HF file layouts, and JsonTokenizer
for LLaMA-family tokenizers that exist only as an HF tokenizer.json.

``AutoTokenizer`` converts HF layouts (convert/tokenizer.py) on the fly into a content-addressed cache.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import regex
from paddlenlp.transformers import BloomTokenizer as _PaddleNLPBloomTokenizer
from paddlenlp.transformers import LlamaTokenizer as _PaddleNLPLlamaTokenizer
from paddlenlp.transformers import PretrainedTokenizer

from paddle_belle import hub
from paddle_belle.checkpoint import HF_TOKENIZER_VOCAB, TOKENIZER_CONFIG, TOKENIZER_VOCAB, atomic_path
from paddle_belle.convert.tokenizer import json_only, special_tokens, tokenizer_type, write_paddle_tokenizer

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


class _SkipUnknownIds:
    """Decoding skips ids past the vocabulary, as transformers' fast tokenizers (the ``tokenizers`` library, and
    JsonTokenizer below) do. BLOOM's embedding has 250,880 rows for a 250,680-token vocabulary, so a sampled padding
    id (or a random model's) would otherwise end a chat or a served reply in PaddleNLP's KeyError
    (paddlenlp/transformers/bloom/tokenizer.py ``_convert_id_to_token``; sentencepiece raises the same way)."""

    def convert_ids_to_tokens(self, ids, skip_special_tokens=False):
        if isinstance(ids, int):
            return super().convert_ids_to_tokens(ids, skip_special_tokens)
        size = len(self)
        return super().convert_ids_to_tokens([i for i in map(int, ids) if 0 <= i < size], skip_special_tokens)


class LlamaTokenizer(_TorchStyleCalls, _SkipUnknownIds, _PaddleNLPLlamaTokenizer):
    """PaddleNLP's LlamaTokenizer (accepting return_tensors="pt", skipping unknown ids when decoding)."""


class BloomTokenizer(_TorchStyleCalls, _SkipUnknownIds, _PaddleNLPBloomTokenizer):
    """PaddleNLP's BloomTokenizer with BLOOM's own pre-tokenizer.

    PaddleNLP 2.8.1 splits text with GPT-2's regex, so its ids differ from the ones BLOOM/BELLE were trained on
    wherever the two splits disagree (punctuation, digits, runs of spaces). Decoding skips unknown ids
    (_SkipUnknownIds). Everything else is PaddleNLP's.
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


class JsonTokenizer(_TorchStyleCalls, PretrainedTokenizer):
    """An HF ``tokenizer.json`` run by the ``tokenizers`` library, behind PaddleNLP's tokenizer interface
    (``__call__``, padding, ``return_tensors="pd"``, special-token attributes, ``save_pretrained``): LLaMA-family
    models whose tokenizer is a byte-level BPE with no sentencepiece model (SmolLM2, Llama-3, a GGUF import).

    Why ``tokenizers`` and not PaddleNLP: PaddleNLP 2.8.1 reads tokenizer.json only through
    ``PretrainedFastTokenizer`` (paddlenlp/transformers/tokenizer_utils_fast.py), which needs Baidu's
    ``fast-tokenizer-python``, a package with no wheel for current Pythons (none for 3.11 on PyPI); and its
    byte-level tokenizers (GPTTokenizer, BloomTokenizer) hard-code one pre-tokenizer each, where tokenizer.json
    names its own (SmolLM2: digits split one by one; Llama-3: its own regex). ``tokenizers`` is what wrote the file.
    Text is encoded and decoded by it whole, special tokens included: PaddleNLP's ``tokenize`` would strip the
    whitespace around special tokens (its default for tokens that are not AddedTokens), which changes a ChatML
    prompt's ids."""

    resource_files_names = {"tokenizer_file": "tokenizer.json"}
    model_input_names = ["input_ids", "attention_mask"]
    padding_side = "left"

    def __init__(self, tokenizer_file, clean_up_tokenization_spaces=False, **kwargs):
        from tokenizers import Tokenizer

        self.tokenizer_file = str(tokenizer_file)
        self.backend = Tokenizer.from_file(self.tokenizer_file)
        self.clean_up_spaces = clean_up_tokenization_spaces  # transformers' default; PaddleNLP's decode says True
        super().__init__(**kwargs)
        # What the file's post-processor puts around one sequence (Llama-3's TemplateProcessing: <|begin_of_text|>
        # before it), found by encoding a probe with and without special tokens.
        plain = self.backend.encode("a", add_special_tokens=False).ids
        full = self.backend.encode("a", add_special_tokens=True).ids
        at = next(i for i in range(len(full) - len(plain) + 1) if full[i : i + len(plain)] == plain)
        self._prefix, self._suffix = full[:at], full[at + len(plain) :]

    @classmethod
    def from_pretrained(cls, path, **kwargs):
        """From a directory holding tokenizer.json, with the special tokens of its tokenizer_config.json and
        special_tokens_map.json (HF's files, read by convert/tokenizer.py: PaddleNLP's own from_pretrained would
        hand HF-only fields such as added_tokens_decoder to __init__)."""
        path = Path(path)
        config = path / "tokenizer_config.json"
        clean = json.loads(config.read_text(encoding="utf-8")).get("clean_up_tokenization_spaces", False) \
            if config.is_file() else False
        return cls(path / "tokenizer.json", clean, **{**special_tokens(path), **kwargs})

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=False)

    def __len__(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def tokenize(self, text, **kwargs):
        return self.backend.encode(text, add_special_tokens=False).tokens

    def _convert_token_to_id(self, token):
        index = self.backend.token_to_id(token)
        return self.backend.token_to_id(self.unk_token) if index is None and self.unk_token else index

    def _convert_id_to_token(self, index):
        return self.backend.id_to_token(index)

    def convert_tokens_to_string(self, tokens):
        return self.backend.decode([self.backend.token_to_id(t) for t in tokens], skip_special_tokens=False)

    def decode(self, token_ids, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        """The file's decoder, as transformers' fast tokenizers decode (PaddleNLP's would join special tokens with
        spaces); spaces before punctuation are cleaned up as tokenizer_config.json says (default: not)."""
        ids = token_ids.tolist() if hasattr(token_ids, "tolist") else token_ids
        ids = [ids] if isinstance(ids, int) else list(ids)
        text = self.backend.decode(ids, skip_special_tokens=skip_special_tokens)
        clean = self.clean_up_spaces if clean_up_tokenization_spaces is None else clean_up_tokenization_spaces
        return self.clean_up_tokenization(text) if clean else text

    def batch_decode(self, sequences, skip_special_tokens=False, clean_up_tokenization_spaces=None, **kwargs):
        sequences = sequences.tolist() if hasattr(sequences, "tolist") else sequences
        return [self.decode(ids, skip_special_tokens, clean_up_tokenization_spaces) for ids in sequences]

    def build_inputs_with_special_tokens(self, token_ids_0, token_ids_1=None):
        if token_ids_1 is not None:
            raise NotImplementedError("JsonTokenizer encodes single sequences only")
        return self._prefix + token_ids_0 + self._suffix

    def get_special_tokens_mask(self, token_ids_0, token_ids_1=None, already_has_special_tokens=False):
        if already_has_special_tokens:
            return super().get_special_tokens_mask(token_ids_0, token_ids_1, True)
        return [1] * len(self._prefix) + [0] * len(token_ids_0) + [1] * len(self._suffix)

    def save_resources(self, save_directory):
        with atomic_path(Path(save_directory) / "tokenizer.json") as tmp:
            self.backend.save(str(tmp))
        super().save_resources(save_directory)  # PaddleNLP's chat template, if one was set


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
        merges.txt without header), or for a PaddleNLP community model name (see ``hub.resolve``); a LLaMA-family
        tokenizer that is only a tokenizer.json (byte-level BPE: SmolLM2, Llama-3) gets ``JsonTokenizer``."""
        path = hub.resolve(path)
        model_type = tokenizer_type(path)
        if json_only(path, model_type):
            return JsonTokenizer.from_pretrained(path, **kwargs)
        return TOKENIZERS[model_type].from_pretrained(str(paddle_layout(path, model_type)), **kwargs)
