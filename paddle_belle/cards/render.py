"""A model card (README.md) for a checkpoint directory or a BELLE model name, in the shape of BELLE's own cards:
description, training hyper-parameters, prompt format, usage, files, memory, limitations, citation.

Facts about BELLE's models come from cards/facts.py (each with its source); sizes are measured (a local directory)
or computed from the shapes (a name); the memory table is quant/estimate.py's. Nothing depends on the clock or on
absolute paths, so the cards in model_cards/ can be regenerated and compared byte for byte.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path

from paddle_belle import registry
from paddle_belle.cards import facts as F
from paddle_belle.cards.files import local_files, predicted_files
from paddle_belle import arch
from paddle_belle.presets import PRESETS
from paddle_belle.prompts import STYLES, directory_style, recorded_style
from paddle_belle.prompts import render as render_prompt
from paddle_belle.quant.estimate import GIB, estimate, row_name
from paddle_belle.quant.format import QuantConfig

CARD_ARGS = ("max_new_tokens", "do_sample", "top_k", "top_p", "temperature", "repetition_penalty")
HYPER_ORDER = ("batch size", "learning rate", "epochs", "weight decay", "warmup rate", "LR scheduler")
NOT_PUBLISHED = F.NOT_PUBLISHED
NOT_GIVEN = "not given (see `paddle-belle card --help`: --base, --data, --hyper)"  # a checkpoint of unknown origin


@dataclass
class Subject:
    """Everything a card says, gathered before any text is written."""

    title: str
    model_type: str
    config: dict
    local: Path | None  # the checkpoint directory, or None for a model known only by name
    model_path: str  # what the usage snippet passes to from_pretrained
    facts: F.CardFacts | None = None
    description: str | None = None
    base: str | None = None
    data: str | None = None
    data_size: str | None = None
    hyper: dict | None = None
    hyper_source: str | None = None
    quant: QuantConfig | None = None
    float_dtype: str = "float16"  # of the weights that are not packed codes (the whole model when not quantized)
    build_info: dict | None = None
    get_weights: list = field(default_factory=list)  # shell lines that produce model_path
    card_path: Path | None = None  # the card being written: left out of its own directory's files table

    @property
    def unknown(self) -> str:
        """What a missing fact is called: BELLE's models did not publish it; of a user's checkpoint we were not told."""
        return NOT_PUBLISHED if self.facts else NOT_GIVEN


def _quant_from_config(config: dict) -> QuantConfig | None:
    q = config.get("quantization_config")
    return QuantConfig.from_dict(q) if q else None


def subject(model: str, facts_name: str | None = None) -> Subject:
    """Resolve ``model`` (a checkpoint directory, or a name from cards/facts.py or the registry) and its facts."""
    path = Path(model)
    bundled = registry.lookup(model) if not path.is_dir() else None
    if bundled is not None and bundled.bundled:  # belle-tiny-zh: its files ship inside the package
        if not (registry.BUNDLED / bundled.name).is_dir():
            raise FileNotFoundError(f"{registry.BUNDLED / bundled.name}: the bundled model is not in this installation")
        s = subject(str(registry.BUNDLED / bundled.name), facts_name)
        s.model_path = bundled.name
        return s
    found = F.find(facts_name) if facts_name else None
    if facts_name and found is None:
        raise ValueError(f"--facts {facts_name}: no published facts for that name (known: {', '.join(F.FACTS)})")
    if path.is_dir():
        from paddle_belle.checkpoint import read_config

        config = read_config(path)  # FileNotFoundError naming the directory when config.json is missing
        model_type = arch.model_type_of(config, f"{path}/config.json")
        found = found or F.find(path.name)  # a directory named like the model (BELLE-7B-2M/) carries its facts
        info = registry.lookup(path.name)
        s = Subject(found.title if found else path.name, model_type, config, path, str(model), facts=found,
                    quant=_quant_from_config(config), description=info.description if info and not found else None,
                    float_dtype=config.get("dtype") or config.get("torch_dtype") or "float32")
        build = path / "build_info.json"  # tools/build_tiny_model.py's record of how belle-tiny-zh was made
        if build.is_file():
            s.build_info = json.loads(build.read_text(encoding="utf-8"))
    else:
        found = found or F.find(model)
        info = registry.REGISTRY[found.registry] if found else registry.lookup(model)
        if info is None:
            raise ValueError(f"{model}: neither a checkpoint directory nor a model paddle-belle knows "
                             "(see `paddle-belle models`)")
        q = found.quantized if found else None
        s = Subject(found.title if found else info.name, info.model_type, dict(info.config), None, "", facts=found,
                    quant=QuantConfig(bits=q.bits, group_size=q.group_size, method="gptq", sym=q.sym,
                                      embedding="keep") if q else None,
                    description=None if found else info.description, float_dtype=q.rest_dtype if q else "float16")
        s.model_path, s.get_weights = _how_to_get(found.name if found else info.name, info, found)
    if found:
        s.base, s.data, s.data_size = found.base, found.data, found.data_size
        s.hyper, s.hyper_source = found.hyper, found.hyper_source
    return s


def _how_to_get(name: str, info: registry.ModelInfo, facts: F.CardFacts | None) -> tuple[str, list[str]]:
    """The directory the usage snippet loads, and the commands that make it from BELLE's release."""
    published = facts.quantized if facts else None
    repo = facts.hf if published else info.hf  # BELLE-7B-2M's GPTQ files are in their own repo, BELLE-7B-gptq
    # The Hugging Face files go to <Repo>-hf/: not the name of the converted directory, even on a case-insensitive
    # file system (BELLE-7B-2M/ and belle-7b-2m/ would be one directory on macOS).
    hf_dir = repo.split("/")[-1].removesuffix("-enc") + "-hf"
    if published or info.gptq:  # GPTQ-for-Bloom/LLaMa files: imported as they are (the flag last: SRC DST first)
        file = published.published_file if published else info.gptq[0]
        convert = f"paddle-belle convert {hf_dir}/{file} {name} --from-gptq"
    else:
        convert = f"paddle-belle convert {hf_dir}/ {name} --dtype float16"
    if info.paddlenlp and not published:
        return info.name, [f"# nothing to do: from_pretrained(\"{info.name}\") downloads {info.paddlenlp} from "
                           "PaddleNLP's bucket; or convert the Hugging Face checkpoint yourself:",
                           f"huggingface-cli download {info.hf} --local-dir {hf_dir}", convert]
    if info.encrypted:
        llama = "LLaMA-13B" if "13b" in info.name else "LLaMA-7B"
        enc_dir = repo.split("/")[-1]
        lines = [f"huggingface-cli download {repo} --local-dir {enc_dir}",
                 f"paddle-belle decrypt {enc_dir} /path/to/{llama}/consolidated.00.pth {hf_dir}"
                 f"   # Meta's original {llama} weights are the key"]
    else:
        lines = [f"huggingface-cli download {repo} --local-dir {hf_dir}"]
    lines.append(convert)
    return name, lines


