"""GGUF (llama.cpp) <-> our PaddleNLP-layout checkpoints, BLOOM and LLaMA, with the ``gguf`` package (the reader,
writer and quantizers llama.cpp ships on PyPI). Tensor names and metadata keys are arch.py's tables.

Facts from llama.cpp's converter (convert_hf_to_gguf.py; conversion/bloom.py and llama.py in newer trees):

- A [out, in] weight is stored with ne = (in, out), i.e. as numpy [out, in] like HF; Paddle's Linear is [in, out].
- LLaMA: ``LlamaModel.permute`` reorders the rows of Q and K from HF's rotate-half RoPE layout to llama.cpp's
  interleaved pairs (``permute``; ``unpermute`` undoes it). A tied head is not written: llama.cpp reuses
  token_embd.
- BLOOM: ``BloomModel.modify_tensors`` reorders the fused QKV rows (and bias) from HF's/PaddleNLP's per-head
  [n_head, 3, head_dim] to [Q; K; V] (``qkv_to_gguf``; ``qkv_from_gguf`` undoes it).
- Norms and biases (1-D) stay float32 whatever the output type; a weight whose rows do not split into whole
  quantization blocks (32 values for Q8_0/Q4_0) falls back to F16, as the converter does on ``QuantError``.

Import dequantizes any tensor type to float32; export writes F32, F16, Q8_0 or Q4_0 (gguf.quants.quantize), from a
float or one of our quantized checkpoints (its integer weights are dequantized to float32, then requantized). Both
stream one tensor at a time and write under a temporary name, renamed at the end.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paddle_belle import arch as archs
from paddle_belle.checkpoint import CheckpointError, atomic_dir, atomic_path, safetensors_writer, write_json

# Not weights: llama.cpp may store precomputed RoPE frequencies.
IGNORED = ("rope_freqs.weight",)
# tokenizer.ggml.pre -> pre-tokenizer steps before byte-level BPE (llama.cpp llama-vocab.cpp; the HF tokenizer.json
# of the model). "smollm": digits one by one, then GPT-2's regex; "bloom": BLOOM's own split, no GPT-2 regex.
# Export names a tokenizer.json's pre-tokenizer by the first entry with the same steps (pre_tokenizer_name):
# llama.cpp calls GPT-2's "gpt-2" (it refuses "gpt2"); "gpt2" and "default" are only read.
PRE_TOKENIZERS = {"gpt-2": [], "smollm": ["digits"], "bloom": ["bloom"], "gpt2": [], "default": []}
OUTTYPES = ("f32", "f16", "q8_0", "q4_0")
# Token types of tokenizer.ggml.token_type (gguf-py constants.py TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def _gguf():
    try:
        import gguf
    except ImportError:
        raise RuntimeError("GGUF conversion needs the gguf package: pip install gguf") from None
    return gguf


# ------------------------------------------------------------------------------------------ row reorders
def permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` of Q/K rows [out, ...]: HF's rotate-half halves -> interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute`` of Q/K rows (interleaved RoPE pairs -> HF's rotate-half halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def qkv_to_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    """BLOOM's fused QKV rows [out, ...], per head [n_head, 3, head_dim] -> llama.cpp's [Q; K; V]."""
    return w.reshape(n_head, 3, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def qkv_from_gguf(w: np.ndarray, n_head: int) -> np.ndarray:
    return w.reshape(3, n_head, -1, *w.shape[1:]).swapaxes(0, 1).reshape(w.shape)


def reorder(gguf_name: str, config: dict, to_gguf: bool):
    """The row reorder a GGUF tensor needs (a function of the [out, ...] array), or None."""
    arch = archs.get(config["model_type"])
    if ".attn_qkv." in gguf_name:
        heads, fn = arch.n_heads(config), (qkv_to_gguf if to_gguf else qkv_from_gguf)
    elif ".attn_q." in gguf_name or ".attn_k." in gguf_name:
        heads = arch.n_heads(config) if ".attn_q." in gguf_name else arch.n_kv_heads(config)
        fn = permute if to_gguf else unpermute
    else:
        return None
    return lambda w: fn(w, heads)


# ------------------------------------------------------------------------------------------------ import
def _field(reader, key, default=None, source=""):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{source}: GGUF metadata lacks {key}")
        return default
    return field.contents()


def read_config(reader, source: str) -> dict:
    """Our (PaddleNLP-field) config.json from GGUF metadata."""
    name = _field(reader, "general.architecture", source=source)
    if name not in archs.ARCHS:
        raise CheckpointError(f"{source}: GGUF architecture {name!r} is not supported ({', '.join(archs.ARCHS)})")
    arch = archs.ARCHS[name]
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise CheckpointError(f"{source}: no token_embd.weight tensor")
    # <arch>.vocab_size is optional in GGUF; the embedding's row count is the vocabulary either way.
    config = {"model_type": name, "architectures": [arch.class_name], "vocab_size": int(embed.shape[1])}
    defaults = {"vocab_size": config["vocab_size"], "context_length": 2048, "attention.head_count_kv": 0,
                "attention.layer_norm_rms_epsilon": 1e-6, "rope.freq_base": 10000.0}
    for key, field in arch.gguf_fields.items():
        value = _field(reader, f"{name}.{key}", defaults.get(key), source)
        # GGUF stores these floats as float32: 1e-6 comes back as 9.99999997e-07 unless rounded to float32's digits
        config[field] = float(f"{value:.7g}") if isinstance(value, float) else value
    if name == "llama":
        heads, hidden = config["num_attention_heads"], config["hidden_size"]
        config["num_key_value_heads"] = config["num_key_value_heads"] or heads  # absent: no grouped-query attention
        config["tie_word_embeddings"] = "output.weight" not in {t.name for t in reader.tensors}
        rope_dims = int(_field(reader, "llama.rope.dimension_count", hidden // heads, source))
        if rope_dims != hidden // heads:
            raise CheckpointError(f"{source}: partial RoPE ({rope_dims} of {hidden // heads} dims) is not supported")
        scaling = reader.fields.get("llama.rope.scaling.type")
        if scaling is not None and scaling.contents() not in ("none",):
            config["rope_scaling_type"], config["rope_scaling_factor"] = archs.rope_scaling_fields(
                {"type": scaling.contents(), "factor": float(_field(reader, "llama.rope.scaling.factor", 1.0, source))})
    for key, field in (("bos_token_id", "bos_token_id"), ("eos_token_id", "eos_token_id"),
                       ("pad_token_id", "padding_token_id")):
        if f"tokenizer.ggml.{field}" in reader.fields:
            config[key] = int(reader.fields[f"tokenizer.ggml.{field}"].contents())
    config["dtype"] = "float32"
    return config


def convert_gguf(src, dst) -> Path:
    """Convert the GGUF file ``src`` into the checkpoint directory ``dst`` (which must not exist)."""
    gguf = _gguf()
    from gguf.quants import dequantize

    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such GGUF file")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new directory")
    try:
        reader = gguf.GGUFReader(src)
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{src}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    config = read_config(reader, str(src))
    arch = archs.get(config["model_type"])

    plan = []  # (paddle name, gguf tensor, transpose, row reorder)
    for t in reader.tensors:
        if t.name in IGNORED or (arch.head is None and t.name == "output.weight"):
            continue  # BLOOM's head is always the embedding; older llama.cpp converters wrote a copy of it
        target = archs.rename(t.name, arch.gguf_to_paddle)
        if target is None:
            raise CheckpointError(f"{src}: tensor {t.name!r} is not a {arch.model_type} weight this converter knows")
        plan.append((target[0], t, target[1], reorder(t.name, config, to_gguf=False)))
    for copy, source in arch.tied_copies(config).items():  # for PaddleNLP: the embedding transposed
        embed = next(p for p in plan if p[0] == source)
        plan.insert(plan.index(embed) + 1, (copy, embed[1], True, None))

    def shape(t, transpose):  # numpy order of a GGUF tensor is ne reversed: [out, in] for a weight
        s = [int(n) for n in reversed(t.shape)]
        return s[::-1] if transpose else s

    expected = arch.checkpoint_shapes(config)
    specs = []
    for name, t, transpose, _ in plan:
        if expected.get(name) != shape(t, transpose):
            raise CheckpointError(f"{src}: tensor {t.name} has shape {shape(t, transpose)} as {name}, the metadata "
                                  f"implies {expected.get(name)}")
        specs.append((name, np.dtype("float32"), shape(t, transpose)))
    missing = sorted(set(expected) - {s[0] for s in specs})
    if missing:
        raise CheckpointError(f"{src}: lacks {len(missing)} tensor(s) the metadata implies, e.g. {missing[0]}")

    with atomic_dir(dst) as tmp:
        with safetensors_writer(tmp / "model.safetensors", specs) as write:
            for name, t, transpose, rows in tqdm(plan, desc="converting GGUF", unit="tensor", disable=None):
                if t.tensor_type in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                    array = np.asarray(t.data, dtype=np.float32)
                else:
                    array = dequantize(t.data, t.tensor_type).astype(np.float32)
                array = array.reshape([int(n) for n in reversed(t.shape)])
                if rows:
                    array = rows(array)
                write(name, array.T if transpose else array)
        write_json(tmp / "config.json", config)
        write_tokenizer(reader, tmp, str(src), config["model_type"])
    return dst


def _pre_tokenizer(pre: str):
    """The ``tokenizers`` pre-tokenizer of a PRE_TOKENIZERS name."""
    from tokenizers import Regex, pre_tokenizers

    from paddle_belle.convert.tokenizer import BLOOM_SPLIT_ONIGURUMA

    steps = []
    if "digits" in PRE_TOKENIZERS[pre]:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if "bloom" in PRE_TOKENIZERS[pre]:
        steps.append(pre_tokenizers.Split(Regex(BLOOM_SPLIT_ONIGURUMA), behavior="isolated", invert=False))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex="bloom" not in PRE_TOKENIZERS[pre]))
    return pre_tokenizers.Sequence(steps)


def _steps(pre_tokenizer) -> list[dict]:
    """The splitting steps of a tokenizer.json ``pre_tokenizer``: a Sequence flattened, ``trim_offsets`` dropped (it
    moves offsets, not ids)."""
    if pre_tokenizer is None:
        return []
    if pre_tokenizer["type"] == "Sequence":
        return [step for p in pre_tokenizer["pretokenizers"] for step in _steps(p)]
    return [{k: v for k, v in pre_tokenizer.items() if k != "trim_offsets"}]


def pre_tokenizer_name(pre_tokenizer: dict | None) -> str | None:
    """The tokenizer.ggml.pre of a tokenizer.json ``pre_tokenizer`` as ``tokenizers`` serializes it (defaults a file
    leaves out filled in), by the inverse of PRE_TOKENIZERS: SmolLM2's Digits(individual) + ByteLevel is "smollm",
    ByteLevel alone "gpt-2". None when no name has its steps."""
    from tokenizers import Tokenizer, models

    for name in PRE_TOKENIZERS:
        probe = Tokenizer(models.BPE())
        probe.pre_tokenizer = _pre_tokenizer(name)
        if _steps(json.loads(probe.to_str())["pre_tokenizer"]) == _steps(pre_tokenizer):
            return name
    return None


def write_tokenizer(reader, directory: Path, source: str, model_type: str = "llama") -> bool:
    """The tokenizer of a byte-level BPE GGUF: tokenizer.json (+ tokenizer_config.json), and for BLOOM also
    PaddleNLP's vocab.json + merges.txt. False when the GGUF has another kind."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, processors

    from paddle_belle.convert.tokenizer import write_paddle_tokenizer

    kind = reader.fields.get("tokenizer.ggml.model")
    if kind is None or kind.contents() != "gpt2":
        print(f"{source}: tokenizer {kind.contents() if kind else 'none'!r} not converted (only byte-level BPE)")
        return False
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    pre = reader.fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in reader.fields else "default"
    if pre == "default":  # llama.cpp's generic fallback split, which it warns degrades generation (llama-vocab.cpp)
        print(f"{source}: the GGUF names no pre-tokenizer; GPT-2's split is assumed (llama.cpp falls back to a "
              "generic one and warns that quality degrades): check the ids against the model's own tokenizer")
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: pre-tokenizer {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
    vocab = {t: i for i, (t, kind_) in enumerate(zip(tokens, types)) if kind_ != UNUSED}  # not our [PADn] fillers
    tokenizer = Tokenizer(models.BPE(vocab, merges, ignore_merges=False))
    tokenizer.pre_tokenizer = _pre_tokenizer(pre)
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens and user-defined ones are matched whole, before BPE.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind_ in zip(tokens, types) if kind_ in (CONTROL, USER_DEFINED)])
    settings = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, name in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        field = reader.fields.get(f"tokenizer.ggml.{name}")
        if field is not None:
            settings[key] = tokens[int(field.contents())]
    # BOS/EOS around a text where the GGUF says llama.cpp adds them: a post-processor, as Llama-3's tokenizer.json has
    bos, eos = (settings[k] if k in settings and _field(reader, f"tokenizer.ggml.add_{k[:3]}_token", False, source)
                else None for k in ("bos_token", "eos_token"))
    if bos or eos:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=[t for t in (bos, "$A", eos) if t], special_tokens=[(t, vocab[t]) for t in (bos, eos) if t])
    tokenizer.save(str(directory / "tokenizer.json"))
    if "tokenizer.chat_template" in reader.fields:
        settings["chat_template"] = reader.fields["tokenizer.chat_template"].contents()
    write_json(directory / "tokenizer_config.json", settings)
    if model_type == "bloom":  # BLOOM's tokenizer class reads vocab.json + merges.txt (PaddleNLP's layout)
        write_paddle_tokenizer(directory, directory, "bloom")
    return True


