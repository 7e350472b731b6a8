import json
import math

import numpy as np
import pytest
import torch
from reference import tiny_belle_dir, tiny_llama

from paddle_belle.cli import main
from paddle_belle.evaluate.perplexity import load_encoder, perplexity, windows


@pytest.mark.parametrize("n, seqlen, stride", [(100, 16, 16), (100, 16, 5), (17, 16, None), (16, 16, 16), (2, 8, 8)])
def test_every_token_is_predicted_at_most_once(n, seqlen, stride):
    """Overlapping windows predict every token after the first; disjoint ones (GPTQ's evaluation) all but each
    window's first token, which has no context inside its window."""
    scored = []
    for begin, end, first in windows(n, seqlen, stride):
        assert end - begin <= seqlen and begin < first <= end
        scored += range(first, end)
    unpredicted = {0} | (set(range(0, n, seqlen)) if (stride or seqlen) == seqlen else set())
    assert scored == [p for p in range(n) if p not in unpredicted]


def test_window_arguments_are_checked():
    with pytest.raises(ValueError, match="stride"):
        windows(100, 16, 17)
    with pytest.raises(ValueError, match="at least 2"):
        windows(1, 16)


def reference_perplexity(hf, ids, seqlen, stride):
    """transformers' recipe ("Perplexity of fixed-length models"), computed with the HF model."""
    nll, count, prev_end = 0.0, 0, 0
    for begin in range(0, len(ids), stride):
        end = min(begin + seqlen, len(ids))
        target = end - max(prev_end, begin + 1)  # tokens not yet predicted; a window's first has no prediction
        with torch.no_grad():
            logits = hf(torch.tensor([ids[begin:end]])).logits[0].double()
        logp = torch.log_softmax(logits[:-1], -1).gather(1, torch.tensor(ids[begin + 1 : end])[:, None])[:, 0]
        nll -= float(logp[-target:].sum())
        count += target
        prev_end = end
        if end == len(ids):
            break
    return math.exp(nll / count), count


@pytest.mark.parametrize("stride", [None, 7])
def test_perplexity_equals_transformers_recipe(stride):
    hf, ours = tiny_llama(std=0.5)
    ids = np.random.RandomState(0).randint(0, 101, 60).tolist()
    result = perplexity(ours, ids, seqlen=16, stride=stride, progress=False)
    expected, count = reference_perplexity(hf, ids, 16, stride or 16)
    assert result["tokens"] == count
    assert result["perplexity"] == pytest.approx(expected, rel=1e-4)


def test_cli_json(tmp_path, capsys):
    model_dir = tmp_path / "belle"
    tiny_belle_dir(model_dir)
    data = tmp_path / "text.txt"
    data.write_text("人工智能是计算机科学的一个分支。Hello, world! " * 20, encoding="utf-8")
    assert main(["perplexity", "--model", str(model_dir), "--data", str(data), "--seqlen", "32", "--json"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(result) == {"perplexity", "tokens"}
    n = len(load_encoder(model_dir)(data.read_text(encoding="utf-8")))
    assert result["tokens"] == n - len(windows(n, 32))  # each disjoint window's first token has no prediction
    assert 1 < result["perplexity"] < 1e6
