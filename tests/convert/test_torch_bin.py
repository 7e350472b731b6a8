"""Our torch-free .bin reader against torch.save itself."""
import io
import pickle
import zipfile

import numpy as np
import pytest
import torch
from reference import Exploit

from paddle_belle.checkpoint import CheckpointError
from paddle_belle.convert.engine import cast
from paddle_belle.convert.torch_bin import read_torch_bin


def test_reads_what_torch_saves(tmp_path):
    base = torch.randn(4, 6)
    state = {
        "f32": torch.randn(3, 5), "f16": torch.randn(7).half(), "i64": torch.arange(5),
        "bf16": torch.tensor([1.0, -2.5, 3.140625]).bfloat16(),
        "transposed": base.t(),  # non-contiguous: strides differ from the shape's
        "row": base[2],  # a view with a storage offset, sharing base's storage
        "base": base,
    }
    torch.save(state, tmp_path / "pytorch_model.bin")
    lazy = read_torch_bin(tmp_path / "pytorch_model.bin")
    assert list(lazy) == list(state)
    for name, tensor in state.items():
        got = lazy[name].load()
        if name == "bf16":
            np.testing.assert_array_equal(cast(got, np.dtype("float32")), tensor.float().numpy())
        else:
            assert got.dtype == tensor.numpy().dtype
            np.testing.assert_array_equal(got, tensor.numpy())


def test_hostile_bin_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"w": Exploit(marker)}, protocol=2))
    with pytest.raises(CheckpointError, match=r"refusing to unpickle (posix|os)\.system"):
        read_torch_bin(path)
    assert not marker.exists()


def test_truncated_or_legacy_bin_is_a_clear_error(tmp_path):
    buf = io.BytesIO()
    torch.save({"w": torch.ones(1000)}, buf)
    (tmp_path / "cut.bin").write_bytes(buf.getvalue()[:300])
    with pytest.raises(CheckpointError, match=r"cut.bin: not a zip archive"):
        read_torch_bin(tmp_path / "cut.bin")