def apply_overrides(s: Subject, title=None, base=None, data=None, data_size=None, description=None,
                    hyper: dict | None = None) -> Subject:
    """Facts given on the command line win over the table (and are credited to it)."""
    changes = {k: v for k, v in dict(title=title, base=base, data=data, data_size=data_size,
                                      description=description).items() if v is not None}
    if hyper:
        changes["hyper"] = {**(s.hyper or {}), **hyper}
        changes["hyper_source"] = "given to `paddle-belle card`" + (f"; the rest: {s.hyper_source}" if s.hyper else "")
    return replace(s, **changes)


# ------------------------------------------------------------------------------------------------ sections
def _size(n: int | None) -> str:
    if n is None:
        return "–"
    for unit, scale in (("GiB", GIB), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _details(s: Subject) -> list[str]:
    spec, c = arch.get(s.model_type), arch.paddle_config(s.model_type, s.config)
    shape = f"{s.model_type.upper() if s.model_type == 'bloom' else 'LLaMA'}: {spec.n_layers(c)} layers, hidden " \
            f"{c['hidden_size']}, {spec.n_heads(c)} heads, vocabulary {c['vocab_size']:,}"
    rows = [("architecture", shape), ("parameters", f"{arch.parameters(s.model_type, c):,}"),
            ("base model", s.base or s.unknown), ("training data", s.data or s.unknown)]
    if s.data_size:
        rows.append(("data size", s.data_size))
    if s.quant:
        q = s.quant
        rows.append(("quantization", f"{q.method.upper()}, {q.bits}-bit, group size {q.group_size}, "
                     f"{'symmetric' if q.sym else 'asymmetric'} (paddle_belle's packed format)"))
    if s.facts and s.facts.hf:
        rows.append(("BELLE's release", f"https://huggingface.co/{s.facts.hf}"))
    return ["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _hyper(s: Subject) -> list[str]:
    if not s.hyper:
        if not s.facts:
            return [f"Training hyper-parameters: {NOT_GIVEN}."]
        return [f"Training hyper-parameters: {NOT_PUBLISHED} (as far as we could check BELLE's cards and README)."]
    keys = [k for k in HYPER_ORDER if k in s.hyper] + [k for k in s.hyper if k not in HYPER_ORDER]
    return ["| parameter | value |", "|---|---|", *(f"| {k} | {s.hyper[k]} |" for k in keys), "",
            f"Source: {s.hyper_source}."]


def _style_and_source(s: Subject) -> tuple[str, str]:
    """The prompt style of the model and where it comes from: recorded in its config.json (a fine-tune of ours), else
    its own chat template's (tokenizer_config.json, as loading finds it), else BELLE's facts."""
    if s.config.get("prompt_style"):
        return recorded_style(s.config), "`prompt_style` in the model's config.json, as `paddle-belle train` recorded it"
    own = directory_style(s.local) if s.local is not None else None
    if own:
        return own, f"the model's own chat template (tokenizer_config.json), which renders as the `{own}` style"
    if s.facts:
        return s.facts.prompt_style, s.facts.prompt_source
    return "belle", "paddle_belle's `belle` style (BELLE's BLOOM cards)"


def _style(s: Subject) -> str:
    return _style_and_source(s)[0]


def _prompt(s: Subject) -> list[str]:
    style, source = _style_and_source(s)
    one = STYLES[style].user.format(text="{input}")
    two = render_prompt(style, [("{input 1}", "{output 1}")], "{input 2}", eos="<EOS>")
    eos = " (<EOS>: the tokenizer's end-of-sequence token)" if "<EOS>" in two else ""
    return ["The model expects each turn in this form, in training and in use (`--style " + style + "`):", "",
            "```", one, "```", "",
            f"Earlier turns of a conversation come before the new one{eos}; `paddle-belle chat` does this and trims "
            "the oldest turns to fit the context:", "", "```", two, "```", "",
            f"Source: {source}."]


def snippet(model_path: str, style: str = "belle") -> str:
    """The usage code: BELLE's card loop with paddle_belle's classes and the card's sampling settings."""
    prefix, suffix = STYLES[style].user.split("{text}")
    preset = PRESETS["belle-card"]
    args = ", ".join(f"{k}={getattr(preset, k)!r}" for k in CARD_ARGS)
    return "\n".join([
        "from paddle_belle import AutoTokenizer, AutoModelForCausalLM",
        "",
        f"model_path = {model_path!r}  # a checkpoint directory, or a name from `paddle-belle models`",
        "model = AutoModelForCausalLM.from_pretrained(model_path)",
        "tokenizer = AutoTokenizer.from_pretrained(model_path)",
        'print("Human:")',
        "line = input()",
        "while line:",
        f"    inputs = {prefix!r} + line.strip() + {suffix!r}",
        '    input_ids = tokenizer(inputs, return_tensors="pd").input_ids',
        f"    outputs = model.generate(input_ids, {args})",
        "    rets = tokenizer.batch_decode(outputs, skip_special_tokens=True)",
        '    print("Assistant:\\n" + rets[0].strip().replace(inputs.strip(), "").strip())',
        '    print("\\n" + "-" * 48 + "\\nHuman:")',
        "    line = input()",
    ])


def _usage(s: Subject) -> list[str]:
    style = _style(s)
    lines = []
    if s.get_weights:
        lines += ["Get the weights first:", "", "```bash", *s.get_weights, "```", ""]
    lines += ["Python (the sampling settings of BELLE's card, preset `belle-card`):", "", "```python",
              snippet(s.model_path, style), "```", "", "Or chat from the command line:", "", "```bash",
              f"paddle-belle chat --model {s.model_path} --style {style}", "```"]
    return lines


def _files(s: Subject) -> list[str]:
    if s.local is not None:
        rows = [(name, n) for name, n in local_files(s.local)
                if s.card_path is None or (s.local / name).resolve() != s.card_path.resolve()]
        head = "Measured in the checkpoint directory (os.stat):"
    else:
        dtype = s.float_dtype
        rows = predicted_files(s.model_type, s.config, dtype, s.quant, max_shard_size=None if s.quant else "5GB")
        zeros = "" if s.quant is None or s.quant.sym else ", uint8 zero points"
        made_by = (f"`paddle-belle convert --from-gptq` writes of BELLE's file (codes, float32 scales{zeros}; "
                   f"everything else {dtype}, as in the file)" if s.facts and s.facts.quantized
                   else f"`paddle-belle quantize` writes (codes and float32 scales{zeros}; everything else {dtype})"
                   if s.quant else f"`paddle-belle convert --dtype {dtype}` writes (shards of at most 5GB)")
        head = (f"Not measured: the files {made_by}, with sizes computed from the shapes. Shard boundaries follow "
                "our tensor order; \"–\": small files whose size depends on the tokenizer.")
    total = sum(n for _, n in rows if n)
    return [head, "", "| file | bytes | size |", "|---|---:|---:|",
            *(f"| {name} | {'–' if n is None else f'{n:,}'} | {_size(n)} |" for name, n in rows),
            f"| **total** | {total:,} | {_size(total)} |"]


def _memory(s: Subject) -> list[str]:
    group = s.quant.group_size if s.quant and s.quant.group_size > 0 else 128
    rows = estimate(s.model_type, s.config, group, sym=s.quant.sym if s.quant else True)
    short = {"float32": "fp32", "float16": "fp16"}.get(s.float_dtype, s.float_dtype)
    mine = short if s.quant is None else row_name(s.quant.bits, s.quant.group_size, short, s.quant.embedding)
    lines = ["Weights only, from `paddle-belle quantize --estimate` (paddle_belle/quant/estimate.py): the checkpoint "
             "and the weights as held in memory (one dequantization block extra for quantized layers). The KV cache "
             "and activations come on top and grow with batch and context.", "",
             "| format | checkpoint bytes | checkpoint | resident bytes | resident |", "|---|---:|---:|---:|---:|"]
    for r in rows:
        mark = " (this model)" if r.name == mine else ""
        lines.append(f"| {r.name}{mark} | {r.file_bytes:,} | {_size(r.file_bytes)} | {r.resident_bytes:,} | "
                     f"{_size(r.resident_bytes)} |")
    if s.facts and s.facts.quantized:
        q = s.facts.quantized
        lines += ["", f"BELLE's own figures for their GPTQ files ({q.published_source}):", "",
                  "| BELLE's file | file size | GPU memory |", "|---|---:|---:|",
                  *(f"| {file} | {size} | {memory} |" for file, size, memory in q.published_rows)]
    return lines


def _build_info(info: dict) -> list[str]:
    """tools/build_tiny_model.py's record: scalars as they are, nested stages one level deep, lists counted."""
    def show(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        if isinstance(v, list):
            nums = [x for x in v if isinstance(x, (int, float))]
            return f"{len(v)} values, {nums[0]:.4g} → {nums[-1]:.4g}" if nums and len(nums) == len(v) else f"{len(v)} items"
        if isinstance(v, dict):
            return f"{len(v)} fields"
        return str(v)

    rows = []
    for key, value in info.items():
        if isinstance(value, dict):
            rows += [(f"{key}.{k}", show(v)) for k, v in value.items() if not isinstance(v, (dict, list)) or
                     (isinstance(v, list) and all(isinstance(x, (int, float)) for x in v))]
        elif key not in ("samples", "replies"):  # the build's card shows those as tables of their own
            rows.append((key, show(value)))
    return ["From the directory's build_info.json (written when the model was trained):", "", "| field | value |",
            "|---|---|", *(f"| {k} | {v} |" for k, v in rows)]


def _limitations(s: Subject) -> list[str]:
    lines = ["- It can state false things fluently, above all on questions of fact, and it does not reliably refuse "
             f"harmful requests ({F.MODELS_README}).",
             "- Maths, code and multi-step reasoning are weak; in BELLE's scaling study more instruction data did not "
             "fix them (arXiv 2303.14742).",
             "- BELLE allows its models, data and code to be used for research only, not commercially "
             f"({F.MODELS_README}).",
             "- What it knows, and its biases, come from its base model and from the ChatGPT-generated training "
             "data."]
    if s.model_type == "llama" and s.facts:
        lines.append("- The weights derive from Meta's LLaMA and are bound by LLaMA's licence as well.")
    if s.quant is not None:
        lines.append(f"- {s.quant.bits}-bit weights lose some quality against the float model; measure it on your "
                     "data with `paddle-belle perplexity` on both.")
    if s.build_info is not None or (s.local is not None and arch.parameters(s.model_type, s.config) < 50_000_000):
        lines.append("- This is a small demonstration model: it shows the pipeline working, not a useful assistant.")
    return lines


CITATION = r"""```bibtex
@misc{BELLE,
  author = {Yunjie Ji and Yong Deng and Yan Gong and Yiping Peng and Qiang Niu and Baochang Ma and Xiangang Li},
  title = {BELLE: Be Everyone's Large Language model Engine},
  year = {2023},
  publisher = {GitHub},
  howpublished = {\url{https://github.com/LianjiaTech/BELLE}}
}

@article{belle2023exploring,
  title = {Exploring the Impact of Instruction Data Scaling on Large Language Models: An Empirical Study on Real-World Use Cases},
  author = {Yunjie Ji and Yong Deng and Yan Gong and Yiping Peng and Qiang Niu and Lei Zhang and Baochang Ma and Xiangang Li},
  journal = {arXiv preprint arXiv:2303.14742},
  year = {2023}
}

@article{belle2023towards,
  title = {Towards Better Instruction Following Language Models for Chinese: Investigating the Impact of Training Data and Evaluation},
  author = {Yunjie Ji and Yan Gong and Yong Deng and Yiping Peng and Qiang Niu and Baochang Ma and Xiangang Li},
  journal = {arXiv preprint arXiv:2304.07854},
  year = {2023}
}
```"""


def render(s: Subject) -> str:
    f = s.facts
    intro = s.description or (f and f.intro) or (f"{s.title} is {s.base or 'a model'} fine-tuned on {s.data}." if s.data else
                              f"{s.title}: a {s.model_type} checkpoint.")
    out = [f"# {s.title}", "", intro]
    if f:
        for note in f.notes:
            out += ["", note]
        out += ["", f"Description after {f.source}."]
    out += ["", "This card was generated by `paddle-belle card`; every fact about BELLE's training names its source, "
            f"and what BELLE did not publish is marked \"{NOT_PUBLISHED}\".", ""]
    out += ["## Model details", "", *_details(s), ""]
    out += ["## Training hyper-parameters", "", *_hyper(s), ""]
    if s.build_info is not None:
        out += ["## How it was trained", "", *_build_info(s.build_info), ""]
    out += ["## Prompt format", "", *_prompt(s), ""]
    out += ["## Use it with paddle_belle", "", *_usage(s), ""]
    out += ["## Files", "", *_files(s), ""]
    out += ["## Memory", "", *_memory(s), ""]
    out += ["## Limitations", "", *_limitations(s), ""]
    out += ["## Citation", "", "BELLE asks users of its code, data and models to cite the project; the second paper "
            "describes its evaluation and the LLaMA models:", "", CITATION, ""]
    return "\n".join(out)
