"""AutoModelForCausalLM picks the class from config.json."""
import json

import pytest

from paddle_belle import AutoModelForCausalLM, BloomConfig, BloomForCausalLM


def test_auto_model_dispatches_on_model_type(tmp_path):
    BloomForCausalLM(BloomConfig(vocab_size=40, hidden_size=16, n_layer=1, n_head=2)).save_pretrained(tmp_path)
    assert type(AutoModelForCausalLM.from_pretrained(tmp_path)) is BloomForCausalLM
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        AutoModelForCausalLM.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="no config.json"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "nowhere")
