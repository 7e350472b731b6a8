"""`paddle-belle quantize`: end to end on a BELLE-like checkpoint (tiny BLOOM + real BPE tokenizer), bad inputs."""
import json
import subprocess
import sys

import numpy as np
import paddle
import pytest
from reference import CORPUS, tiny_belle_dir, tiny_llama, tiny_llama_dir

from paddle_belle import AutoModelForCausalLM, AutoTokenizer
from paddle_belle.chat import generate_batch
from paddle_belle.cli import main
from paddle_belle.quant import QuantConfig, QuantLinear
from paddle_belle.quant.estimate import BELLE_TABLE, GIB, estimate


@pytest.fixture(scope="module")
def belle(tmp_path_factory):
    directory = tmp_path_factory.mktemp("q") / "belle"
    tiny_belle_dir(directory)
    calib = directory.parent / "calib.txt"
    calib.write_text("\n".join(CORPUS), encoding="utf-8")
    return directory, calib


def test_quantize_gptq_then_load_and_chat(belle, tmp_path, capsys):
    model_dir, calib = belle
    out = tmp_path / "q4"
    assert main(["quantize", "--model", str(model_dir), "--method", "gptq", "--bits", "4", "--group-size", "16",
                 "--calib", str(calib), "--nsamples", "4", "--seqlen", "32", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "vocab.json", "merges.txt"}
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model.bloom.h[1].mlp.dense_4h_to_h, QuantLinear)
    assert model.quantization.act_order  # GPTQ's default
    tokenizer = AutoTokenizer.from_pretrained(out)
    reply = generate_batch(model, tokenizer, ["你好"], preset="greedy", max_new_tokens=8)
    assert isinstance(reply[0], str)
    # Quantizing a quantized checkpoint is refused.
    assert main(["quantize", "--model", str(out), "--method", "rtn", "--out", str(tmp_path / "again")]) == 1
    assert "already quantized" in capsys.readouterr().err


@pytest.mark.parametrize("args, act_order", [
    (["--method", "gptq"], True), (["--method", "gptq", "--act-order"], True),
    (["--method", "gptq", "--no-act-order"], False), (["--method", "rtn"], False), (["--method", "rtn", "--act-order"], True),
])
def test_act_order_is_gptqs_default(belle, tmp_path, args, act_order):
    model_dir, calib = belle
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(model_dir), "--calib", str(calib), "--nsamples", "2", "--seqlen", "16",
                 "--group-size", "16", "--out", str(out), *args]) == 0
    assert json.loads((out / "config.json").read_text())["quantization_config"]["act_order"] is act_order
    state = AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert ("bloom.h.0.mlp.dense_4h_to_h.perm" in state) is act_order


def test_rtn_needs_no_calibration(belle, tmp_path):
    model_dir, _ = belle
    assert main(["quantize", "--model", str(model_dir), "--method", "rtn", "--bits", "8", "--group-size", "-1",
                 "--asym", "--out", str(tmp_path / "q8")]) == 0
    float_model = AutoModelForCausalLM.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q8")
    ids = paddle.to_tensor([[5, 60, 7, 100, 3]])
    a, b = float_model(ids).logits.numpy(), model(ids).logits.numpy()
    # Loose: tiny_belle_dir's weights are drawn with std 0.5, which amplifies any perturbation layer by layer.
    assert np.abs(a - b).max() <= 0.1 * np.abs(a).max()


@pytest.mark.parametrize("args, message", [
    (["--nsamples", "64", "--seqlen", "2048"], "too short for nsamples × seqlen = 64 × 2048"),
    (["--group-size", "9"], "group_size must be -1 or a positive multiple of 2"),
    (["--calib", "/nonexistent/calib.txt"], "/nonexistent/calib.txt"),
])
def test_bad_inputs_fail_in_one_line_with_nothing_written(belle, tmp_path, capsys, args, message):
    model_dir, calib = belle
    base = ["quantize", "--model", str(model_dir), "--calib", str(calib), "--out", str(tmp_path / "out")]
    assert main(base + args) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_estimate_reproduces_belles_published_sizes(capsys):
    rows = {r.name: r.file_bytes / GIB for r in estimate("bloom", dict(vocab_size=250880, hidden_size=4096,
                                                                        n_layer=30, n_head=32))}
    for key, theirs in BELLE_TABLE.items():
        ours = rows.get(key, rows.get(f"{key} (rest fp32)"))
        assert abs(ours / theirs - 1) <= 0.03, (key, ours, theirs)
    assert rows["int4-g128 (rest fp16)"] < rows["int8-g128 (rest fp16)"] < rows["fp16"] < rows["fp32"]
    assert main(["quantize", "--model", "belle-7b-2m", "--estimate"]) == 0
    out = capsys.readouterr().out
    assert "int4-g128 (rest fp32)" in out and "BELLE's published" in out



