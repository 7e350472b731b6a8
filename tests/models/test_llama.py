"""Our LLaMA against HF transformers' LLaMA from identical weights."""
import numpy as np
import paddle
import pytest
import torch
from reference import hf_logits, max_rel_diff, our_logits, tiny_llama

from paddle_belle import LlamaConfig, LlamaForCausalLM

TOL = 1e-4
rng = np.random.default_rng(1)
IDS = rng.integers(3, 101, (2, 12))
MASK = np.ones_like(IDS)
MASK[1, :3] = 0  # second row left-padded by 3
POSITIONS = np.clip(MASK.cumsum(-1) - 1, 0, None)  # what HF's generate passes for left-padded rows

VARIANTS = {
    "mha": {},
    "gqa": {"num_key_value_heads": 2},
    "mqa": {"num_key_value_heads": 1},
    "rope-linear": {"rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 500.0},
}


def shifted(labels):
    return np.concatenate([labels[:, 1:], np.full((labels.shape[0], 1), -100)], axis=1)


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("std", [0.02, 0.5])
def test_logits_and_loss_match_hf(variant, std):
    hf, ours = tiny_llama(std, **VARIANTS[variant])
    labels = np.where(MASK == 1, IDS, -100)
    ref = hf_logits(hf, IDS, MASK, labels, position_ids=torch.tensor(POSITIONS))
    out = our_logits(ours, IDS, MASK, shifted(labels))  # our default positions count real tokens only
    real = MASK == 1
    assert max_rel_diff(out.logits.numpy()[real], ref.logits.numpy()[real]) <= TOL
    assert abs(float(out.loss) - float(ref.loss)) <= TOL * max(1.0, float(ref.loss))


def test_dynamic_rope_beyond_the_trained_context_matches_hf():
    # max_position_embeddings 8 < 12 tokens: the dynamic NTK base is in play.
    kwargs = {"rope_scaling": {"rope_type": "dynamic", "factor": 3.0}, "max_position_embeddings": 8}
    hf, ours = tiny_llama(0.5, **kwargs)
    assert ours.config.rope_scaling_type == "dynamic_ntk"
    ref, out = hf_logits(hf, IDS[:1]).logits.numpy(), our_logits(ours, IDS[:1]).logits.numpy()
    assert max_rel_diff(out, ref) <= TOL
    _, unscaled = tiny_llama(0.5, max_position_embeddings=8)
    assert max_rel_diff(our_logits(unscaled, IDS[:1]).logits.numpy(), ref) > TOL


def test_paddlenlp_rope_fields_equal_the_hf_dict():
    _, from_dict = tiny_llama(0.5, rope_scaling={"type": "linear", "factor": 4.0})
    _, from_fields = tiny_llama(0.5, rope_scaling_type="linear", rope_scaling_factor=4.0)
    assert from_dict.config.rope_scaling_factor == 4.0
    np.testing.assert_array_equal(our_logits(from_dict, IDS).logits.numpy(), our_logits(from_fields, IDS).logits.numpy())


def test_tied_embeddings_match_hf():
    hf, ours = tiny_llama(0.5, tie_word_embeddings=True)
    assert "lm_head.weight" not in ours.state_dict()
    assert max_rel_diff(our_logits(ours, IDS).logits.numpy(), hf_logits(hf, IDS).logits.numpy()) <= TOL


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_kv_cache_reproduces_full_sequence_logits(variant):
    _, ours = tiny_llama(0.5, **VARIANTS[variant])
    full = our_logits(ours, IDS, MASK).logits.numpy()
    cache = ours.new_cache(batch_size=2, max_length=IDS.shape[1] + 3)  # room to spare is fine
    steps = [our_logits(ours, IDS[:, :4], MASK[:, :4], cache=cache).logits.numpy()]
    for t in range(4, IDS.shape[1]):
        steps.append(our_logits(ours, IDS[:, t : t + 1], MASK[:, : t + 1], cache=cache).logits.numpy())
    real = MASK == 1
    assert max_rel_diff(np.concatenate(steps, axis=1)[real], full[real]) <= TOL


@pytest.mark.parametrize("variant", ["mha", "gqa"])
def test_inference_ops_equal_the_training_path(variant):
    # Without gradients RMSNorm (and the residual add before it) is Paddle's fused op; with them, the plain ops.
    _, ours = tiny_llama(0.5, **VARIANTS[variant])
    fused = our_logits(ours, IDS, MASK).logits.numpy()
    plain = ours(paddle.to_tensor(IDS), attention_mask=paddle.to_tensor(MASK)).logits.numpy()
    assert max_rel_diff(fused, plain) <= 1e-5


def test_kv_cache_overflow_is_a_clear_error():
    _, ours = tiny_llama()
    cache = ours.new_cache(batch_size=1, max_length=4)
    with pytest.raises(ValueError, match="holds 4 positions; 5 are needed"):
        our_logits(ours, IDS[:1, :5], cache=cache)


def test_unsupported_config_is_a_clear_error():
    with pytest.raises(ValueError, match="rope scaling 'yarn' is not supported"):
        LlamaConfig(rope_scaling={"rope_type": "yarn", "factor": 2.0})
    with pytest.raises(ValueError, match="must divide evenly"):
        LlamaForCausalLM(LlamaConfig(hidden_size=32, num_attention_heads=4, num_key_value_heads=3))
