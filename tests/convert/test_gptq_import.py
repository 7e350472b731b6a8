"""BELLE's GPTQ files -> our quantized checkpoint. The files are made here by an independent re-statement of
GPTQ-for-Bloom's quantizer and ``QuantLinear.pack`` (BELLE models/gptq/quant.py) over a transformers model, saved by
real ``torch.save`` and ``safetensors.torch``; the import must give exactly their dequantized weights, and our model
the logits of transformers' model holding those weights."""
# Named apart from tests/quant/test_gptq.py: pytest (rootdir import mode) needs unique test module basenames.
import json

import numpy as np
import paddle
import pytest
import safetensors.torch
import torch
import transformers
from reference import bloom_tokenizer_json, max_rel_diff

from paddle_belle import AutoModelForCausalLM, AutoTokenizer
from paddle_belle.chat import generate_batch
from paddle_belle.cards.files import checkpoint_tensors, weight_files
from paddle_belle.cli import main
from paddle_belle.convert.gptq import unpack_words
from paddle_belle.quant import QuantConfig, QuantLinear

IDS = np.random.default_rng(3).integers(4, 300, (2, 7))


# ------------------------------------------------------------------- the GPTQ-for-Bloom side (test's own code)
def quantize_groups(w: torch.Tensor, bits: int, group: int, sym: bool, order=None):
    """GPTQ-for-LLaMa's min-max grid per group of input columns (Quantizer.find_params, perchannel, mse off) applied
    round-to-nearest: integer codes q [out, in], scales and zeros [groups, out]. ``order``: act-order's column
    order (groups are formed in that order, g_idx says which group each column fell into)."""
    maxq = 2 ** bits - 1
    cols = torch.arange(w.shape[1]) if order is None else order
    q = torch.zeros(w.shape, dtype=torch.int64)
    scales, zeros, g_idx = [], [], torch.zeros(w.shape[1], dtype=torch.int32)
    for g, start in enumerate(range(0, w.shape[1], group)):
        idx = cols[start : start + group]
        block = w[:, idx]
        lo = torch.minimum(block.min(1).values, torch.zeros(()))
        hi = torch.maximum(block.max(1).values, torch.zeros(()))
        if sym:
            hi = torch.maximum(lo.abs(), hi)
            lo = torch.where(lo < 0, -hi, lo)
        both = (lo == 0) & (hi == 0)
        lo[both], hi[both] = -1.0, 1.0
        scale = (hi - lo) / maxq
        zero = torch.full_like(scale, (maxq + 1) / 2) if sym else torch.round(-lo / scale)
        q[:, idx] = torch.clamp(torch.round(block / scale[:, None]) + zero[:, None], 0, maxq).long()
        scales.append(scale)
        zeros.append(zero)
        g_idx[idx] = g
    return q, torch.stack(scales), torch.stack(zeros).long(), g_idx


