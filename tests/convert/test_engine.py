"""End to end: HF checkpoints made by transformers -> `paddle-belle convert` -> our model and PaddleNLP's classes
give the reference logits -> `--to hf` -> transformers gives them again."""
import json
import sys

import numpy as np
import paddle
import paddlenlp.transformers as pnlp
import pytest
import torch
import transformers
from reference import TEXT, bloom_tokenizer_json, llama3_style_tokenizer_json, max_rel_diff

from paddle_belle import AutoModelForCausalLM, AutoTokenizer
from paddle_belle.cli import main
from paddle_belle.convert import engine

IDS = np.random.default_rng(5).integers(4, 101, (2, 9))
TOL = 1e-4


def hf_bloom(std=0.5, **kw):
    torch.manual_seed(0)
    config = transformers.BloomConfig(vocab_size=101, hidden_size=24, n_layer=2, n_head=6, initializer_range=std, **kw)
    return transformers.BloomForCausalLM(config).eval()


def hf_llama(std=0.5, **kw):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(**{"vocab_size": 101, "hidden_size": 32, "intermediate_size": 48,
                                         "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                                         "initializer_range": std, **kw})
    return transformers.LlamaForCausalLM(config).eval()


def hf_logits(model):
    with torch.no_grad():
        return model(torch.tensor(IDS)).logits.numpy()


def paddle_logits(model):
    with paddle.no_grad():
        ids = paddle.to_tensor(IDS)
        return model(ids, attention_mask=paddle.ones_like(ids), return_dict=True).logits.numpy()


def cli(*args):
    return main(["convert", *map(str, args)])


def round_trip(hf, tmp_path, paddlenlp_cls, *extra):
    """HF dir -> Paddle dir -> HF dir; every model on the way must give the HF logits."""
    ref = hf_logits(hf)
    assert cli(tmp_path / "hf", tmp_path / "pd", *extra) == 0
    assert max_rel_diff(paddle_logits(AutoModelForCausalLM.from_pretrained(tmp_path / "pd")), ref) <= TOL
    assert max_rel_diff(paddle_logits(paddlenlp_cls.from_pretrained(tmp_path / "pd").eval()), ref) <= TOL
    assert cli(tmp_path / "pd", tmp_path / "back", "--to", "hf") == 0
    back = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "back").eval()
    assert max_rel_diff(hf_logits(back), ref) <= TOL
    return ref


def test_bloom_sharded_safetensors_with_tokenizer(tmp_path):
    hf = hf_bloom()
    hf.save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").is_file()
    hf_tok = bloom_tokenizer_json(tmp_path / "hf")
    round_trip(hf, tmp_path, pnlp.BloomForCausalLM, "--max-shard-size", "30KB")
    pd = tmp_path / "pd"
    assert (pd / "model.safetensors.index.json").is_file()
    config = json.loads((pd / "config.json").read_text())
    assert (config["n_layer"], config["n_head"], config["architectures"]) == (2, 6, ["BloomForCausalLM"])
    assert {"vocab.json", "merges.txt", "tokenizer_config.json", "special_tokens_map.json", "chat_template.json"} <= {
        p.name for p in pd.iterdir()}
    assert (pd / "merges.txt").read_text().startswith("#version")
    assert pnlp.BloomTokenizer.from_pretrained(pd)("你好").input_ids  # PaddleNLP's own class reads the files
    assert AutoTokenizer.from_pretrained(pd)(TEXT)["input_ids"] == hf_tok(TEXT)["input_ids"]
    back_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back_tok(TEXT)["input_ids"] == hf_tok(TEXT)["input_ids"]
    chat = json.loads((pd / "chat_template.json").read_text())
    assert chat["query"] == "Human: {{query}}\n\nAssistant:"


def test_bloom_bin_without_transformer_prefix(tmp_path):
    hf = hf_bloom(apply_residual_connection_post_layernorm=True)
    hf.transformer.save_pretrained(tmp_path / "hf", safe_serialization=False, max_shard_size="20KB")  # BloomModel
    assert (tmp_path / "hf" / "pytorch_model.bin.index.json").is_file()
    assert not any(k.startswith("transformer.") for k in json.loads(
        (tmp_path / "hf" / "pytorch_model.bin.index.json").read_text())["weight_map"])
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "architectures": ["BloomForCausalLM"]}))
    round_trip(hf, tmp_path, pnlp.BloomForCausalLM, "--format", "pdparams")
    assert (tmp_path / "pd" / "model_state.pdparams").is_file()


def test_llama_gqa_untied(tmp_path):
    hf = hf_llama()
    hf.save_pretrained(tmp_path / "hf")
    round_trip(hf, tmp_path, pnlp.LlamaForCausalLM)
    assert "lm_head.weight" in json.loads((tmp_path / "back" / "model.safetensors").read_bytes()[8:].split(b"}}")[0] + b"}}")


def test_llama_tied_head(tmp_path):
    hf = hf_llama(tie_word_embeddings=True)
    hf.save_pretrained(tmp_path / "hf")  # transformers drops the tied head from the file
    round_trip(hf, tmp_path, pnlp.LlamaForCausalLM)  # PaddleNLP (which ignores tying) needs the written head


def test_dtype_casts(tmp_path):
    hf = hf_llama()
    hf.save_pretrained(tmp_path / "hf")
    assert cli(tmp_path / "hf", tmp_path / "bf16", "--dtype", "bfloat16") == 0
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"
    ours = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16")  # widened to float32 on CPU
    ref = hf.to(torch.bfloat16).float()
    np.testing.assert_array_equal(ours.llama.norm.weight.numpy(), ref.model.norm.weight.detach().numpy())
    w = ref.model.layers[0].mlp.up_proj.weight.detach().numpy().T
    np.testing.assert_array_equal(ours.llama.layers[0].mlp.up_proj.weight.numpy(), w)