def test_loading_a_quantized_checkpoint_imports_neither_paddleslim_nor_the_quantizer(belle, tmp_path):
    """The quantization runtime stands alone. (`import paddlenlp` itself imports part of PaddleSlim, through
    paddlenlp/quantization/qlora.py: those modules are there before we load anything, and are all that may be.)"""
    import subprocess
    import sys

    model_dir, _ = belle
    out = tmp_path / "q4"
    assert main(["quantize", "--model", str(model_dir), "--method", "rtn", "--out", str(out)]) == 0
    code = f"""import sys
import paddlenlp.transformers
def ours(): return {{m for m in sys.modules if m.split(".")[0] == "paddleslim" or m.startswith("paddle_belle.quant")}}
before = ours()
from paddle_belle import AutoModelForCausalLM
assert AutoModelForCausalLM.from_pretrained({str(out)!r}).quantization is not None
print(sorted(ours() - before))"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip().splitlines()[-1] == str(sorted(["paddle_belle.quant", "paddle_belle.quant.format",
                                                              "paddle_belle.quant.linear"]))


def _tied_llama_fp16(directory):
    """A tied LLaMA stored in float16, with PaddleNLP's copy of the head (the embedding transposed)."""
    from paddle_belle import LlamaConfig, LlamaForCausalLM
    from paddle_belle.checkpoint import load_state_dict, save_state_dict, write_json

    paddle.seed(1)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                         num_attention_heads=4, tie_word_embeddings=True, initializer_range=0.5))
    model.save_pretrained(directory)
    state = {k: v.astype(np.float16) for k, v in load_state_dict(directory).items()}
    save_state_dict(state, directory)
    write_json(directory / "config.json", {**json.loads((directory / "config.json").read_text()), "dtype": "float16"})


@pytest.mark.parametrize("source, config", [
    ("bloom", QuantConfig(bits=4, group_size=16, method="rtn")),  # the token table int8, as by default
    ("bloom", QuantConfig(bits=8, group_size=-1, method="rtn", sym=False, embedding="int4")),
    ("llama", QuantConfig(bits=4, group_size=24, method="rtn", act_order=True, quantize_lm_head=True)),
    ("llama", QuantConfig(bits=4, group_size=16, method="rtn", embedding="int4")),  # the separate head int4 too
    ("tied-llama-fp16", QuantConfig(bits=4, group_size=16, method="rtn", sym=False, embedding="keep")),
    ("tied-llama-fp16", QuantConfig(bits=8, group_size=16, method="rtn")),
])
def test_streaming_rtn_writes_what_quantizing_the_loaded_model_writes(source, config, tmp_path):
    from paddle_belle.checkpoint import load_state_dict, read_config
    from paddle_belle.quant.quantize import quantize_checkpoint, quantize_model

    src = tmp_path / "src"
    {"bloom": tiny_belle_dir, "llama": tiny_llama_dir, "tied-llama-fp16": _tied_llama_fp16}[source](src)
    quantize_checkpoint(src, tmp_path / "streamed", config)  # RTN: the model is never built
    model = quantize_model(AutoModelForCausalLM.from_pretrained(src), config)
    model.save_pretrained(tmp_path / "in-model")
    streamed, in_model = load_state_dict(tmp_path / "streamed"), load_state_dict(tmp_path / "in-model")
    assert streamed.keys() == in_model.keys()
    for name, array in streamed.items():  # packed tensors bit for bit; the rest keep the source's dtype
        assert np.array_equal(array.astype(in_model[name].dtype), in_model[name]), name
    assert {a.dtype for n, a in streamed.items() if n.endswith("norm.weight")} == \
        {np.dtype("float16" if source.endswith("fp16") else "float32")}
    assert read_config(tmp_path / "streamed")["quantization_config"] == config.to_dict()
    ids = paddle.to_tensor([[1, 5, 9, 2]])
    logits = AutoModelForCausalLM.from_pretrained(tmp_path / "streamed")(ids).logits.numpy()
    np.testing.assert_allclose(logits, model(ids).logits.numpy(), rtol=1e-5, atol=1e-5)


