"""Checkpoints move between PaddleNLP 2.8.1's own BLOOM/LLaMA classes and ours with identical logits."""
import numpy as np
import paddle
import paddlenlp.transformers as pnlp
import pytest
from reference import max_rel_diff

from paddle_belle import AutoModelForCausalLM, BloomConfig, LlamaConfig
from paddle_belle.models import MODELS

CONFIGS = {
    "bloom": dict(vocab_size=97, hidden_size=48, n_layer=2, n_head=6),
    "llama": dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2),
}
PADDLENLP = {
    "bloom": (pnlp.BloomConfig, pnlp.BloomForCausalLM),
    "llama": (pnlp.LlamaConfig, pnlp.LlamaForCausalLM),
}
IDS = np.random.default_rng(2).integers(4, 97, (2, 9))


def paddlenlp_model(model_type):
    config_cls, model_cls = PADDLENLP[model_type]
    model = model_cls(config_cls(**CONFIGS[model_type]))
    rng = np.random.default_rng(3)
    for p in model.parameters():  # PaddleNLP's BLOOM init zeroes Linear weights; use weights that tell layers apart
        p.set_value(rng.normal(0, 0.3, p.shape).astype("float32"))
    return model.eval()


def logits(model):
    with paddle.no_grad():
        ids = paddle.to_tensor(IDS)
        out = model(ids, attention_mask=paddle.ones_like(ids), return_dict=True)
    return out.logits.numpy()


@pytest.mark.parametrize("model_type", ["bloom", "llama"])
def test_paddlenlp_save_loads_into_ours(model_type, tmp_path):
    theirs = paddlenlp_model(model_type)
    theirs.save_pretrained(tmp_path)
    assert (tmp_path / "model_state.pdparams").is_file()
    ours = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert type(ours) is MODELS[model_type]
    assert max_rel_diff(logits(ours), logits(theirs)) <= 1e-5


@pytest.mark.parametrize("model_type", ["bloom", "llama"])
@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "pdparams"])
def test_our_save_loads_into_paddlenlp(model_type, safe, tmp_path):
    ours = MODELS[model_type]({"bloom": BloomConfig, "llama": LlamaConfig}[model_type](**CONFIGS[model_type]))
    ours.eval()
    ours.save_pretrained(tmp_path, safe_serialization=safe)
    weights = "model.safetensors" if safe else "model_state.pdparams"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", weights]
    theirs = PADDLENLP[model_type][1].from_pretrained(tmp_path).eval()
    assert max_rel_diff(logits(theirs), logits(ours)) <= 1e-5
    again = AutoModelForCausalLM.from_pretrained(tmp_path)
    np.testing.assert_array_equal(logits(again), logits(ours))


def test_tied_llama_writes_a_head_paddlenlp_can_use(tmp_path):
    # PaddleNLP 2.8.1 ignores tie_word_embeddings; the head we write for it must give the same logits.
    ours = MODELS["llama"](LlamaConfig(**CONFIGS["llama"], tie_word_embeddings=True)).eval()
    ours.save_pretrained(tmp_path)
    theirs = pnlp.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    assert max_rel_diff(logits(theirs), logits(ours)) <= 1e-5
    np.testing.assert_array_equal(logits(AutoModelForCausalLM.from_pretrained(tmp_path)), logits(ours))


def test_paddlenlp_peft_lora_wraps_and_trains_our_model():
    # Why our models subclass PaddleNLP's PretrainedModel: its peft (and Trainer) work on them unchanged.
    from paddlenlp.peft import LoRAConfig, LoRAModel

    model = MODELS["bloom"](BloomConfig(**CONFIGS["bloom"]))
    lora = LoRAModel(model, LoRAConfig(target_modules=[".*query_key_value.*"], r=4, lora_alpha=8))
    lora.mark_only_lora_as_trainable()
    ids = paddle.to_tensor(IDS)
    lora(ids, labels=ids).loss.backward()
    trainable = {n for n, p in lora.named_parameters() if not p.stop_gradient}
    assert trainable and all("lora" in n for n in trainable)
    grads = {n: p.grad for n, p in lora.named_parameters() if n in trainable}
    # lora_B starts at zero, so only B has a gradient on the first step; it must reach every layer's B.
    assert all(float(g.abs().sum()) > 0 for n, g in grads.items() if "lora_B" in n) and len(grads) == 4
