"""The model registry against transformers' own models at real size (meta device: no memory)."""
import json
import subprocess
import sys

import pytest
import torch
import transformers

from paddle_belle import hub
from paddle_belle.arch import hf_config
from paddle_belle.registry import REGISTRY, lookup

HF = {"bloom": (transformers.BloomConfig, transformers.BloomForCausalLM),
      "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM)}


@pytest.mark.parametrize("name", ["belle-7b-2m", "belle-llama-7b-2m", "belle-llama-13b-2m", "belle-llama-ext-7b",
                                  "belle-llama2-13b-chat-0.4m", "belle-on-open-datasets", "belle-llama-7b-2m-gptq"])
def test_parameter_counts_match_transformers(name):
    entry = REGISTRY[name]
    config_cls, model_cls = HF[entry.model_type]
    with torch.device("meta"):
        model = model_cls(config_cls(**hf_config(entry.model_type, entry.config)))
    assert entry.parameters == model.num_parameters()


def test_lookup_by_any_name():
    assert lookup("belle-7b-2m") is lookup("bellegroup/belle-7b-2m") is lookup("BelleGroup/BELLE-7B-2M")
    assert lookup("gpt2") is None
    assert REGISTRY["belle-7b-2m"].parameters == 7_069_016_064  # BLOOMZ-7B1's published count


def test_cli_lists_the_family():
    out = subprocess.run([sys.executable, "-m", "paddle_belle.cli", "models"], capture_output=True, text=True, check=True)
    line = next(l for l in out.stdout.splitlines() if l.startswith("belle-7b-2m "))
    assert line.split()[1:8] == ["bloom", "30", "4096", "32", "250880", "7.07B", "bellegroup/belle-7b-2m"]


def test_short_names_resolve_through_the_registry(tmp_path, monkeypatch):
    monkeypatch.setenv("PPNLP_HOME", str(tmp_path))
    monkeypatch.setenv("PADDLE_BELLE_OFFLINE", "1")
    cache = tmp_path / "models" / "bellegroup" / "belle-7b-2m"
    cache.mkdir(parents=True)
    for name in ("model_state.pdparams", "vocab.json", "merges.txt"):
        (cache / name).write_text("x")
    (cache / "config.json").write_text(json.dumps({"model_type": "bloom"}))
    assert hub.resolve("belle-7b-2m") == cache
    with pytest.raises(FileNotFoundError, match=r"belle-7b-0.2m is not on PaddleNLP's bucket: download BelleGroup/BELLE-7B-0.2M"):
        hub.resolve("belle-7b-0.2m")


def test_every_model_in_belles_readme_is_known_with_its_route():
    """BELLE's README.md model list (2024-10): each repo is in the registry, with how its weights are obtained."""
    routes = {
        "BelleGroup/BELLE-7B-2M": "from_pretrained", "BelleGroup/BELLE-7B-0.2M": "convert",
        "BelleGroup/BELLE-LLaMA-7B-0.6M-enc": "decrypt, convert", "BelleGroup/BELLE-LLaMA-7B-2M-enc": "decrypt, convert",
        "BelleGroup/BELLE-LLaMA-7B-2M-gptq-enc": "decrypt, convert --from-gptq",
        "BelleGroup/BELLE-LLaMA-13B-2M-enc": "decrypt, convert", "BelleGroup/BELLE-on-Open-Datasets": "decrypt, convert",
        "BelleGroup/BELLE-LLaMA-EXT-7B": "decrypt, convert", "BELLE-2/BELLE-Llama2-13B-chat-0.4M": "convert",
    }
    assert {repo: lookup(repo).route for repo in routes} == routes
    out = subprocess.run([sys.executable, "-m", "paddle_belle.cli", "models"], capture_output=True, text=True, check=True)
    assert "decrypt, convert --from-gptq" in out.stdout
