"""Helpers shared by the tests: tiny HF reference models and copying their weights into ours."""
from __future__ import annotations

import json
import os

import numpy as np
import sentencepiece as spm
import paddle
import torch
import transformers

from paddle_belle import BloomConfig, BloomForCausalLM, LlamaConfig, LlamaForCausalLM
from paddle_belle.convert.tokenizer import train_bloom_tokenizer, write_paddle_tokenizer
from paddle_belle.quant import QuantLinear, dequantize

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


CORPUS = [
    "人工智能是计算机科学的一个分支，它企图了解智能的实质。",
    "请给我讲一个关于勇气的故事。小明今天买了3.5斤苹果，花了12元！",
    "Human: 你好，请问你是谁？\n\nAssistant: 我是BELLE，一个中文对话模型。",
    "Hello, world! It's a test of the tokenizer... (with brackets) and a|b pipes.",
    "数学题：一个长方形的长是8厘米，宽是5厘米，它的面积是多少？答：40平方厘米。",
] * 20
TEXT = "Hello,  world! It's 3.14… 你好，世界。 (测试) a|b\n\n  end？Assistant: 好的、明白"


def bloom_tokenizer_json(directory):
    """A small byte-level BPE with BLOOM's pre-tokenizer and special tokens, saved as HF tokenizer.json, and
    transformers' fast tokenizer over it."""
    train_bloom_tokenizer(CORPUS, 600, directory)
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **special)


def tiny_belle_dir(directory, seed=0, hidden_size=32, std=0.5):
    """A BELLE-like checkpoint in PaddleNLP's layout (belle-7b-2m's files): a tiny random BLOOM and a real
    byte-level BPE tokenizer trained on Chinese and English text."""
    bloom_tokenizer_json(directory / "hf-tokenizer")
    write_paddle_tokenizer(directory / "hf-tokenizer", directory, "bloom")
    vocab = len(json.loads((directory / "vocab.json").read_text()))
    paddle.seed(seed)
    model = BloomForCausalLM(BloomConfig(vocab_size=vocab, hidden_size=hidden_size, n_layer=2, n_head=4,
                                         initializer_range=std))
    model.save_pretrained(directory, safe_serialization=False)
    return model.eval()


def tiny_llama_dir(directory, seed=0, hidden_size=32, std=0.5, normalization="nmt_nfkc"):
    """A LLaMA-style checkpoint: a tiny random LLaMA and a real sentencepiece BPE tokenizer (HF's tokenizer.model
    name; BOS 1, EOS 2, UNK 0). ``normalization="identity"`` is LLaMA's own setting (no NFKC, spaces kept)."""
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_prefix=str(directory / "sp"), vocab_size=400, model_type="bpe",
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, hard_vocab_limit=False,
        normalization_rule_name=normalization, remove_extra_whitespaces=normalization != "identity", minloglevel=2,
    )
    (directory / "sp.model").rename(directory / "tokenizer.model")
    (directory / "sp.vocab").unlink()
    paddle.seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=400, hidden_size=hidden_size, intermediate_size=hidden_size * 3 // 2, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=std,
    ))
    model.save_pretrained(directory)
    return model.eval()


class Exploit:
    """Pickles to a call of os.system that would create ``marker``: a hostile weight file's payload."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def random_quant_layer(config, in_features, out_features, seed=0, bias=True):
    """A QuantLinear of random codes, scales and zeros, and its exact float32 weight [in, out] in input order."""
    rng = np.random.RandomState(seed)
    codes = rng.randint(0, 1 << config.bits, (in_features, out_features)).astype(np.uint8)
    groups = config.groups(in_features)
    scales = rng.uniform(0.01, 0.1, (groups, out_features)).astype(np.float32)
    zeros = rng.randint(0, 1 << config.bits, (groups, out_features)).astype(np.uint8)
    perm = rng.permutation(in_features).astype(np.int32) if config.act_order else None
    b = paddle.to_tensor(rng.standard_normal(out_features).astype(np.float32)) if bias else None
    layer = QuantLinear.from_codes(codes, scales, zeros, config, perm=perm, bias=b)
    if config.sym:
        zeros = np.full_like(zeros, 1 << (config.bits - 1))
    weight = dequantize(codes, scales, zeros, config.group_size)
    if perm is not None:
        weight = weight[np.argsort(perm)]  # stored row i is input row perm[i]
    return layer, weight, None if b is None else b.numpy()


def int8_activation_matmul(layer, x):
    """What the integer path computes for a QuantLinear (paddle_belle/kernels/cpu_matmul.cc, "int8 activations"),
    in numpy: x [M, in] float32 (input order) read in stored order, quantized per row in blocks of at most 32 inputs
    within a group (scale max|x| / 127, round half to even), each block's exact integer dot with code - zero, then
    y += scale * (x's scale * dot) block after block in float32."""
    if layer.perm is not None:
        x = x[:, layer.perm.numpy()]
    codes = layer.codes().numpy().astype(np.int64)
    scales = layer.scales.numpy()
    zeros = (np.full(scales.shape, 1 << (layer.config.bits - 1)) if layer.zeros is None
             else layer.zeros.numpy()).astype(np.int64)
    (m, k), group = x.shape, layer.group_size
    y = np.zeros((m, codes.shape[1]), np.float32)
    for g0 in range(0, k, group):
        for k0 in range(g0, min(g0 + group, k), 32):
            block = x[:, k0 : min(k0 + 32, g0 + group, k)]
            scale = (np.abs(block).max(axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
            q = np.round(block / np.where(scale > 0, scale, np.float32(1))).astype(np.int64)  # ties to even
            dot = (q @ (codes[k0 : k0 + block.shape[1]] - zeros[g0 // group])).astype(np.float32)
            y += scales[g0 // group] * (scale * dot)
    return y if layer.bias is None else y + layer.bias.numpy()


def llama3_style_tokenizer_json(directory, bos=True):
    """A small byte-level BPE the way SmolLM2's and Llama-3's tokenizer.json are built (digits split one by one,
    GPT-2's regex, ChatML special tokens; with ``bos``, a post-processor that puts <|im_start|> first, as
    Llama-3's puts <|begin_of_text|>) saved as tokenizer.json + tokenizer_config.json, and transformers' fast
    tokenizer over it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tok.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=500, special_tokens=special, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", special_tokens=[("<|im_start|>", 1)])
    directory.mkdir(parents=True, exist_ok=True)
    tok.save(str(directory / "tokenizer.json"))
    settings = {"bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
                "pad_token": "<|im_end|>"}
    (directory / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                                 **settings}))
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(directory / "tokenizer.json"), **settings)