# ------------------------------------------------------------------------------------------------ export
def tensor_type(gguf_name: str, shape: list[int], outtype: str):
    """The GGML type llama.cpp's converter picks for a tensor: float32 for 1-D tensors and norms; ``outtype`` for
    weights, F16 where the rows do not split into whole quantization blocks (as on its QuantError). q4_0 keeps the
    output head in Q8_0: llama-quantize gives it more bits too (Q6_K, which gguf-py cannot make)."""
    types = _gguf().GGMLQuantizationType
    if len(shape) < 2 or gguf_name.endswith("_norm.weight"):
        return types.F32
    qtype = types.Q8_0 if outtype == "q4_0" and gguf_name == "output.weight" else types[outtype.upper()]
    return qtype if shape[-1] % _gguf().GGML_QUANT_SIZES[qtype][0] == 0 else types.F16


def _float_weight(layers: dict, name: str) -> np.ndarray:
    """Our parameter ``name`` in float32: a quantized Linear's weight dequantized (QuantLinear.weight), half
    weights widened."""
    from paddle_belle.quant import QuantLinear

    path, leaf = name.rsplit(".", 1)
    layer = layers[path]
    if isinstance(layer, QuantLinear) and leaf == "weight":
        return layer.weight().numpy()
    return getattr(layer, leaf).astype("float32").numpy()


