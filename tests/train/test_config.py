from pathlib import Path
import pytest

from paddle_belle.registry import REGISTRY
from paddle_belle.train import load_config
from paddle_belle.train.config import parse_overrides
from paddle_belle.train.memory import bytes_per_param, training_memory_table
from paddle_belle.train.sft import global_batch_accumulation

CONFIGS = Path(__file__).parents[2] / "configs" / "sft"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    config = load_config(CONFIGS / name)
    assert config.train_data and config.training["output_dir"]


def test_card_recipe():
    c = load_config(CONFIGS / "belle-7b-2m-full.yaml")
    t = c.training
    assert (c.global_batch_size, t["learning_rate"], t["num_train_epochs"], t["weight_decay"], t["warmup_ratio"],
            t["lr_scheduler_type"], c.lora) == (64, 3e-6, 3, 0.001, 0.1, "linear", None)
    lora = load_config(CONFIGS / "belle-7b-lora.yaml").lora
    assert (lora.r, lora.lora_alpha, lora.lora_dropout, lora.target_modules) == (16, 32, 0.05, None)


def test_overrides_reach_into_sections_and_parse_yaml_scalars(tmp_path):
    c = load_config(CONFIGS / "belle-7b-lora.yaml", ["--training.learning_rate", "1e-4", "--lora.r", "8",
                                                     "--max-length", "512", "--training.bf16", "false"])
    assert c.training["learning_rate"] == 1e-4 and c.lora.r == 8 and c.lora.lora_alpha == 32
    assert c.max_length == 512 and c.training["bf16"] is False
    assert parse_overrides(["--a.b.c", "[1, 2]"]) == {"a": {"b": {"c": [1, 2]}}}
    assert parse_overrides(["--skip-bad", "--lr", "-1"]) == {"skip_bad": True, "lr": -1}


@pytest.mark.parametrize("overrides, message", [
    (["--learning_rate", "1"], "unknown setting.*learning_rate.*TrainingArguments go under training:"),
    (["lora.r", "8"], "expected a --key before 'lora.r'"),
])
def test_bad_overrides_are_one_line_errors(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_config(CONFIGS / "belle-7b-lora.yaml", overrides)


def test_config_without_output_dir_or_with_broken_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("model: x\ntrain_data: [y]\ntraining: {}\n")
    with pytest.raises(ValueError, match="training.output_dir is required"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "b.yaml").write_text("model: [x\n")
    with pytest.raises(ValueError, match="b.yaml: not valid YAML"):
        load_config(tmp_path / "b.yaml")


def test_global_batch_is_per_device_times_accumulation_times_data_parallel_degree():
    assert global_batch_accumulation(64, 2, 8, None) == 4  # the card recipe on 8 GPUs
    assert global_batch_accumulation(64, 4, 1, None) == 16
    assert global_batch_accumulation(64, 2, 8, 4) == 4
    assert global_batch_accumulation(None, 2, 8, None) == 1
    with pytest.raises(ValueError, match="2 x accumulation 2 x data-parallel degree 8 = 32, not global_batch_size 64"):
        global_batch_accumulation(64, 2, 8, 2)
    with pytest.raises(ValueError, match="not a multiple of per-device batch 3 x data-parallel degree 8"):
        global_batch_accumulation(64, 3, 8, None)


def test_memory_per_sharding_stage():
    assert bytes_per_param(8, "none") == 16 and bytes_per_param(8, "stage1") == 2 + 2 + 1.5
    assert bytes_per_param(8, "stage2") == 2 + 0.25 + 1.5 and bytes_per_param(8, "stage3") == 2
    table = training_memory_table(REGISTRY["belle-7b-2m"].parameters)
    assert "| stage2 | 26.5 |" in table and "| stage3 | 14.1 |" in table
