"""HF <-> PaddleNLP checkpoint conversion in bounded memory.

One engine runs the name tables of arch.py: it lists the source tensors from file headers (no data
read), plans every output tensor (name, transpose, dtype, shape; each checked against the shapes the config
implies), then streams: one tensor is read, transformed and written at a time (a protocol-2 .pdparams source is
read a shard at a time: see checkpoint.open_pdparams). The output is built in a temporary directory beside DST
and renamed into place at the end: an interrupted or failed run leaves nothing that looks like a checkpoint.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm.auto import tqdm

from paddle_belle.checkpoint import (
    PADDLE_SHARD,
    PDPARAMS_INDEX,
    WEIGHT_LAYOUTS,
    CheckpointError,
    atomic_dir,
    check_shard,
    open_pdparams,
    read_safetensors_header,
    safetensors_writer,
    shard_names,
    split_shards,
    weight_files,
    write_json,
    write_pdparams,
)
from paddle_belle import arch as archs
from paddle_belle.convert.tokenizer import write_hf_tokenizer, write_paddle_tokenizer
from paddle_belle.convert.torch_bin import read_torch_bin

HF_LAYOUTS = [("model.safetensors.index.json", "model.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model.bin")]
HF_SHARD = re.compile(r"^(model|pytorch_model)-\d{5}-of-\d{5}\.(safetensors|bin)$")
DTYPES = ("keep", "float32", "float16", "bfloat16")
COPIED = ("generation_config.json",)  # small files both worlds read as they are


@dataclass
class Tensor:
    """A source tensor: where it lives and what it is, before any data is read."""

    file: Path
    stored: str  # its name in the file
    dtype: np.dtype  # uint16 means bfloat16 bits
    shape: list[int]
    name: str = ""  # its canonical name (a bare-body checkpoint's names gain the body prefix)

    def __post_init__(self):
        self.name = self.name or self.stored


@dataclass
class Output:
    name: str
    source: Tensor
    transpose: bool
    dtype: np.dtype

    @property
    def shape(self) -> list[int]:
        return self.source.shape[::-1] if self.transpose else self.source.shape

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


# ------------------------------------------------------------------------------------------- dtype casts
def dtype_name(dtype: np.dtype) -> str:
    return "bfloat16" if dtype == np.uint16 else dtype.name


def target_dtype(dtype: np.dtype, wanted: str) -> np.dtype:
    if wanted == "keep" or not (dtype.kind == "f" or dtype == np.uint16):
        return dtype  # integer tensors are never cast
    return np.dtype("uint16" if wanted == "bfloat16" else wanted)


def cast(array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if array.dtype == dtype:
        return array
    if array.dtype == np.uint16:  # bf16 bits -> float32, exact
        array = (array.astype(np.uint32) << 16).view(np.float32)
    if dtype == np.uint16:  # float32 -> bf16 bits, round to nearest even
        bits = array.astype(np.float32).view(np.uint32)
        return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)
    return array.astype(dtype)


# ------------------------------------------------------------------------------------------ reading sources
def list_tensors(directory: Path, layouts, shard_pattern) -> list[Tensor]:
    """Every tensor of a checkpoint, in file order, from headers and pickles only."""
    files, weight_map = weight_files(directory, layouts, shard_pattern)
    tensors = []
    for file in files:
        if file.suffix == ".safetensors":
            entries = sorted(read_safetensors_header(file)[0].items(), key=lambda kv: kv[1]["offsets"])
            found = [(name, e["dtype"], e["shape"]) for name, e in entries]
        elif file.suffix == ".bin":
            found = [(name, t.dtype, t.shape) for name, t in read_torch_bin(file).items()]
        else:
            found = [(name, a.dtype, a.shape) for name, a in open_pdparams(file, metadata_only=True).items()]
        check_shard(file, [name for name, _, _ in found], weight_map)
        tensors += [Tensor(file, name, np.dtype(dtype), list(shape)) for name, dtype, shape in found]
    return tensors


class Reader:
    """Reads source tensors one at a time, keeping the current source file's table of contents (a protocol-2
    .pdparams file's bytes too)."""

    def __init__(self):
        self.file, self.contents = None, None

    def read(self, t: Tensor) -> np.ndarray:
        if t.file != self.file:
            self.file, self.contents = t.file, None  # drop the previous shard before loading the next
            if t.file.suffix == ".safetensors":
                self.contents = read_safetensors_header(t.file)
            elif t.file.suffix == ".bin":
                self.contents = read_torch_bin(t.file)
            else:
                self.contents = open_pdparams(t.file)
        if t.file.suffix == ".safetensors":
            entries, start = self.contents
            e = entries[t.stored]
            with open(t.file, "rb") as f:
                f.seek(start + e["offsets"][0])
                return np.fromfile(f, e["dtype"], int(np.prod(e["shape"], dtype=np.int64))).reshape(e["shape"])
        return self.contents[t.stored].load()  # a torch_bin.LazyTensor or a checkpoint.PdTensor

    def output(self, o: "Output") -> np.ndarray:
        """``o``'s source tensor in ``o``'s layout (transposed where the table says), not yet cast."""
        array = self.read(o.source)
        return array.T if o.transpose else array


