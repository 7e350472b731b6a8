"""Reading and writing weight files: model_state.pdparams, model.safetensors, and their sharded forms.

A state dict maps names to numpy arrays (paddle Tensors are accepted when saving). numpy has no bfloat16, so
bf16 travels as uint16 arrays holding the raw bits, the way ``paddle.save`` itself stores it; ``as_paddle``
turns those back into bf16 Tensors. (Checkpoints hold no genuine uint16 tensors.)

Nothing here imports Paddle until a Tensor is needed: the converter streams checkpoints with numpy alone.

safetensors is read and written here with numpy rather than through the ``safetensors`` package, for two
reasons: its numpy backend refuses BF16, and its writer takes every tensor in memory at once, where the converter
must write one tensor at a time. The format is a little-endian u64 header length, a JSON header, then raw bytes;
tests check our files against the package's reader and its files against ours.

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
import shutil
import struct
from pathlib import Path
from typing import Iterator, Mapping, NamedTuple

import numpy as np

SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PDPARAMS = "model_state.pdparams"
PDPARAMS_INDEX = "model_state.pdparams.index.json"
# Highest preference first. PaddleNLP writes the pdparams names, HF (and PaddleNLP with safe_serialization) the others.
WEIGHT_LAYOUTS = [(SAFETENSORS_INDEX, SAFETENSORS), (PDPARAMS_INDEX, PDPARAMS)]
PADDLE_SHARD = re.compile(r"^(model|model_state)-\d{5}-of-\d{5}\.(safetensors|pdparams)$")
# Tokenizer files (here: this module imports nothing of the package). The vocabulary by model type under PaddleNLP's
# names and HF's (LLaMA's sentencepiece model as tokenizer.model), then special tokens and settings in either layout.
TOKENIZER_VOCAB = {"bloom": ("vocab.json", "merges.txt"), "llama": ("sentencepiece.bpe.model",)}
HF_TOKENIZER_VOCAB = {"bloom": ("tokenizer.json",), "llama": ("tokenizer.model",)}
TOKENIZER_CONFIG = ("tokenizer_config.json", "special_tokens_map.json")
CHAT_TEMPLATE = "chat_template.json"  # PaddleNLP's
TOKENIZER_FILES = (*TOKENIZER_VOCAB["bloom"], *TOKENIZER_VOCAB["llama"], *HF_TOKENIZER_VOCAB["bloom"],
                   *HF_TOKENIZER_VOCAB["llama"], *TOKENIZER_CONFIG, CHAT_TEMPLATE, "added_tokens.json")
# safetensors dtype codes <-> numpy; BF16 is carried as its uint16 bits.
_ST_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "uint16", "I64": "int64",
              "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool"}
_ST_CODES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


class CheckpointError(ValueError):
    """A weight file or index that cannot be used as it is; the message names the file and the tensor."""


# --------------------------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temporary path beside ``path``; rename it to ``path`` only if the block finishes."""
    path = Path(path)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")  # keeps the suffix, which some writers look at
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """A new directory beside ``path`` (which must not exist), renamed to it if the block finishes, else deleted."""
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; give a new directory")
    tmp = path.with_name(f".{path.name}.partial-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        yield tmp
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


class _InFile(NamedTuple):
    """Where a large payload lies in the file: it is skipped while unpickling and read when its tensor is."""

    offset: int
    size: int


class PdTensor:
    """A tensor of a .pdparams file: .dtype and .shape at once, the array on .load(). It is what the unpickler makes
    of numpy's ndarray pickle: ``_reconstruct`` gives this object, whose ``__setstate__`` then receives numpy's state
    (version, shape, dtype, Fortran order, raw bytes). Protocols 3 and 4 write a payload of 64 KiB or more as
    BINBYTES/BINBYTES8 outside any frame (CPython Lib/pickle.py, _Framer.write_large_bytes); the lazy unpickler
    below skips those bytes, leaving an _InFile, so a 15 GB file is opened without reading its tensors. Smaller
    payloads (inside frames) and every payload of a protocol-2 or -5 file (bytes spelled as ``_codecs.encode``;
    bytearrays) arrive as bytes, in memory."""

    name = "?"  # the state-dict key, for error messages; set by open_pdparams

    def __init__(self, path: str, keep_bytes: bool):
        self.path, self.keep_bytes = path, keep_bytes

    def __setstate__(self, state):
        _version, shape, self.dtype, self.fortran, raw = state
        self.shape = list(shape)
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize
        size = raw.size if isinstance(raw, _InFile) else len(raw) if isinstance(raw, bytes) else None
        if size != self.nbytes:
            raise ValueError(f"array of shape {self.shape} and dtype {self.dtype} without its {self.nbytes} bytes")
        self.raw = raw if self.keep_bytes or isinstance(raw, _InFile) else None

    def load(self) -> np.ndarray:
        count = self.nbytes // self.dtype.itemsize
        if isinstance(self.raw, _InFile):
            with open(self.path, "rb") as f:
                f.seek(self.raw.offset)
                array = np.fromfile(f, self.dtype, count)
            if array.size != count:  # the file shrank after it was opened
                raise CheckpointError(f"{self.path}: truncated .pdparams file: tensor {self.name!r} ends past the end")
        else:
            array = np.frombuffer(self.raw, self.dtype, count).copy()  # writable and owning, as numpy unpickles
        return array.reshape(self.shape, order="F" if self.fortran else "C")


class _Restricted:
    """find_class for both unpicklers: the allow-list above, and numpy's arrays made into PdTensors."""

    def __init__(self, file, source: str, keep_bytes: bool):
        super().__init__(file)
        self.source, self.keep_bytes = source, keep_bytes

    def find_class(self, module, name):
        if (module, name) not in _PICKLE_ALLOWED:
            raise CheckpointError(
                f"{self.source}: refusing to unpickle {module}.{name}; a weight file should hold only arrays "
                "(this file may be hostile, or not a paddle.save state dict)"
            )
        if name == "_reconstruct":  # numpy's _reconstruct(ndarray, (0,), b"b"), then __setstate__(state)
            return lambda *_: PdTensor(self.source, self.keep_bytes)
        if name == "_frombuffer":  # protocol 5's spelling: numpy's _frombuffer(buffer, dtype, shape, order)
            return lambda buf, dtype, shape, order: self._tensor((1, shape, dtype, order == "F", bytes(buf)))
        return super().find_class(module, name)

    def _tensor(self, state) -> PdTensor:
        tensor = PdTensor(self.source, self.keep_bytes)
        tensor.__setstate__(state)
        return tensor


class _RestrictedUnpickler(_Restricted, pickle.Unpickler):
    """CPython's C unpickler, which reads every byte: for protocol-2 files, which have no large-bytes opcodes."""


class _LazyUnpickler(_Restricted, pickle._Unpickler):
    """CPython's pure-Python unpickler (the C one has no hook for this), with BINBYTES/BINBYTES8 read outside a
    frame replaced by an _InFile: the bytes are seeked over, not read. It only walks the pickle's structure, about
    as fast as the C unpickler reads the whole file (20,000 tensors, 803 MB: 0.33 s against 0.27 s)."""

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file, source: str, keep_bytes: bool):
        super().__init__(file, source, keep_bytes)
        self.file, self.size = file, os.fstat(file.fileno()).st_size

    def _large_bytes(self, size_format: str) -> None:
        (size,) = struct.unpack(size_format, self.read(struct.calcsize(size_format)))
        if self._unframer.current_frame is not None:  # inside a frame: already in memory, as pickle reads it
            self.append(self.read(size))
            return
        offset = self.file.tell()
        if offset + size > self.size:
            raise EOFError(f"{size} bytes at offset {offset} run past the end of the file ({self.size} bytes)")
        self.file.seek(size, io.SEEK_CUR)
        self.append(_InFile(offset, size))

    dispatch[pickle.BINBYTES[0]] = lambda self: self._large_bytes("<I")
    dispatch[pickle.BINBYTES8[0]] = lambda self: self._large_bytes("<Q")


