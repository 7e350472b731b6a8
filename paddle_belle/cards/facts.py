"""What BELLE published about each model, as a plain table, with where each fact comes from.

Everything here is restated in our own words; a fact we could not find is ``None`` and the card says "not
published". Sources (checked for this table; the cards cite them):

- HF_7B: the Hugging Face cards of BelleGroup/BELLE-7B-0.2M, -0.6M, -1M and -2M (description, the training
  hyper-parameter table, the ``Human: {input}\\n\\nAssistant:`` format and the generate() call).
- HF_LLAMA_13B: the card of BelleGroup/BELLE-LLaMA-13B-2M-enc, the only BELLE-LLaMA card whose hyper-parameters we
  could read. We do not carry its numbers over to the 7B LLaMA models: their cards could not be checked.
- MODELS_README: BELLE's GitHub models/README_en.md (the model lists, the XOR-diff release of the LLaMA models, the
  limitations it states).
- GPTQ_README: BELLE's GitHub models/gptq/README.md (the BELLE-7B-gptq files, their sizes and GPU memory on one
  A100, the quantization command: BELLE-7B-2M, wikitext2 calibration, groupsize 128) and models/gptq/bloom.py
  (asymmetric grid: ``Quantizer.configure(..., sym=False)``).
- BELLE_README: BELLE's GitHub README.md (the model list: BELLE-Llama2-13B-chat-0.4M "trained on 0.4M high-quality
  conversations on top of Llama-2-13B", BELLE-on-Open-Datasets "LLaMA-7B trained on diverse open-source data").
- Hugging Face file listings (what a repo holds, file sizes, and the plaintext SHA-256 in each encrypted file's name).
  The cards of BELLE-LLaMA-7B-2M-gptq-enc, BELLE-on-Open-Datasets and BELLE-Llama2-13B-chat-0.4M could not be read.
"""
from __future__ import annotations

from dataclasses import dataclass, field

NOT_PUBLISHED = "not published"
BELLE_GITHUB = "https://github.com/LianjiaTech/BELLE"
HF_7B = "the Hugging Face cards of BelleGroup/BELLE-7B-0.2M/0.6M/1M/2M"
HF_LLAMA_13B = "the Hugging Face card of [BelleGroup/BELLE-LLaMA-13B-2M-enc](https://huggingface.co/BelleGroup/BELLE-LLaMA-13B-2M-enc)"
MODELS_README = f"BELLE's [models/README_en.md]({BELLE_GITHUB}/blob/main/models/README_en.md)"
GPTQ_README = f"BELLE's [models/gptq/README.md]({BELLE_GITHUB}/blob/main/models/gptq/README.md)"
BELLE_README = f"BELLE's [README.md]({BELLE_GITHUB}/blob/main/README.md)"
HF_FILES = "the file listing of [{repo}](https://huggingface.co/{repo}/tree/main)"

LLAMA_NOTE = ("Released as an XOR diff against Meta's LLaMA-7B weights (LLaMA's licence forbids sharing the weights): "
              "`paddle-belle decrypt` it with your own LLaMA-7B consolidated.00.pth (" + MODELS_README + ").")

# BELLE-7B-*'s table, the same on all four cards.
BLOOM_HYPER = {"batch size": "64", "learning rate": "3e-6", "epochs": "3", "weight decay": "0.001",
               "warmup rate": "0.1", "LR scheduler": "linear"}


@dataclass(frozen=True)
class Quantized:
    """A GPTQ release: BELLE's file (GPTQ-for-Bloom/LLaMa's .pt, which `paddle-belle convert --from-gptq` imports)
    and what BELLE published about its size."""

    bits: int
    group_size: int
    published_file: str  # BELLE's file in its Hugging Face repo
    published_rows: tuple  # (file, file size, GPU memory) rows as BELLE gives them
    published_source: str
    sym: bool = False  # BELLE's bloom.py quantizes asymmetrically; its llama.py too unless run with --sym
    rest_dtype: str = "float32"  # the file's unquantized tensors (embeddings, norms, head), kept by the import