def pack_along(values: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """QuantLinear.pack's packing for 2/4/8 bits: 32 // bits values per uint32 word, value j of a word at bit
    bits * j; zeros - 1 = -1 (a zero of 0) wraps to all ones, as numpy's uint32 cast does there."""
    v = np.moveaxis(values.astype(np.int64), axis, 0) & 0xFFFFFFFF
    per = 32 // bits
    words = np.zeros((v.shape[0] // per, *v.shape[1:]), np.uint64)
    for j in range(per):
        words |= (v[j::per].astype(np.uint64) << np.uint64(bits * j)) & np.uint64(0xFFFFFFFF)
    return np.moveaxis(words.astype(np.uint32).view(np.int32), 0, axis)


def kernel_zeros(qzeros: np.ndarray, bits: int) -> np.ndarray:
    """The zero points BELLE's CUDA kernels use (quant_cuda_kernel.cu: ``((zeros[g, o / per] >> shift) & mask) + 1``)
    [groups, out], read one by one."""
    per, mask = 32 // bits, (1 << bits) - 1
    words = qzeros.view(np.uint32)
    return np.array([[((int(words[g, o // per]) >> (bits * (o % per))) & mask) + 1
                      for o in range(words.shape[1] * per)] for g in range(words.shape[0])])


def gptq_file(hf, bits, group, path, sym=False, act_order=False, seed=0, zero_of_zero=False):
    """Quantize every decoder-block Linear of ``hf`` as GPTQ-for-Bloom/LLaMa's save does and write the state dict
    to ``path`` (.pt by torch.save, else safetensors). Returns {HF stem: the weight [out, in] BELLE's kernels compute
    from the file}. ``zero_of_zero``: make one group's zero point 0 (all its weights >= 0), which pack() stores as -1."""
    state = hf.state_dict()  # an OrderedDict with its _metadata attribute, pickled as BELLE's torch.save did
    dequantized = {}
    gen = torch.Generator().manual_seed(seed)
    for name, module in hf.named_modules():
        if not isinstance(module, torch.nn.Linear) or name == "lm_head":
            continue
        w = module.weight.detach().float().clone()
        if zero_of_zero:
            w[2, :group] = w[2, :group].abs()  # output channel 2, first group
        order = torch.randperm(w.shape[1], generator=gen) if act_order else None
        q, scales, zeros, g_idx = quantize_groups(w, bits, group, sym, order)
        group_of = g_idx.long()
        qzeros = pack_along(zeros.numpy() - 1, bits, 1)
        used = torch.from_numpy(kernel_zeros(qzeros, bits))
        assert zero_of_zero != torch.equal(used, zeros)  # a zero of 0 and only that makes the kernels differ
        dequantized[name] = (scales[group_of].T * (q - used[group_of].T)).numpy()
        del state[f"{name}.weight"]
        state[f"{name}.qweight"] = torch.from_numpy(pack_along(q.T.numpy(), bits, 0))
        state[f"{name}.qzeros"] = torch.from_numpy(qzeros)
        state[f"{name}.scales"] = scales.float()
        state[f"{name}.bias"] = module.bias.detach().clone() if module.bias is not None else torch.zeros(w.shape[0])
        if act_order or seed % 2:  # later GPTQ-for-LLaMa versions save g_idx, trivial without act-order
            state[f"{name}.g_idx"] = g_idx
    if str(path).endswith(".pt"):
        torch.save(state, path)  # BLOOM's lm_head.weight stays the embedding's storage, as in BELLE's files
    else:
        safetensors.torch.save_file({k: v.clone().contiguous() for k, v in state.items()}, str(path))
    return dequantized


def with_weights(hf, dequantized):
    """``hf`` with its Linear weights replaced by the dequantized ones: the model BELLE's kernels compute."""
    with torch.no_grad():
        for name, w in dequantized.items():
            hf.get_submodule(name).weight.copy_(torch.from_numpy(w))
    return hf


@pytest.fixture(autouse=True)
def float_activations(monkeypatch):
    """Our logits are checked against transformers holding the exact dequantized weights (to 1e-4): float
    activations, not the int8 ones 4- and 8-bit layers use by default (tests/kernels/test_cpu_matmul.py)."""
    monkeypatch.setenv("PADDLE_BELLE_INT8_ACTIVATIONS", "0")


def hf_logits(hf):
    with torch.no_grad():
        return hf(torch.tensor(IDS)).logits.numpy()


def our_layer(model, stem):
    return model.get_sublayer(stem.replace("transformer.", "bloom.").replace("model.", "llama."))


# ----------------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_unpack_reads_codes_as_one_bit_stream_per_run_of_words(bits):
    codes = np.random.default_rng(bits).integers(0, 2 ** bits, (64, 5))
    words = []  # the test's own packer: each column's 32 codes of a run as one Python integer, cut into words
    for run in range(codes.shape[0] // 32):
        stream = [sum(int(c) << (bits * j) for j, c in enumerate(codes[run * 32 : (run + 1) * 32, col]))
                  for col in range(codes.shape[1])]
        words += [[(s >> (32 * k)) & 0xFFFFFFFF for s in stream] for k in range(bits)]
    packed = np.array(words, dtype=np.uint32).view(np.int32)
    np.testing.assert_array_equal(unpack_words(packed, bits, axis=0), codes)
    np.testing.assert_array_equal(unpack_words(packed.T, bits, axis=1), codes.T)


@pytest.fixture(scope="module")
def bloom_dir(tmp_path_factory):
    """BELLE-7B-gptq's layout: config.json and the tokenizer of the float model beside the GPTQ files."""
    directory = tmp_path_factory.mktemp("gptq") / "BELLE-7B-gptq"
    tokenizer = bloom_tokenizer_json(directory)
    torch.manual_seed(0)
    hf = transformers.BloomForCausalLM(transformers.BloomConfig(
        vocab_size=len(tokenizer), hidden_size=256, n_layer=2, n_head=4, initializer_range=0.1)).eval()
    hf.config.save_pretrained(directory)
    return directory, hf


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_belle_bloom_gptq_file_imports_to_its_exact_dequantization(bloom_dir, tmp_path, bits, suffix, capsys):
    directory, hf = bloom_dir
    path = directory / f"bloom7b-2m-{bits}bit-128g{suffix}"
    dequantized = gptq_file(hf, bits, 128, path, seed=bits)
    out = tmp_path / "imported"
    assert main(["convert", "--from-gptq", str(path), str(out)]) == 0  # config + tokenizer from the file's directory
    assert f"wrote {out}" in capsys.readouterr().out
    quant = json.loads((out / "config.json").read_text())["quantization_config"]
    assert (quant["bits"], quant["group_size"], quant["sym"], quant["act_order"]) == (bits, 128, False, False)

    # The model card's files table (cards/files.py) predicts this file byte for byte.
    config = json.loads((out / "config.json").read_text())
    predicted = weight_files(checkpoint_tensors("bloom", config, "float32", QuantConfig.from_dict(quant)))
    assert predicted == [("model.safetensors", (out / "model.safetensors").stat().st_size)]

    model = AutoModelForCausalLM.from_pretrained(out)
    for stem, w in dequantized.items():
        layer = our_layer(model, stem)
        assert isinstance(layer, QuantLinear)
        np.testing.assert_array_equal(layer.weight().numpy(), w.T)  # bit for bit: repacked, not re-quantized
    reference = hf_logits(_copy_with(hf, dequantized))
    with paddle.no_grad():
        ours = model(paddle.to_tensor(IDS)).logits.numpy()
    assert max_rel_diff(ours, reference) <= 1e-4
    reply = generate_batch(model, AutoTokenizer.from_pretrained(out), ["你好"], preset="greedy", max_new_tokens=4)
    assert isinstance(reply[0], str)


def _copy_with(hf, dequantized):
    copy = type(hf)(hf.config).eval()
    copy.load_state_dict(hf.state_dict())
    return with_weights(copy, dequantized)


@pytest.mark.parametrize("act_order", [False, True])
def test_gptq_for_llama_symmetric_file_with_g_idx_and_zero_biases(tmp_path, act_order):
    from reference import tiny_llama_dir

    directory = tmp_path / "llama-gptq"
    tiny_llama_dir(directory)  # for its real sentencepiece tokenizer; the weights come from transformers below
    torch.manual_seed(1)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=400, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        initializer_range=0.1)).eval()
    for f in directory.glob("model*"):
        f.unlink()
    hf.config.save_pretrained(directory)
    path = directory / "llama7b-2m-4bit-128g.pt"
    dequantized = gptq_file(hf, 4, 128, path, sym=True, act_order=act_order, seed=1)
    out = tmp_path / "imported"
    assert main(["convert", "--from-gptq", str(path), str(out), "--config", str(directory)]) == 0
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.quantization.sym and model.quantization.act_order == act_order
    for stem, w in dequantized.items():
        np.testing.assert_array_equal(our_layer(model, stem).weight().numpy(), w.T)
    with paddle.no_grad():
        ours = model(paddle.to_tensor(IDS % 400)).logits.numpy()
    with torch.no_grad():
        reference = _copy_with(hf, dequantized)(torch.tensor(IDS % 400)).logits.numpy()
    assert max_rel_diff(ours, reference) <= 1e-4


@pytest.mark.parametrize("sharded", [False, True], ids=["one-file", "sharded"])
def test_an_autogptq_directory_says_how_to_import_it_and_then_imports(tmp_path, capsys, sharded):
    """A checkpoint as AutoGPTQ saves it for transformers (model.safetensors in GPTQ-for-LLaMa's packing beside a
    config.json with transformers' quantization_config): loading it says, in one line, the command that imports it,
    and that command gives its exact dequantized weights; the v2 format (zero points stored without the minus one)
    and other methods are refused in one line."""
    from reference import tiny_llama_dir

    directory = tmp_path / "llama-autogptq"
    tiny_llama_dir(directory)
    torch.manual_seed(2)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=400, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4)).eval()
    for f in directory.glob("model*"):
        f.unlink()
    hf.config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 128, "desc_act": False,
                                     "sym": True, "checkpoint_format": "gptq"}
    hf.config.save_pretrained(directory)
    dequantized = gptq_file(hf, 4, 128, directory / "model.safetensors", sym=True, seed=2)
    weights = directory / "model.safetensors"
    if sharded:  # as transformers' save_pretrained shards it: two files and the index naming each tensor's
        tensors = safetensors.torch.load_file(weights)
        weights.unlink()
        names, weight_map = sorted(tensors), {}
        for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :])):
            shard = f"model-0000{i + 1}-of-00002.safetensors"
            safetensors.torch.save_file({n: tensors[n] for n in part}, directory / shard, metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, shard))
        weights = directory / "model.safetensors.index.json"
        weights.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    with pytest.raises(ValueError) as raised:
        AutoModelForCausalLM.from_pretrained(directory)
    message = str(raised.value)
    assert "\n" not in message and f"paddle-belle convert --from-gptq {weights} OUT_DIR" in message
    assert main(message.split("paddle-belle ", 1)[1].replace("OUT_DIR", str(tmp_path / "out")).split()) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    for stem, w in dequantized.items():
        np.testing.assert_array_equal(our_layer(model, stem).weight().numpy(), w.T)

    config = json.loads((directory / "config.json").read_text())
    for change in ({"checkpoint_format": "gptq_v2"}, {"quant_method": "awq"}):
        (directory / "config.json").write_text(json.dumps(
            {**config, "quantization_config": {**config["quantization_config"], **change}}))
        capsys.readouterr()
        assert main(["convert", "--from-gptq", str(weights), str(tmp_path / "v2")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "config.json" in err and not (tmp_path / "v2").exists(), err


def test_a_file_that_does_not_fit_the_config_fails_in_one_line_leaving_nothing(bloom_dir, tmp_path, capsys):
    directory, hf = bloom_dir
    path = tmp_path / "bloom7b-2m-4bit-128g.pt"
    gptq_file(hf, 4, 128, path)
    other = tmp_path / "other-config"
    transformers.BloomConfig(vocab_size=hf.config.vocab_size, hidden_size=512, n_layer=2, n_head=4).save_pretrained(other)
    assert main(["convert", "--from-gptq", str(path), str(tmp_path / "out"), "--config", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(path) in err and "qweight" in err, err
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


def test_a_zero_point_of_zero_reads_as_belles_kernels_read_it(bloom_dir, tmp_path, capsys):
    """pack() stores zero - 1 = -1 as all ones, which also sets the higher zeros of its word: the kernels then use
    2^bits there. The 4-bit import reproduces exactly that; at 8 bits 256 fits no uint8, so it is refused by name."""
    directory, hf = bloom_dir
    path = directory / "zero-4bit.pt"
    dequantized = gptq_file(hf, 4, 128, path, zero_of_zero=True)
    assert main(["convert", "--from-gptq", str(path), str(tmp_path / "q4")]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "q4")
    for stem, w in dequantized.items():
        np.testing.assert_array_equal(our_layer(model, stem).weight().numpy(), w.T)
    path = directory / "zero-8bit.pt"
    gptq_file(hf, 8, 128, path, zero_of_zero=True)
    assert main(["convert", "--from-gptq", str(path), str(tmp_path / "q8")]) == 1
    assert "qzeros holds zero point 256" in capsys.readouterr().err and not (tmp_path / "q8").exists()