def _add_tokenizer(writer, path: Path, config: dict) -> None:
    """tokenizer.ggml.* as llama.cpp's converter writes them: BLOOM's byte-level BPE as "gpt2" with the "bloom"
    pre-tokenizer (_set_vocab_gpt2; llama.cpp recognises BLOOM's real vocabulary by a hash, so it is set here
    explicitly), a LLaMA tokenizer that is only a byte-level BPE tokenizer.json as "gpt2" too (its pre-tokenizer named
    by pre_tokenizer_name, where llama.cpp hashes the ids of a probe text against a list of known models), LLaMA's
    sentencepiece as "llama" (_create_vocab_sentencepiece). The list is padded to the model's vocabulary with unused
    [PAD<id>] tokens, as the converter pads BLOOM's 250,680 tokens to its 250,880 rows."""
    from paddle_belle.convert.tokenizer import (SPECIAL_TOKENS, _bloom_vocab_merges, _sentencepiece_file, json_only,
                                                special_tokens)

    n_vocab, settings = config["vocab_size"], special_tokens(path)
    specials = {k: settings[k] for k in SPECIAL_TOKENS if k in settings}
    add_eos = False
    if config["model_type"] == "bloom":
        vocab, merges = _bloom_vocab_merges(path)
        tokens = sorted(vocab, key=vocab.get)
        if [vocab[t] for t in tokens] != list(range(len(tokens))):
            raise CheckpointError(f"{path}: the vocabulary's ids are not 0..{len(tokens) - 1} (GGUF lists tokens by id)")
        types = [CONTROL if t in specials.values() else NORMAL for t in tokens]
        ids = {k: vocab.get(t) for k, t in specials.items()}
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre("bloom")
        writer.add_token_merges(merges)
        add_bos = settings.get("add_bos_token", False)  # BLOOM's tokenizer adds neither BOS nor EOS
    elif json_only(path, "llama"):  # conversion/base.py get_vocab_base + gguf-py vocab.py SpecialVocab
        from tokenizers import Tokenizer

        file = path / "tokenizer.json"
        tokenizer = Tokenizer.from_file(str(file))
        data = json.loads(tokenizer.to_str())  # the file as tokenizers reads it, defaults filled in
        if data["normalizer"] is not None:
            raise CheckpointError(f"{file}: normalizer {data['normalizer']['type']} has no GGUF equivalent "
                                  "(llama.cpp's byte-level BPE normalizes nothing)")
        pre = pre_tokenizer_name(data["pre_tokenizer"])
        if pre is None:
            found = " + ".join(step["type"] for step in _steps(data["pre_tokenizer"])) or "none"
            raise CheckpointError(f"{file}: pre-tokenizer {found} has no llama.cpp name this exporter knows (smollm: "
                                  "Digits + ByteLevel, gpt-2: ByteLevel)")
        names = {i: t for t, i in tokenizer.get_vocab(with_added_tokens=True).items()}
        added = tokenizer.get_added_tokens_decoder()
        tokens = [names.get(i, f"[PAD{i}]") for i in range(max(names) + 1)]
        types = [UNUSED if i not in names else NORMAL if i not in added else CONTROL if added[i].special
                 else USER_DEFINED for i in range(len(tokens))]
        ids = {k: tokenizer.token_to_id(t) for k, t in specials.items()}
        writer.add_tokenizer_model("gpt2")
        writer.add_tokenizer_pre(pre)
        # tokenizers writes merges as "a b" strings, newer versions as ["a", "b"] pairs
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
        # BOS/EOS as its post-processor adds them around a text (Llama-3's TemplateProcessing puts BOS first; GPT-2's
        # ByteLevel adds none); without one, tokenizer_config.json's add_bos_token/add_eos_token, as SpecialVocab reads.
        probe = tokenizer.encode("a").ids
        post = data["post_processor"] is not None
        add_bos = probe[0] == ids.get("bos_token") if post else settings.get("add_bos_token", False)
        add_eos = probe[-1] == ids.get("eos_token") if post else settings.get("add_eos_token", False)
    else:
        from sentencepiece import SentencePieceProcessor

        sp = SentencePieceProcessor(model_file=str(_sentencepiece_file(path)))
        tokens = [sp.id_to_piece(i) for i in range(sp.vocab_size())]
        types = [UNKNOWN if sp.is_unknown(i) else CONTROL if sp.is_control(i) else UNUSED if sp.is_unused(i)
                 else BYTE if sp.is_byte(i) else NORMAL for i in range(sp.vocab_size())]
        ids = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id(), "pad_token": sp.pad_id(),
               **{k: sp.piece_to_id(t) for k, t in specials.items()}}
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_scores([sp.get_score(i) for i in range(len(tokens))] + [-1000.0] * (n_vocab - len(tokens)))
        add_bos = settings.get("add_bos_token", True)  # LLaMA's sentencepiece tokenizer starts with BOS
    if len(tokens) > n_vocab:
        raise CheckpointError(f"{path}: the tokenizer has {len(tokens)} tokens, the model's vocab_size is {n_vocab}")
    writer.add_token_list(tokens + [f"[PAD{i}]" for i in range(len(tokens), n_vocab)])
    writer.add_token_types(types + [UNUSED] * (n_vocab - len(tokens)))
    for key, gguf_key in (("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")):
        if ids.get(key) is not None and 0 <= ids[key] < n_vocab:
            writer.add_uint32(f"tokenizer.ggml.{gguf_key}_token_id", ids[key])
    writer.add_add_bos_token(bool(add_bos))
    writer.add_add_eos_token(bool(add_eos))


