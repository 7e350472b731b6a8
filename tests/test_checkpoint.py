"""Weight files: safe unpickling, corrupt files, shards, bf16, atomic writes, strict loading."""
import collections
import json
import pickle

import numpy as np
import paddle
import pytest
from reference import Exploit

from paddle_belle import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM
from paddle_belle.checkpoint import (
    CheckpointError,
    atomic_dir,
    atomic_path,
    load_state_dict,
    open_pdparams,
    parse_size,
    read_pdparams,
    save_state_dict,
    to_paddle,
)

STATE = {"a.weight": np.arange(12, dtype="float32").reshape(3, 4), "b.bias": np.ones(5, "float32")}


def tiny_llama_dir(tmp_path, **save_kwargs):
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1, num_attention_heads=2)
    model = LlamaForCausalLM(config)
    model.save_pretrained(tmp_path, **save_kwargs)
    return model


@pytest.mark.parametrize("protocol", [2, 4])  # read whole by the C unpickler; lazily by the pure-Python one
def test_hostile_pdparams_is_refused_and_runs_nothing(tmp_path, protocol):
    marker = tmp_path / "pwned"
    path = tmp_path / "model_state.pdparams"
    path.write_bytes(pickle.dumps({"w": np.ones(100_000), "x": Exploit(marker)}, protocol=protocol))
    for read in (read_pdparams, open_pdparams, load_state_dict):
        with pytest.raises(CheckpointError, match=r"model_state.pdparams: refusing to unpickle (posix|os)\.system"):
            read(path)
    assert not marker.exists()


def _paddle_state():
    """Every dtype a checkpoint holds, tensors under 64 KiB (pickled inside a frame) and over (outside any)."""
    paddle.seed(0)
    return collections.OrderedDict([
        ("bf16", paddle.randn([300, 200]).astype("bfloat16")),  # 120 KB
        ("fp16", paddle.randn([7]).astype("float16")),
        ("fp32", paddle.randn([200, 100])),  # 80 KB
        ("fp16_big", paddle.randn([256, 300]).astype("float16")),  # 154 KB
        ("int8", paddle.to_tensor(np.arange(-128, 128, dtype="int8"))),
        ("uint8", paddle.to_tensor((np.arange(70_000) % 251).astype("uint8"))),  # 70 KB
        ("scalar", paddle.to_tensor(2.5)),
    ])


LARGE = {"bf16", "fp32", "fp16_big", "uint8"}


def assert_lazy_equals(path, reference: dict, large=LARGE):
    """open_pdparams(path) leaves the large tensors in the file, and loads the arrays of ``reference``."""
    lazy = open_pdparams(path)
    assert {name for name, t in lazy.items() if not isinstance(t.raw, bytes)} == large
    assert list(lazy) == list(reference)
    for name, t in lazy.items():
        array, expected = t.load(), np.asarray(reference[name])
        assert (array.dtype, array.shape) == (expected.dtype, expected.shape), name
        assert array.tobytes() == expected.tobytes() and array.flags.writeable, name
    whole = read_pdparams(path)
    assert {k: v.tobytes() for k, v in whole.items()} == {k: np.asarray(v).tobytes() for k, v in reference.items()}


def test_lazy_read_of_paddle_save_equals_paddle_load(tmp_path):
    path = tmp_path / "w.pdparams"
    paddle.save(_paddle_state(), str(path))  # a state dict: numpy arrays plus paddle.save's bookkeeping entry
    reference = paddle.load(str(path), return_numpy=True)
    reference.pop("StructuredToParameterName@@", None)
    assert reference["bf16"].dtype == np.uint16 and reference["scalar"].shape == ()
    assert_lazy_equals(path, reference)
    # Not a state dict (an ndarray beside the Tensors): each Tensor is pickled as a (name, ndarray) tuple.
    paddle.save({**_paddle_state(), "extra": np.ones(3, "float32")}, str(path))
    assert isinstance(pickle.loads(path.read_bytes())["fp32"], tuple)
    assert_lazy_equals(path, {**paddle.load(str(path), return_numpy=True), "extra": np.ones(3, "float32")})


