"""GGUF (llama.cpp) -> a PaddleNLP-layout LLaMA checkpoint our models load.

Read with the ``gguf`` package (the reader llama.cpp ships on PyPI); quantized tensors (Q4_1, Q8_0, K-quants, ...)
are dequantized to float32 with its ``dequantize``. llama.cpp's converter (convert_hf_to_gguf.py ``LlamaModel.
permute``) reorders the rows of Q and K from HF's rotate-half RoPE layout to its interleaved one; ``unpermute``
undoes that. GGUF stores a [out, in] weight with ne = (in, out), i.e. as numpy [out, in] like HF; Paddle's
Linear is [in, out]. One tensor is in memory at a time; the output is built beside DST and renamed at the end.

The tokenizer: a byte-level BPE GGUF (``tokenizer.ggml.model == "gpt2"``, e.g. SmolLM2) becomes an HF
``tokenizer.json``; a sentencepiece one ("llama") is not converted (say so, the weights are still written).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from paddle_belle.checkpoint import CheckpointError, atomic_dir, safetensors_writer, write_json
from paddle_belle import arch as archs

# Not weights: llama.cpp may store precomputed RoPE frequencies.
IGNORED = ("rope_freqs.weight",)
# tokenizer.ggml.pre -> pre-tokenizer steps before byte-level BPE (llama.cpp llama-vocab.cpp; the HF tokenizer.json
# of the model). "smollm": digits one by one, then GPT-2's regex.
PRE_TOKENIZERS = {"default": [], "gpt2": [], "smollm": ["digits"]}


def unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's ``permute`` of Q/K rows (interleaved RoPE pairs -> HF's rotate-half halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _field(reader, key, default=None, source=""):
    field = reader.fields.get(key)
    if field is None:
        if default is None:
            raise CheckpointError(f"{source}: GGUF metadata lacks {key}")
        return default
    return field.contents()


def read_config(reader, source: str) -> dict:
    """Our (PaddleNLP-field) LLaMA config.json from GGUF metadata."""
    arch = _field(reader, "general.architecture", source=source)
    if arch != "llama":
        raise CheckpointError(f"{source}: GGUF architecture {arch!r} is not supported (only llama)")
    heads = int(_field(reader, "llama.attention.head_count", source=source))
    hidden = int(_field(reader, "llama.embedding_length", source=source))
    names = {t.name for t in reader.tensors}
    # llama.vocab_size is optional in GGUF; the embedding's row count is the vocabulary either way.
    embed = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
    if embed is None:
        raise CheckpointError(f"{source}: no token_embd.weight tensor")
    vocab = int(_field(reader, "llama.vocab_size", int(embed.shape[1]), source))
    config = {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": int(_field(reader, "llama.feed_forward_length", source=source)),
        "num_hidden_layers": int(_field(reader, "llama.block_count", source=source)),
        "num_attention_heads": heads,
        "num_key_value_heads": int(_field(reader, "llama.attention.head_count_kv", heads, source)),
        "max_position_embeddings": int(_field(reader, "llama.context_length", 2048, source)),
        "rms_norm_eps": float(_field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-6, source)),
        "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0, source)),
        "tie_word_embeddings": "output.weight" not in names,
        "dtype": "float32",
    }
    rope_dims = int(_field(reader, "llama.rope.dimension_count", hidden // heads, source))
    if rope_dims != hidden // heads:
        raise CheckpointError(f"{source}: partial RoPE ({rope_dims} of {hidden // heads} dims) is not supported")
    scaling = reader.fields.get("llama.rope.scaling.type")
    if scaling is not None and scaling.contents() not in ("none",):
        config["rope_scaling_type"], config["rope_scaling_factor"] = archs.rope_scaling_fields(
            {"type": scaling.contents(), "factor": float(_field(reader, "llama.rope.scaling.factor", 1.0, source))})
    for key, name in (("bos_token_id", "tokenizer.ggml.bos_token_id"), ("eos_token_id", "tokenizer.ggml.eos_token_id"),
                      ("pad_token_id", "tokenizer.ggml.padding_token_id")):
        if name in reader.fields:
            config[key] = int(reader.fields[name].contents())
    return config


def convert_gguf(src, dst) -> Path:
    """Convert the GGUF file ``src`` into the checkpoint directory ``dst`` (which must not exist)."""
    try:
        from gguf import GGUFReader, GGMLQuantizationType
        from gguf.quants import dequantize
    except ImportError:
        raise RuntimeError("GGUF import needs the gguf package: pip install gguf") from None
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src}: no such GGUF file")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new directory")
    try:
        reader = GGUFReader(src)
    except (ValueError, OSError, KeyError, IndexError) as e:
        raise CheckpointError(f"{src}: not a readable GGUF file ({type(e).__name__}: {e})") from None
    config = read_config(reader, str(src))
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]

    plan = []  # (paddle name, gguf tensor, transpose, unpermute heads)
    for t in reader.tensors:
        if t.name in IGNORED:
            continue
        target = archs.rename(t.name, archs.LLAMA.gguf_to_paddle)
        if target is None:
            raise CheckpointError(f"{src}: tensor {t.name!r} is not a llama weight this converter knows")
        heads_of = heads if ".attn_q." in t.name else kv_heads if ".attn_k." in t.name else None
        plan.append((target[0], t, target[1], heads_of))
    for copy, source in archs.LLAMA.tied_copies(config).items():  # for PaddleNLP: the embedding transposed
        embed = next(p for p in plan if p[0] == source)
        plan.insert(plan.index(embed) + 1, (copy, embed[1], True, None))

    def shape(t, transpose):  # numpy order of a GGUF tensor is ne reversed: [out, in] for a weight
        s = [int(n) for n in reversed(t.shape)]
        return s[::-1] if transpose else s

    expected = archs.LLAMA.checkpoint_shapes(config)
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
            for name, t, transpose, heads_of in tqdm(plan, desc="converting GGUF", unit="tensor", disable=None):
                if t.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
                    array = np.asarray(t.data, dtype=np.float32)
                else:
                    array = dequantize(t.data, t.tensor_type).astype(np.float32)
                array = array.reshape([int(n) for n in reversed(t.shape)])
                if heads_of:
                    array = unpermute(array, heads_of)
                write(name, array.T if transpose else array)
        write_json(tmp / "config.json", config)
        write_tokenizer(reader, tmp, str(src))
    return dst


def write_tokenizer(reader, directory: Path, source: str) -> bool:
    """tokenizer.json (+ tokenizer_config.json) for a byte-level BPE GGUF; False when the GGUF has another kind."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    kind = reader.fields.get("tokenizer.ggml.model")
    if kind is None or kind.contents() != "gpt2":
        print(f"{source}: tokenizer {kind.contents() if kind else 'none'!r} not converted (only byte-level BPE)")
        return False
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    merges = [tuple(m.split(" ", 1)) for m in reader.fields["tokenizer.ggml.merges"].contents()]
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    pre = reader.fields["tokenizer.ggml.pre"].contents() if "tokenizer.ggml.pre" in reader.fields else "default"
    if pre not in PRE_TOKENIZERS:
        raise CheckpointError(f"{source}: pre-tokenizer {pre!r} is not supported ({', '.join(PRE_TOKENIZERS)})")
    tokenizer = Tokenizer(models.BPE({t: i for i, t in enumerate(tokens)}, merges, ignore_merges=False))
    steps = []
    if "digits" in PRE_TOKENIZERS[pre]:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tokenizer.decoder = decoders.ByteLevel()
    # Control tokens (type 3) and user-defined ones (4) are matched whole, before BPE.
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                  for t, kind_ in zip(tokens, types) if kind_ in (3, 4)])
    tokenizer.save(str(directory / "tokenizer.json"))
    settings = {"tokenizer_class": "PreTrainedTokenizerFast"}
    for key, name in (("bos_token", "bos_token_id"), ("eos_token", "eos_token_id"),
                      ("unk_token", "unknown_token_id"), ("pad_token", "padding_token_id")):
        field = reader.fields.get(f"tokenizer.ggml.{name}")
        if field is not None:
            settings[key] = tokens[int(field.contents())]
    if "tokenizer.chat_template" in reader.fields:
        settings["chat_template"] = reader.fields["tokenizer.chat_template"].contents()
    write_json(directory / "tokenizer_config.json", settings)
    return True