def export_gguf(src, dst, outtype: str = "f16", verbose: bool = False) -> Path:
    """Write our checkpoint ``src`` (a directory or model name; float or quantized) as the llama.cpp GGUF file
    ``dst`` with weights in ``outtype`` (f32, f16, q8_0, q4_0). ``dst`` must not exist."""
    gguf = _gguf()
    from paddle_belle import hub
    from paddle_belle.auto import AutoModelForCausalLM
    from paddle_belle.checkpoint import read_config as read_json_config
    from paddle_belle.prompts import jinja_template, recorded_style

    if outtype not in OUTTYPES:
        raise ValueError(f"outtype must be one of {', '.join(OUTTYPES)}, not {outtype!r}")
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new file name")
    path = hub.resolve(src)
    stored = read_json_config(path)
    # Half weights stay half in memory (models/loading.py keep_half): the model costs what it weighs on disk.
    dtype = stored.get("dtype") or stored.get("torch_dtype")
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype if dtype in ("float16", "bfloat16") else "float32")
    arch, config = model.arch, {**model.config.to_dict(), "model_type": model.arch.model_type}
    if config.get("rope_scaling_type") not in (None, "linear"):
        raise CheckpointError(f"{path}/config.json: rope scaling {config['rope_scaling_type']!r} has no GGUF "
                              "equivalent in llama.cpp (only linear)")

    writer = gguf.GGUFWriter(None, arch.model_type)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(Path(path).name)
    for key, field in arch.gguf_fields.items():
        value = config[field]
        (writer.add_float32 if isinstance(value, float) else writer.add_uint32)(f"{arch.model_type}.{key}", value)
    for key, value in arch.gguf_extra(config).items():
        writer.add_uint32(f"{arch.model_type}.{key}", value)
    if config.get("rope_scaling_type") == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(config["rope_scaling_factor"]))
    writer.add_file_type(gguf.LlamaFileType["ALL_F32" if outtype == "f32" else f"MOSTLY_{outtype.upper()}"])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _add_tokenizer(writer, path, config)
    writer.add_chat_template(jinja_template(recorded_style(config)))

    # Tensor infos first (names, shapes, types), then the data one tensor at a time: nothing is held beyond the
    # model itself and the tensor being written (GGUFWriter.add_tensor would keep every array until the end).
    names, plan = archs.invert(arch.gguf_to_paddle), []
    for ours, shape in arch.model_shapes(config).items():
        theirs, transpose = archs.rename(ours, names)
        shape = shape[::-1] if transpose else shape
        qtype = tensor_type(theirs, shape, outtype)
        plan.append((ours, theirs, transpose, qtype))
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            dtype = np.dtype(np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16)
            writer.add_tensor_info(theirs, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        else:
            stored_shape = gguf.quant_shape_to_byte_shape(shape, qtype)
            writer.add_tensor_info(theirs, stored_shape, np.dtype(np.uint8), int(np.prod(stored_shape)), raw_dtype=qtype)
        if verbose:
            print(f"{theirs:28s} <- {ours:50s} {qtype.name:5s} {shape}")

    layers = dict(model.named_sublayers())
    with atomic_path(dst) as tmp:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for ours, theirs, transpose, qtype in tqdm(plan, desc=f"writing {outtype}", unit="tensor", disable=None):
            array = _float_weight(layers, ours)
            array = array.T if transpose else array
            rows = reorder(theirs, config, to_gguf=True)
            array = np.ascontiguousarray(rows(array) if rows else array)
            if qtype == gguf.GGMLQuantizationType.F16:
                array = array.astype(np.float16)
            elif qtype != gguf.GGMLQuantizationType.F32:
                array = gguf.quants.quantize(array, qtype)
            writer.write_tensor_data(array)
        writer.close()
    return dst
