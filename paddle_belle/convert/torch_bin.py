"""Read PyTorch ``pytorch_model.bin`` state dicts without torch and without executing pickled code.

A .bin (torch >= 1.6) is a zip: ``<root>/data.pkl`` pickles the dict, each tensor a call to
``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` whose storage is a persistent id
``("storage", torch.FloatStorage, key, device, numel)`` naming the member ``<root>/data/<key>``. The unpickler
below admits only those names and builds lazy tensors; a tensor's bytes are read when it is loaded, so a shard
never has to sit in memory whole. (``torch.load(weights_only=True)`` would do the same, with torch installed.)
"""
from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from paddle_belle.checkpoint import CheckpointError

STORAGE_DTYPES = {
    "FloatStorage": "float32", "HalfStorage": "float16", "BFloat16Storage": "uint16",  # bf16 as its bits
    "DoubleStorage": "float64", "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
}


@dataclass
class LazyTensor:
    archive: Path
    member: str
    dtype: np.dtype
    offset: int  # in elements, as torch counts
    shape: list[int]
    stride: list[int]

    def load(self) -> np.ndarray:
        with zipfile.ZipFile(self.archive) as z:
            storage = np.frombuffer(z.read(self.member), self.dtype)
        view = np.lib.stride_tricks.as_strided(
            storage[self.offset :], self.shape, [s * self.dtype.itemsize for s in self.stride]
        )
        return np.array(view)  # a contiguous copy that owns its memory


class _Unpickler(pickle.Unpickler):
    def __init__(self, file, archive: Path, root: str):
        super().__init__(file)
        self.archive, self.root = archive, root

    def find_class(self, module, name):
        if module == "torch._utils" and name == "_rebuild_tensor_v2":
            return self._rebuild_tensor
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        if (module, name) == ("collections", "OrderedDict"):
            return OrderedDict
        raise CheckpointError(f"{self.archive}: refusing to unpickle {module}.{name} (not a plain state dict)")

    def persistent_load(self, pid):
        kind, storage_type, key, _device, _numel = pid
        if kind != "storage" or storage_type not in STORAGE_DTYPES:
            raise CheckpointError(f"{self.archive}: unsupported storage {pid!r}")
        return f"{self.root}/data/{key}", np.dtype(STORAGE_DTYPES[storage_type])

    def _rebuild_tensor(self, storage, offset, shape, stride, *_):
        member, dtype = storage
        return LazyTensor(self.archive, member, dtype, offset, list(shape), list(stride))


def read_torch_bin(path: str | Path) -> dict[str, LazyTensor]:
    """{name: LazyTensor} of a torch.save'd state dict; nothing but the pickle is read yet."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            pkl = next((n for n in z.namelist() if n.endswith("/data.pkl")), None)
            if pkl is None:
                raise CheckpointError(f"{path}: no data.pkl inside; not a torch.save checkpoint")
            with z.open(pkl) as f:
                state = _Unpickler(f, path, pkl[: -len("/data.pkl")]).load()
    except zipfile.BadZipFile:
        raise CheckpointError(
            f"{path}: not a zip archive; truncated, or saved by torch < 1.6 (re-save it with a recent torch)"
        ) from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
        raise CheckpointError(f"{path}: corrupt .bin file ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict) or not all(isinstance(v, LazyTensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors")
    return state