def in_paddle_layout(directory: Path, model_type: str) -> bool:
    """Whether ``directory`` holds PaddleNLP's layout: .pdparams weights, or tensors named under the Paddle body
    (bloom.…, llama.…), which HF checkpoints never are. Anything unreadable is left to the reader of its layout to
    report (a broken .pdparams index to PaddleNLP's, the rest to HF's)."""
    try:
        files, _ = weight_files(directory)  # PaddleNLP's layouts (model.safetensors is both worlds' name)
        if files[0].suffix == ".pdparams":
            return True
        return any(name.startswith(archs.get(model_type).body + ".") for name in read_safetensors_header(files[0])[0])
    except CheckpointError:
        return (directory / PDPARAMS_INDEX).is_file()


def check_known_weights(directory: Path) -> None:
    """A one-line error saying what to run when ``directory`` holds no weights in a layout we read (PaddleNLP's or
    HF's), e.g. only a llama.cpp GGUF file or BELLE's GPTQ .pt file."""
    if any((directory / n).is_file() for pair in WEIGHT_LAYOUTS + HF_LAYOUTS for n in pair):
        return
    known = "no model.safetensors, model_state.pdparams, pytorch_model.bin or sharded form of them"
    gguf = sorted(directory.glob("*.gguf"))
    if gguf:
        raise CheckpointError(f"{directory}: holds {gguf[0].name}, a llama.cpp GGUF file, and {known}; convert it "
                              f"first: paddle-belle convert --from-gguf {gguf[0]} OUT")
    other = sorted(p.name for p in directory.iterdir() if p.suffix in (".pt", ".pth", ".bin", ".ckpt", ".safetensors"))
    if other and re.search(r"\d+bit", other[0]):  # BELLE's GPTQ files: bloom7b-2m-4bit-128g.pt, ...
        raise CheckpointError(f"{directory}: holds {other[0]}, a GPTQ file, and {known}; convert it first: "
                              f"paddle-belle convert --from-gptq {directory / other[0]} OUT")
    found = f"holds {other[0]}, a format it does not know, and" if other else "holds"
    raise CheckpointError(f"{directory}: {found} {known}; `paddle-belle convert --help` lists the formats it "
                          "converts from")


def paddle_outputs(directory: Path, config: dict) -> tuple[list["Output"], tuple | None]:
    """Every tensor of a checkpoint directory in PaddleNLP's layout or HF's, as PaddleNLP names and layout (HF's
    mapped by ``plan``, exactly as ``convert`` maps them), with the tie check ``plan`` returns (None for
    PaddleNLP's layout). Nothing is read but headers; ``Reader.output`` then reads one tensor at a time."""
    directory = Path(directory)
    model_type = archs.model_type_of(config, directory / "config.json")
    if in_paddle_layout(directory, model_type):
        return [Output(t.name, t, False, t.dtype) for t in list_tensors(directory, WEIGHT_LAYOUTS, PADDLE_SHARD)], None
    check_known_weights(directory)
    return plan(model_type, config, list_tensors(directory, HF_LAYOUTS, HF_SHARD), "paddle", "keep")


def check_tie(tie_check, fingerprints: list[str], model_type: str) -> None:
    if tie_check and fingerprints[0] != fingerprints[1]:
        raise CheckpointError(
            f"{tie_check[1].name} differs from {tie_check[0].name}, but the model ties them "
            + ("(BLOOM always does)" if archs.get(model_type).head is None else "(tie_word_embeddings is true)")
        )