def test_verify_prints_the_logit_difference(tmp_path, capsys):
    hf_llama().save_pretrained(tmp_path / "hf")
    assert cli(tmp_path / "hf", tmp_path / "pd", "--verify") == 0
    diff = float(capsys.readouterr().out.split("max |Δlogits| = ")[1].split()[0])
    assert diff <= TOL


# ---------------------------------------------------------------------------------------------- bad input
def only_dst_candidates(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir() if p.name != "hf")


def test_missing_shard_is_an_error(tmp_path, capsys):
    hf_bloom().save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    next((tmp_path / "hf").glob("model-00002-*")).unlink()
    assert cli(tmp_path / "hf", tmp_path / "pd") == 1
    assert "names shard model-00002-of-" in capsys.readouterr().err
    assert only_dst_candidates(tmp_path) == []


def test_truncated_safetensors_is_an_error(tmp_path, capsys):
    hf_llama().save_pretrained(tmp_path / "hf")
    f = tmp_path / "hf" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    assert cli(tmp_path / "hf", tmp_path / "pd") == 1
    err = capsys.readouterr().err.strip()
    assert "model.safetensors: truncated or padded .safetensors file" in err and "\n" not in err
    assert only_dst_candidates(tmp_path) == []


def test_wrong_shape_is_an_error(tmp_path, capsys):
    hf_llama().save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "intermediate_size": 64}))
    assert cli(tmp_path / "hf", tmp_path / "pd") == 1
    err = capsys.readouterr().err
    assert "model.safetensors: tensor llama.layers.0.mlp.down_proj.weight has shape [48, 32], the config implies [64, 32]" in err


def test_interrupted_conversion_leaves_nothing(tmp_path, monkeypatch):
    hf_bloom().save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    calls = []
    real_read = engine.Reader.read

    def flaky(self, t):
        calls.append(t.name)
        if len(calls) == 10:
            raise KeyboardInterrupt  # ^C in the middle of the third shard or so
        return real_read(self, t)

    monkeypatch.setattr(engine.Reader, "read", flaky)
    with pytest.raises(KeyboardInterrupt):
        engine.convert(tmp_path / "hf", tmp_path / "pd", max_shard_size="20KB")
    assert only_dst_candidates(tmp_path) == []


def test_differing_tied_head_is_refused(tmp_path, capsys):
    hf = hf_bloom()
    hf.lm_head.weight = torch.nn.Parameter(hf.lm_head.weight.detach() + 1)  # untie and change
    hf.save_pretrained(tmp_path / "hf", safe_serialization=False)
    assert cli(tmp_path / "hf", tmp_path / "pd") == 1
    assert "lm_head.weight differs from transformer.word_embeddings.weight" in capsys.readouterr().err
    assert only_dst_candidates(tmp_path) == []


def test_src_is_never_written_and_dst_must_be_new(tmp_path, capsys):
    hf_llama().save_pretrained(tmp_path / "hf")
    before = sorted(p.name for p in (tmp_path / "hf").iterdir())
    assert cli(tmp_path / "hf", tmp_path / "hf" / "inside") == 1
    assert "is inside" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    assert cli(tmp_path / "hf", tmp_path / "taken") == 1
    assert "exists" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == before


def test_verify_without_torch_fails_before_writing(tmp_path, capsys, monkeypatch):
    """It used to write all of DST and then exit 1, so that the rerun after installing torch failed with "exists"."""
    hf_bloom().save_pretrained(tmp_path / "hf")
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` now raises ImportError
    assert cli(tmp_path / "hf", tmp_path / "pd", "--verify") == 1
    assert capsys.readouterr().err.strip() == ("paddle-belle convert: error: --verify needs torch and transformers: "
                                               "pip install 'paddle_belle[test]'")
    assert only_dst_candidates(tmp_path) == []


@pytest.mark.parametrize("safe", [True, False])
def test_a_paddle_checkpoint_is_recognised(tmp_path, capsys, safe):
    hf_bloom().save_pretrained(tmp_path / "hf")
    assert cli(tmp_path / "hf", tmp_path / "pd", "--format", "safetensors" if safe else "pdparams") == 0
    assert cli(tmp_path / "pd", tmp_path / "again") == 1
    assert capsys.readouterr().err.strip() == (f"paddle-belle convert: error: {tmp_path / 'pd'} is already in "
                                               "PaddleNLP's layout (use --to hf to go the other way)")
    assert not (tmp_path / "again").exists()


def test_llama_with_a_tokenizer_json_only_carries_it_both_ways(tmp_path):
    """SmolLM2 / Llama-3 style: a byte-level BPE tokenizer.json and no sentencepiece model."""
    hf_tok = llama3_style_tokenizer_json(tmp_path / "hf")
    hf_llama(vocab_size=len(hf_tok)).save_pretrained(tmp_path / "hf")
    assert cli(tmp_path / "hf", tmp_path / "pd") == 0
    assert cli(tmp_path / "pd", tmp_path / "back", "--to", "hf") == 0
    for directory in ("pd", "back"):
        assert (tmp_path / directory / "tokenizer.json").read_bytes() == (tmp_path / "hf" / "tokenizer.json").read_bytes()
    assert AutoTokenizer.from_pretrained(tmp_path / "pd")(TEXT)["input_ids"] == hf_tok(TEXT)["input_ids"]
    back = transformers.AutoTokenizer.from_pretrained(tmp_path / "back")
    assert back(TEXT)["input_ids"] == hf_tok(TEXT)["input_ids"] and back.eos_token == "<|im_end|>"
