"""benchmarks/cpu_formats.py's helpers at a tiny shape: its random source is a checkpoint transformers loads as BLOOM
(and ours reads the same), and its llama.cpp decode loop is llama.cpp's own greedy decoding."""
import importlib.util
from pathlib import Path

import numpy as np
import paddle
import pytest
import torch
import transformers
from reference import max_rel_diff

from paddle_belle import AutoModelForCausalLM
from paddle_belle.convert.gguf import export_gguf

spec = importlib.util.spec_from_file_location("cpu_formats", Path(__file__).parents[2] / "benchmarks" / "cpu_formats.py")
cpu_formats = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_formats)


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    path = tmp_path_factory.mktemp("cpu_formats") / "fp16"
    cpu_formats.write_checkpoint("tiny", path, max_shard_size="1MB")  # several shards and their index
    return path


def test_source_is_an_hf_bloom_checkpoint(source):
    assert len(list(source.glob("model-*-of-*.safetensors"))) > 1
    ids = cpu_formats.prompt_ids(12)
    theirs = transformers.BloomForCausalLM.from_pretrained(source, torch_dtype=torch.float32)
    assert theirs.transformer.word_embeddings.weight.shape == (6000, 128)
    with torch.no_grad():
        expected = theirs(torch.from_numpy(ids)).logits.numpy()
    ours = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
    assert max_rel_diff(ours(paddle.to_tensor(ids)).logits.numpy(), expected) < 1e-4
    # convert_hf_to_gguf.py reads the vocabulary through transformers
    assert len(transformers.AutoTokenizer.from_pretrained(source)) > 1000


def test_llama_cpp_loop_is_greedy_decoding(source, tmp_path):
    export_gguf(source, tmp_path / "f32.gguf", "f32")
    llm = cpu_formats.open_llama_cpp(tmp_path / "f32.gguf", 32, threads=2)
    ids = [int(i) for i in cpu_formats.prompt_ids(8)[0]]
    tokens = cpu_formats.llama_cpp_generate(llm, ids, 6)
    assert tokens == [t for t, _ in zip(llm.generate(ids, top_k=1, temp=0.0, reset=True), range(6))]
    assert cpu_formats.llama_cpp_generate(llm, ids, 6) == tokens  # reset between runs
    ours = AutoModelForCausalLM.from_pretrained(source, dtype="float32")
    new = ours.generate(np.array([ids]), max_new_tokens=1, do_sample=False)[0, len(ids):]
    assert int(new[0]) == tokens[0]
