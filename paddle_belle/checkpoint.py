"""Reading and writing weight files: model_state.pdparams, model.safetensors, and their sharded forms.

A state dict here maps names to numpy arrays (read from .pdparams) or paddle Tensors (read from .safetensors).
In numpy, bfloat16 travels as uint16 arrays holding the raw bits, the way ``paddle.save`` itself stores it
(numpy has no bfloat16); ``as_paddle``/``to_paddle`` turn those back into bf16 Tensors.

Every write goes to a temporary name beside the target and is renamed into place, so an interrupted save never
leaves something that looks like a finished weight file.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import re
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
import paddle
from safetensors import SafetensorError, safe_open
from safetensors.paddle import save_file as save_safetensors

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PDPARAMS = "model_state.pdparams"
PDPARAMS_INDEX = "model_state.pdparams.index.json"
# Highest preference first. PaddleNLP writes the pdparams names, HF (and PaddleNLP with safe_serialization) the others.
WEIGHT_LAYOUTS = [(SAFETENSORS_INDEX, SAFETENSORS), (PDPARAMS_INDEX, PDPARAMS)]
_SHARD = re.compile(r"^(model|model_state)-\d{5}-of-\d{5}\.(safetensors|pdparams)$")


class CheckpointError(ValueError):
    """A weight file or index that cannot be used as it is; the message names the file and the tensor."""


# --------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block finishes."""
    path = Path(path)
    # The temporary name keeps the suffix: paddle.save and friends look at it.
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ------------------------------------------------------------------------------------------ pdparams (pickle)
# What a state dict written by paddle.save may contain: numpy arrays (and their dtypes/scalars), OrderedDicts,
# and the (name, ndarray) tuples paddle.save makes of Tensors nested in containers. Nothing that can run code.
_PICKLE_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "tuple"),
    ("_codecs", "encode"),  # how protocol-2 pickles spell bytes
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file, source: str):
        super().__init__(file)
        self.source = source

    def find_class(self, module, name):
        if (module, name) in _PICKLE_ALLOWED:
            return super().find_class(module, name)
        raise CheckpointError(
            f"{self.source}: refusing to unpickle {module}.{name}; a weight file should hold only arrays "
            "(this file may be hostile, or not a paddle.save state dict)"
        )


def read_pdparams(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a paddle.save state dict without executing any code from the file."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            obj = _RestrictedUnpickler(io.BufferedReader(f, 1 << 20), path).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise CheckpointError(f"{path}: truncated or corrupt .pdparams file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state = {}
    for name, value in obj.items():
        if name == "StructuredToParameterName@@":  # paddle.save bookkeeping, not a tensor
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], np.ndarray):
            value = value[1]  # a Tensor pickled by paddle.save as (tensor name, data)
        if not isinstance(value, np.ndarray) or value.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {name!r} is not a numeric tensor ({type(value).__name__})")
        state[name] = value
    return state


# ---------------------------------------------------------------------------------------------- safetensors
def iter_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """(name, paddle Tensor on CPU) from a .safetensors file; the Paddle backend keeps bf16 as bf16."""
    path = str(path)
    try:
        with safe_open(path, framework="paddle") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
    except SafetensorError as e:
        raise CheckpointError(f"{path}: not a valid .safetensors file ({e})") from None


def _write_safetensors(state: Mapping[str, object], path: Path) -> None:
    # The bytes do not depend on the framework; PaddleNLP 2.8.1 loads only files whose metadata says "np"
    # (it raises "Currently unsupport paddle weights file" on "pd").
    with atomic_path(path) as tmp:
        save_safetensors({k: as_paddle(v) for k, v in state.items()}, str(tmp), metadata={"format": "np"})


def _write_pdparams(state: Mapping[str, object], path: Path) -> None:
    with atomic_path(path) as tmp:
        paddle.save(dict(state), str(tmp))  # bf16 Tensors become uint16 arrays, as PaddleNLP expects