@dataclass(frozen=True)
class CardFacts:
    name: str  # our short name; the card's file is model_cards/<title>.md
    title: str  # BELLE's spelling
    registry: str  # the registry entry with the shapes (the float base for a quantized variant)
    base: str  # the model it was fine-tuned from
    data: str  # training data, in words
    data_size: str
    hyper: dict | None  # training hyper-parameters; None: not published (as far as we could check)
    hyper_source: str | None
    hf: str | None  # BELLE's Hugging Face repo
    source: str  # where the description comes from
    prompt_style: str = "belle"  # a paddle_belle.prompts style
    prompt_source: str = HF_7B
    notes: tuple = field(default=())  # extra lines for the description, each with its source
    intro: str | None = None  # the card's first sentence, when "<title> is <base> fine-tuned on <data>" does not fit
    quantized: Quantized | None = None


def _belle_7b(size: str) -> CardFacts:
    return CardFacts(
        name=f"belle-7b-{size.lower()}", title=f"BELLE-7B-{size}", registry=f"belle-7b-{size.lower()}",
        base="BLOOMZ-7B1-mt (bigscience/bloomz-7b1-mt)",
        data=f"{size} Chinese instruction-following examples generated with ChatGPT (BELLE's self-instruct data), "
             "plus 50k English examples from Stanford Alpaca",
        data_size=size, hyper=BLOOM_HYPER, hyper_source=HF_7B, hf=f"BelleGroup/BELLE-7B-{size}", source=HF_7B,
        notes=("BELLE trained the four BELLE-7B models on 0.2M, 0.6M, 1M and 2M examples to study how the amount of "
               "instruction data changes quality (arXiv 2303.14742; " + MODELS_README + ").",),
    )


def _belle_llama_7b(size: str) -> CardFacts:
    return CardFacts(
        name=f"belle-llama-7b-{size.lower()}", title=f"BELLE-LLaMA-7B-{size}", registry=f"belle-llama-7b-{size.lower()}",
        base="Meta LLaMA-7B",
        data=f"{size} Chinese instruction-following examples from BELLE (the LLaMA-13B-2M card adds 50k English "
             "Alpaca examples to its 2M; the 7B cards could not be checked)",
        data_size=size, hyper=None, hyper_source=None, hf=f"BelleGroup/BELLE-LLaMA-7B-{size}-enc", source=MODELS_README,
        prompt_source=f"{HF_7B}; the BELLE-LLaMA-7B cards could not be checked, so the BLOOM models' format is assumed",
        notes=(LLAMA_NOTE + " Then `paddle-belle convert` it.",
               "For BELLE-LLaMA-13B-2M BELLE published batch 16, lr 2e-5, 3 epochs, weight decay 0, warmup 0.03, "
               "cosine schedule, and later a checkpoint trained with lr 5e-6 (" + HF_LLAMA_13B + "); whether the 7B "
               "models used the same is not published."),
    )


def _gptq(bits: int, size: str, memory: str) -> CardFacts:
    base = _belle_7b("2M")
    file = f"bloom7b-2m-{bits}bit-128g.pt"
    return CardFacts(
        name=f"belle-7b-2m-gptq-{bits}bit-128g", title=f"BELLE-7B-2M-GPTQ-{bits}bit-128g", registry="belle-7b-2m",
        base="BELLE-7B-2M",
        data=base.data,
        intro=f"BELLE-7B-2M (BLOOMZ-7B1-mt fine-tuned on {base.data}) with the Linear weights of its decoder "
              f"blocks quantized to {bits} bits by GPTQ, one scale and zero point per group of 128 input rows. BELLE "
              "calibrated its GPTQ run on wikitext2 (" + GPTQ_README + ").",
        data_size="2M", hyper=BLOOM_HYPER, hyper_source=HF_7B + " (fine-tuning of the float model)",
        hf="BelleGroup/BELLE-7B-gptq", source=GPTQ_README,
        notes=(f"BELLE's file {file} is in GPTQ-for-Bloom's format; `paddle-belle convert --from-gptq` repacks its "
               "integer codes into paddle_belle's format without re-quantizing them, keeping its float32 embeddings "
               "and norms. (`paddle-belle quantize` can also make a GPTQ checkpoint from BELLE-7B-2M itself.)",),
        quantized=Quantized(bits, 128, file, (PUBLISHED_BASE, (file, size, memory)),
                            f"one NVIDIA A100; {GPTQ_README}"),
    )


# BELLE's figure for the unquantized BELLE-7B-2M in the same table (GPTQ_README).
PUBLISHED_BASE = ("base (BELLE-7B-2M)", "27G", "~28.2G")
LLAMA_GPTQ_REPO = "BelleGroup/BELLE-LLaMA-7B-2M-gptq-enc"