@pytest.mark.parametrize("protocol", [2, 5])  # Paddle writes 2 to 4
def test_protocols_2_and_5_are_read_whole(tmp_path, protocol):
    path = tmp_path / "w.pdparams"
    if protocol == 2:
        paddle.save(_paddle_state(), str(path), protocol=2)
        reference = paddle.load(str(path), return_numpy=True)
        reference.pop("StructuredToParameterName@@", None)
    else:
        reference = {name: t.numpy() for name, t in _paddle_state().items()}
        path.write_bytes(pickle.dumps(reference, protocol=5))
    assert_lazy_equals(path, reference, large=set())
    assert all(t.raw is None for t in read_pdparams(path, metadata_only=True).values())  # bytes dropped at once


def test_lazy_read_of_paddlenlp_save_pretrained(tmp_path):
    from paddlenlp.transformers import BloomConfig as NLPBloomConfig, BloomForCausalLM as NLPBloom

    paddle.seed(0)
    model = NLPBloom(NLPBloomConfig(vocab_size=1000, hidden_size=64, n_layer=1, n_head=4))
    model.to(dtype="bfloat16")
    model.save_pretrained(tmp_path, safe_serialization=False)
    path = tmp_path / "model_state.pdparams"
    reference = paddle.load(str(path), return_numpy=True)
    reference.pop("StructuredToParameterName@@", None)
    large = {k for k, v in reference.items() if v.nbytes >= 1 << 16}
    assert large and all(v.dtype == np.uint16 for v in reference.values())
    assert_lazy_equals(path, reference, large)


def test_lazy_read_of_write_pdparams(tmp_path):
    rng = np.random.default_rng(0)
    state = collections.OrderedDict([
        ("fp64", rng.standard_normal((90, 100))),
        ("fp32_fortran", np.asfortranarray(rng.standard_normal((300, 100)), "float32")),
        ("fp16", rng.standard_normal(5).astype("float16")),
        ("bf16_bits", rng.integers(0, 2**16, (400, 100), dtype="uint16")),
        ("int64", np.arange(9_000)), ("int8", rng.integers(-128, 128, 70_000, dtype="int8")),
        ("uint8", np.arange(3, dtype="uint8")), ("bool", np.array([True, False])), ("scalar", np.array(1.5, "float32")),
    ])
    path = tmp_path / "model_state.pdparams"
    save_state_dict(state, tmp_path, safe_serialization=False)
    assert_lazy_equals(path, state, {"fp64", "fp32_fortran", "bf16_bits", "int64", "int8"})
    assert open_pdparams(path)["fp32_fortran"].load().flags.f_contiguous  # as numpy's own unpickling gives it


def test_paddle_save_output_loads_including_bf16(tmp_path):
    path = tmp_path / "w.pdparams"
    paddle.save({"f": paddle.to_tensor([1.5, -2.0]), "h": paddle.to_tensor([3.0]).astype("bfloat16")}, str(path))
    state = read_pdparams(path)
    assert state["h"].dtype == np.uint16  # paddle.save's own bf16 convention
    assert to_paddle(state["h"], paddle.float32).tolist() == [3.0]
    assert state["f"].tolist() == [1.5, -2.0]


@pytest.mark.parametrize("name", ["model.safetensors", "model_state.pdparams"])
def test_truncated_file_is_a_clear_error(tmp_path, name):
    save_state_dict(STATE, tmp_path, safe_serialization=name.endswith("safetensors"))
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{name}: (truncated or corrupt|not a valid)"):
        load_state_dict(tmp_path)