# ------------------------------------------------------------------------------------- files of a checkpoint
def iter_file(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    path = str(path)
    if path.endswith(".safetensors"):
        yield from iter_safetensors(path)
    elif path.endswith(".pdparams"):
        yield from read_pdparams(path).items()
    else:
        raise CheckpointError(f"{path}: unknown weight file type (expected .safetensors or .pdparams)")


def read_index(path: str | os.PathLike) -> dict[str, str]:
    """The weight_map of a sharded checkpoint's index, checked against the shard files beside it."""
    path = Path(path)
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid index ({e})") from None
    for shard in sorted(set(weight_map.values())):
        if not (path.parent / shard).is_file():
            raise CheckpointError(f"{path}: names shard {shard}, which does not exist")
    suffix = ".safetensors" if path.name == SAFETENSORS_INDEX else ".pdparams"
    strays = [p.name for p in path.parent.iterdir() if _SHARD.match(p.name) and p.suffix == suffix]
    strays = sorted(set(strays) - set(weight_map.values()))
    if strays:
        raise CheckpointError(f"{path}: shard {strays[0]} is not in the index")
    return weight_map


def weight_files(directory: str | os.PathLike) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a checkpoint directory (safetensors preferred over pdparams), and the index's
    weight_map when the checkpoint is sharded."""
    directory = Path(directory)
    for index, single in WEIGHT_LAYOUTS:
        if (directory / index).is_file():
            weight_map = read_index(directory / index)
            return [directory / s for s in sorted(set(weight_map.values()))], weight_map
        if (directory / single).is_file():
            return [directory / single], None
    raise CheckpointError(
        f"{directory}: no weights found (looked for {', '.join(n for pair in WEIGHT_LAYOUTS for n in pair)})"
    )


def iter_state_dict(path: str | os.PathLike) -> Iterator[tuple[str, object]]:
    """Stream (name, tensor) from a weight file or a checkpoint directory, one shard in memory at a time.
    In a sharded checkpoint every shard must hold exactly the tensors its index assigns to it."""
    path = Path(path)
    if not path.is_dir():
        yield from iter_file(path)
        return
    files, weight_map = weight_files(path)
    for file in files:
        seen = set()
        for name, tensor in iter_file(file):
            if weight_map is not None and weight_map.get(name) != file.name:
                raise CheckpointError(f"{file}: holds tensor {name!r}, which the index does not assign to it")
            seen.add(name)
            yield name, tensor
        if weight_map is not None:
            absent = sorted(n for n, f in weight_map.items() if f == file.name and n not in seen)
            if absent:
                raise CheckpointError(f"{file}: the index assigns tensor {absent[0]!r} to it, but it is not there")


def load_state_dict(path: str | os.PathLike) -> dict[str, object]:
    return dict(iter_state_dict(path))


# ------------------------------------------------------------------------------------------------ saving
def parse_size(size: int | str) -> int:
    """'5GB' -> 5_000_000_000; '500MiB' -> 524_288_000; ints pass through."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*([\d.]+)\s*([KMGT]?)(I?B)?\s*", size.upper())
    if not m:
        raise ValueError(f"cannot read size {size!r} (use e.g. 5GB, 500MB, 2GiB)")
    unit = 1024 if m.group(3) == "IB" else 1000
    return int(float(m.group(1)) * unit ** " KMGT".index(m.group(2) or " "))


def nbytes(value) -> int:
    return value.nbytes if isinstance(value, np.ndarray) else value.numel().item() * value.element_size()


def save_state_dict(
    state: Mapping[str, object],
    directory: str | os.PathLike,
    *,
    safe_serialization: bool = True,
    max_shard_size: int | str | None = None,
) -> list[Path]:
    """Write ``state`` (numpy arrays or paddle Tensors) into ``directory``; shard above ``max_shard_size``.

    Weight files of an earlier save in the same directory are removed once the new ones are in place, so the
    directory never holds two competing checkpoints.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    old = {p for p in directory.iterdir() if p.name in (SAFETENSORS, PDPARAMS, SAFETENSORS_INDEX, PDPARAMS_INDEX)}
    old |= {p for p in directory.iterdir() if _SHARD.match(p.name)}

    limit = parse_size(max_shard_size) if max_shard_size else None
    shards, current, size = [], {}, 0
    for name, value in state.items():
        if current and limit and size + nbytes(value) > limit:
            shards.append(current)
            current, size = {}, 0
        current[name] = value
        size += nbytes(value)
    shards.append(current)

    stem, suffix = ("model", ".safetensors") if safe_serialization else ("model_state", ".pdparams")
    single, index_name = (SAFETENSORS, SAFETENSORS_INDEX) if safe_serialization else (PDPARAMS, PDPARAMS_INDEX)
    written = []
    for i, shard in enumerate(shards, 1):
        name = single if len(shards) == 1 else f"{stem}-{i:05d}-of-{len(shards):05d}{suffix}"
        (_write_safetensors if safe_serialization else _write_pdparams)(shard, directory / name)
        written.append(directory / name)
    if len(shards) > 1:
        weight_map = {k: p.name for p, shard in zip(written, shards) for k in shard}
        total = sum(nbytes(v) for v in state.values())
        write_json(directory / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
        written.append(directory / index_name)
    for stale in old - set(written):
        stale.unlink()
    return written


# ------------------------------------------------------------------------------------------- into paddle
def as_paddle(value):
    """A paddle Tensor for a state-dict value (uint16 arrays are bf16 bits)."""
    if isinstance(value, np.ndarray):
        value = paddle.to_tensor(value)
        if value.dtype == paddle.uint16:
            value = value.view(paddle.bfloat16)
    return value


def to_paddle(value, dtype):
    """A paddle Tensor of ``dtype`` for a state-dict value."""
    return as_paddle(value).astype(dtype)