def test_streaming_rtn_names_a_tensor_of_the_wrong_shape(tmp_path):
    from paddle_belle.checkpoint import CheckpointError, load_state_dict, save_state_dict
    from paddle_belle.quant.quantize import quantize_checkpoint

    tiny_llama_dir(tmp_path / "src")
    state = load_state_dict(tmp_path / "src")
    state["llama.layers.1.mlp.up_proj.weight"] = state["llama.layers.1.mlp.up_proj.weight"][:, :5]
    save_state_dict(state, tmp_path / "src")
    with pytest.raises(CheckpointError, match=r"llama.layers.1.mlp.up_proj.weight has shape \[32, 5\]"):
        quantize_checkpoint(tmp_path / "src", tmp_path / "out", QuantConfig(bits=4, group_size=16, method="rtn"))
    assert not (tmp_path / "out").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]


def test_rtn_of_an_hf_directory_equals_rtn_of_its_conversion(tmp_path):
    from paddle_belle.checkpoint import load_state_dict

    hf, _ = tiny_llama(std=0.5, tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "pd")]) == 0
    for source in ("hf", "pd"):
        assert main(["quantize", "--model", str(tmp_path / source), "--method", "rtn", "--out",
                     str(tmp_path / f"{source}-rtn")]) == 0
    streamed, converted = load_state_dict(tmp_path / "hf-rtn"), load_state_dict(tmp_path / "pd-rtn")
    assert streamed.keys() == converted.keys() and all(np.array_equal(streamed[k], converted[k]) for k in streamed)
    ids = paddle.to_tensor([[1, 5, 9, 2]])
    logits = [AutoModelForCausalLM.from_pretrained(tmp_path / d)(ids).logits.numpy() for d in ("hf-rtn", "pd-rtn")]
    np.testing.assert_array_equal(*logits)