def open_pdparams(path: str | os.PathLike, metadata_only: bool = False) -> dict[str, PdTensor]:
    """{name: PdTensor} of a paddle.save state dict, without executing any code from the file and, for protocols
    3 and 4 (paddle.save's default is 4), without reading its large tensors: each is read by its .load().
    Protocol-2 and -5 files are read whole (``metadata_only``: their bytes dropped as each tensor is unpickled)."""
    path = str(path)
    try:
        with open(path, "rb") as f:
            head = f.read(2)  # PROTO and the protocol number
            f.seek(0)
            lazy = len(head) == 2 and head[:1] == pickle.PROTO and head[1] >= 3
            unpickler = _LazyUnpickler if lazy else _RestrictedUnpickler
            obj = unpickler(f if lazy else io.BufferedReader(f, 1 << 20), path, not metadata_only).load()
    except CheckpointError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, struct.error) as e:
        raise CheckpointError(f"{path}: truncated or corrupt .pdparams file ({type(e).__name__}: {e})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    state = {}
    for name, value in obj.items():
        if name == "StructuredToParameterName@@":  # paddle.save bookkeeping, not a tensor
            continue
        if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], PdTensor):
            value = value[1]  # a Tensor pickled by paddle.save as (tensor name, data)
        if not isinstance(value, PdTensor) or value.dtype.kind not in "fiub":
            raise CheckpointError(f"{path}: entry {name!r} is not a numeric tensor ({type(value).__name__})")
        value.name = name
        state[name] = value
    return state


