"""The files of a checkpoint: measured in a local directory, or predicted from the shapes for a model we only know
by name (what `paddle-belle convert` / `paddle-belle quantize` would write).

The prediction reproduces our writers byte for byte (tests compare it with os.stat of real checkpoints): tensors in
the order our models hold them (embeddings, blocks, final norm, head), a quantized Linear as bias, qweight, scales
(zeros, perm) as QuantLinear registers them, shards split by checkpoint.split_shards, and each .safetensors file
laid out as checkpoint.safetensors_writer does (8-byte length, compact JSON header padded to 8, then the data).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np

from paddle_belle.checkpoint import (_ST_CODES, CHAT_TEMPLATE, TOKENIZER_CONFIG, TOKENIZER_VOCAB, shard_names,
                                     split_shards)
from paddle_belle import arch
from paddle_belle.quant.format import QuantConfig, token_tables


def checkpoint_tensors(model_type: str, config: dict, dtype: str = "float16",
                       quant: QuantConfig | None = None) -> list[tuple[str, np.dtype, list[int]]]:
    """(name, dtype, shape) of every tensor our save_pretrained writes for this config, in its order. ``dtype`` is
    the float dtype (for a quantized model: of everything that is not packed codes and scales)."""
    spec, config = arch.get(model_type), arch.paddle_config(model_type, config)
    # The transposed copy of a tied head is for PaddleNLP, never written quantized.
    shapes = spec.checkpoint_shapes(config) if quant is None else spec.model_shapes(config)
    quantized = {}  # stem -> (grid, stored transposed): Linears whose weight becomes packed codes (quant/linear.py)
    if quant is not None:
        quantized = {n[: -len(".weight")]: (quant, False) for n in spec.linear_weights(config)}
        if quant.quantize_lm_head and "lm_head.weight" in shapes:
            quantized["lm_head"] = (quant, False)
        for name, transpose in token_tables(spec, config, quant).items():  # the embedding stored as its head
            quantized[name[: -len(".weight")]] = (quant.embedding_config(), transpose)
    float_dtype = np.dtype(dtype)
    out = []
    for name in shapes:
        stem = name.rsplit(".", 1)[0]
        if stem not in quantized:
            out.append((name, float_dtype, shapes[name]))
            continue
        if name.endswith(".bias"):
            continue  # written with its Linear's codes, below
        grid, transpose = quantized[stem]
        rows, cols = shapes[name][::-1] if transpose else shapes[name]
        if stem + ".bias" in shapes:  # QuantLinear registers bias, then qweight, scales, zeros, perm
            out.append((stem + ".bias", float_dtype, shapes[stem + ".bias"]))
        groups = grid.groups(rows)
        out.append((stem + ".qweight", np.dtype("uint8"), [-(-rows // grid.per_byte), cols]))
        out.append((stem + ".scales", np.dtype("float32"), [groups, cols]))
        if not grid.sym:
            out.append((stem + ".zeros", np.dtype("uint8"), [groups, cols]))
        if grid.act_order:
            out.append((stem + ".perm", np.dtype("int32"), [rows]))
    return out


def nbytes(dtype: np.dtype, shape) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def safetensors_size(specs, fmt: str = "np") -> int:
    """The size of the .safetensors file checkpoint.safetensors_writer makes of these tensors."""
    header, offset = {"__metadata__": {"format": fmt}}, 0
    for name, dtype, shape in specs:
        size = nbytes(dtype, shape)
        header[name] = {"dtype": _ST_CODES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = len(json.dumps(header, separators=(",", ":")).encode())
    return 8 + raw + (-raw % 8) + offset


def weight_files(specs, max_shard_size=None) -> list[tuple[str, int]]:
    """(file name, bytes) of the safetensors shards (and index) these tensors are written to."""
    by_name = {name: (dtype, shape) for name, dtype, shape in specs}
    shards = split_shards({name: nbytes(*by_name[name]) for name in by_name}, max_shard_size)
    names, index_name = shard_names(len(shards), True)
    files = [(file, safetensors_size([(n, *by_name[n]) for n in shard])) for file, shard in zip(names, shards)]
    if len(shards) > 1:  # written by checkpoint.write_json
        index = {"metadata": {"total_size": sum(nbytes(*v) for v in by_name.values())},
                 "weight_map": {n: file for file, shard in zip(names, shards) for n in shard}}
        files.append((index_name, len((json.dumps(index, indent=2, ensure_ascii=False) + "\n").encode())))
    return files


def predicted_files(model_type: str, config: dict, dtype: str = "float16", quant: QuantConfig | None = None,
                    max_shard_size="5GB") -> list[tuple[str, int | None]]:
    """The files of the checkpoint directory; None where the size depends on more than the shapes."""
    files = weight_files(checkpoint_tensors(model_type, config, dtype, quant), max_shard_size)
    # What `paddle-belle convert` writes beside the weights (README "Converting checkpoints"): config.json and the
    # tokenizer in the files PaddleNLP's classes read, with BELLE's chat template.
    small = ("config.json", *TOKENIZER_VOCAB[model_type], *TOKENIZER_CONFIG, CHAT_TEMPLATE)
    return files + [(name, None) for name in small]


# What `paddle-belle train` leaves beside the model in its output directory: PaddleNLP's Trainer checkpoints
# (checkpoint-N/, with optimizer states; its trainer_utils.PREFIX_CHECKPOINT_DIR), the pickled TrainingArguments
# and our loss log and its plot (train/plot.py LOSS_LOG, LOSS_PNG). None of it is part of the model.
TRAINER_CHECKPOINT = re.compile(r"checkpoint-\d+")
TRAINING_RECORDS = ("training_args.bin", "loss_log.jsonl", "loss.png")


def local_files(directory) -> list[tuple[str, int]]:
    """(name, bytes) of every regular, non-hidden file of the model in the directory (and below), sorted by name;
    a training run's checkpoints and records are not the model's."""
    directory = Path(directory)

    def of_the_model(parts) -> bool:
        if any(part.startswith(".") for part in parts):
            return False
        if len(parts) == 1:
            return parts[0] not in TRAINING_RECORDS
        return not TRAINER_CHECKPOINT.fullmatch(parts[0])

    found = [p for p in directory.rglob("*") if p.is_file() and not p.is_symlink()
             and of_the_model(p.relative_to(directory).parts)]
    return sorted((p.relative_to(directory).as_posix(), p.stat().st_size) for p in found)