def test_a_packed_embedding_of_the_wrong_shape_is_named_in_one_line(belle, tmp_path, capsys):
    from paddle_belle.checkpoint import load_state_dict, save_state_dict

    model_dir, _ = belle
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(model_dir), "--method", "rtn", "--embedding", "int4", "--out", str(out)]) == 0
    state = load_state_dict(out)
    vocab = state["bloom.word_embeddings.qweight"].shape[1]
    assert state["bloom.word_embeddings.qweight"].shape == (16, vocab)  # hidden 32 at two codes a byte
    state["bloom.word_embeddings.qweight"] = state["bloom.word_embeddings.qweight"][:, :-1]
    save_state_dict(state, out)
    assert main(["generate", "--model", str(out), "--prompt", "你好", "--max-new-tokens", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert f"tensor bloom.word_embeddings.qweight has shape [16, {vocab - 1}], the config expects [16, {vocab}]" \
        in err and len(err.splitlines()) == 1, err


def test_gptq_keeps_a_float16_source_float16_where_it_does_not_quantize(belle, tmp_path):
    """Norms and biases (those of the quantized Linears too) stay float16: the float32 arithmetic of the CPU run
    does not leak into the checkpoint, which loads and computes what the same numbers stored in float32 do."""
    from paddle_belle.checkpoint import load_state_dict, read_config, save_state_dict, write_json

    model_dir, calib = belle
    src = tmp_path / "fp16"
    src.mkdir()
    for f in model_dir.iterdir():  # the tokenizer's files
        if f.is_file() and f.suffix != ".pdparams" and f.name != "config.json":
            (src / f.name).write_bytes(f.read_bytes())
    save_state_dict({k: v.astype(np.float16) for k, v in load_state_dict(model_dir).items()}, src)
    write_json(src / "config.json", {**read_config(model_dir), "dtype": "float16"})
    out = tmp_path / "q"
    assert main(["quantize", "--model", str(src), "--method", "gptq", "--bits", "4", "--group-size", "16",
                 "--calib", str(calib), "--nsamples", "2", "--seqlen", "16", "--out", str(out)]) == 0
    state = load_state_dict(out)
    floats = {n: a.dtype for n, a in state.items() if not n.endswith((".qweight", ".scales", ".perm"))}
    assert floats and set(floats.values()) == {np.dtype("float16")}, floats
    assert "bloom.h.0.mlp.dense_h_to_4h.bias" in floats and read_config(out)["dtype"] == "float16"
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype_name == "float32"  # on the CPU: float32 arithmetic over the float16-stored norms
    # The same numbers stored in float32 compute the same logits.
    save_state_dict({k: v.astype(np.float32) if k in floats else v for k, v in state.items()}, out)
    ids = paddle.to_tensor([[5, 60, 7, 100, 3]])
    np.testing.assert_array_equal(AutoModelForCausalLM.from_pretrained(out)(ids).logits.numpy(),
                                  model(ids).logits.numpy())


def peak_rss_growth(body: str) -> int:
    """How far the peak RSS of a new Python process rises over its RSS after importing Paddle and the quantizer, in
    running ``body``. The peak is the kernel's, as a small launcher gets it when reaping the process (os.wait4's
    ru_maxrss): reaped by this test process, ru_maxrss would start at this process's RSS (Linux keeps the peak from
    before exec, and a child starts as a copy of its parent)."""
    code = f"""import paddle, paddle_belle.quant.quantize
print("rss", next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1], flush=True)
{body}"""
    launch = """import os, subprocess, sys
proc = subprocess.Popen([sys.executable, "-c", sys.argv[1]])
_, status, usage = os.wait4(proc.pid, 0)
print("peak", os.waitstatus_to_exitcode(status), usage.ru_maxrss)"""
    run = subprocess.run([sys.executable, "-c", launch, code], capture_output=True, text=True, timeout=600)
    found = {line.split()[0]: line.split()[1:] for line in run.stdout.splitlines() if line.startswith(("rss", "peak"))}
    assert found.get("peak", ["?"])[0] == "0", run.stdout + run.stderr
    return (int(found["peak"][1]) - int(found["rss"][0])) * 1024  # both in KiB on Linux


def test_streaming_rtn_of_one_pdparams_file_holds_a_tensor_at_a_time(tmp_path):
    """A 304 MB float16 model_state.pdparams (one file, as belle-7b-2m's 15 GB one) is quantized with peak RSS
    growth well under its size: its tensors are read one at a time (checkpoint.open_pdparams)."""
    from paddle_belle import arch
    from paddle_belle.checkpoint import write_json, write_pdparams

    config = {"model_type": "bloom", "vocab_size": 4000, "hidden_size": 768, "n_layer": 21, "n_head": 12,
              "dtype": "float16"}
    rng = np.random.default_rng(0)
    pool = (rng.standard_normal(1 << 22, np.float32) * 0.02).astype(np.float16)
    shapes = arch.BLOOM.checkpoint_shapes(config)
    state = {name: np.resize(pool[i:], shape) for i, (name, shape) in enumerate(shapes.items())}
    src = tmp_path / "src"
    src.mkdir()
    write_pdparams(state, src / "model_state.pdparams")
    write_json(src / "config.json", config)
    size = (src / "model_state.pdparams").stat().st_size
    del state
    assert size > 300e6
    body = (f"paddle_belle.quant.quantize.quantize_checkpoint({str(src)!r}, {str(tmp_path / 'q4')!r}, "
            "paddle_belle.quant.QuantConfig(bits=4, group_size=128, method='rtn'))")
    growth = peak_rss_growth(body)
    assert growth < 150e6, f"peak RSS grew {growth / 1e6:.0f} MB quantizing a {size / 1e6:.0f} MB file"
    assert (tmp_path / "q4" / "model.safetensors").stat().st_size < size / 2