def read_pdparams(path: str | os.PathLike, metadata_only: bool = False) -> dict[str, np.ndarray]:
    """Load a paddle.save state dict whole, without executing any code from the file (``metadata_only``: PdTensors,
    with .dtype and .shape, instead of arrays)."""
    state = open_pdparams(path, metadata_only)
    return state if metadata_only else {name: t.load() for name, t in state.items()}


def write_pdparams(state: Mapping[str, np.ndarray], path: Path) -> None:
    # A protocol-4 pickle of numpy arrays is exactly what paddle.save writes for a state dict (minus its
    # bookkeeping key), and what paddle.load / PaddleNLP read; bf16 stays uint16 bits as in paddle.save.
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(dict(state), f, protocol=4)


# ---------------------------------------------------------------------------------------------- safetensors
def read_safetensors_header(path: str | os.PathLike) -> tuple[dict[str, dict], int]:
    """{name: {"dtype": numpy dtype, "shape", "offsets": (begin, end)}} and where the data starts, validated
    against the file's size so that a truncated or malformed file fails here, naming the file."""
    path = str(path)
    size = os.path.getsize(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header of {n} bytes in a file of {size}")
            header = json.loads(f.read(n))
        entries, end_of_data = {}, 0
        for name, info in header.items():
            if name == "__metadata__":
                continue
            dtype = np.dtype(_ST_DTYPES[info["dtype"]])
            begin, end = info["data_offsets"]
            if end - begin != int(np.prod(info["shape"], dtype=np.int64)) * dtype.itemsize:
                raise ValueError(f"tensor {name!r}: {end - begin} bytes do not fit shape {info['shape']}")
            entries[name] = {"dtype": dtype, "shape": list(info["shape"]), "offsets": (begin, end)}
            end_of_data = max(end_of_data, end)
    except (ValueError, KeyError, TypeError, struct.error) as e:
        raise CheckpointError(f"{path}: not a valid .safetensors file ({e})") from None
    if 8 + n + end_of_data != size:
        raise CheckpointError(f"{path}: truncated or padded .safetensors file ({size} bytes, expected {8 + n + end_of_data})")
    return entries, 8 + n


def iter_safetensors(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """(name, array) one tensor at a time, in file order."""
    entries, start = read_safetensors_header(path)
    with open(path, "rb") as f:
        for name, e in sorted(entries.items(), key=lambda kv: kv[1]["offsets"]):
            f.seek(start + e["offsets"][0])
            yield name, np.fromfile(f, e["dtype"], int(np.prod(e["shape"], dtype=np.int64))).reshape(e["shape"])


@contextlib.contextmanager
def safetensors_writer(path: str | os.PathLike, specs: list[tuple[str, np.dtype, list[int]]], fmt: str = "np"):
    """Write a .safetensors file tensor by tensor: the header is laid out up front from (name, dtype, shape),
    then the yielded ``write(name, array)`` appends each tensor's bytes, in the declared order.

    ``fmt`` labels the metadata for the reader: PaddleNLP 2.8.1 loads only "np" (it rejects "pd"), transformers
    only "pt" (or tf/flax/mlx). The bytes are the same either way."""
    header, offset = {"__metadata__": {"format": fmt}}, 0
    for name, dtype, shape in specs:
        size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
        header[name] = {"dtype": _ST_CODES[np.dtype(dtype)], "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the format aligns the data to 8 bytes
    pending = [s[0] for s in specs]

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)

        def write(name: str, array: np.ndarray) -> None:
            expected = pending.pop(0)
            if name != expected or list(array.shape) != header[name]["shape"]:
                raise RuntimeError(f"{path}: got tensor {name!r} {list(array.shape)}, expected {expected!r} next")
            np.ascontiguousarray(array, dtype=np.dtype(_ST_DTYPES[header[name]["dtype"]])).tofile(f)

        yield write
        if pending:
            raise RuntimeError(f"{path}: {len(pending)} declared tensors were never written, e.g. {pending[0]!r}")


def _write_safetensors(state: Mapping[str, np.ndarray], path: Path) -> None:
    with safetensors_writer(path, [(k, v.dtype, list(v.shape)) for k, v in state.items()]) as write:
        for name, array in state.items():
            write(name, array)


# ------------------------------------------------------------------------------------- files of a checkpoint
def iter_file(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    path = str(path)
    if path.endswith(".safetensors"):
        yield from iter_safetensors(path)
    elif path.endswith(".pdparams"):
        yield from _iter_pdparams(open_pdparams(path))
    else:
        raise CheckpointError(f"{path}: unknown weight file type (expected .safetensors or .pdparams)")


def read_index(path: str | os.PathLike, shard_pattern: re.Pattern = PADDLE_SHARD) -> dict[str, str]:
    """The weight_map of a sharded checkpoint's index, checked against the shard files beside it."""
    path = Path(path)
    try:
        weight_map = json.loads(path.read_text(encoding="utf-8"))["weight_map"]
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: not a valid index ({e})") from None
    for shard in sorted(set(weight_map.values())):
        if Path(shard).name != shard:
            raise CheckpointError(f"{path}: shard name {shard!r} is not a plain file name")
        if not (path.parent / shard).is_file():
            raise CheckpointError(f"{path}: names shard {shard}, which does not exist")
    suffix = Path(next(iter(weight_map.values()), ".none")).suffix
    strays = {p.name for p in path.parent.iterdir() if shard_pattern.match(p.name) and p.suffix == suffix}
    strays = sorted(strays - set(weight_map.values()))
    if strays:
        raise CheckpointError(f"{path}: shard {strays[0]} is not in the index")
    return weight_map


def weight_files(directory, layouts=WEIGHT_LAYOUTS, shard_pattern=PADDLE_SHARD) -> tuple[list[Path], dict[str, str] | None]:
    """The weight files of a checkpoint directory (first matching layout wins), and the index's weight_map when
    the checkpoint is sharded."""
    directory = Path(directory)
    for index, single in layouts:
        if (directory / index).is_file():
            weight_map = read_index(directory / index, shard_pattern)
            return [directory / s for s in sorted(set(weight_map.values()))], weight_map
        if (directory / single).is_file():
            return [directory / single], None
    raise CheckpointError(f"{directory}: no weights found (looked for {', '.join(n for pair in layouts for n in pair)})")


def check_shard(file: Path, names: list[str], weight_map: dict[str, str] | None) -> None:
    """A shard must hold exactly the tensors its index assigns to it."""
    if weight_map is None:
        return
    for name in names:
        if weight_map.get(name) != file.name:
            raise CheckpointError(f"{file}: holds tensor {name!r}, which the index does not assign to it")
    absent = sorted(set(n for n, f in weight_map.items() if f == file.name) - set(names))
    if absent:
        raise CheckpointError(f"{file}: the index assigns tensor {absent[0]!r} to it, but it is not there")


def iter_state_dict(path: str | os.PathLike) -> Iterator[tuple[str, np.ndarray]]:
    """Stream (name, array) from a weight file or a checkpoint directory, one tensor in memory at a time (a
    protocol-2 .pdparams file, one shard)."""
    path = Path(path)
    if not path.is_dir():
        yield from iter_file(path)
        return
    files, weight_map = weight_files(path)
    for file in files:
        if file.suffix == ".safetensors":  # names are known from the header before any data is read
            check_shard(file, list(read_safetensors_header(file)[0]), weight_map)
            yield from iter_safetensors(file)
        else:
            tensors = open_pdparams(file)
            check_shard(file, list(tensors), weight_map)
            yield from _iter_pdparams(tensors)


def _iter_pdparams(tensors: dict[str, PdTensor]) -> Iterator[tuple[str, np.ndarray]]:
    for name in list(tensors):  # each read when asked for, and let go (small ones' bytes too) once used
        yield name, tensors.pop(name).load()


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
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


def shard_names(n_shards: int, safe_serialization: bool) -> tuple[list[str], str]:
    """File names of ``n_shards`` shards and of the index, as HF and PaddleNLP name them."""
    stem, suffix = ("model", ".safetensors") if safe_serialization else ("model_state", ".pdparams")
    index = SAFETENSORS_INDEX if safe_serialization else PDPARAMS_INDEX
    if n_shards == 1:
        return [SAFETENSORS if safe_serialization else PDPARAMS], index
    return [f"{stem}-{i:05d}-of-{n_shards:05d}{suffix}" for i in range(1, n_shards + 1)], index


def split_shards(sizes: Mapping[str, int], max_shard_size: int | str | None) -> list[list[str]]:
    """Names grouped into consecutive shards of at most ``max_shard_size`` bytes (a bigger tensor alone)."""
    limit = parse_size(max_shard_size) if max_shard_size else None
    shards, size = [[]], 0
    for name, n in sizes.items():
        if shards[-1] and limit and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += n
    return shards


def remove_weight_files(directory: Path, keep=()) -> None:
    """Delete the weight files and indexes of an earlier save, so two checkpoints never share a directory."""
    for p in directory.iterdir():
        if p.name not in keep and (p.name in (SAFETENSORS, PDPARAMS, SAFETENSORS_INDEX, PDPARAMS_INDEX) or PADDLE_SHARD.match(p.name)):
            p.unlink()


def as_numpy(value) -> np.ndarray:
    """numpy for a numpy array or a paddle Tensor (bf16 Tensors give their uint16 bits)."""
    return value if isinstance(value, np.ndarray) else value.numpy()


def save_state_dict(
    state: Mapping[str, object],
    directory: str | os.PathLike,
    *,
    safe_serialization: bool = True,
    max_shard_size: int | str | None = None,
) -> list[Path]:
    """Write ``state`` (numpy arrays or paddle Tensors) into ``directory``; shard above ``max_shard_size``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {k: as_numpy(v) for k, v in state.items()}
    shards = split_shards({k: a.nbytes for k, a in arrays.items()}, max_shard_size)
    names, index_name = shard_names(len(shards), safe_serialization)
    write = _write_safetensors if safe_serialization else write_pdparams
    for name, shard in zip(names, shards):
        write({k: arrays[k] for k in shard}, directory / name)
    written = [directory / n for n in names]
    if len(shards) > 1:
        weight_map = {k: name for name, shard in zip(names, shards) for k in shard}
        total = sum(a.nbytes for a in arrays.values())
        write_json(directory / index_name, {"metadata": {"total_size": total}, "weight_map": weight_map})
        written.append(directory / index_name)
    remove_weight_files(directory, keep={p.name for p in written})
    return written


# ------------------------------------------------------------------------------------------- into paddle
def as_paddle(value):
    """A paddle Tensor for a state-dict value (uint16 arrays are bf16 bits)."""
    import paddle

    if isinstance(value, np.ndarray):
        value = paddle.to_tensor(value)
        if value.dtype == paddle.uint16:
            value = value.view(paddle.bfloat16)
    return value


def to_paddle(value, dtype):
    """A paddle Tensor of ``dtype`` for a state-dict value (no second copy when it already has that dtype)."""
    value = as_paddle(value)
    same = str(value.dtype).replace("paddle.", "") == str(dtype).replace("paddle.", "")
    return value if same else value.astype(dtype)


CONFIG_NAME = "config.json"


def read_config(path) -> dict:
    """config.json of the checkpoint directory ``path``, with errors that name the file."""
    file = Path(path) / CONFIG_NAME
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no {CONFIG_NAME} (is this a checkpoint directory?)")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise ValueError(f"{file}: not valid JSON ({e})") from None