def iter_hf_as_paddle(directory) -> Iterator[tuple[str, np.ndarray]]:
    """(PaddleNLP name, array in Paddle's layout) for every weight of the HF checkpoint ``directory``, read one
    tensor at a time through ``plan``, so that ``from_pretrained`` loads an HF directory as it is: no second copy
    of the model, in memory or on disk. A tied head is the embedding (the model holds it once); one that the HF
    files store as well must equal it."""
    directory = Path(directory)
    config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    model_type = archs.model_type_of(config, directory / "config.json")
    outputs, tie_check = paddle_outputs(directory, config)
    copies = archs.get(model_type).tied_copies(config)
    reader = Reader()
    for o in outputs:
        if o.name not in copies:
            yield o.name, reader.output(o)
    if tie_check:
        check_tie(tie_check, [_fingerprint(reader.read(t)) for t in tie_check[:2]], model_type)


# ------------------------------------------------------------------------------------------------ planning
def _fingerprint(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes()).hexdigest()


def plan(model_type: str, config: dict, tensors: list[Tensor], to: str, dtype: str):
    """The output tensors, and the (embedding, head, head is transposed) triple whose equality must be checked
    when the model ties its head to its embedding."""
    arch = archs.get(model_type)
    table = arch.hf_to_paddle if to == "paddle" else archs.invert(arch.hf_to_paddle)
    tied = arch.tied(config)
    embed_name, head_name = (arch.hf_name(arch.embedding), archs.HF_HEAD) if to == "paddle" else (arch.embedding, arch.head)

    outputs, by_name = [], {}
    for t in tensors:
        if to == "paddle":
            if any(re.match(p, t.name) for p in arch.hf_ignored):
                continue
            if not t.name.startswith(arch.hf_body) and t.name != archs.HF_HEAD:  # a bare BloomModel / LlamaModel checkpoint
                t.name = arch.hf_body + t.name
        by_name[t.name] = t
        if tied and t.name == head_name:
            continue  # checked against the embedding below; written (or not) from the embedding
        target = archs.rename(t.name, table)
        if target is None:
            raise CheckpointError(f"{t.file}: tensor {t.name!r} is not a {model_type} weight this converter knows")
        outputs.append(Output(target[0], t, target[1], target_dtype(t.dtype, dtype)))

    if embed_name not in by_name:
        raise CheckpointError(f"checkpoint has no {embed_name}")
    tie_check = None
    if tied and head_name in by_name:
        tie_check = (by_name[embed_name], by_name[head_name], to == "hf")  # a Paddle LLaMA head is [hidden, vocab]
    elif not tied and head_name not in by_name:
        raise CheckpointError(f"checkpoint has no {head_name}, and the config does not tie it to {embed_name}")
    copies = arch.tied_copies(config)
    if copies and to == "paddle":  # PaddleNLP's classes load this head: write the embedding transposed
        embed = by_name[embed_name]
        outputs.insert(outputs.index(next(o for o in outputs if o.source is embed)) + 1,
                       Output(arch.head, embed, True, target_dtype(embed.dtype, dtype)))

    # Every tensor's shape against what the config implies (Paddle names and layout on either side).
    paddle_config = archs.paddle_config(model_type, config)
    expected = arch.checkpoint_shapes(paddle_config) if to == "paddle" else arch.model_shapes(paddle_config)
    paddle_side = {o.name if to == "paddle" else o.source.name: o for o in outputs}
    for name, o in paddle_side.items():
        shape = o.shape if to == "paddle" else o.source.shape
        if expected.get(name, shape) != shape:
            raise CheckpointError(f"{o.source.file}: tensor {name} has shape {shape}, the config implies {expected[name]}")
    missing = sorted(set(expected) - set(paddle_side))
    if missing:
        raise CheckpointError(f"checkpoint lacks {len(missing)} tensor(s) the config implies, e.g. {missing[0]}")
    return outputs, tie_check


