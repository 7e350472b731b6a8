"""Helpers shared by the tests: tiny HF reference models and copying their weights into ours."""
from __future__ import annotations

import numpy as np
import paddle
import torch
import transformers

from paddle_belle import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM

HF_PREFIX = {"bloom": "transformer.", "llama": "model."}


def hf_to_paddle_state(hf_model, model_type: str) -> dict[str, np.ndarray]:
    """HF state dict -> PaddleNLP names and layout: prefix renamed, Linear weights [out, in] -> [in, out].
    (A deliberately independent re-statement for the tests; the product's converter has its own tables.)"""
    state = {}
    for name, tensor in hf_model.state_dict().items():
        array = tensor.detach().float().numpy()
        if name == "lm_head.weight" and hf_model.config.tie_word_embeddings:
            continue  # tied to the word embeddings (always so in BLOOM), not a parameter of its own
        if name.startswith(HF_PREFIX[model_type]):
            name = model_type + "." + name[len(HF_PREFIX[model_type]):]
        if array.ndim == 2 and "embed" not in name:
            array = array.T
        state[name] = np.ascontiguousarray(array)
    return state


def tiny_bloom(n_head=4, std=0.02, seed=0, **overrides):
    """A random HF BloomForCausalLM and our BLOOM holding the same weights."""
    kwargs = dict(vocab_size=101, hidden_size=8 * n_head, n_layer=2, n_head=n_head, initializer_range=std)
    kwargs.update(overrides)
    torch.manual_seed(seed)
    hf = transformers.BloomForCausalLM(transformers.BloomConfig(**kwargs)).eval()
    _randomize_norms(hf, seed)
    ours = BloomForCausalLM(BloomConfig(**kwargs))
    _load(ours, hf_to_paddle_state(hf, "bloom"))
    return hf, ours


def tiny_llama(std=0.02, seed=0, **overrides):
    kwargs = dict(
        vocab_size=101, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=4, max_position_embeddings=64, initializer_range=std,
    )
    kwargs.update(overrides)
    torch.manual_seed(seed)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).eval()
    _randomize_norms(hf, seed)
    ours = LlamaForCausalLM(LlamaConfig(**kwargs))
    _load(ours, hf_to_paddle_state(hf, "llama"))
    return hf, ours


def _randomize_norms(hf, seed):
    # HF initialises norm weights to 1 and biases to 0, which would hide a swapped or ignored norm parameter.
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn(p.shape, generator=g))


def _load(ours, state):
    missing, unexpected = ours.set_state_dict(state)
    assert not missing and not unexpected, (missing, unexpected)
    ours.eval()


def hf_logits(hf, ids, mask=None, labels=None, **kw):
    with torch.no_grad():
        out = hf(
            input_ids=torch.tensor(ids),
            attention_mask=None if mask is None else torch.tensor(mask),
            labels=None if labels is None else torch.tensor(labels),
            **kw,
        )
    return out


def our_logits(model, ids, mask=None, labels=None, **kw):
    with paddle.no_grad():
        return model(
            paddle.to_tensor(ids),
            attention_mask=None if mask is None else paddle.to_tensor(mask),
            labels=None if labels is None else paddle.to_tensor(labels),
            **kw,
        )


def max_rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max(1, max |b|): the parity measure of the foundation issue."""
    return float(np.abs(a - b).max() / max(1.0, float(np.abs(b).max())))
