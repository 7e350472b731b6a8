"""from_pretrained on HF-layout directories as they are: transformers' save_pretrained output and our own
`convert --to hf` output load with the logits of the converted checkpoint; formats we do not read get a hint."""
import json

import numpy as np
import paddle
import pytest
import safetensors.numpy
import torch
from reference import bloom_tokenizer_json, max_rel_diff, tiny_bloom, tiny_llama

from paddle_belle import AutoModelForCausalLM
from paddle_belle.checkpoint import CheckpointError
from paddle_belle.cli import main

IDS = np.random.default_rng(3).integers(4, 101, (2, 11))


def hf_bloom(**kw):
    return tiny_bloom(n_head=6, std=0.5, **kw)[0]


def hf_llama(**kw):
    return tiny_llama(std=0.5, num_key_value_heads=2, **kw)[0]


def logits(model):
    if isinstance(model, torch.nn.Module):
        with torch.no_grad():
            return model(torch.tensor(IDS)).logits.numpy()
    with paddle.no_grad():
        return model(paddle.to_tensor(IDS)).logits.numpy()


CASES = {  # transformers' layouts: safetensors (sharded too) and pytorch_model.bin, tied and untied heads
    "bloom-sharded-safetensors": (hf_bloom, {"max_shard_size": "20KB"}),
    "bloom-bin": (hf_bloom, {"safe_serialization": False}),  # .bin keeps the tied lm_head.weight as well
    "llama-gqa-untied": (hf_llama, {}),
    "llama-tied-bin": (lambda: hf_llama(tie_word_embeddings=True), {"safe_serialization": False}),
}


@pytest.mark.parametrize("case", CASES)
def test_hf_directory_loads_as_it_is(tmp_path, case):
    make, save = CASES[case]
    hf = make()
    hf.save_pretrained(tmp_path / "hf", **save)
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    direct = logits(AutoModelForCausalLM.from_pretrained(tmp_path / "hf"))
    assert max_rel_diff(direct, logits(hf)) <= 1e-4
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "pd")]) == 0
    np.testing.assert_array_equal(direct, logits(AutoModelForCausalLM.from_pretrained(tmp_path / "pd")))
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before  # nothing written beside the source


@pytest.mark.parametrize("make", [hf_bloom, lambda: hf_llama(tie_word_embeddings=True)], ids=["bloom", "llama-tied"])
def test_our_convert_to_hf_output_loads(tmp_path, make):
    make().save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "pd"), "--dtype", "bfloat16"]) == 0
    assert main(["convert", str(tmp_path / "pd"), str(tmp_path / "back"), "--to", "hf"]) == 0
    converted = AutoModelForCausalLM.from_pretrained(tmp_path / "pd")
    np.testing.assert_array_equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "back")), logits(converted))


def test_a_cli_command_runs_on_an_hf_directory(tmp_path, capsys):
    hf_tok = bloom_tokenizer_json(tmp_path / "hf")
    hf_bloom(vocab_size=len(hf_tok)).save_pretrained(tmp_path / "hf")
    assert main(["convert", str(tmp_path / "hf"), str(tmp_path / "pd")]) == 0
    replies = []
    for model in ("hf", "pd"):
        capsys.readouterr()
        assert main(["generate", "--model", str(tmp_path / model), "--prompt", "你好", "--temperature", "0",
                     "--max-new-tokens", "8"]) == 0
        replies.append(capsys.readouterr().out)
    assert replies[0] == replies[1] and replies[0].strip()


def test_a_differing_tied_head_is_refused(tmp_path):
    hf = hf_bloom()
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1)  # untied and changed
    hf.save_pretrained(tmp_path / "hf", safe_serialization=False)
    with pytest.raises(CheckpointError, match="lm_head.weight differs from transformer.word_embeddings.weight"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "hf")


def test_formats_we_do_not_read_say_what_to_run(tmp_path, capsys):
    hf_llama().save_pretrained(tmp_path / "gguf")
    (tmp_path / "gguf" / "model.safetensors").unlink()
    (tmp_path / "gguf" / "tiny.Q4_0.gguf").write_bytes(b"GGUF")
    assert main(["generate", "--model", str(tmp_path / "gguf"), "--prompt", "hi"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"paddle-belle convert --from-gguf {tmp_path / 'gguf' / 'tiny.Q4_0.gguf'} OUT" in err

    hf_bloom().save_pretrained(tmp_path / "gptq")
    (tmp_path / "gptq" / "model.safetensors").rename(tmp_path / "gptq" / "bloom7b-2m-4bit-128g.pt")
    with pytest.raises(CheckpointError, match="holds bloom7b-2m-4bit-128g.pt, a GPTQ file, and no model.safetensors, "
                       ".*; convert it first: paddle-belle convert --from-gptq .*bloom7b-2m-4bit-128g.pt OUT"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "gptq")
    (tmp_path / "gptq" / "bloom7b-2m-4bit-128g.pt").rename(tmp_path / "gptq" / "weights.pt")
    with pytest.raises(CheckpointError, match="holds weights.pt, a format it does not know, and no "
                       "model.safetensors, .*; `paddle-belle convert --help` lists the formats it converts from"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "gptq")

    hf_llama().save_pretrained(tmp_path / "foreign")  # a tensor under a name no table of ours knows
    state = safetensors.numpy.load_file(tmp_path / "foreign" / "model.safetensors")
    state["model.layers.0.self_attn.qkv_proj.weight"] = state.pop("model.layers.0.self_attn.q_proj.weight")
    safetensors.numpy.save_file(state, tmp_path / "foreign" / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match="model.safetensors: tensor 'model.layers.0.self_attn.qkv_proj.weight' "
                       "is not a llama weight this converter knows"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "foreign")
