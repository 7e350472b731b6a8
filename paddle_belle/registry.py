"""The BELLE family and its base models: where each comes from and its shape, as a plain table.

``paddlenlp`` is a community name on PaddleNLP's bucket (``from_pretrained`` downloads it); ``hf`` the
Hugging Face repo to convert from (``paddle-belle convert``). The BELLE-LLaMA releases are XOR-encrypted
diffs against Meta's LLaMA weights (LLaMA's licence, ``encrypted``): ``paddle-belle decrypt`` them with the original
consolidated.00.pth, then convert; ``gptq`` lists a repo's GPTQ-for-LLaMa files (``convert --from-gptq``).
Shapes use PaddleNLP's config field names. Sources: BELLE's README.md and models/README.md, the repos' Hugging Face
pages (cards/facts.py cites them per model).
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from paddle_belle.arch import ARCHS

BLOOMZ_7B1 = dict(vocab_size=250880, hidden_size=4096, n_layer=30, n_head=32)
LLAMA_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32)
LLAMA_13B = dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    model_type: str
    config: dict = field(hash=False)
    description: str
    paddlenlp: str | None = None
    hf: str | None = None
    bundled: bool = False  # ships inside the package (paddle_belle/assets/<name>)
    encrypted: bool = False  # an XOR diff against Meta's LLaMA (point-alpaca's scheme): `paddle-belle decrypt` first
    gptq: tuple[str, ...] = ()  # the repo holds these GPTQ-for-LLaMa files, not an HF checkpoint

    @property
    def route(self) -> str:
        """How the weights become a checkpoint from_pretrained loads, in a few words."""
        if self.bundled:
            return "bundled"
        if self.paddlenlp:
            return "from_pretrained"
        return ("decrypt, " if self.encrypted else "") + ("convert --from-gptq" if self.gptq else "convert")

    @property
    def parameters(self) -> int:
        """Distinct parameters (a tied head counts once, as the model holds it)."""
        return ARCHS[self.model_type].parameters(self.config)


def _belle_bloom(size: str, data: str) -> ModelInfo:
    return ModelInfo(
        f"belle-7b-{size.lower()}", "bloom", BLOOMZ_7B1,
        f"BLOOMZ-7B1-mt fine-tuned on {data} Chinese ChatGPT-generated instructions + 50k Alpaca (English)",
        paddlenlp="bellegroup/belle-7b-2m" if size == "2M" else None, hf=f"BelleGroup/BELLE-7B-{size}",
    )


REGISTRY = {m.name: m for m in [
    _belle_bloom("0.2M", "0.2M"),
    _belle_bloom("0.6M", "0.6M"),
    _belle_bloom("1M", "1M"),
    _belle_bloom("2M", "2M"),
    ModelInfo("belle-llama-7b-0.6m", "llama", LLAMA_7B, "LLaMA-7B fine-tuned on 0.6M BELLE instructions (encrypted diff)",
              hf="BelleGroup/BELLE-LLaMA-7B-0.6M-enc", encrypted=True),
    ModelInfo("belle-llama-7b-2m", "llama", LLAMA_7B, "LLaMA-7B fine-tuned on 2M BELLE instructions (encrypted diff)",
              hf="BelleGroup/BELLE-LLaMA-7B-2M-enc", encrypted=True),
    ModelInfo("belle-llama-7b-2m-gptq", "llama", LLAMA_7B,
              "BELLE-LLaMA-7B-2M quantized by GPTQ-for-LLaMa to 4 and 8 bits, group size 128 (encrypted diff)",
              hf="BelleGroup/BELLE-LLaMA-7B-2M-gptq-enc", encrypted=True,
              gptq=("llama7b-2m-4bit-128g.pt", "llama7b-2m-8bit-128g.pt")),
    ModelInfo("belle-llama-13b-2m", "llama", LLAMA_13B, "LLaMA-13B fine-tuned on 2M BELLE instructions (encrypted diff)",
              hf="BelleGroup/BELLE-LLaMA-13B-2M-enc", encrypted=True),
    ModelInfo("belle-llama-ext-7b", "llama", {**LLAMA_7B, "vocab_size": 79458},
              "LLaMA-7B with a 79,458-token Chinese-extended vocabulary, embeddings pre-trained on 3.4B Chinese words "
              "(encrypted diff)", hf="BelleGroup/BELLE-LLaMA-EXT-7B", encrypted=True),
    # The vocabulary: the repo's encrypted tokenizer.model and pytorch_model.bin.index.json carry the same plaintext
    # SHA-256 in their names as BELLE-LLaMA-EXT-7B's (0b716a61..., 4f08b269...): the same tokenizer and tensor shapes.
    ModelInfo("belle-on-open-datasets", "llama", {**LLAMA_7B, "vocab_size": 79458},
              "BELLE-LLaMA-EXT-7B fine-tuned on open instruction datasets (arXiv 2304.07854; encrypted diff)",
              hf="BelleGroup/BELLE-on-Open-Datasets", encrypted=True),
    # Llama 2's licence allows sharing the weights: a plain HF checkpoint, in the BELLE-2 organisation.
    ModelInfo("belle-llama2-13b-chat-0.4m", "llama", LLAMA_13B,
              "Llama-2-13B fine-tuned on 0.4M high-quality Chinese conversations", hf="BELLE-2/BELLE-Llama2-13B-chat-0.4M"),
    ModelInfo("bloomz-7b1-mt", "bloom", BLOOMZ_7B1, "BigScience BLOOMZ-7B1-mt, the base of BELLE-7B",
              paddlenlp="bigscience/bloomz-7b1-mt", hf="bigscience/bloomz-7b1-mt"),
    ModelInfo("llama-7b", "llama", LLAMA_7B, "Meta LLaMA-7B, the base of BELLE-LLaMA-7B", hf="huggyllama/llama-7b"),
    ModelInfo("llama-13b", "llama", LLAMA_13B, "Meta LLaMA-13B, the base of BELLE-LLaMA-13B", hf="huggyllama/llama-13b"),
    ModelInfo("belle-tiny-zh", "bloom", dict(vocab_size=6000, hidden_size=256, n_layer=4, n_head=8),
              "A 4.7M-parameter Chinese BLOOM trained by tools/build_tiny_model.py (pre-training + BELLE SFT); "
              "ships inside paddle_belle, the default of chat/generate/serve", bundled=True),
]}
BUNDLED = Path(__file__).parent / "assets"
DEFAULT_MODEL = "belle-tiny-zh"


def lookup(name: str) -> ModelInfo | None:
    """The entry for a short name (belle-7b-2m), a PaddleNLP community name or an HF repo, case-insensitively."""
    key = name.lower()
    return next((m for m in REGISTRY.values() if key in (m.name, (m.paddlenlp or "").lower(), (m.hf or "").lower())), None)


def did_you_mean(name: str) -> str:
    """The hint for a name that is not a model: the registry's close matches, and where the names are listed."""
    close = difflib.get_close_matches(name.lower(), REGISTRY, n=1)
    return (f"did you mean {close[0]}? " if close else "") + "`paddle-belle models` lists the short names"


def format_count(n: int) -> str:
    """7.07B, 4.7M, 350K: a parameter count in the largest unit it reaches (not 0.00B for a small model)."""
    for unit, scale, digits in (("B", 1e9, 2), ("M", 1e6, 1), ("K", 1e3, 0)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def format_table() -> str:
    rows = [("name", "arch", "layers", "hidden", "heads", "vocab", "params", "from_pretrained", "release (HF)",
             "how")]
    for m in REGISTRY.values():
        c, a = m.config, ARCHS[m.model_type]
        rows.append((m.name, m.model_type, str(a.n_layers(c)), str(c["hidden_size"]), str(a.n_heads(c)), str(c["vocab_size"]),
                     format_count(m.parameters), "(bundled)" if m.bundled else m.paddlenlp or "-", m.hf or "-",
                     m.route))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows)