FACTS = {f.name: f for f in [
    _belle_7b("0.2M"), _belle_7b("0.6M"), _belle_7b("1M"), _belle_7b("2M"),
    _belle_llama_7b("0.6M"), _belle_llama_7b("2M"),
    _gptq(8, "9.7G", "~11.4G"), _gptq(4, "6.9G", "~8.4G"),
    CardFacts(
        name="belle-llama-7b-2m-gptq", title="BELLE-LLaMA-7B-2M-gptq", registry="belle-llama-7b-2m-gptq",
        base="BELLE-LLaMA-7B-2M (Meta LLaMA-7B fine-tuned on 2M BELLE instructions)",
        data="2M Chinese instruction-following examples from BELLE",
        intro="BELLE-LLaMA-7B-2M with the Linear weights of its decoder blocks quantized by GPTQ-for-LLaMa to 4 bits "
              "(this card) or 8 bits, one scale and zero point per group of 128 input rows (" + MODELS_README + "; "
              "bits and group size from the file names in " + HF_FILES.format(repo=LLAMA_GPTQ_REPO) + ").",
        data_size="2M", hyper=None, hyper_source=None, hf=LLAMA_GPTQ_REPO, source=MODELS_README,
        prompt_source=f"{HF_7B}; the BELLE-LLaMA-7B cards could not be checked, so the BLOOM models' format is assumed",
        notes=(LLAMA_NOTE + " The decrypted llama7b-2m-4bit-128g.pt is GPTQ-for-LLaMa's format: `paddle-belle "
               "convert --from-gptq` repacks its codes without re-quantizing them, reading bits, group size and "
               "grid from the file. Whether BELLE ran GPTQ-for-LLaMa with --sym is not published (its default is "
               "asymmetric, which this card assumes).",),
        quantized=Quantized(4, 128, "llama7b-2m-4bit-128g.pt",
                            (("llama7b-2m-4bit-128g.pt (encrypted)", "4 GB", NOT_PUBLISHED),
                             ("llama7b-2m-8bit-128g.pt (encrypted)", "7.26 GB", NOT_PUBLISHED)),
                            HF_FILES.format(repo=LLAMA_GPTQ_REPO), rest_dtype="float16"),
    ),
    CardFacts(
        name="belle-on-open-datasets", title="BELLE-on-Open-Datasets", registry="belle-on-open-datasets",
        base="BELLE-LLaMA-EXT-7B (LLaMA-7B with a 79,458-token Chinese-extended vocabulary)",
        data="diverse open-source instruction data (" + BELLE_README + "; arXiv 2304.07854 studies such training sets)",
        data_size=None, hyper=None, hyper_source=None, hf="BelleGroup/BELLE-on-Open-Datasets", source=BELLE_README,
        prompt_source=f"{HF_7B}; this model's card could not be read, so the BLOOM models' format is assumed",
        notes=(LLAMA_NOTE, "Its base is inferred, not stated: the repo's encrypted tokenizer.model and "
               "pytorch_model.bin.index.json carry the same plaintext SHA-256 in their names as BELLE-LLaMA-EXT-7B's "
               "(" + HF_FILES.format(repo="BelleGroup/BELLE-on-Open-Datasets") + "), so it has that model's "
               "tokenizer and tensor shapes."),
    ),
    CardFacts(
        name="belle-llama2-13b-chat-0.4m", title="BELLE-Llama2-13B-chat-0.4M", registry="belle-llama2-13b-chat-0.4m",
        base="Meta Llama-2-13B", data="0.4M high-quality Chinese conversations", data_size="0.4M",
        hyper=None, hyper_source=None, hf="BELLE-2/BELLE-Llama2-13B-chat-0.4M", source=BELLE_README,
        prompt_style="belle-v2",
        prompt_source="BELLE's current training format (train/ in BELLE's repo, 2023-07, when this model was "
                      "released); the model's card could not be read",
        notes=("BELLE reports a marked improvement over BELLE-LLaMA-EXT-13B on its evaluation set "
               "(" + BELLE_README + "). Llama 2's licence allows sharing the weights: a plain Hugging Face "
               "checkpoint, converted by `paddle-belle convert`.",),
    ),
]}


def find(name: str) -> CardFacts | None:
    """The facts for a short name or BELLE's title, case-insensitively."""
    key = name.lower()
    return next((f for f in FACTS.values() if key in (f.name, f.title.lower())), None)