# ---------------------------------------------------------------------------------------------- converting
def convert(src, dst, to: str = "paddle", dtype: str = "keep", max_shard_size="5GB",
            safe_serialization: bool = True) -> Path:
    """Convert the HF checkpoint directory ``src`` into a PaddleNLP one at ``dst`` (``to="paddle"``), or back
    (``to="hf"``). ``dtype`` casts floating tensors (``keep`` leaves them). PaddleNLP output is safetensors unless
    ``safe_serialization`` is False (then model_state.pdparams). Returns ``dst``."""
    src, dst = Path(src), Path(dst)
    if to not in ("paddle", "hf"):
        raise ValueError(f"to must be 'paddle' or 'hf', not {to!r}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, not {dtype!r}")
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: no config.json (is this a checkpoint directory?)")
    if dst.exists():
        raise FileExistsError(f"{dst} exists; give a new directory")
    if dst.resolve().is_relative_to(src.resolve()):
        raise ValueError(f"{dst} is inside {src}; the source is never written to")
    config = json.loads((src / "config.json").read_text(encoding="utf-8"))
    model_type = archs.model_type_of(config, src / "config.json")
    if to == "paddle" and in_paddle_layout(src, model_type):  # else: "tensor 'transformer.bloom...' is not known"
        raise CheckpointError(f"{src} is already in PaddleNLP's layout (use --to hf to go the other way)")

    layouts, shard_pattern = (HF_LAYOUTS, HF_SHARD) if to == "paddle" else (WEIGHT_LAYOUTS, PADDLE_SHARD)
    tensors = list_tensors(src, layouts, shard_pattern)
    outputs, tie_check = plan(model_type, config, tensors, to, dtype)

    with atomic_dir(dst) as tmp:
        fingerprints = _write_weights(outputs, tmp, safe_serialization or to == "hf", max_shard_size, tie_check,
                                      metadata_format="np" if to == "paddle" else "pt")
        check_tie(tie_check, fingerprints, model_type)
        floating = next((o.dtype for o in outputs if o.dtype.kind == "f" or o.dtype == np.uint16), np.dtype("float32"))
        out_config = {**config, "dtype": dtype_name(floating), "torch_dtype": dtype_name(floating)}
        out_config.pop("dtype" if to == "hf" else "torch_dtype")
        convert_config = archs.paddle_config if to == "paddle" else archs.hf_config
        write_json(tmp / "config.json", convert_config(model_type, out_config))
        if any((src / n).is_file() for n in ("tokenizer.json", "vocab.json", "tokenizer.model", "sentencepiece.bpe.model")):
            (write_paddle_tokenizer if to == "paddle" else write_hf_tokenizer)(src, tmp, model_type)
        for name in COPIED:
            if (src / name).is_file():
                shutil.copyfile(src / name, tmp / name)
    return dst


def _write_weights(outputs: list[Output], directory: Path, safe: bool, max_shard_size, tie_check,
                   metadata_format: str) -> list[str]:
    """Stream every output tensor into its shard; returns the fingerprints of the tied pair (if any)."""
    shards = split_shards({o.name: o.nbytes for o in outputs}, max_shard_size)
    names, index_name = shard_names(len(shards), safe)
    by_name = {o.name: o for o in outputs}
    reader, fingerprints = Reader(), {}
    progress = tqdm(total=sum(o.nbytes for o in outputs), unit="B", unit_scale=True, desc="converting", disable=None)

    def produce(o: Output) -> np.ndarray:
        array = reader.read(o.source)
        if tie_check and o.source in tie_check[:2] and o.source.name not in fingerprints:
            oriented = array.T if (tie_check[2] and o.source is tie_check[1]) else array
            fingerprints[o.source.name] = _fingerprint(oriented)
        array = cast(array.T if o.transpose else array, o.dtype)
        progress.update(o.nbytes)
        return array

    for file, shard in zip(names, shards):
        if safe:
            specs = [(n, by_name[n].dtype, by_name[n].shape) for n in shard]
            with safetensors_writer(directory / file, specs, fmt=metadata_format) as write:
                for n in shard:
                    write(n, produce(by_name[n]))
        else:
            write_pdparams({n: np.ascontiguousarray(produce(by_name[n])) for n in shard}, directory / file)
    if tie_check:  # a tied head that is not written was never read above
        for t in tie_check[:2]:
            if t.name not in fingerprints:
                array = reader.read(t)
                fingerprints[t.name] = _fingerprint(array.T if (tie_check[2] and t is tie_check[1]) else array)
    progress.close()
    if len(shards) > 1:
        weight_map = {n: file for file, shard in zip(names, shards) for n in shard}
        write_json(directory / index_name, {"metadata": {"total_size": sum(o.nbytes for o in outputs)}, "weight_map": weight_map})
    return [fingerprints[t.name] for t in tie_check[:2]] if tie_check else []