def test_truncated_large_tensor_is_named(tmp_path):
    state = {"small": np.ones(3, "float32"), "big": np.ones((300, 300), "float32")}
    path = tmp_path / "model_state.pdparams"
    save_state_dict(state, tmp_path, safe_serialization=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 50_000])  # inside big's bytes, which opening skips
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: truncated or corrupt .pdparams file .*run past the end"):
        open_pdparams(path)
    path.write_bytes(data)
    tensors = open_pdparams(path)
    path.write_bytes(data[: len(data) - 50_000])  # shrunk between opening and reading
    with pytest.raises(CheckpointError, match=r"model_state.pdparams: truncated .pdparams file: tensor 'big'"):
        tensors["big"].load()


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_round_trip_with_index(tmp_path, safe):
    state = {f"layer{i}.weight": np.full((10, 10), i, "float32") for i in range(5)}  # 400 bytes each
    written = save_state_dict(state, tmp_path, safe_serialization=safe, max_shard_size=1000)
    index = tmp_path / ("model.safetensors.index.json" if safe else "model_state.pdparams.index.json")
    assert index in written and len(written) == 4  # 3 shards + index
    weight_map = json.loads(index.read_text())["weight_map"]
    assert weight_map["layer4.weight"] == ("model-00003-of-00003.safetensors" if safe else "model_state-00003-of-00003.pdparams")
    loaded = load_state_dict(tmp_path)
    assert {k: np.asarray(v).tolist() for k, v in loaded.items()} == {k: v.tolist() for k, v in state.items()}


def test_index_naming_a_missing_shard_or_missing_a_shard_is_an_error(tmp_path):
    state = {f"t{i}": np.zeros(100, "float32") for i in range(3)}
    save_state_dict(state, tmp_path, max_shard_size=500)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    (tmp_path / "model-00002-of-00003.safetensors").rename(tmp_path / "elsewhere")
    with pytest.raises(CheckpointError, match="names shard model-00002-of-00003.safetensors, which does not exist"):
        load_state_dict(tmp_path)
    (tmp_path / "elsewhere").rename(tmp_path / "model-00002-of-00003.safetensors")
    data["weight_map"] = {k: v for k, v in data["weight_map"].items() if v != "model-00003-of-00003.safetensors"}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="shard model-00003-of-00003.safetensors is not in the index"):
        load_state_dict(tmp_path)


def test_shard_holding_tensors_its_index_does_not_list_is_an_error(tmp_path):
    save_state_dict({"t0": np.zeros(100, "float32"), "t1": np.zeros(100, "float32")}, tmp_path, max_shard_size=500)
    index = tmp_path / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {"t0": "model-00002-of-00002.safetensors", "t1": "model-00001-of-00002.safetensors"}
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match="00001-of-00002.safetensors: holds tensor 't0', which the index does not"):
        load_state_dict(tmp_path)


