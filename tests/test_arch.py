"""The name tables at real sizes, without allocating weights: HF shapes (meta tensors) mapped through our arch tables
equal the shapes of PaddleNLP's own classes (built under LazyGuard) and those our config implies."""
import paddle
import paddlenlp.transformers as pnlp
import pytest
import torch
import transformers
from paddlenlp.transformers.model_utils import no_init_weights

from paddle_belle import arch

REAL = {
    "bloom-7b1": ("bloom", dict(vocab_size=250880, hidden_size=4096, n_layer=30, n_head=32)),
    "llama-7b": ("llama", dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                               num_attention_heads=32)),
    "llama-13b": ("llama", dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                                num_attention_heads=40)),
    "llama-gqa": ("llama", dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                                num_attention_heads=9, num_key_value_heads=3)),  # SmolLM2-135M's shape
}
HF = {"bloom": (transformers.BloomConfig, transformers.BloomForCausalLM),
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}
PADDLENLP = {"bloom": (pnlp.BloomConfig, pnlp.BloomForCausalLM), "llama": (pnlp.LlamaConfig, pnlp.LlamaForCausalLM)}


@pytest.mark.parametrize("name", list(REAL))
def test_tables_map_hf_shapes_to_paddlenlp_shapes(name):
    model_type, config = REAL[name]
    with torch.device("meta"):
        hf = HF[model_type][1](HF[model_type][0](**config))
    mapped = {}
    for hf_name, tensor in hf.state_dict().items():
        if model_type == "bloom" and hf_name == "lm_head.weight":
            continue  # tied: the word embedding
        target, transpose = arch.rename(hf_name, arch.HF_TO_PADDLE[model_type])
        mapped[target] = list(tensor.shape)[::-1] if transpose else list(tensor.shape)
        assert arch.rename(target, arch.PADDLE_TO_HF[model_type]) == (hf_name, transpose)

    with paddle.LazyGuard(), no_init_weights():  # parameters without memory (PaddleNLP would initialise them)
        theirs = PADDLENLP[model_type][1](PADDLENLP[model_type][0](**config))
    paddlenlp_shapes = {k: list(v.shape) for k, v in theirs.state_dict().items() if k != "lm_head.decoder_weight"}
    assert mapped == paddlenlp_shapes
    assert arch.paddle_shapes(model_type, arch.paddle_config(model_type, config)) == paddlenlp_shapes


def test_config_field_names_both_ways():
    hf = {"model_type": "llama", "rope_scaling": {"type": "dynamic", "factor": 2.0}, "torch_dtype": "bfloat16",
          "hidden_size": 8}
    paddle_side = arch.paddle_config("llama", hf)
    assert (paddle_side["rope_scaling_type"], paddle_side["rope_scaling_factor"], paddle_side["dtype"]) == ("dynamic_ntk", 2.0, "bfloat16")
    assert "rope_scaling" not in paddle_side and "torch_dtype" not in paddle_side
    back = arch.hf_config("llama", paddle_side)
    assert back["rope_scaling"] == {"rope_type": "dynamic", "factor": 2.0} and back["torch_dtype"] == "bfloat16"
    bloom = arch.paddle_config("bloom", {"n_embed": 64, "num_hidden_layers": 3, "num_attention_heads": 4})
    assert (bloom["hidden_size"], bloom["n_layer"], bloom["n_head"]) == (64, 3, 4)
    with pytest.raises(ValueError, match="has no transformers equivalent"):
        arch.hf_config("llama", {"rope_scaling_type": "ntk", "rope_scaling_factor": 2.0})