def test_resaving_replaces_the_previous_weight_files(tmp_path):
    save_state_dict({f"t{i}": np.zeros(100, "float32") for i in range(3)}, tmp_path, max_shard_size=500)
    save_state_dict(STATE, tmp_path, safe_serialization=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_state.pdparams"]


def test_bf16_survives_safetensors_and_pdparams(tmp_path):
    t = paddle.to_tensor([1.0, -2.5, 3.25]).astype("bfloat16")
    for safe in (True, False):
        save_state_dict({"w": t}, tmp_path / str(safe), safe_serialization=safe)
        loaded = to_paddle(load_state_dict(tmp_path / str(safe))["w"], paddle.bfloat16)
        assert loaded.dtype == paddle.bfloat16 and loaded.astype("float32").tolist() == [1.0, -2.5, 3.25]


def test_interrupted_write_leaves_nothing(tmp_path):
    target = tmp_path / "model.safetensors"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            open(tmp, "wb").write(b"half")
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_appears_only_when_complete(tmp_path):
    target = tmp_path / "out" / "model"
    with atomic_dir(target) as tmp:
        (tmp / "config.json").write_text("{}")
        assert tmp.parent == target.parent and not target.exists()
    assert [p.name for p in target.iterdir()] == ["config.json"]
    assert [p.name for p in target.parent.iterdir()] == ["model"]
    with pytest.raises(FileExistsError, match="model exists; give a new directory"):
        with atomic_dir(target):
            pass
    assert [p.name for p in target.iterdir()] == ["config.json"]


def test_interrupted_directory_write_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(tmp_path / "model") as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_shape_mismatch_names_the_tensor_and_both_shapes(tmp_path):
    tiny_llama_dir(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["intermediate_size"] = 32
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"tensor llama.layers.0.mlp.gate_proj.weight has shape \[16, 24\], the config expects \[16, 32\]"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_missing_and_unexpected_keys_are_reported(tmp_path):
    tiny_llama_dir(tmp_path)
    state = load_state_dict(tmp_path)
    state["extra.weight"] = np.zeros(3, "float32")
    del state["llama.norm.weight"]
    save_state_dict(state, tmp_path)
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): llama.norm.weight; unexpected 1 tensor\(s\): extra.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    state["llama.norm.weight"] = np.ones(16, "float32")
    save_state_dict(state, tmp_path)
    with pytest.warns(UserWarning, match="unexpected 1 tensor"):
        AutoModelForCausalLM.from_pretrained(tmp_path, strict=False)


def test_tied_head_that_differs_from_the_embedding_is_refused(tmp_path):
    config = LlamaConfig(vocab_size=50, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                         num_attention_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(tmp_path)
    state = load_state_dict(tmp_path)
    state["lm_head.weight"] = np.asarray(state["lm_head.weight"]) + 1
    save_state_dict(state, tmp_path)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from llama.embed_tokens.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path)


def test_an_unknown_dtype_is_a_clear_error(tmp_path):
    tiny_llama_dir(tmp_path)
    with pytest.raises(ValueError, match="dtype must be float32, float16 or bfloat16, not 'int8'"):
        AutoModelForCausalLM.from_pretrained(tmp_path, dtype="int8")


def test_half_precision_checkpoint_loads_as_float32_on_cpu(tmp_path):
    model = tiny_llama_dir(tmp_path)
    state = {k: v.astype("bfloat16") for k, v in model.state_dict().items()}
    save_state_dict(state, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "dtype": "bfloat16"}))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.dtype_name == "float32" and loaded.config.dtype == "float32"
    ref = model.llama.norm.weight.astype("bfloat16").astype("float32").numpy()
    np.testing.assert_array_equal(loaded.llama.norm.weight.numpy(), ref)


def test_parse_size():
    assert parse_size("5GB") == 5_000_000_000 and parse_size("2GiB") == 2 * 1024**3 and parse_size(7) == 7
    with pytest.raises(ValueError, match="cannot read size"):
        parse_size("lots")


def test_our_safetensors_are_what_the_safetensors_package_reads(tmp_path):
    from safetensors import safe_open

    state = {"f32": np.arange(6, dtype="float32").reshape(2, 3), "f16": np.ones(3, "float16"),
             "i64": np.arange(4), "bf16": paddle.to_tensor([1.0, -2.5]).astype("bfloat16")}
    save_state_dict(state, tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), framework="paddle") as f:
        assert f.metadata() == {"format": "np"}
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert got["bf16"].dtype == paddle.bfloat16 and got["bf16"].astype("float32").tolist() == [1.0, -2.5]
    for k in ("f32", "f16", "i64"):
        assert got[k].numpy().dtype == state[k].dtype
        np.testing.assert_array_equal(got[k].numpy(), state[k])


def test_we_read_what_the_safetensors_package_writes(tmp_path):
    from safetensors.paddle import save_file

    tensors = {"w": paddle.randn([3, 5]), "b": paddle.to_tensor([0.5, 2.0]).astype("bfloat16"), "n": paddle.arange(3)}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    loaded = load_state_dict(tmp_path)
    np.testing.assert_array_equal(loaded["w"], tensors["w"].numpy())
    assert to_paddle(loaded["b"], paddle.float32).tolist() == [0.5, 2.0]
    assert loaded["n"].tolist() == [0, 1, 2]
